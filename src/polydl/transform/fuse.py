"""Loop fusion of top-level nests: one pure pass, Kernel -> Kernel, legality apart from profit.

Before (two nests: the first writes ``T``, the second reads it)::

    for i: for j: T[i, j] = pd.exp(X[i, j] - m[i])       nest 0, S0
    for i: for j: Y[i, j] = T[i, j] * r[i]               nest 1, S1

After (fused at depth 2: the second nest's loops are the first one's)::

    for i: for j: { T[i, j] = pd.exp(X[i, j] - m[i]); Y[i, j] = T[i, j] * r[i] }

Nests are taken left to right; each one is offered to the nest before it (which may already be
the fusion of several). A pair fuses at depth ``d`` when both nests share their outer ``d``
loops among all their statements, the loops scan the same ranges, and

* :func:`legality`: no dependence is reversed by the fused schedule (``analysis/deps``'s
  ``check_schedule``: every pair of instances touching an element in the kernel keeps its
  order; the error names the dependence that would break);
* :func:`profit`: the working set the two nests share (what the second reads of what the first
  wrote or read) fits in a smaller cache of the target once fused, per iteration of the fused
  loops, than it does unfused, where all of it must survive from one nest to the next.

The deepest legal depth is tried first. Nests holding BRGEMM calls are left alone (their loops
are the optimiser's: ``transform/brgemm.py``); the elementwise statements after a contraction
fold into its calls instead (``analysis/contraction.py``). :func:`fuse_nests` returns the
kernel and one :class:`Candidate` per pair it considered, which ``show("fusion")`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..analysis.deps import check_schedule
from ..analysis.reuse import fmt_bytes
from ..errors import DependenceError
from ..ir import poly
from ..ir.nodes import DTYPE_BYTES, Kernel, Statement
from ..target import Target


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """One pair of nests offered for fusion, and the verdict."""

    first: tuple[str, ...]  # statements of the earlier nest (possibly a fusion already)
    second: tuple[str, ...]
    depth: int  # loops the fused nest would share (0: no common loops to share)
    fused: bool
    verdict: str  # "fused" | "illegal" | "unprofitable" | "not fusable"
    reason: str

    def line(self) -> str:
        a, b = "+".join(self.first), "+".join(self.second)
        at = f" at depth {self.depth}" if self.depth else ""
        return f"{a} | {b}: {self.verdict}{at}: {self.reason}"


# ---------------------------------------------------------------- the shape of a nest


def _dims(kernel: Kernel, s: Statement) -> list[tuple[int, int] | None]:
    """The range of every schedule dimension of ``s`` over its domain."""
    return [poly.schedule_dim_extent(kernel, s, i) for i in range(poly.schedule_ndim(kernel, s))]


def _constant(r: tuple[int, int] | None) -> int | None:
    return r[0] if r is not None and r[0] == r[1] else None


def spine(kernel: Kernel, stmts: list[Statement]) -> list[tuple[int, int]]:
    """The loops every statement of a nest shares, outermost first, as their ranges: level
    ``l`` is shared when every statement has a loop there over the same range and the same
    constant position (schedule dimension ``2l``) above it."""
    dims = [_dims(kernel, s) for s in stmts]
    out: list[tuple[int, int]] = []
    level = 1
    while True:
        loop, above = 2 * level - 1, 2 * level - 2
        if any(len(d) <= loop + 1 for d in dims):
            return out
        consts = {_constant(d[above]) for d in dims}
        ranges = {d[loop] for d in dims}
        if len(consts) != 1 or None in consts or len(ranges) != 1 or None in ranges:
            return out
        out.append(ranges.pop())
        level += 1


def fused_schedules(
    kernel: Kernel, first: list[Statement], second: list[Statement], depth: int
) -> dict[str, str]:
    """The schedules of ``second``'s statements inside ``first``'s outer ``depth`` loops, after
    everything ``first`` runs at that depth."""
    dims_a = [_dims(kernel, s) for s in first]
    after = max(_constant(d[2 * depth]) or 0 for d in dims_a) + 1
    fixed = {2 * lvl: _constant(dims_a[0][2 * lvl]) for lvl in range(depth)}
    out = {}
    for s in second:
        own = _constant(_dims(kernel, s)[2 * depth]) or 0
        out[s.name] = poly.with_constants(s.schedule, {**fixed, 2 * depth: after + own})
    return out


# ---------------------------------------------------------------- legality and profit


def legality(
    kernel: Kernel, first: list[Statement], second: list[Statement], depth: int
) -> str | None:
    """None when fusing at ``depth`` reverses no dependence, else the dependence it breaks."""
    try:
        check_schedule(kernel, fused_schedules(kernel, first, second, depth))
    except DependenceError as e:
        return str(e)
    return None


def _footprint_bytes(
    kernel: Kernel, stmts: list[Statement], fix: dict[str, tuple[int, int]], tensors
) -> int:
    """Bytes of ``tensors`` the statements touch with their outer iterators limited by ``fix``
    (statement name -> iterator -> range), by footprint extents."""
    total = 0
    for t in tensors:
        images = []
        for s in stmts:
            dom = poly.restrict(poly.domain(kernel, s), fix.get(s.name, {}))
            for ld in (s.target, *s.reads):
                if ld.tensor == t:
                    images.append(poly.image(poly.access(kernel, s, ld), dom))
        total += poly.footprint_size(images) * DTYPE_BYTES[kernel.arg(t).dtype]
    return total


def _outer(kernel: Kernel, s: Statement, depth: int) -> dict[str, tuple[int, int]]:
    """``s``'s iterators of its outer ``depth`` loops fixed at their first value."""
    out = {}
    for v in s.iterators[:depth]:
        r = poly.extent(poly.domain(kernel, s), v)
        if r is not None:
            out[v] = (r[0], r[0] + 1)
    return out


def profit(
    kernel: Kernel,
    first: list[Statement],
    second: list[Statement],
    depth: int,
    target: Target,
    threads: int = 1,
) -> tuple[bool, str]:
    """(whether fusing at ``depth`` pays, why): the shared working set unfused (all of it must
    live from the first nest to the second) against fused (one iteration of the fused loops),
    each placed in the smallest cache of ``target`` that holds it."""
    written = {s.target.tensor for s in first}
    touched = written | {ld.tensor for s in first for ld in s.reads}
    shared = sorted({ld.tensor for s in second for ld in (*s.reads, s.target)} & touched)
    if not shared:
        return False, "the nests share no tensor"
    whole = _footprint_bytes(kernel, second, {}, shared)
    stmts = [*first, *second]
    fix = {s.name: _outer(kernel, s, depth) for s in stmts}
    every = sorted({ld.tensor for s in stmts for ld in (s.target, *s.reads)})
    per_iter = _footprint_bytes(kernel, stmts, fix, every)
    unfused, fused = target.fit(whole, threads), target.fit(per_iter, threads)

    def where(c) -> str:
        return f"L{c.level}" if c is not None else "memory"

    levels = [c.level for c in target.caches]
    rank = {None: len(levels)} | {c: i for i, c in enumerate(target.caches)}
    what = f"shared {', '.join(shared)}: {fmt_bytes(whole)} unfused ({where(unfused)})"
    what += f", {fmt_bytes(per_iter)} per fused iteration ({where(fused)})"
    return rank[fused] < rank[unfused], what


# ---------------------------------------------------------------- the pass


def _nests(kernel: Kernel) -> list[list[Statement]] | None:
    by_pos: dict[int, list[Statement]] = {}
    for s in kernel.statements:
        pos = poly.top_position(kernel, s)
        if pos is None:
            return None
        by_pos.setdefault(pos, []).append(s)
    return [by_pos[p] for p in sorted(by_pos)]


def decide(
    kernel: Kernel,
    first: list[Statement],
    second: list[Statement],
    target: Target,
    *,
    threads: int = 1,
    reserved: frozenset[str] = frozenset(),
    force: bool = False,
) -> Candidate:
    """The verdict on fusing ``second`` into ``first`` (consecutive nests): not fusable (a
    contraction's nest, no common outer loop), illegal (:func:`legality` at every depth),
    unprofitable (:func:`profit`), or fused at the deepest legal depth."""
    names_a, names_b = tuple(s.name for s in first), tuple(s.name for s in second)

    def verdict(depth: int, fused: bool, what: str, reason: str) -> Candidate:
        return Candidate(
            first=names_a, second=names_b, depth=depth, fused=fused, verdict=what, reason=reason
        )

    if any(s.micro is not None or s.name in reserved for s in (*first, *second)):
        reason = "a contraction's nest (its loops are the optimiser's: BRGEMM calls)"
        return verdict(0, False, "not fusable", reason)
    sa, sb = spine(kernel, first), spine(kernel, second)
    depth = 0
    while depth < min(len(sa), len(sb)) and sa[depth] == sb[depth]:
        depth += 1
    if depth == 0:
        return verdict(0, False, "not fusable", "no outer loop over the same range")
    for d in range(depth, 0, -1):
        broken = legality(kernel, first, second, d)
        if broken is None:
            break
    else:
        return verdict(1, False, "illegal", broken)
    pays, why = profit(kernel, first, second, d, target, threads)
    if not (pays or force):
        return verdict(d, False, "unprofitable", why)
    return verdict(d, True, "fused", why)


def fuse_nests(
    kernel: Kernel,
    target: Target,
    *,
    threads: int = 1,
    reserved: frozenset[str] = frozenset(),
    force: bool = False,
) -> tuple[Kernel, tuple[Candidate, ...]]:
    """``kernel`` with consecutive nests fused where legal and profitable (``force``: where
    legal), and every candidate pair with its verdict (:func:`decide`). Nests holding a
    ``reserved`` statement (a contraction and what folds into its calls) or BRGEMM calls are
    not fused."""
    nests = _nests(kernel)
    if nests is None or len(nests) < 2:
        return kernel, ()
    report: list[Candidate] = []
    current = nests[0]
    for nxt in nests[1:]:
        c = decide(kernel, current, nxt, target, threads=threads, reserved=reserved, force=force)
        report.append(c)
        if not c.fused:
            current = nxt
            continue
        new = fused_schedules(kernel, current, nxt, c.depth)
        stmts = tuple(replace(s, schedule=new.get(s.name, s.schedule)) for s in kernel.statements)
        kernel = replace(kernel, statements=stmts)
        current = [kernel.statement(n) for n in (*c.first, *c.second)]
    return kernel, tuple(report)
