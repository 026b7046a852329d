"""The tuner's cost model: the analytic model of ``optimize/cost.py`` plus a learned residual.

The analytic part is what the compiler ranks with (working sets placed in caches, bytes
weighted by where they come from, plus the calls' in-core time from their register tiles),
evaluated for any point of the space, not only for the ranked variants. It is good at the
order of magnitude and at loop orders, and blind to what it does not model: packing, edge
blocks, the microkernel's real efficiency per block shape, the TLB.

The residual learns that from the measurements: ``log(seconds) - log(analytic cost)`` is fitted
by ridge regression (standardised features, closed form with NumPy) on the features of each
measured point (:func:`features`: blocks and their squares, reduction chunking, where the loops sit, tiles,
parallel loops, packing, edges, the analytic cost's in-core and data parts, the microkernel's
register tile, k unroll, prefetch and non-temporal stores). The prediction is
``log(analytic) + residual``; with fewer than :data:`MIN_FIT` successful measurements the
residual is a constant, so the ranking is the analytic model's. Refitting is cheap (a few
dozen rows) and happens after every batch of trials.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .space import ContractionSpace, KernelSpace, Knobs, Point

MIN_FIT = 4  # successful measurements before the residual has any slope
RIDGE = 1.0  # penalty on the standardised weights


def analytic(space: ContractionSpace, kn: Knobs):
    """The analytic :class:`~polydl.optimize.cost.Cost` of one contraction's knobs."""
    from ..optimize.plan import call_of
    from ..optimize.search import cost_of

    c = space.c
    ext_k = space.ext[c.k] if c.k else None
    kc, looped, chunk = ext_k, None, 0
    if kn.reduce is not None and kn.reduce[0] == c.k:
        kc = kn.reduce[1]
    elif kn.reduce is not None:
        looped, chunk = kn.reduce
    call = call_of(
        c,
        bm=kn.bm,
        bn=kn.bn,
        bk=kn.bk,
        kc=kc,
        looped=looped,
        chunk=chunk,
        target=space.target,
        register_tile=kn.register_tile,
    )
    return cost_of(
        space.nest,
        space.stmt,
        space.loops(kn),
        target=space.target,
        threads=space.threads,
        n_parallel=kn.n_parallel,
        call=call,
    )


def features(space: ContractionSpace, kn: Knobs, cost) -> list[float]:
    """What the residual is fitted on, for one contraction's knobs and analytic cost."""
    c = space.c
    ext_m, ext_n = space.ext[c.m], space.ext[c.n]
    nr = space.target.register_tile[1]
    depth = {loop: i / max(1, len(kn.order)) for i, loop in enumerate(kn.order)}
    red_frac, red_k, red_b, red_pos = 1.0, 0.0, 0.0, 1.0
    if kn.reduce is not None:
        v, step = kn.reduce
        red_frac = step / space.ext[v]
        red_k, red_b = float(v == c.k), float(v != c.k)
        red_pos = depth[(v, False)]
    rows, cols, bk = (
        math.log2(min(kn.bm, ext_m) * c.rows_per_m),
        math.log2(min(kn.bn, ext_n)),
        math.log2(kn.bk),
    )
    return [
        rows,
        rows * rows,  # block sizes have a best value in the middle: a bowl, not a slope
        cols,
        cols * cols,
        float(min(kn.bn, ext_n) % nr == 0),
        bk,
        bk * bk,
        math.log2(red_frac),
        red_k,
        red_b,
        red_pos,
        float(len(kn.tiles)),
        depth.get((c.m, False), 1.0),
        depth.get((c.n, False), 1.0),
        float(kn.n_parallel),
        float(kn.pack and space.packable),
        float(ext_m % kn.bm != 0),
        float(ext_n % kn.bn != 0),
        math.log(max(cost.core, 1.0)),
        math.log(max(cost.data, 1.0)),
        # the microkernel's knobs (the analytic in-core part sees the register tile already)
        math.log2(kn.register_tile[0]) if kn.register_tile else 0.0,  # 0: the rule's
        math.log2(kn.register_tile[1]) if kn.register_tile else 0.0,
        math.log2(kn.k_unroll) if kn.k_unroll else -1.0,  # -1: the family's
        float(kn.prefetch),
        float(kn.nontemporal),
    ]


class CostModel:
    """Predicted log seconds of points of one :class:`~polydl.tune.space.KernelSpace`."""

    def __init__(self, space: KernelSpace) -> None:
        self.space = space
        self._cache: dict[Point, tuple[float, list[float]]] = {}
        self._w: np.ndarray | None = None
        self._mu = self._sd = None
        self._bias = 0.0
        self.n_fit = 0

    def _point(self, p: Point) -> tuple[float, list[float]]:
        """(log analytic cost, features) of ``p``."""
        got = self._cache.get(p)
        if got is None:
            spaces = self.space.spaces[p.lowering]
            costs = [analytic(s, k) for s, k in zip(spaces, p.knobs, strict=True)]
            total = sum(c.total for c in costs) + self.space.extra_cost[p.lowering]
            main = max(range(len(spaces)), key=lambda i: spaces[i].work)
            feats = features(spaces[main], p.knobs[main], costs[main])
            feats.append(float(p.lowering != self.space.lowerings[0]))
            got = self._cache[p] = (math.log(max(total, 1e-30)), feats)
        return got

    def analytic(self, p: Point) -> float:
        """The analytic model's cost of ``p`` (cost-model units, summed over contractions)."""
        return math.exp(self._point(p)[0])

    def fit(self, measured: Sequence[tuple[Point, float]]) -> None:
        """Refit the residual on ``(point, seconds)`` of the successful trials."""
        if not measured:
            return
        base = np.array([self._point(p)[0] for p, _ in measured])
        y = np.log([t for _, t in measured]) - base
        self._bias = float(np.mean(y))
        self.n_fit = len(measured)
        if len(measured) < MIN_FIT:
            self._w = None
            return
        x = np.array([self._point(p)[1] for p, _ in measured])
        mu, sd = x.mean(axis=0), x.std(axis=0)
        sd[sd < 1e-9] = np.inf  # constant features carry nothing
        z = (x - mu) / sd
        yc = y - self._bias
        a = z.T @ z + RIDGE * np.eye(z.shape[1])
        self._w = np.linalg.solve(a, z.T @ yc)
        self._mu, self._sd = mu, sd

    def predict(self, points: Sequence[Point]) -> np.ndarray:
        """Predicted log seconds per call of each point."""
        base = np.array([self._point(p)[0] for p in points])
        if self._w is None:
            return base + self._bias
        z = (np.array([self._point(p)[1] for p in points]) - self._mu) / self._sd
        return base + self._bias + z @ self._w

    def seconds(self, p: Point) -> float | None:
        """The predicted seconds of ``p`` once anything was measured (None before)."""
        if not self.n_fit:
            return None
        return float(math.exp(self.predict([p])[0]))
