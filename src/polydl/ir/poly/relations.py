"""Maps and accesses: access relations, in-bounds parts, images and footprints, writers of elements, projections between statements."""

from __future__ import annotations

from collections.abc import Iterable

from ..nodes import Kernel, Load, Statement
from ._base import _IN, _OUT, _SET, Map, Set, _with_context, iexpr, names, params_text
from .schedules import _schedule_on
from .sets import _dim_bounds, box_size, domain, tensor_box


def access(kernel: Kernel, stmt: Statement, load: Load) -> Map:
    """``{ S[iters] -> T[index] }`` restricted to the statement's domain."""
    idx = ", ".join(iexpr(e) for e in load.index)
    text = (
        f"{params_text(kernel.sizes)} -> {{ {stmt.name}[{', '.join(stmt.iterators)}] -> "
        f"{load.tensor}[{idx}] }}"
    )
    return _schedule_on(kernel.sizes, kernel.bindings, text, stmt.domain)


def _access_on(kernel: Kernel, stmt: Statement, load: Load, points: Set) -> Map:
    """``{ S[iters] -> T[index] }`` on ``points`` (a set of ``stmt``'s instances)."""
    idx = ", ".join(iexpr(e) for e in load.index)
    text = (
        f"{params_text(kernel.sizes)} -> {{ {stmt.name}[{', '.join(stmt.iterators)}] -> "
        f"{load.tensor}[{idx}] }}"
    )
    m = _with_context(Map(text), kernel)
    return m.intersect_domain(points.align_params(m.get_space()))


def in_bounds(kernel: Kernel, stmt: Statement, load: Load, points: Set) -> Set:
    """The instances among ``points`` whose ``load`` lies inside its tensor."""
    m = _access_on(kernel, stmt, load, points)
    return m.intersect_range(tensor_box(kernel, load.tensor)).domain()


def in_bounds_on(kernel: Kernel, stmt: Statement, load: Load, points: Set) -> bool:
    """Whether ``load`` stays inside its tensor on every instance of ``points``."""
    return in_bounds(kernel, stmt, load, points).is_equal(points)


def sample_pair(m: Map) -> tuple[dict[str, int], dict[str, int]] | None:
    """One pair of ``m`` as two ``{dim name: value}`` dicts (input side, output side)."""
    if m.is_empty():
        return None
    n_in = m.dim(_IN)
    flat = m.wrap().sample_point()
    vals = [flat.get_coordinate_val(_SET, i).to_python() for i in range(flat.get_space().dim(_SET))]
    return dict(zip(names(m, "in"), vals[:n_in], strict=True)), dict(
        zip(names(m, "out"), vals[n_in:], strict=True)
    )


def is_projection(kernel: Kernel, s: Statement, red: Statement) -> bool:
    """Whether ``s``'s domain is ``red``'s domain projected onto ``s``'s iterators."""
    m = Map(
        f"{params_text(kernel.sizes)} -> {{ {red.name}[{', '.join(red.iterators)}] -> "
        f"{s.name}[{', '.join(s.iterators)}] }}"
    )
    proj = domain(kernel, red).apply(_with_context(m, kernel))
    return proj.is_equal(domain(kernel, s))


def image(m: Map, points: Set) -> Set:
    """The image of ``points`` (a subset of ``m``'s domain) under ``m``."""
    return m.intersect_domain(points).range()


def footprint_size(images: Iterable[Set]) -> int:
    """Points of the union of ``images`` (one tensor's footprints), counted by extents.

    One image counts its bounding box (``dim_min``/``dim_max``: exact for dense footprints).
    Several are unioned, split into disjoint pieces, and each piece counts its bounding box, so
    overlapping reads of one tensor are not counted twice.
    """
    sets = [s for s in images if not s.is_empty()]
    if not sets:
        return 0
    if len(sets) == 1:
        return box_size(sets[0])
    u = sets[0]
    for s in sets[1:]:
        u = u.union(s)
    u = u.coalesce()
    if u.n_basic_set() == 1:
        return box_size(u)
    return sum(box_size(Set.from_basic_set(b)) for b in u.make_disjoint().get_basic_sets())


def output_dims(m: Map) -> list[Map]:
    """``m`` split by output dimension: for each, ``m`` with only that output dimension."""
    n = m.dim(_OUT)
    return [m.project_out(_OUT, d + 1, n - d - 1).project_out(_OUT, 0, d) for d in range(n)]


def range_extent(m: Map, points: Set) -> tuple[int, int] | None:
    """Smallest and largest value of ``m``'s single output dimension over ``points``."""
    return _dim_bounds(m.intersect_domain(points).range(), 0, "_0")


def outside(kernel: Kernel, stmt: Statement, load: Load) -> tuple[dict, dict] | None:
    """One (iteration, index) pair of the access ``load`` that leaves its tensor, or None."""
    acc = access_map(kernel, stmt, load)
    bad = acc.subtract_range(tensor_box(kernel, load.tensor))
    return sample_pair(bad)


access_map = access


def writers(kernel: Kernel, stmt: Statement, elements: Set) -> Set:
    """The instances of ``stmt`` whose target element lies in ``elements``."""
    return access(kernel, stmt, stmt.target).intersect_range(elements).domain()
