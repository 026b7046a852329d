"""Blocking plans for contractions: which BRGEMM blocks, which loop order, which loop in parallel.

:func:`candidates` enumerates the plans the optimiser may rank (block sizes that are multiples of
the vector width, divisors and non-divisors of the extents; loop orders of the band around the
call); :func:`default_plan` is the fallback rule when no ranking is asked for.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from ..analysis.contraction import Contraction
from ..errors import PolyDLError
from ..kernels import BrgemmConfig
from ..transform.brgemm import BlockPlan

MAX_BK = 64


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


def m_blocks(c: Contraction) -> list[int]:
    ext = c.extent(c.m)
    if c.rows_per_m > 1:
        return [max(1, min(ext, 112 // c.rows_per_m))]
    cands = {min(ext, b) for b in (ext, 64, 28, 16)} if ext > 64 else {ext}
    return sorted(cands, reverse=True)


def config_ok(c: Contraction, plan: BlockPlan) -> bool:
    """Whether the microkernel's layout rules accept this plan's blocks."""
    lc, la, lb = c.linear("C"), c.linear("A"), c.linear("B")
    try:
        BrgemmConfig(
            m=min(plan.bm, c.extent(c.m)) * c.rows_per_m,
            n=min(plan.bn, c.extent(c.n)),
            k=plan.bk,
            lda=la.coef(c.row),
            ldb=lb.coef(c.k) if c.k else min(plan.bn, c.extent(c.n)),
            ldc=lc.coef(c.row),
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


def micro_blocks(c: Contraction, lanes: int) -> tuple[int, int, int]:
    """(bm, bn, bk) of one call: columns two vectors wide when the extent allows (one register
    tile row of the microkernel), up to 64 rows, the largest reduction block <= MAX_BK."""
    ext_m, ext_n, rows = c.extent(c.m), c.extent(c.n), c.rows_per_m
    bn = ext_n if ext_n <= 4 * lanes else 2 * lanes
    if rows > 1:  # coalesced rows: whole runs of m_inner, about 100 rows per call
        bm = max(1, min(ext_m, 112 // rows))
    else:
        bm = ext_m if ext_m <= 128 else 64
    return bm, bn, k_blocks(c)[0]


def ranked(kernel, c: Contraction, *, target, threads: int, top: int = 10):
    """The contraction's variants ranked by the cost model: ``[(Variant, BlockPlan), ...]``.

    One microkernel call covers ``bm`` rows, ``bn`` columns and the whole reduction; the
    search orders and tiles the loops around it (``optimize/search.py``) and keeps legal ones.
    """
    from .search import rank

    bm, bn, bk = micro_blocks(c, target.lanes())
    covered = (*c.batch, *([c.k] if c.k else []), *([c.m_inner] if c.m_inner else []))
    micro = {c.m: bm, c.n: bn, **{v: c.extent(v) for v in covered}}
    tileable: dict[str, list[int]] = {}
    for v, b in ((c.m, bm), (c.n, bn), *((v, 1) for v in c.outer)):
        ext = c.extent(v)
        tileable[v] = sorted(
            {b * f for f in (2, 4, 8, 16) if b * f < ext}
            | ({ext // 2} if b == 1 and ext >= 4 else set())
        )
    out = []
    for var in rank(
        kernel, c.stmt, tileable=tileable, micro=micro, target=target, threads=threads, top=top
    ):
        loops = list(var.loops)
        present = {v for v, _ in loops}
        loops += [
            (v, {c.m: bm, c.n: bn}.get(v, 1)) for v in (*c.outer, c.m, c.n) if v not in present
        ]
        plan = BlockPlan(bm=bm, bn=bn, bk=bk, loops=tuple(loops))
        if config_ok(c, plan):
            out.append((var, plan))
    return out
