"""Sets and extents: domains, tensor boxes, sample points, per-dimension extents, boxes, restriction, projection, set algebra."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

import islpy as isl

from ..nodes import Kernel, Statement
from ._base import (
    _IN,
    _PARAM,
    _SET,
    Set,
    _context,
    _with_context,
    iexpr,
    names,
    params_text,
    tuple_name,
)


def domain(kernel: Kernel, stmt: Statement) -> Set:
    """The statement's iteration domain, sizes fixed as the kernel binds them."""
    return _domain(kernel.sizes, kernel.bindings, stmt.domain)


def domain_text(sizes: tuple[str, ...], bindings: tuple[tuple[str, int], ...], text: str) -> Set:
    """The domain ``text`` with sizes fixed as ``bindings`` (cached by text)."""
    return _domain(sizes, bindings, text)


@functools.lru_cache(maxsize=4096)
def _domain(sizes, bindings, text: str) -> Set:
    ctx = _context(sizes, bindings)
    return Set(text).align_params(ctx.get_space()).intersect_params(ctx)


def is_equal(a: Set, b: Set) -> bool:
    return a.is_equal(b.align_params(a.get_space()))


def tensor_box(kernel: Kernel, tensor: str) -> Set:
    """``{ T[d0, ...] : 0 <= d0 < shape0 and ... }``: the tensor's valid indices."""
    shape = kernel.arg(tensor).shape  # type: ignore[union-attr]
    dims = [f"d{i}" for i in range(len(shape))]
    cons = " and ".join(f"0 <= {d} < {iexpr(s)}" for d, s in zip(dims, shape, strict=True))
    text = f"{params_text(kernel.sizes)} -> {{ {tensor}[{', '.join(dims)}] : {cons or '0 = 0'} }}"
    return _with_context(Set(text), kernel)


def sample(s: Set) -> dict[str, int] | None:
    """One point of ``s`` as ``{dim name: value}``, or None if ``s`` is empty."""
    if s.is_empty():
        return None
    pt = s.sample_point()
    return {n: pt.get_coordinate_val(_SET, i).to_python() for i, n in enumerate(names(s, "set"))}


def extent(s: Set, dim: str) -> tuple[int, int] | None:
    """Smallest and largest value of dimension ``dim`` over ``s`` (parameters must be fixed).

    None if ``s`` is empty; exact for dense (convex, gap-free) footprints.
    """
    return _dim_bounds(s, names(s, "set").index(dim), dim)


def _dim_bounds(s: Set, i: int, dim: str) -> tuple[int, int] | None:
    if _params_fixed(s):  # two integer optima, much cheaper than the piecewise bounds
        lo, hi = s.dim_min_val(i), s.dim_max_val(i)
        if lo.is_int() and hi.is_int():
            return lo.to_python(), hi.to_python()
    if s.is_empty():
        return None
    return _pw_aff_const(s.dim_min(i), "min", dim), _pw_aff_const(s.dim_max(i), "max", dim)


def _params_fixed(s: Set) -> bool:
    """Whether every parameter of ``s`` is fixed to a value by an equality (sizes bound)."""
    return all(not s.plain_get_val_if_fixed(_PARAM, i).is_nan() for i in range(s.dim(_PARAM)))


def _pw_aff_const(pa, which: str, dim: str) -> int:
    vals: list[int] = []

    def piece(_set, aff):
        if not aff.is_cst():
            raise ValueError(f"{which} of {dim} depends on unbound parameters: bind the sizes")
        vals.append(aff.get_constant_val().to_python())

    pa.foreach_piece(piece)
    if not vals:
        raise ValueError(f"{which} of {dim} is unbounded")
    return min(vals) if which == "min" else max(vals)


def extents(s: Set, dims) -> dict[str, tuple[int, int]] | None:
    """``{dim: (min, max)}`` of ``s`` over ``dims`` (its bounding box), None when one is
    unbounded or not constant."""
    out = {}
    for v in dims:
        try:
            e = extent(s, v)
        except ValueError:  # unbounded
            return None
        if e is None:
            return None
        out[v] = e
    return out


def box_size(s: Set) -> int:
    """Number of points of the bounding box of ``s`` (sizes fixed): a footprint's extent."""
    total = 1
    for d in names(s, "set"):
        ext = extent(s, d)
        if ext is None:
            return 0
        total *= ext[1] - ext[0] + 1
    return total


def count(s: Set) -> int:
    """Exact number of points by enumeration (small, parameter-free sets only)."""
    if s.dim(_PARAM):
        s = s.project_out(_PARAM, 0, s.dim(_PARAM))
    return s.count_val().to_python()


def is_box(dom: Set, ext: Mapping[str, tuple[int, int]]) -> bool:
    """Whether ``dom`` is exactly the box of the given inclusive extents."""
    cons = " and ".join(f"{lo} <= {v} <= {hi}" for v, (lo, hi) in ext.items()) or "0 = 0"
    name = tuple_name(dom) or ""
    box = Set(f"{{ {name}[{', '.join(names(dom))}] : {cons} }}")
    box = box.align_params(dom.get_space()).intersect_params(dom.params())
    return dom.is_equal(box)


def restrict(s: Set, box: Mapping[str, tuple[int, int]]) -> Set:
    """``s`` with each named dimension ``v`` of ``box`` limited to ``lo <= v < hi``."""
    if not box:
        return s
    dims = names(s, "set")
    cons = " and ".join(f"{lo} <= {v} < {hi}" for v, (lo, hi) in box.items())
    tname = tuple_name(s) or ""
    params = names(s, "param")
    text = f"{params_text(params)} -> {{ {tname}[{', '.join(dims)}] : {cons} }}"
    return s.intersect(Set(text).align_params(s.get_space()))


def coupled(s: Set) -> list[frozenset[str]]:
    """Dimensions of ``s`` grouped by the constraints linking them (a partition of the names).

    Two dimensions are in one group when some constraint of ``s`` (or an integer division it
    uses) involves both; a box is all singletons.
    """
    dims = names(s, "set")
    parent = {d: d for d in dims}

    def find(d: str) -> str:
        while parent[d] != d:
            parent[d] = parent[parent[d]]
            d = parent[d]
        return d

    def join(group: set[str]) -> None:
        g = sorted(group)
        for d in g[1:]:
            parent[find(d)] = find(g[0])

    for bs in s.get_basic_sets():
        n_div = bs.dim(isl.dim_type.div)
        div_dims = []
        for j in range(n_div):
            aff = bs.get_div(j)
            div_dims.append(
                {dims[i] for i in range(len(dims)) if not aff.get_coefficient_val(_IN, i).is_zero()}
            )
        for c in bs.get_constraints():
            used = {
                dims[i] for i in range(len(dims)) if not c.get_coefficient_val(_SET, i).is_zero()
            }
            for j in range(n_div):
                if not c.get_coefficient_val(isl.dim_type.div, j).is_zero():
                    used |= set().union(*div_dims) if div_dims else set()
            if len(used) > 1:
                join(used)
    groups: dict[str, set[str]] = {}
    for d in dims:
        groups.setdefault(find(d), set()).add(d)
    return [frozenset(g) for g in groups.values()]


def box_set(like: Set, box: Mapping[str, tuple[int, int]]) -> Set:
    """The box of inclusive extents ``box`` (every dimension of ``like``) in ``like``'s space."""
    cons = " and ".join(f"{lo} <= {v} <= {hi}" for v, (lo, hi) in box.items()) or "0 = 0"
    text = f"{{ {tuple_name(like) or ''}[{', '.join(names(like))}] : {cons} }}"
    return Set(text).align_params(like.get_space()).intersect_params(like.params())


def project_onto(s: Set, keep: Iterable[str]) -> Set:
    """``s`` projected onto the dimensions named in ``keep`` (their order kept, tuple name too)."""
    keep = set(keep)
    out = s
    for i, d in reversed(list(enumerate(names(s)))):
        if d not in keep:
            out = out.project_out(_SET, i, 1)
    return out.set_tuple_name(tuple_name(s)) if tuple_name(s) else out


def full_slices(dom: Set, box: Mapping[str, tuple[int, int]], keep: Iterable[str]) -> Set:
    """The points of the ``keep`` dimensions whose whole slice of the bounding ``box`` of ``dom``
    lies in ``dom`` (no guard cuts it): proj(box) minus proj(box minus dom)."""
    whole = box_set(dom, box)
    return project_onto(whole, keep).subtract(project_onto(whole.subtract(dom), keep))


def subtract(a: Set, b: Set) -> Set:
    return a.subtract(b)


def unite(a: Set, b: Set) -> Set:
    return a.union(b)


def is_disjoint(a: Set, b: Set) -> bool:
    return a.is_disjoint(b)


def named_text(s: Set, name: str) -> str:
    """The isl text of ``s`` (coalesced) with its tuple named ``name``."""
    return s.set_tuple_name(name).coalesce().to_str()
