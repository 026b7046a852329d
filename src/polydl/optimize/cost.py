"""Data-movement cost of a tiled loop nest, in the manner of PolyScientist / PolyDL.

Tavarageri et al. (arXiv 2002.02145, 2006.02230) rank loop variants by the data they move
through the cache hierarchy, computed from the working sets of the loop levels, without running
anything. This module does the same with the working sets of ``analysis/reuse.py``.

Notation, for a nest of ``L`` loops (outermost first) and one statement:

* ``WS_l`` the bytes touched by one iteration of loop ``l`` (``l = L``: one microkernel call,
  ``l = -1``: the whole nest); ``f_l(t)`` the part of tensor ``t``; ``T_l`` the trip count of
  loop ``l`` (``T_L = 1``).
* Parallel loops: the outermost ``p`` loops run in parallel, collapsed: ``P = T_0 ... T_{p-1}``
  iterations over ``u = min(threads, P)`` cores, each core doing ``ceil(P / u)`` of them. Costs
  are per core, that is the time of the slowest core: ``share = ceil(P / u) / P``.
* ``E_l = max(1, T_0 ... T_l * share)``, the iterations of level ``l`` one core runs (``E_-1 = 1``).
* ``c(l)`` the smallest cache that holds ``WS_l`` (private caches whole, shared ones divided by
  ``u``); ``c(-1)`` is memory (the data start there). ``w(c)`` the target's relative cost of a
  byte from ``c`` (``Target.byte_costs``).

Level ``l`` brings data into ``c(l)`` from ``c(l-1)`` when the two differ (otherwise its data is
already where its parent's is, and costs nothing at this boundary). The bytes it brings are, per
tensor ``t``:

* if ``t`` does not change across the iterations of loops ``l, l-1, ..., m`` (a contiguous run,
  ``f_{j-1}(t) = f_j(t)``), its block stays in ``c(l)`` for all of them (it is touched in every
  iteration, so it stays recent): ``E_{m-1} * f_l(t)``;
* otherwise consecutive iterations of loop ``l`` reuse what they share (a conv's halo) within
  ``c(l)``: ``min(E_{l-1} * f_{l-1}(t), E_l * f_l(t))``.

``cost_l = bytes_l * w(c(l-1))``. The microkernel level also reads its working set from where
it lives once per call: ``E_L * WS_L * w(c(L))`` (cheap from L1, dear from L2). The total is the
sum over levels; lower is better. Compute is the same for every variant of a statement, so it is
not counted; the load imbalance of parallel loops is, through ``share``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..analysis.reuse import Footprint, Level, analyzer
from ..ir import nodes
from .target import Target, resolve


@dataclass(frozen=True, kw_only=True)
class LevelCost:
    """What one level of a variant costs."""

    depth: int  # as Level.depth; the microkernel level is len(loops)
    loop: str  # "k/64", "p", or "micro"
    working_set: int  # bytes of one iteration
    cache: str  # "L1", "L2", "L3" or "mem": where the working set fits
    source: str  # where the bytes it brings in come from ("" if none)
    bytes: float  # bytes brought in from ``source``, per core
    weight: float  # relative cost of a byte from ``source``
    cost: float  # bytes * weight


@dataclass(frozen=True, kw_only=True)
class Cost:
    total: float
    levels: tuple[LevelCost, ...]
    threads: int  # cores the parallel loops use
    balance: float  # P / (threads * ceil(P / threads)); 1.0 is perfect balance


def evaluate(
    levels: Sequence[Level],
    whole: Sequence[Footprint],
    target: Target,
    *,
    n_parallel: int = 0,
    threads: int = 1,
    detail: bool = True,
) -> Cost:
    """The cost of a nest from its working sets (see the module docstring).

    ``levels`` are :func:`polydl.analysis.reuse.working_sets` (loops, then the microkernel
    block), ``whole`` the footprints of the whole nest, ``n_parallel`` how many outermost loops
    run in parallel on at most ``threads`` cores. ``detail=False`` leaves ``levels`` empty
    (faster, for ranking).
    """
    n_loops = len(levels) - 1
    if not 0 <= n_parallel <= n_loops:
        raise ValueError(f"n_parallel={n_parallel} outside 0..{n_loops}")
    trips = [max(lv.trip, 0) for lv in levels]
    p_iters = math.prod(trips[:n_parallel])
    used = max(1, min(threads, p_iters)) if n_parallel else 1
    chunk = math.ceil(p_iters / used) if n_parallel else 1
    share = chunk / p_iters if n_parallel and p_iters else 1.0
    balance = p_iters / (used * chunk) if n_parallel and p_iters else 1.0

    execs: list[float] = []  # E_l
    prod = 1
    for t in trips:
        prod *= t
        execs.append(max(1.0, prod * share) if prod else 0.0)

    def e(d: int) -> float:  # E_d, with E_-1 = 1
        return 1.0 if d < 0 else execs[d]

    ws = [lv.total_bytes for lv in levels]
    caps = [target.capacity(c, used) for c in target.caches]
    names = [c.name for c in target.caches] + ["mem"]
    weights = list(target.byte_costs)
    mem = len(caps)
    fits: list[int] = []  # index of the cache holding WS_d (mem: len(caches))
    for b in ws:
        r = next((i for i, cap in enumerate(caps) if b <= cap), mem)
        fits.append(min(r, fits[-1]) if fits else r)  # nested sets: never bigger inside
    by_level = [{fp.tensor: fp.bytes for fp in lv.footprints} for lv in levels]
    by_whole = {fp.tensor: fp.bytes for fp in whole}
    tensors = list(by_whole)

    def f(d: int, t: str) -> int:  # f_d(t), with f_-1 the whole nest
        return (by_whole if d < 0 else by_level[d]).get(t, 0)

    out: list[LevelCost] = []
    total = 0.0
    for d, lv in enumerate(levels):
        here, parent = fits[d], (fits[d - 1] if d else mem)
        moved = 0.0
        if here < parent:
            for t in tensors:
                m = d
                while m >= 0 and f(m - 1, t) == f(m, t):
                    m -= 1
                if m < d:  # invariant over loops m+1..d: loaded once per iteration of loop m
                    moved += e(m) * f(d, t)
                else:  # consecutive iterations share what overlaps (a halo)
                    moved += min(e(d - 1) * f(d - 1, t), e(d) * f(d, t))
        weight = weights[parent] if moved else 0.0
        cost = moved * weight
        if lv.loop is None:  # the microkernel reads its block from where it lives, per call
            cost += e(d) * ws[d] * weights[here]
        total += cost
        if detail:
            out.append(
                LevelCost(
                    depth=lv.depth,
                    loop=lv.label,
                    working_set=ws[d],
                    cache=names[here],
                    source=names[parent] if moved else "",
                    bytes=moved,
                    weight=weight,
                    cost=cost,
                )
            )
    return Cost(total=total, levels=tuple(out), threads=used, balance=balance)


def cost(
    kernel: nodes.Kernel,
    stmt: nodes.Statement | str,
    loops: Sequence[tuple[str, int]],
    *,
    target: Target | str | None = None,
    n_parallel: int = 0,
    threads: int | None = None,
) -> Cost:
    """The predicted data-movement cost of running ``stmt`` as the tiled nest ``loops`` with
    its ``n_parallel`` outermost loops parallel over ``threads`` cores (default: all the
    target's)."""
    tgt = resolve(target)
    name = stmt if isinstance(stmt, str) else stmt.name
    a = analyzer(kernel, name)
    nthreads = tgt.cores if threads is None else threads
    levels = a.levels(loops, tgt, nthreads)
    return evaluate(levels, a.whole(), tgt, n_parallel=n_parallel, threads=nthreads)
