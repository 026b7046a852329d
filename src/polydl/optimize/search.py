"""The variant space of one statement's outer loops, ranked by the data-movement cost model.

A variant is a tiled loop nest around the microkernel call: ``loops`` ((iterator, block) pairs,
outermost first, as in ``analysis/reuse.py``), the number of its outermost loops that run in
parallel, its working sets, its predicted :class:`~polydl.optimize.cost.Cost` and the isl
schedule map that realises it (tile loops as ``floor(i/b)`` dimensions, then the statement's
iterators as point dimensions, so that isl's AST generator scans one call per point).

The space (:func:`rank`):

* ``micro``: the block of each iterator covered by one microkernel call (absent: 1). Every
  iterator the call does not cover whole gets a *point loop* stepping by its block.
* ``tileable``: candidate tile sizes per iterator; a tile loop steps by a tile over the point
  loop of the same iterator. Candidates that are not multiples of the microkernel block, or not
  smaller than the extent, are dropped; divisors and non-divisors of the extent are both fine.
* A nest is an order of the tile loops (the outer band) followed by an order of the point loops
  (the inner band). Orders equal after merging a tile loop with the point loop of the same
  iterator right under it are the same nest and kept once.

Search: (1) every inner-band order without tiles is costed, and the best few legal ones are kept
(pruning by the cost model); (2) every tile assignment times every outer-band order over those
inner orders is costed, each with its best choice of parallel loops; (3) variants are checked for
legality in order of cost (``analysis/deps.check_schedule`` with reductions relaxed) until
``top`` legal ones are found; every kept variant was checked, and an order found illegal is not
retried with other tile sizes (a possible miss, never an illegal variant). Parallel loops are the outermost loops over iterators that carry
no dependence at all (:func:`free_iterators`: every self-dependence of the statement,
reductions included, keeps the iterator equal, so no loop over it carries one at any depth). As
many of them are collapsed as the cost model's load balance over ``threads`` cores prefers.

Legality is asked of ``check_schedule``. In a kernel of several statements (an init, the
reduction, an epilogue) the ranked statement's tiled nest is checked in sequence with the
others' nests in source order (a constant first dimension), the others keeping their schedules:
a variant is kept only if that distributed program is legal. ``Variant.schedule`` is the
statement's own map; :func:`schedule_text` gives it a prefix and padding for the combined
schedule the code generator needs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..analysis.reuse import Level, analyzer, fmt_bytes
from ..errors import DependenceError
from ..ir import nodes, poly
from ..ir.poly import params_text
from ..target import Target, resolve
from .cost import Call, Cost, evaluate

Loops = tuple[tuple[str, int], ...]
Checker = Callable[..., object]

INNER_KEEP = 4  # inner-band orders kept after the first stage
MAX_INNER_PERMUTED = 5  # at most this many innermost point loops are permuted
MAX_EVALS = 2500  # budget of costed nests in the second stage


@dataclass(frozen=True, kw_only=True)
class Variant:
    """One legal tiled nest of a statement, with what the cost model predicts for it."""

    stmt: str
    loops: Loops  # (iterator, block), outermost first; the microkernel call is below them
    tiles: tuple[tuple[str, int], ...]  # tile size of each tiled iterator
    micro: tuple[tuple[str, int], ...]  # block of one microkernel call per iterator
    parallel: tuple[str, ...]  # iterators of the parallel loops (the outermost ones)
    n_parallel: int  # how many outermost loops run in parallel (collapsed)
    working_sets: tuple[Level, ...]
    cost: Cost
    schedule: str  # isl map text of the statement's schedule
    disorder: int = 0  # inversions of the loop order against the source's loop order

    @property
    def order(self) -> str:
        """``k/64 j/16 i/6 | micro``."""
        return _order(self.loops)


def _label(v: str, b: int) -> str:
    return v if b == 1 else f"{v}/{b}"


# ---------------------------------------------------------------- schedules


def schedule_text(
    kernel: nodes.Kernel,
    stmt: nodes.Statement | str,
    loops: Sequence[tuple[str, int]],
    *,
    prefix: Sequence[int] = (),
    ndim: int | None = None,
    reverse: Sequence[int] = (),
) -> str:
    """The isl schedule map of a tiled nest: ``{ S[i..] -> [prefix, loop dims, i.., 0..] }``.

    A loop ``(v, b)`` is the dimension ``floor(v/b)`` (``v`` when ``b`` is 1); the statement's
    iterators follow as point dimensions; zeros pad the map to ``ndim`` output dimensions so
    that every statement's schedule has the same number. ``reverse`` negates the dimensions of
    the given loop depths (used to test that a loop carries no dependence).
    """
    s = kernel.statement(stmt) if isinstance(stmt, str) else stmt
    dims = [str(int(c)) for c in prefix]
    for depth, (v, b) in enumerate(loops):
        d = v if b == 1 else f"floor({v}/{b})"
        dims.append(f"-({d})" if depth in reverse else d)
    dims.extend(s.iterators)
    if ndim is not None:
        if ndim < len(dims):
            raise ValueError(f"schedule of {s.name} needs {len(dims)} dimensions, ndim={ndim}")
        dims.extend(["0"] * (ndim - len(dims)))
    return (
        f"{params_text(kernel.sizes)} -> {{ {s.name}[{', '.join(s.iterators)}] -> "
        f"[{', '.join(dims)}] }}"
    )


def _default_check() -> Checker:
    from ..analysis import deps  # written alongside; imported when first needed

    return deps.check_schedule


def _legal(check: Checker, kernel: nodes.Kernel, stmt: str, text: str, relax: bool) -> bool:
    """Whether ``check`` accepts ``text`` as the schedule of ``stmt``.

    In a kernel of several statements, each statement's nest is put in sequence in source
    order (a constant first dimension; the others keep their own schedules) and every schedule
    is padded to a common number of dimensions.
    """
    if relax and check is _default_check() and _only_reduction(kernel):
        return True
    if len(kernel.statements) == 1:
        mapping = {stmt: text}
    else:
        texts = {s.name: s.schedule for s in kernel.statements} | {stmt: text}
        ndim = 1 + max(poly.map_ndim(t) for t in texts.values())
        mapping = {
            s.name: poly.embed_schedule(texts[s.name], (i,), ndim)
            for i, s in enumerate(kernel.statements)
        }
    try:
        check(kernel, mapping, relax_reductions=relax)
    except DependenceError:
        return False
    return True


def _only_reduction(kernel: nodes.Kernel) -> bool:
    """Whether ``kernel`` is one reduction statement writing nothing but its reduced tensor:
    then every dependence is a reduction self-dependence, and with reductions relaxed any
    schedule of it is legal (what ``check_schedule`` would find, without computing them)."""
    from ..analysis import deps

    if len(kernel.statements) != 1:
        return False
    s = kernel.statements[0]
    return deps.reduction_tensor(s) == s.target.tensor


def free_iterators(kernel: nodes.Kernel, stmt: nodes.Statement | str) -> frozenset[str]:
    """Iterators of ``stmt`` that every self-dependence of ``stmt`` keeps equal, reduction
    dependences included: no loop over them (tile or point, at any depth of the statement's
    own nest) carries a dependence, so such loops may run in parallel."""
    from ..analysis import deps

    s = kernel.statement(stmt) if isinstance(stmt, str) else stmt
    rels = [
        d.relation_text
        for d in deps.dependences(kernel, memory=True).all
        if d.source == s.name and d.sink == s.name
    ]
    return frozenset(v for v in s.iterators if all(poly.keeps_equal(r, v) for r in rels))


# ---------------------------------------------------------------- the space


def _spread(values: list[int], n: int) -> list[int]:
    """``n`` of the sorted ``values``, evenly spread, keeping the smallest and the largest."""
    if n <= 0:
        return []
    if len(values) <= n:
        return values
    if n == 1:
        return values[-1:]
    idx = sorted({round(i * (len(values) - 1) / (n - 1)) for i in range(n)})
    return [values[i] for i in idx]


def candidate_tiles(extent: int, block: int, *, limit: int = 6) -> list[int]:
    """Tile sizes for an iterator of ``extent`` whose microkernel block is ``block``: multiples
    of ``block`` strictly between ``block`` and ``extent``, the divisors of the extent among
    them and non-divisors (powers of two times the block, even splits of the extent rounded up
    to the block), at most ``limit``, spread from small to large."""
    if block < 1 or extent <= block:
        return []
    mult = range(2 * block, extent, block)
    divisors = [b for b in mult if extent % b == 0]
    others = {block << s for s in range(1, extent.bit_length()) if (block << s) < extent}
    others |= {-(-extent // (parts * block)) * block for parts in (2, 3, 4)}
    others = {b for b in others if block < b < extent and b % block == 0} - set(divisors)
    n_div = min(len(divisors), max(limit - len(others), (limit + 1) // 2))
    picked = _spread(divisors, n_div) + _spread(sorted(others), limit - n_div)
    return sorted(picked)


def _merge(loops: Loops) -> Loops:
    """Drop a loop directly above a loop of the same iterator with a block dividing it."""
    out: list[tuple[str, int]] = []
    for v, b in loops:
        if out and out[-1][0] == v and out[-1][1] % b == 0:
            out.pop()
        out.append((v, b))
    return tuple(out)


def _inner_orders(points: list[tuple[str, int]]) -> list[Loops]:
    keep, perm = points[:-MAX_INNER_PERMUTED], points[-MAX_INNER_PERMUTED:]
    if len(points) <= MAX_INNER_PERMUTED:
        keep, perm = [], points
    return [tuple(keep) + p for p in itertools.permutations(perm)]


class _Ranker:
    def __init__(
        self, kernel, stmt: str, target: Target, threads: int, check: Checker, call: Call | None
    ):
        self.kernel, self.stmt, self.target, self.threads = kernel, stmt, target, threads
        self.check, self.call = check, call
        self.a = analyzer(kernel, stmt)
        self.whole = self.a.whole()
        self._free: frozenset[str] | None = None
        self._illegal: set[tuple] = set()
        self._legal: dict[str, bool] = {}

    def free(self, v: str) -> bool:
        """Whether iterator ``v`` carries no dependence (every dependence keeps ``v`` equal)."""
        if self._free is None:
            self._free = free_iterators(self.kernel, self.stmt)
        return v in self._free

    def best(self, loops: Loops) -> tuple[Cost, int, tuple[Level, ...]]:
        """The cost of ``loops`` with its best number of parallel outermost loops."""
        levels = self.a.levels(loops, self.target, self.threads)
        tgt, whole, n, call = self.target, self.whole, self.threads, self.call
        c = evaluate(levels, whole, tgt, detail=False, call=call)
        best, best_p = (c.total, c.data), 0
        if n > 1:
            for p in range(1, len(loops) + 1):
                if not self.free(loops[p - 1][0]):
                    break
                c = evaluate(levels, whole, tgt, n_parallel=p, threads=n, detail=False, call=call)
                if _cheaper(c, best):
                    best, best_p = (c.total, c.data), p
                if c.threads == n and c.balance == 1.0:
                    break  # collapsing more loops cannot balance better
        cost = evaluate(levels, whole, tgt, n_parallel=best_p, threads=n, call=call)
        return cost, best_p, levels

    def legal(self, loops: Loops) -> bool:
        sig = tuple((v, b == 1) for v, b in loops)
        if sig in self._illegal:
            return False
        text = schedule_text(self.kernel, self.stmt, loops)
        if text not in self._legal:
            self._legal[text] = _legal(self.check, self.kernel, self.stmt, text, True)
            if not self._legal[text]:
                self._illegal.add(sig)
        return self._legal[text]


def rank(
    kernel: nodes.Kernel,
    stmt: nodes.Statement | str,
    *,
    tileable: Mapping[str, Sequence[int]],
    micro: Mapping[str, int] | None = None,
    target: Target | str | None = None,
    threads: int | None = None,
    top: int | None = 20,
    max_tiles: int = 4,
    check: Checker | None = None,
    call: Call | None = None,
) -> tuple[Variant, ...]:
    """The ``top`` best legal variants of ``stmt`` (all legal ones if ``top`` is None),
    cheapest first. See the module docstring for the space and the search.

    ``threads`` defaults to the target's cores; ``max_tiles`` bounds the tile candidates kept
    per iterator; ``check`` replaces ``analysis.deps.check_schedule`` (same signature);
    ``call`` is the microkernel call of the innermost block (:func:`~polydl.optimize.cost.
    call_model`), which adds its in-core time to the cost.
    """
    name = stmt if isinstance(stmt, str) else stmt.name
    tgt = resolve(target)
    nthreads = tgt.cores if threads is None else max(1, int(threads))
    r = _Ranker(kernel, name, tgt, nthreads, check or _default_check(), call)
    a = r.a
    micro = dict(micro or {})
    for v in [*micro, *tileable]:
        if v not in a.iterators:
            raise ValueError(f"{v!r} is not an iterator of {name} {a.iterators}")
    span = {}
    for v in a.iterators:
        ext = None if a.empty else a.extent(v, {})
        span[v] = 0 if ext is None else ext[1] - ext[0] + 1
    mblock = {v: max(1, int(micro.get(v, 1))) for v in a.iterators}
    points = [(v, mblock[v]) for v in a.iterators if mblock[v] < span[v]]
    pointed = {v for v, _ in points}
    cands: dict[str, list[int]] = {}
    for v, bs in tileable.items():
        ok = sorted({int(b) for b in bs if mblock[v] < b < span[v] and b % mblock[v] == 0})
        if v in pointed and ok:
            cands[v] = _spread(ok, max_tiles)

    # stage 1: inner-band orders without tiles; keep the cheapest legal ones
    scored = sorted(
        ((_cost_key(r.best(o)[0]), i, o) for i, o in enumerate(_inner_orders(points))),
        key=lambda x: (x[0], x[1]),
    )
    inner: list[Loops] = []
    for _, _, o in scored:
        if r.legal(o):
            inner.append(o)
            if len(inner) == INNER_KEEP:
                break
    if not inner:
        return ()

    # stage 2: tile assignments x outer orders x kept inner orders, within a budget
    tiled = sorted(cands)
    while True:
        n_assign = math.prod(len(cands[v]) + 1 for v in tiled)
        n_outer = math.factorial(len(tiled))
        if n_assign * n_outer * len(inner) <= MAX_EVALS or all(len(cands[v]) <= 1 for v in tiled):
            break
        widest = max(tiled, key=lambda v: (len(cands[v]), v))
        cands[widest] = _spread(cands[widest], len(cands[widest]) - 1)
    seen: dict[Loops, tuple] = {}
    for choice in itertools.product(*([None, *cands[v]] for v in tiled)):
        tile_loops = [(v, b) for v, b in zip(tiled, choice, strict=True) if b is not None]
        for outer in itertools.permutations(tile_loops):
            for o in inner:
                loops = _merge(tuple(outer) + o)
                if loops in seen:
                    continue
                c, p, levels = r.best(loops)
                tiles = tuple(sorted((v, b) for v, b in tile_loops if (v, b) in loops))
                seen[loops] = (_cost_key(c), len(seen), c, p, levels, tiles)

    # stage 3: legality in order of cost (ties: fewer loops, then the order's text)
    out: list[Variant] = []
    its = a.iterators
    ordered = sorted(
        seen.items(), key=lambda kv: (kv[1][0], len(kv[0]), disorder(kv[0], its), _order(kv[0]))
    )
    for loops, (_, _, c, p, levels, tiles) in ordered:
        if top is not None and len(out) >= top:
            break
        if not r.legal(loops):
            continue
        if c.threads != nthreads:  # place the levels for the cores actually used
            levels = a.levels(loops, tgt, c.threads)
        out.append(
            Variant(
                stmt=name,
                loops=loops,
                tiles=tiles,
                micro=tuple((v, mblock[v]) for v in a.iterators),
                parallel=tuple(v for v, _ in loops[:p]),
                n_parallel=p,
                working_sets=levels,
                cost=c,
                schedule=schedule_text(kernel, name, loops),
                disorder=disorder(loops, its),
            )
        )
    return tuple(sorted(out, key=_key))


def cost_of(
    kernel: nodes.Kernel,
    stmt: str,
    loops: Loops,
    *,
    target: Target,
    threads: int,
    n_parallel: int = 0,
    call: Call | None = None,
    full: bool = False,
) -> Cost:
    """The cost model's prediction for one given nest ``loops`` of ``stmt`` (outermost first,
    one-trip loops left out), its ``n_parallel`` outermost loops parallel: what :func:`rank`
    computes for each nest it visits, for a nest chosen elsewhere (the tuner's). ``full``:
    working sets of each loop's first full iteration (``analysis/reuse``), not of a partial
    first tile."""
    a = analyzer(kernel, stmt)
    levels = a.levels(loops, target, threads, full=full)
    return evaluate(
        levels, a.whole(), target, n_parallel=n_parallel, threads=threads, detail=False, call=call
    )


def _order(loops: Loops) -> str:
    return " ".join(_label(v, b) for v, b in loops) + " | micro"


def _cheaper(c: Cost, than: tuple[float, float]) -> bool:
    """Whether ``c`` is cheaper than ``(total, data)`` by more than rounding."""
    total, data = than
    if c.total < total * (1 - 1e-9):
        return True
    return c.total <= total * (1 + 1e-9) and c.data < data * (1 - 1e-9)


def _cost_key(c: Cost) -> tuple[float, float]:
    """Cheapest first; at equal cost, less data movement."""
    return (c.total, c.data)


def _key(v: Variant) -> tuple:
    """Cheapest first (:func:`_cost_key`); ties: fewer loops, then the order closest to the
    source's (the cost model sees no difference, so keep the programmer's locality), then the
    text."""
    return (*_cost_key(v.cost), len(v.loops), v.disorder, v.order, v.n_parallel)


def disorder(loops: Loops, iterators: Sequence[str]) -> int:
    """Pairs of loops that run in the opposite order to the source's iterators."""
    pos = {v: i for i, v in enumerate(iterators)}
    seq = [pos.get(v, len(pos)) for v, _ in loops]
    return sum(1 for i in range(len(seq)) for j in range(i + 1, len(seq)) if seq[i] > seq[j])


# ---------------------------------------------------------------- the table


def legal_order(
    kernel: nodes.Kernel, stmt: str, loops: Loops, check: Checker | None = None
) -> bool:
    """Whether the tiled nest ``loops`` around ``stmt`` breaks no dependence of ``kernel``
    (reduction self-dependences relaxed, as in ranking)."""
    text = schedule_text(kernel, stmt, loops)
    return _legal(check or _default_check(), kernel, stmt, text, True)


def ws_summary(v: Variant) -> str:
    """The largest working set each cache holds: ``L1:12K L2:400K mem:3M``."""
    by: dict[str, int] = {}
    for lc in v.cost.levels:
        by[lc.cache] = max(by.get(lc.cache, 0), lc.working_set)
    order = sorted(by, key=lambda n: (n == "mem", n))
    return " ".join(f"{n}:{fmt_bytes(by[n])}" for n in order)


def format_variants(variants: Sequence[Variant], top: int = 10) -> str:
    """The variants as a table, cheapest first (the table of ``k.show("variants")``)."""
    from ..schedule import format_table

    rows = sorted(variants, key=_key)[:top]
    return format_table(
        [
            (i + 1, v.loops, v.n_parallel, v.tiles, ws_summary(v), v.cost.total)
            for i, v in enumerate(rows)
        ]
    )


def format_levels(variant: Variant) -> str:
    """One variant's cost level by level: what each loop's iteration touches, where it fits,
    what it brings in from where, and what that costs (the data part; the first line adds the
    in-core time of the calls when the call is modelled)."""
    head = ("level", "trip", "working set", "fits", "brings", "from", "weight", "cost")
    body = [
        (
            lc.loop,
            str(lv.trip),
            fmt_bytes(lc.working_set),
            lc.cache,
            fmt_bytes(lc.bytes) if lc.bytes else "-",
            lc.source or "-",
            f"{lc.weight:g}" if lc.bytes else "-",
            f"{lc.cost:.4g}",
        )
        for lc, lv in zip(variant.cost.levels, variant.working_sets, strict=True)
    ]
    widths = [max(len(r[c]) for r in [head, *body]) for c in range(len(head))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [head, *body]
    ]
    c = variant.cost
    head_line = f"{variant.order}  (total {c.total:.4g}"
    head_line += f" = in-core {c.core:.4g} + data {c.data:.4g})" if c.core else ")"
    return "\n".join([head_line, *lines])
