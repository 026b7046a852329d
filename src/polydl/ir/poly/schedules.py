"""Schedules: dimension counts and extents, padding, placing a nest at a top-level position, piecewise schedules, coalesced dimensions."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

from ..nodes import Kernel, Statement
from ._base import _IN, _OUT, _SET, Map, Set, _context, _with_context, names, tuple_name
from .sets import _domain, domain, extent


def top_position(kernel: Kernel, s: Statement) -> int | None:
    """The constant first schedule dimension of ``s`` (the position of its top-level nest), or
    None when it varies."""
    ext = schedule_dim_extent(kernel, s, 0)
    return ext[0] if ext is not None and ext[0] == ext[1] else None


def schedule(kernel: Kernel, stmt: Statement) -> Map:
    """The statement's schedule restricted to its domain."""
    return _schedule_on(kernel.sizes, kernel.bindings, stmt.schedule, stmt.domain)


@functools.lru_cache(maxsize=4096)
def pad_schedule(text: str, ndim: int) -> str:
    """A schedule map text with zero output dimensions appended up to ``ndim``."""
    m = Map(text)
    extra = ndim - m.dim(_OUT)
    if extra <= 0:
        return text
    m = m.add_dims(_OUT, extra)
    for i in range(ndim - extra, ndim):
        m = m.fix_val(_OUT, i, 0)
    return m.to_str()


def schedule_ndim(kernel: Kernel, s: Statement) -> int:
    """Number of output dimensions of the statement's schedule."""
    return map_ndim(s.schedule)


def schedule_dim_extent(kernel: Kernel, s: Statement, i: int) -> tuple[int, int] | None:
    """Smallest and largest value of schedule output dimension ``i`` over the domain."""
    return _schedule_dim_extent(kernel.sizes, kernel.bindings, s.schedule, s.domain, i)


@functools.lru_cache(maxsize=4096)
def _schedule_dim_extent(sizes, bindings, sched: str, dom: str, i: int):
    ctx = _context(sizes, bindings)
    dset = _domain(sizes, bindings, dom)
    m = Map(sched).align_params(ctx.get_space()).intersect_params(ctx)
    rng = m.intersect_domain(dset).range()
    rng = rng.set_dim_name(_SET, i, "_t")
    return extent(rng, "_t")


def embed_schedule(text: str, prefix: Iterable[int], ndim: int) -> str:
    """Schedule map ``text`` with the constant dimensions ``prefix`` in front and zeros after,
    to ``ndim`` output dimensions (so that several statements' schedules can be compared)."""
    m = Map(text)
    n = m.dim(_OUT)
    pre = [str(int(c)) for c in prefix]
    if len(pre) + n > ndim:
        raise ValueError(f"schedule with {n} dimensions does not fit {ndim} after {pre}")
    outs = [f"o{i}" for i in range(n)]
    dims = pre + outs + ["0"] * (ndim - len(pre) - n)
    emb = Map(f"{{ [{', '.join(outs)}] -> [{', '.join(dims)}] }}").align_params(m.get_space())
    return str(m.apply_range(emb))


def with_constants(text: str, fixed: Mapping[int, int]) -> str:
    """Schedule map ``text`` with each output dimension ``i`` of ``fixed`` the constant
    ``fixed[i]`` (a nest moved to another position, or after other statements of a loop)."""
    m = Map(text)
    for i, v in sorted(fixed.items()):
        m = m.project_out(_OUT, i, 1).insert_dims(_OUT, i, 1).fix_val(_OUT, i, int(v))
    return m.to_str()


@functools.lru_cache(maxsize=4096)
def map_ndim(text: str) -> int:
    """Number of output dimensions of the map ``text``."""
    return Map(text).dim(_OUT)


def schedule_from_text(kernel: Kernel, stmt: Statement, text: str) -> Map:
    """A proposed schedule text for ``stmt``, restricted to its domain (sizes as bound)."""
    m = _PIECEWISE.get(text)
    if m is not None:  # printed by piecewise_schedule a moment ago
        return _with_context(m, kernel).intersect_domain(domain(kernel, stmt))
    return _schedule_on(kernel.sizes, kernel.bindings, text, stmt.domain)


@functools.lru_cache(maxsize=4096)
def _schedule_on(sizes, bindings, text: str, dom: str) -> Map:
    """The map ``text`` (a schedule or an access) with sizes fixed, on the domain ``dom``."""
    ctx = _context(sizes, bindings)
    m = Map(text).align_params(ctx.get_space()).intersect_params(ctx)
    return m.intersect_domain(_domain(sizes, bindings, dom))


@functools.lru_cache(maxsize=4096)
def placed_schedule(text: str, name: str, first: int) -> str:
    """Schedule map ``text`` with its input tuple named ``name`` and output dimension 0 (the
    top-level position of the statement's nest) replaced by the constant ``first``."""
    m = Map(text).set_tuple_name(_IN, name).project_out(_OUT, 0, 1)
    return _printed(_PLACED, m.insert_dims(_OUT, 0, 1).fix_val(_OUT, 0, first))


# Maps whose text was just printed here and that the checks read back (parsing costs isl time):
# placed schedules (read by piecewise_schedule) and piecewise ones (read by check_schedule).
# Only the dependence checks read them, never the AST generator.
_PLACED: dict[str, Map] = {}


_PIECEWISE: dict[str, Map] = {}


def _printed(kept: dict[str, Map], m: Map) -> str:
    text = m.to_str()
    if len(kept) >= 4096:
        kept.clear()
    kept[text] = m
    return text


def piecewise_schedule(pieces: Iterable[tuple[Set, str]]) -> str:
    """One schedule map text from the (domain piece, schedule text) pairs of one statement."""
    out = None
    for dom, text in pieces:
        m = _PLACED.get(text)
        m = (Map(text) if m is None else m).align_params(dom.get_space())
        m = m.intersect_domain(dom.align_params(m.get_space()))
        out = m if out is None else out.union(m)
    if out is None:
        raise ValueError("a piecewise schedule needs at least one piece")
    return _printed(_PIECEWISE, out.coalesce())


@functools.lru_cache(maxsize=4096)
def fuse_dims(text: str, outer: str, inner: str, extent: int, fused: str) -> str:
    """A set text, or a map text's domain, re-indexed: the dimensions ``outer`` and ``inner``
    (``0 <= inner < extent`` on every point) become one dimension ``fused = extent*outer +
    inner`` at the place of ``outer`` (loop coalescing; the points themselves are unchanged)."""
    is_map = "->" in text.split("{", 1)[1]
    obj = Map(text) if is_map else Set(text)
    dims = names(obj, "in" if is_map else "set")
    name = tuple_name(obj, "in" if is_map else "set") or ""
    new = [fused if d == outer else d for d in dims if d != inner]
    fuse = Map(
        f"{{ {name}[{', '.join(dims)}] -> {name}[{', '.join(new)}] : "
        f"{fused} = {extent}*{outer} + {inner} and 0 <= {inner} < {extent} }}"
    ).align_params(obj.get_space())
    out = obj.apply_domain(fuse) if is_map else obj.apply(fuse)
    for i, d in enumerate(new):
        out = out.set_dim_name(_IN if is_map else _SET, i, d)
    return out.coalesce().to_str()


@functools.lru_cache(maxsize=4096)
def nested_schedule(text: str, first: int, group: int) -> str:
    """Schedule map ``text`` moved under a loop shared with other nests: output dimension 0
    becomes the constant ``first`` (the shared nest's position) and the constant ``group``
    is inserted after dimension 1 (the shared loop), so that the nests shared under it run in
    ``group`` order at each of its iterations (one more output dimension)."""
    m = Map(text).project_out(_OUT, 0, 1).insert_dims(_OUT, 0, 1).fix_val(_OUT, 0, first)
    return m.insert_dims(_OUT, 2, 1).fix_val(_OUT, 2, group).to_str()


@functools.lru_cache(maxsize=4096)
def row_block_schedule(text: str, first: int, row: str, tile: int, group: int) -> str:
    """Schedule map ``text`` (``S[i..] -> [d..]``) under a loop over blocks of ``tile`` values
    of the iterator ``row``: ``S[i..] -> [first, floor(row/tile), group, d..]`` (three output
    dimensions more), so that the nests given the same ``first`` run block by block, in
    ``group`` order within each block, each in its own order inside."""
    m = Map(text)
    dims, name = names(m, "in"), tuple_name(m, "in") or ""
    block = row if tile == 1 else f"floor({row}/{tile})"
    pre = Map(f"{{ {name}[{', '.join(dims)}] -> [{int(first)}, {block}, {int(group)}] }}")
    return pre.align_params(m.get_space()).flat_range_product(m).to_str()


@functools.lru_cache(maxsize=4096)
def shared_schedule(text: str, first: int, prefix: tuple[str, ...], group: int) -> str:
    """Schedule map ``text`` (``S[i..] -> [d..]``) under loops shared with other nests:
    ``S[i..] -> [first, e.., group, d..]``, ``prefix`` the affine expressions ``e`` of the shared
    loops in the statement's iterators (``n``, ``floor(p/8)``), so that the nests given the same
    ``first`` and prefix values run in ``group`` order at each of their iterations."""
    m = Map(text)
    dims, name = names(m, "in"), tuple_name(m, "in") or ""
    pre = Map(
        f"{{ {name}[{', '.join(dims)}] -> [{int(first)}, {', '.join((*prefix, str(int(group))))}] }}"
    )
    return pre.align_params(m.get_space()).flat_range_product(m).to_str()


def dim_iterator(kernel: Kernel, s: Statement, i: int) -> str | None:
    """The iterator of ``s`` whose value schedule output dimension ``i`` is on every point of
    its domain (None: no iterator is)."""
    m = schedule(kernel, s)
    for j, v in enumerate(names(m, "in")):
        eq = m.copy().equate(_IN, j, _OUT, i)
        if eq.is_equal(m):
            return v
    return None
