"""Conv -> conv fusion tile by tile: two contraction nests of one image (batch 1), the second
multiplying the first's output, computed block by block of output rows under one shared loop,
the intermediate's block in a per-thread scratch buffer of ``B`` rows. The image-by-image
fusion of several images is ``transform/fuse_contractions.py``; this is its batch-1 case.

Before (a 3x3 conv feeding a 1x1 conv, one image; ``T`` a scratch tensor of P rows)::

    for k: for p: for q: T[0, k, p, q] = relu(sum_{c,r,s} W1[..] * X[0, c, p+r-1, q+s-1] + b1[k])
    for k: for p: for q: O[0, k, p, q] = sum_c W2[k, c] * T[0, c, p, q]

After (``B`` rows at a time; ``T`` holds one block of rows, one copy per thread)::

    for pb in range(ceil(P / B)):               (the parallel loop: blocks over the threads)
        brgemm calls of nest 0 writing rows [B*pb, B*pb + B) of T, at T[0, :, 0:B, :]
        brgemm calls of nest 1 reading them

A row block of the consumer reads exactly the producer's rows of the same block when the
consumer is a 1x1 conv (3x3 -> 1x1, 1x1 -> 1x1: no halo). A 3x3 consumer (1x1 -> 3x3) reads
``(R-1)/2`` rows of the next block too: the shared loop would reverse that dependence, and
:func:`legality` refuses it, naming it (recomputing the halo rows is not implemented).

* :func:`legality` (step 3): every statement of both nests writes rows of an image (index 2 of
  its target is one of its iterators); the schedules with the row loop outermost (one row per
  block, the producer's row before the consumer's) reverse no dependence of the kernel
  (``analysis/deps.check_schedule``), and with threads the row loop carries none. Legal at one
  row per block means legal at any ``B``: ``floor(row/B)`` keeps every producer-to-consumer
  dependence's order (rows ``<=``), and inside one block each nest keeps its own order.
* :func:`plan` (step 5): each contraction's ranked plan with a tile loop of ``B`` rows put
  first (its calls' blocks refitted so that none crosses a block boundary), costed by the cost
  model (``optimize/search.cost_of``) for every candidate ``B``, against the intermediate's
  traffic: unfused, all of it written and read again where its whole size fits; fused, a block
  per thread where that fits. The cheapest ``B`` is kept when it beats the unfused pair and the
  whole intermediate leaves the cores' own caches (lives in a shared cache or memory): one a
  core's L2 holds whole gained nothing measurable from a block in L1 (``benchmarks/fusion.py``).
* :func:`compact` (step 5, after lowering): the scratch intermediate shrinks to ``B`` rows per
  thread; the calls' origins on it subtract the block's first row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..analysis.reuse import fmt_bytes
from ..ir import poly
from ..ir.nodes import Int, IntOp, Kernel, Load, Statement, Var, affine
from ..target import Target

# candidate numbers of rows per block (with the ones that share the rows out over the threads)
ROW_BLOCKS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


def row_of(s: Statement, sizes=None) -> tuple[str, int] | None:
    """(iterator, values per row) giving the row (index 2) of the tensor ``s`` writes:
    ``T[.., p + c, ..]`` -> ``(p, 1)``; a coalesced pixel iterator ``T[.., pq // Q, pq % Q]``
    -> ``(pq, Q)``; None otherwise (not an image, or a row of several iterators)."""
    index = s.target.index
    if len(index) < 4:
        return None
    e = index[2]
    if (
        isinstance(e, IntOp)
        and e.op == "//"
        and isinstance(e.a, Var)
        and isinstance(e.b, Int)
        and e.b.value > 0
    ):
        return e.a.name, e.b.value
    aff = affine(e, sizes or {})
    if aff is None or len(aff[0]) != 1:
        return None
    ((v, coef),) = aff[0].items()
    return (v, 1) if coef == 1 and v in s.iterators else None


# ---------------------------------------------------------------- legality (step 3)


def row_schedules(kernel: Kernel, first, second, tile: int = 1) -> dict[str, str] | str:
    """Every statement's schedule with the pair under one loop over blocks of ``tile`` rows
    (the others padded to as many dimensions), or why there is no such loop."""
    rows = {}
    for s in (*first, *second):
        r = row_of(s, kernel.size_values)
        if r is None or r[1] != 1:
            return f"{s.name} writes no row of an image ({s.target}: index 2 is not an iterator)"
        rows[s.name] = r[0]
    pos = poly.top_position(kernel, first[0])
    out = {
        s.name: poly.row_block_schedule(s.schedule, pos, rows[s.name], tile, g)
        for g, nest in enumerate((first, second))
        for s in nest
    }
    ndim = max(poly.map_ndim(t) for t in out.values())
    return {s.name: poly.pad_schedule(out.get(s.name, s.schedule), ndim) for s in kernel.statements}


def legality(kernel: Kernel, first, second, threads: int = 1) -> str | None:
    """None when the two nests may run block by block of rows (module doc), else why not:
    a statement writing no image rows, the dependence the row loop would reverse (named by
    ``check_schedule``), or one it carries (threads would race)."""
    from ..analysis.deps import check_schedule, parallel_dims
    from ..errors import DependenceError

    scheds = row_schedules(kernel, first, second)
    if isinstance(scheds, str):
        return scheds
    try:
        check_schedule(kernel, scheds)
    except DependenceError as e:
        return f"{e} (the consumer reads rows of the next block: a halo, not recomputed)"
    if threads > 1:
        names = {s.name for s in (*first, *second)}
        pair = replace(kernel, statements=tuple(s for s in kernel.statements if s.name in names))
        if 1 not in parallel_dims(pair, {n: scheds[n] for n in names}):
            return "the row loop carries a dependence (its blocks cannot run in parallel)"
    return None


# ---------------------------------------------------------------- the row block (step 5)


@dataclass(frozen=True, kw_only=True)
class Tiling:
    """The row-block fusion step 5 chose for a group."""

    rows: int  # B: output rows per block
    plans: tuple[tuple[int, tuple], ...]  # (index in the plans, (contraction, plan, n_par, cost))
    fixes: tuple[tuple[str, tuple[str, int]], ...]  # contraction -> (row iterator, its tile)
    shape: tuple[int, ...] | None  # the scratch intermediate's shape per thread (None: whole)


def refit(c, bp, v: str, unit: int, rows: int):
    """``bp`` with a tile loop of ``rows`` rows (``rows * unit`` values of ``v``) first and the
    innermost step over ``v`` the largest divisor of the tile (and of ``v``'s first value)
    not above the ranked one, so that no call crosses a block; None when ``v``'s first value
    is not a row's first."""
    tile = rows * unit
    lo = c.lo(v)
    if lo % unit:
        return None
    step = bp.block(v) or 1
    base = math.gcd(tile, lo)
    d = max(x for x in range(1, min(step, base) + 1) if base % x == 0)
    last = max(i for i, (u, _) in enumerate(bp.loops) if u == v)
    rest = [(u, d if u == v else b) for i, (u, b) in enumerate(bp.loops) if u != v or i == last]
    # (a point loop over ``v`` stays even when it steps by the whole tile: the tile loop is
    # then ``floor(v/tile)``, the block's number, as in every other statement of the group)
    return replace(
        bp,
        bm=d if v == c.m else bp.bm,
        bn=d if v == c.n else bp.bn,
        loops=((v, tile), *rest),
    )


def _cost(nest_k: Kernel, c, bp, threads: int, n_par: int, target: Target) -> float:
    """The cost model's units for contraction ``c`` lowered by ``bp`` (one-trip loops left out,
    ``n_par`` outermost loops parallel)."""
    from ..optimize.plan import call_of
    from ..optimize.search import cost_of

    loops = tuple(
        (u, b)
        for i, (u, b) in enumerate(bp.loops)
        if b < c.extent(u) and (u, b) not in bp.loops[:i]  # a one-trip point loop under its tile
    )
    kc = (bp.block(c.k) or c.extent(c.k)) if c.k else None
    looped = next((u for u in bp.order if u in c.batch), None)
    call = call_of(
        c,
        bm=bp.bm,
        bn=bp.bn,
        bk=bp.bk,
        kc=kc,
        looped=looped,
        chunk=bp.block(looped) if looped else 0,
        target=target,
        ab_dtype=nest_k.arg(c.a).dtype,
    )
    n_par = min(n_par, len(loops))
    # (the working sets of a full block: a cell's rows may not start on one)
    return cost_of(
        nest_k,
        c.stmt,
        loops,
        target=target,
        threads=threads,
        n_parallel=n_par,
        call=call,
        full=True,
    ).total


def candidates(P: int, threads: int) -> list[int]:
    """Rows per block to try: a few small numbers and those sharing the rows evenly over the
    threads, each leaving two blocks at least and one per thread."""
    share = {math.ceil(P / (threads * j)) for j in (1, 2, 3, 4)}
    return sorted(b for b in {*ROW_BLOCKS, *share} if 1 <= b <= P // 2 and -(-P // b) >= threads)


def compacted(kernel: Kernel, c, tensor: str, shape: tuple[int, ...]):
    """Contraction ``c`` with its offsets into ``tensor`` linearised on ``shape`` (the scratch
    of one row block), the block's first row still to subtract (:func:`compact`)."""
    from ..analysis.contraction import factors, linearize

    small = replace(
        kernel,
        temps=tuple(
            replace(t, shape=tuple(Int(value=d) for d in shape)) if t.name == tensor else t
            for t in kernel.temps
        ),
    )
    red = kernel.statement(c.stmt)
    loads = {"C": [red.target], "A": [], "B": []}
    for f in factors(red.expr):
        if isinstance(f, Load):
            for role, t in (("A", c.a), ("B", c.b)):
                if f.tensor == t:
                    loads[role].append(f)
    lin = dict(c.lin)
    for role, t in (("C", c.c), ("A", c.a), ("B", c.b)):
        if t == tensor and loads[role]:
            new = linearize(small, loads[role][0])
            if new is None:
                return None
            lin[role] = new
    return replace(c, lin=tuple(lin.items()))


def plan(
    kernel: Kernel,
    group,
    inside: list[int],
    plans: list,
    nests: dict,
    target: Target,
    threads: int,
    private: bool,
) -> tuple[Tiling | None, str, float, float]:
    """(the tiling, or None when it does not pay or cannot be made; why; predicted fused
    cost; predicted unfused cost) of a rows group (module doc: step 5)."""
    tensor = group.tensor
    shape = kernel.shape_of(tensor)
    P = shape[2]
    rows_of = {}
    for i in inside:
        c, bp, _, _ = plans[i]
        r = row_of(kernel.statement(c.stmt), kernel.size_values)
        if r is None or r[0] not in bp.order:
            return None, f"{tensor}: {c.stmt}'s calls do not step over its output rows", 0.0, 0.0
        rows_of[i] = r
    whole = kernel.nbytes(tensor)
    share = whole / threads
    level = target.fit(int(share), threads)
    if not group.forced and level is not None and not level.shared:
        # (below: the measured reason; no block is costed, which saves compile time)
        why = f"rows: {tensor} {fmt_bytes(whole)} between the nests ({_where(level)}): fits a "
        why += "core's own cache whole, no block of rows costed"
        return None, why, 0.0, 0.0
    unfused = sum(
        _cost(nests[i], plans[i][0], plans[i][1], threads, plans[i][2], target) for i in inside
    )
    compact = (
        private
        and shape[0] == 1
        and not any(t == tensor for i in inside for t, _ in plans[i][0].inputs)
    )
    par = 1 if threads > 1 else 0
    best = None
    for B in candidates(P, threads):
        new, cost = [], 0.0
        for i in inside:
            c, bp, _, _ = plans[i]
            v, unit = rows_of[i]
            fit = refit(c, bp, v, unit, B)
            if fit is None:
                break
            cost += _cost(nests[i], c, fit, threads, par, target)
            new.append((i, fit))
        else:
            block = whole * B // P
            at = target.fit(block, threads)
            saved = (2 if compact else 1) * share * (target.byte_cost(level) - target.byte_cost(at))
            fused = cost - saved
            if best is None or fused < best[0]:
                best = (fused, B, new, at, saved)
    if best is None:
        why = f"{tensor}: no block of rows fits every contraction's calls"
        return None, why, 0.0, unfused
    fused, B, new, at, saved = best
    where = (
        f"{tensor} {fmt_bytes(whole)} between the nests ({_where(level)}), "
        f"a block of {B} of {P} rows {fmt_bytes(whole * B // P)} fused ({_where(at)}"
        f"{', one copy per thread' if compact else ', in place'}); no halo (no recompute)"
    )
    costs = f"predicted {fused:.3g} fused vs {unfused:.3g} unfused"
    forced = group.forced
    if not forced and saved <= 0:
        return None, f"rows: {where}: no cache level saved; {costs}", fused, unfused
    if not forced and level is not None and not level.shared:
        # measured (benchmarks/fusion.py, batch 1): an intermediate that a core's own caches
        # hold whole gains nothing from a block in a smaller one; the smaller calls and the
        # weights read again per block cost more (0.91-1.02x)
        why = f"rows: {where}: fits a core's own cache whole; {costs}"
        return None, why, fused, unfused
    if not forced and fused >= unfused:
        return None, f"rows: {where}: {costs}", fused, unfused
    from ..analysis.deps import check_schedule
    from ..optimize.plan import config_ok
    from ..optimize.search import legal_order

    out, fixes = [], []
    cshape = (1, shape[1], B, *shape[3:]) if compact else None
    for i, fit in new:
        c = plans[i][0]
        if not config_ok(c, fit) or not legal_order(nests[i], c.stmt, fit.loops, check_schedule):
            return None, f"{tensor}: {c.stmt} tiled by {B} rows breaks its nest", fused, unfused
        if cshape is not None:
            c = compacted(kernel, c, tensor, cshape)
            if c is None:
                return None, f"{tensor}: {plans[i][0].stmt} not affine on a block", fused, unfused
        out.append((i, (c, fit, par, plans[i][3])))
        v, unit = rows_of[i]
        fixes.append((c.stmt, (v, B * unit)))
    pays = fused < unfused and saved > 0 and (level is None or level.shared)
    note = " (forced: fuse='always')" if forced and not pays else ""
    tiling = Tiling(rows=B, plans=tuple(out), fixes=tuple(fixes), shape=cshape)
    return tiling, f"rows: {where}: {costs}{note}", fused, unfused


def _where(c) -> str:
    return f"L{c.level}" if c is not None else "memory"


# ---------------------------------------------------------------- the scratch block (step 5)


def compact(kernel: Kernel, tensor: str, tiling: Tiling, moved: frozenset[str]) -> Kernel:
    """``tensor`` (a scratch intermediate touched by the ``moved`` calls only) holding one block
    of rows, one copy per thread: its shape :attr:`Tiling.shape`, and each call's origin on
    it less the first row of its block (``coef * tile * (v // tile)``, the row iterator ``v``
    stepping by ``tile`` values per block)."""
    assert tiling.shape is not None
    fixes = dict(tiling.fixes)
    coefs = {c.stmt: c for _, (c, *_) in tiling.plans}
    out = []
    for s in kernel.statements:
        base = s.name.rsplit("_mk", 1)[0]
        mk = s.micro
        if s.name not in moved or mk is None or base not in fixes:
            out.append(s)
            continue
        v, tile = fixes[base]
        c = coefs[base]

        def less(origin, role, c=c, v=v, tile=tile):
            coef = c.linear(role).coef(v)
            if not coef:
                return origin
            block = IntOp(op="//", a=Var(name=v), b=Int(value=tile))
            return IntOp(op="-", a=origin, b=IntOp(op="*", a=block, b=Int(value=coef * tile)))

        mk = replace(
            mk,
            a_origin=less(mk.a_origin, "A") if mk.a == tensor else mk.a_origin,
            b_origin=less(mk.b_origin, "B") if mk.b == tensor else mk.b_origin,
            c_origin=less(mk.c_origin, "C") if mk.c == tensor else mk.c_origin,
        )
        out.append(replace(s, micro=mk))
    temps = tuple(
        replace(t, shape=tuple(Int(value=d) for d in tiling.shape), per_thread=True)
        if t.name == tensor
        else t
        for t in kernel.temps
    )
    return replace(kernel, statements=tuple(out), temps=temps)
