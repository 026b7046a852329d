"""Blocking plans for contractions: which BRGEMM blocks, which loop order, which loop in parallel.

:func:`candidates` enumerates the plans the optimiser may rank (block sizes that are multiples of
the vector width, divisors and non-divisors of the extents; loop orders of the band around the
call); :func:`default_plan` is the fallback rule when no ranking is asked for.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

from ..analysis.contraction import CALL_ROWS, Contraction
from ..errors import PolyDLError
from ..kernels import BrgemmConfig
from ..transform.brgemm import BlockPlan
from .cost import call_model

MAX_BK = 64
# reduction extents of one call offered when k is split (the multiples of bk that divide the k
# extent nearest to these, at least half of one): the A block (bm x kc) and the B block
# (kc x bn) of one call then stay in L2 while the loops around reuse them
KC_TARGETS = (256,)
# the whole k extent in one call only up to this (a longer one is always split): longer panels of strided rows (lda, ldb a
# multiple of 4 KiB is common) miss in L1 and the TLB in ways the cost model does not see;
# measured on Ice Lake (single core): 1024^3 and 2048^3 run 1.3-1.8x faster with kc = 256
# than whole, 512^3 about 5-10% faster, K = 576 the same. The default of a target whose
# ``kc_whole_max`` does not say otherwise (Zen 4: the other way round, target.KC_WHOLE)
KC_WHOLE_MAX = 256


def k_blocks(c: Contraction) -> list[int]:
    """Reduction blocks: divisors of the k extent, largest first, at most MAX_BK (or 1)."""
    if c.k is None:
        return [1]
    ext = c.extent(c.k)
    divs = [d for d in range(min(ext, MAX_BK), 0, -1) if ext % d == 0]
    return divs[:3]


def n_blocks(c: Contraction, lanes: int) -> list[int]:
    """Column blocks: the whole extent when small, else multiples of the vector width."""
    ext = c.extent(c.n)
    if ext <= 4 * lanes:
        return [ext]
    return sorted({min(ext, b) for b in (2 * lanes, 4 * lanes)}, reverse=True)


# coalesced rows (a conv's output rows of Q pixels): one call covers whole rows, about CALL_ROWS
# (analysis/contraction.py: longer rows are not joined)


def whole_rows(ext: int, per_row: int) -> int:
    """How many of ``ext`` runs of ``per_row`` rows one call covers (at least one)."""
    return max(1, min(ext, CALL_ROWS // per_row))


def m_blocks(c: Contraction) -> list[int]:
    ext = c.extent(c.m)
    if c.rows_per_m > 1:
        return [whole_rows(ext, c.rows_per_m)]
    cands = {min(ext, b) for b in (ext, 64, 28, 16)} if ext > 64 else {ext}
    return sorted(cands, reverse=True)


def config_ok(c: Contraction, plan: BlockPlan) -> bool:
    """Whether the microkernel's layout rules accept this plan's blocks."""
    lc, la, lb = c.linear("C"), c.linear("A"), c.linear("B")
    if c.b_vnni and plan.bk % 2:
        return False  # a call's k covers whole VNNI-2 pairs of B
    try:
        BrgemmConfig(
            m=min(plan.bm, c.extent(c.m)) * c.rows_per_m,
            n=min(plan.bn, c.extent(c.n)),
            k=plan.bk,
            lda=la.coef(c.row),
            ldb=lb.coef(c.k) if c.k else min(plan.bn, c.extent(c.n)),
            ldc=lc.coef(c.row),
            **c.row_groups(),
            **({"ab_dtype": "bf16", "b_vnni": True} if c.b_vnni else {}),
        )
    except PolyDLError:
        return False
    return True


def orders(c: Contraction) -> Iterator[tuple[str, ...]]:
    """Loop orders of the band around the call: outer iterators first in every permutation,
    with the row and column block loops innermost in either order."""
    for outer in itertools.permutations(c.outer):
        yield (*outer, c.n, c.m)
        yield (*outer, c.m, c.n)


def candidates(c: Contraction, lanes: int) -> Iterator[BlockPlan]:
    for bm, bn, bk in itertools.product(m_blocks(c), n_blocks(c, lanes), k_blocks(c)):
        for order in orders(c):
            plan = BlockPlan.simple(bm=bm, bn=bn, bk=bk, order=order, m=c.m, n=c.n)
            if config_ok(c, plan):
                yield plan


def default_plan(c: Contraction, lanes: int) -> BlockPlan | None:
    """Keep the original loop order; the largest blocks the kernel accepts."""
    first = None
    for plan in candidates(c, lanes):
        if first is None:
            first = plan
        natural = [v for v in c.outer] + sorted(
            (c.m, c.n), key=lambda v: c.linear("C").coef(v), reverse=True
        )
        if list(plan.order) == natural:
            return plan
    return first


MAX_BM = 96  # rows of one call: 16 tiles of 6 rows (8 of 12)
MAX_BM_EVEN = 128  # rows of one call when that divides the rows evenly (row_blocks)
# multiply-adds per thread below which whole row blocks are not split for balance (row_blocks)
MIN_SHARED_WORK = 1 << 22


def micro_blocks(c: Contraction, lanes: int) -> tuple[int, int, int]:
    """(bm, bn, bk) of one call: columns a multiple of the widest efficient register tile of the
    ISA (the whole extent when it is at most that wide; one call fewer, of whole vectors, when
    that would leave a last call of less than one vector), rows a multiple of the tile rows (the
    whole extent up to 128), the largest reduction block <= MAX_BK."""
    from ..kernels import FAMILIES

    ext_m, ext_n, rows = c.extent(c.m), c.extent(c.n), c.rows_per_m
    # the widest register tile of the family with these lanes (declared on the family)
    mr, nr = next(f.register_tile for f in FAMILIES.values() if f.vector_width == lanes)
    bn = ext_n if ext_n <= max(nr, 4 * lanes) else nr
    if 0 < ext_n % bn < lanes:
        # the last call would cover less than one vector of columns (196 pixels by 64: 4):
        # one call fewer, the narrowest whole vectors that do it (196: 80 + 80 + 36). Measured
        # on a Zen 4 host, a 1x1 conv over 14x14 pixels (1024 -> 256 channels, NCHW rows), one
        # thread: 1.16-1.19x faster than 64 + 64 + 64 + 4; the analytic model costs the two
        # the same. Edges of one vector or more (784 by 64: 16) measured no gain.
        widths = [lanes * i for i in range(1, MAX_BN_VECTORS + 1) if lanes * i <= ext_n]
        bn = (fewer_calls(ext_n, bn, widths) or [bn])[-1]
    if rows > 1:  # coalesced rows: whole runs of m_inner, about 100 rows per call
        bm = whole_rows(ext_m, rows)
    else:
        bm = ext_m if ext_m <= 128 else MAX_BM - MAX_BM % mr
    return bm, bn, k_blocks(c)[0]


# widest column block one call may cover, in vectors (the register tile's columns are split
# across several tiles beyond the widest one)
MAX_BN_VECTORS = 8


def fewer_calls(ext: int, bn: int, widths) -> list[int]:
    """Column blocks of ``widths`` (ascending) that cover ``ext`` columns in fewer calls than
    ``bn`` does, for half as many calls and for one fewer (in that order, duplicates once),
    each the narrowest width that does: the calls then stay even (196 columns by 64: 4 calls,
    the last of 4 columns; by 112: 112 + 84; by 80: 80 + 80 + 36)."""
    calls = -(-ext // bn)
    out: list[int] = []
    for fewer in sorted({max(1, calls // 2), calls - 1}):
        if fewer >= calls:
            continue
        b = next((b for b in widths if -(-ext // b) <= fewer), None)
        if b is not None and b not in out:
            out.append(b)
    return out


def k_tiles(c: Contraction, bk: int, target=None) -> list[int]:
    """Reduction extents of one call (``kc``), largest first: the whole k extent when it is at
    most ``target.kc_whole_max`` (:data:`KC_WHOLE_MAX` without one, or when nothing else
    divides it), else the multiples of ``bk`` dividing it nearest to :data:`KC_TARGETS` (at
    least half a target); a loop over k then steps the call's origin."""
    if c.k is None:
        return []
    ext = c.extent(c.k)
    whole = getattr(target, "kc_whole_max", None) or KC_WHOLE_MAX
    if ext <= whole:
        return [ext]
    divs = [d for d in range(bk, ext, bk) if ext % d == 0 and 2 * d >= min(KC_TARGETS)]
    picked = {min(divs, key=lambda d: (abs(d - t), d)) for t in KC_TARGETS} if divs else set()
    return sorted(picked or {ext}, reverse=True)


# a loop over a batch iterator (batch_tiles) keeps at least this much reduction in one call
# (k x batch), and one call's B panel at most a BATCH_PANEL_SHARE-th of the target's largest
# private cache (L2): every register-tile row of a tall call re-reads the panel, from L2 rather
# than from L3; the rest of L2 holds A, C and the next panel. Ice Lake (1.25 MiB L2): 320 KiB.
MIN_CALL_REDUCTION = 256
BATCH_PANEL_SHARE = 4


def panel_budget(target) -> int:
    """Bytes one call's B panel may take on ``target`` (see :data:`BATCH_PANEL_SHARE`)."""
    return target.panel_bytes(BATCH_PANEL_SHARE)


def batch_tiles(
    c: Contraction, bk: int, bn: int, budget: int = 320 * 1024, target=None
) -> list[tuple[int | None, str, int]]:
    """(kc, batch iterator, its extent in one call) of calls that cover the whole k but only
    part of the batch iterator outermost in B (a conv's input-channel blocks): the largest
    divisor of its extent whose B panel fits ``budget`` bytes (:func:`panel_budget`), when it
    keeps :data:`MIN_CALL_REDUCTION` and the whole panel does not fit."""
    lb = c.linear("B")
    split = max(c.batch, key=lambda v: abs(lb.coef(v)), default=None)
    if split is None or c.extent(split) < 2:
        return []
    if c.k is not None and c.extent(c.k) not in k_tiles(c, bk, target):
        return []  # k is tiled: one reduction loop at a time
    kc = c.extent(c.k) if c.k else 1
    per_value = kc * math.prod(c.extent(v) for v in c.batch if v != split)  # reduction rows
    panel = lambda d: per_value * d * bn * 4  # noqa: E731
    ext = c.extent(split)
    if panel(ext) <= budget:
        return []
    fits = [
        d
        for d in range(1, ext)
        if ext % d == 0 and panel(d) <= budget and per_value * d >= MIN_CALL_REDUCTION
    ]
    return [(kc if c.k else None, split, max(fits))] if fits else []


def ranked(kernel, c: Contraction, *, target, threads: int, top: int = 10):
    """The contraction's variants ranked by the cost model: ``[(Variant, BlockPlan), ...]``.

    One microkernel call covers ``bm`` rows, ``bn`` columns and ``kc`` of the reduction (every
    batch iterator whole); the search orders and tiles the loops around it
    (``optimize/search.py``) and keeps legal ones. Each ``kc`` of :func:`k_tiles` is ranked
    (the whole extent: no loop over k; a smaller one: a point loop over k that the search
    orders like the others, e.g. ``j/64 k/256 i/64 | micro``) and the variants are merged by
    cost. A loop over k is legal in any position for the reduction (the search relaxes its
    self-dependences) and for the folded init and epilogue too, because the lowering sets
    ``beta`` and the epilogue per k tile; it is never parallel (k is not a free iterator).
    """
    from .search import _key

    bm0, bn, bk = micro_blocks(c, target.lanes())
    found = []
    for bm in row_blocks(c, bm0, threads):
        ranks = _ranked_rows(kernel, c, bm, bn, bk, target, threads, top)
        found += [(var, bm) for var in ranks]
    out = []
    for var, bm in sorted(found, key=lambda x: _key(x[0])):
        if len(out) >= top:
            break
        loops = list(var.loops)
        present = {v for v, _ in loops}
        loops += [
            (v, {c.m: bm, c.n: bn}.get(v, 1)) for v in (*c.outer, c.m, c.n) if v not in present
        ]
        plan = BlockPlan(bm=bm, bn=bn, bk=bk, loops=tuple(loops))
        if config_ok(c, plan):
            out.append((var, plan))
    return out


def row_blocks(c: Contraction, bm: int, threads: int) -> list[int]:
    """Rows of one call to rank: :func:`micro_blocks`' ``bm`` and, when that leaves an edge
    block or a number of row blocks that the threads do not share evenly (one block of 64 rows
    for two threads: the columns alone must then balance them, which a few column tiles do
    not), the largest divisor of the rows in [32, MAX_BM_EVEN] (a multiple of 8) that splits
    them into a multiple of ``threads`` blocks: no edge statement (a nest, and a parallel
    region, of its own) and every thread the same number of blocks. The cost model then
    weighs the smaller calls against the balance."""
    ext = c.extent(c.m)
    if c.rows_per_m > 1:
        return [bm]
    if ext % bm == 0 and (ext // bm) % threads == 0:
        return [bm]
    if ext <= bm and threads == 1:
        return [bm]
    if ext % bm == 0 and math.prod(hi - lo + 1 for _, (lo, hi) in c.extents) < (
        threads * MIN_SHARED_WORK
    ):
        return [bm]  # too little work to share out row blocks (a parallel region costs too)
    even = [
        d
        for d in range(MAX_BM_EVEN, 31, -1)
        if ext % d == 0 and (ext // d) % threads == 0 and d % 8 == 0
    ]
    return [bm, even[0]] if even and even[0] != bm else [bm]


def _ranked_rows(kernel, c: Contraction, bm, bn, bk, target, threads, top):
    """The ranked variants whose calls cover ``bm`` rows (see :func:`ranked`)."""
    from .search import rank

    covered = (*c.batch, *([c.m_inner] if c.m_inner else []))
    tileable: dict[str, list[int]] = {}
    for v, b in ((c.m, bm), (c.n, bn), *((v, 1) for v in c.outer)):
        ext = c.extent(v)
        tileable[v] = sorted(
            {b * f for f in (2, 4, 8, 16) if b * f < ext}
            | ({ext // 2} if b == 1 and ext >= 4 else set())
        )
    found = []
    options: list[tuple[int | None, str | None, int]] = [
        (kc, None, 0) for kc in k_tiles(c, bk, target)
    ]
    options = options or [(None, None, 0)]
    if kernel.arg(c.c).dtype == "bf16":
        # a bf16 C is rounded once (analysis/contraction.bf16_accumulated): each call holds
        # its elements' whole reduction, no loop over k or a batch iterator around it
        options = [(c.extent(c.k), None, 0)] if c.k else [(None, None, 0)]
    else:
        options += batch_tiles(c, bk, min(bn, c.extent(c.n)), panel_budget(target), target)
    for kc, looped, chunk in options:
        micro = {c.m: bm, c.n: bn, **{v: c.extent(v) for v in covered}}
        if c.k is not None:
            micro[c.k] = kc
        if looped is not None:
            micro[looped] = chunk
        ab = kernel.arg(c.a).dtype
        call = call_of(
            c, bm=bm, bn=bn, bk=bk, kc=kc, looped=looped, chunk=chunk, target=target, ab_dtype=ab
        )
        found += rank(
            kernel,
            c.stmt,
            tileable=tileable,
            micro=micro,
            target=target,
            threads=threads,
            top=top,
            call=call,
        )
    return found


def call_of(
    c: Contraction,
    *,
    bm: int,
    bn: int,
    bk: int,
    kc: int | None,
    looped: str | None = None,
    chunk: int = 0,
    target,
    ab_dtype: str = "f32",
    register_tile: tuple[int, int] | None = None,
):
    """The microkernel call (:func:`~polydl.optimize.cost.call_model`) of a plan's blocks:
    ``bm`` rows (of ``rows_per_m`` each), ``bn`` columns, ``bk`` per batch element, ``kc`` of
    the reduction per call (None: no k), and ``chunk`` values of the batch iterator ``looped``
    when a loop steps over it (every batch iterator whole otherwise); ``ab_dtype``: the
    operands' element type (bf16: the CPU's bf16 family); ``register_tile``: the record's
    override of the microkernel's register tile."""
    batch = math.prod(c.extent(v) for v in c.batch)
    rows = min(bm, c.extent(c.m)) * c.rows_per_m
    pairs = batch * ((kc or bk) // bk)
    if looped is not None:
        pairs = pairs // c.extent(looped) * chunk
    n = min(bn, c.extent(c.n))
    # bf16: B in VNNI-2 pairs where the packing pass would copy them for one call, or read in
    # place where the tensor holds them so
    return call_model(
        rows,
        n,
        bk,
        pairs,
        target,
        beta=1,
        ab_dtype=ab_dtype,
        b_vnni=True if c.b_vnni else None,
        register_tile=register_tile,
        b_copied=not c.b_vnni,
    )
