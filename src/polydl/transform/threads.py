"""Which loops run on threads: one pure pass over the loop tree, tree -> tree.

The schedule marks the loops that carry no dependence (``For.parallel``: the cost model's
parallel loops of a contraction, ``analysis/deps.parallel_dims`` elsewhere). This pass decides,
for ``threads`` cores, which of them become parallel regions (``For.threaded``); the emitter
outlines exactly those into ``GOMP_parallel`` regions and emits every other loop serially. It
owns every threading decision after the schedule:

- only the outermost marked loop of a nest is threaded (nothing nests regions);
- a marked loop whose trip count balances poorly over the threads (fewer trips than threads,
  or not a multiple of them) is collapsed with the marked loop right inside it when both trip
  counts are constants (``ir/loops.collapse``: ``for t in [0, T1*T2)``);
- a loop still poorly balanced, fewer than ``4 * threads`` trips and not a multiple of them,
  leaves the threads to a marked loop inside it; with none inside, it is threaded anyway when
  it has two trips or more.

Before (2 threads; ``c1`` 3 trips, ``c2`` 7, both free of dependences)::

    parallel for c1 in [0, 3): parallel for c2 in [0, 7): S(c1, c2)

After::

    threaded for c1_c2 in [0, 21): c1 = c1_c2 // 7; c2 = c1_c2 % 7; S(c1, c2)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from ..ir import loops as L
from ..ir.nodes import IExpr, eval_int, int_vars


def assign_threads(
    tree: tuple[L.Node, ...], *, threads: int, sizes: Mapping[str, int]
) -> tuple[L.Node, ...]:
    """``tree`` with the loops that run as parallel regions marked ``threaded`` (module doc);
    unchanged with one thread."""
    if threads < 2:
        return tree
    return _Threads(threads, sizes).nodes(tree)


class _Threads:
    def __init__(self, threads: int, sizes: Mapping[str, int]) -> None:
        self.threads = threads
        self.sizes = dict(sizes)

    def nodes(self, nodes: tuple[L.Node, ...]) -> tuple[L.Node, ...]:
        return tuple(self.node(n) for n in nodes)

    def node(self, n: L.Node) -> L.Node:
        """``n`` with its outermost worthwhile parallel loops threaded (their bodies, run
        inside a region, are left as they are)."""
        if isinstance(n, L.For):
            if n.parallel:
                n = self.collapsed(n)
                if self.worth_threads(n):
                    return replace(n, threaded=True)
            return replace(n, body=self.nodes(n.body))
        if isinstance(n, L.If):
            return replace(n, then=self.nodes(n.then), orelse=self.nodes(n.orelse))
        return n

    def const(self, e: IExpr | None) -> int | None:
        if e is None or not all(v in self.sizes for v in int_vars(e)):
            return None
        return eval_int(e, self.sizes)

    def trips(self, n: L.For) -> int | None:
        """The loop's trip count when its bounds are constants."""
        lo, hi = self.const(n.init), self.const(n.upper())
        if lo is None or hi is None:
            return None
        return max(0, -(-(hi - lo) // n.step))

    def collapsed(self, n: L.For) -> L.For:
        """``n`` and the parallel loop right inside it as one loop, when both have constant
        trip counts and the outer one alone would balance poorly over the threads."""
        if len(n.body) != 1 or not isinstance(n.body[0], L.For) or not n.body[0].parallel:
            return n
        inner = n.body[0]
        t1, t2 = self.trips(n), self.trips(inner)
        if t1 is None or t2 is None or (t1 % self.threads == 0 and t1 >= self.threads):
            return n
        return L.collapse(n, inner, t1, t2)

    def worth_threads(self, n: L.For) -> bool:
        """Thread this loop, or leave it to a parallel loop inside with better balance?"""
        if n.upper() is None:
            return False
        trips = self.trips(n)
        if trips is None:
            return True
        if trips >= self.threads and (trips % self.threads == 0 or trips >= 4 * self.threads):
            return True
        inner = any(isinstance(x, L.For) and x.parallel for x in L.walk(n.body))
        return not inner and trips >= 2
