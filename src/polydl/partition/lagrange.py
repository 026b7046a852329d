"""Lower bound 4: a Lagrangian (configuration-LP) bound, certified by an exact set search.

Notation as in :mod:`polydl.partition.bounds`: ``t(v)`` a node's fastest compute time, ``c(e)`` the
cheapest charge of a cut edge to one of its devices, ``K`` devices, and for a node set ``S`` its
*load* ``load(S) = t(S) + c(delta(S))`` (``delta(S)``: the edges with exactly one end in ``S``).
The device holding the nodes ``S_d`` has load ``>= load(S_d)`` (each node costs it at least ``t``,
each cut edge at least ``c``; ``load(empty) = 0``), so the bottleneck is
``B >= max_d load(S_d)``. Where the work bound spreads work evenly and the window-cut bound
averages communication over all devices, this bound sees one device at a time: the boundary a
middle stage pays on both sides, and the granularity of the nodes.

**The certificate.** For any weights ``pi`` (one real per node) let ``theta = pi(V) / K`` and
``bound(pi) = min { load(S) : S a set of nodes, pi(S) >= theta }``. Then ``B >= bound(pi)`` for
every partition -- every plan ``make_plan`` accepts: any shape, empty devices too; memory limits
only remove plans. Proof: the K parts ``S_1 .. S_K`` (some possibly empty) partition the nodes,
so ``pi(S_1) + ... + pi(S_K) = pi(V) = K theta``; the largest term is at least the mean, so some
part has ``pi(S_d) >= theta``, hence ``B >= load(S_d) >= bound(pi)``. (``pi = t`` gives at least
the work bound ``W / K``: every ``S`` with ``t(S) >= W / K`` has ``load(S) >= W / K``.) Validity
needs nothing of ``pi``: only that ``bound(pi)`` is computed exactly (:func:`min_load`).

**Computing bound(pi) exactly** (:func:`pareto_sets`). Dynamic programming over the topological
order decides ``x_v = [v in S]`` position by position. The future depends on the decided part
only through the *frontier* (decided nodes with an edge to an undecided one): an edge ``(u, w)``
is charged when ``w`` is decided, from ``x_u`` and ``x_w``. A state is the bit vector ``x`` on the
frontier; per state it suffices to keep the Pareto set of ``(load so far, pi so far)``: a partial
set with no smaller load and no larger ``pi`` than another in the same state is not needed (every
completion adds the same to both; floating-point addition is monotone, so this holds for the
computed sums too). Exact pruning: partial sets whose load exceeds a known set's (loads only
grow), and those that cannot reach ``theta`` even if they gained every positive ``pi`` still to
come, or the best fractional knapsack of it within the load still allowed (a later node adds at
least its ``t`` to the load). Every subset of nodes is one path of the program, so the minimum
over the final states is ``bound(pi)``. Graphs whose frontier exceeds ``MAX_FRONTIER`` nodes are
skipped (``2^f`` states). Floating point: ``theta`` is lowered by ``1e-9 (sum |pi| + 1)`` (a larger
family of sets: a smaller minimum, still valid; it absorbs the rounding of the sums ``pi(S)``),
and the result is multiplied by ``1 - 1e-9`` (the rounding of the sums ``load(S)``).

**Choosing pi** (:func:`configuration_bound`; it only steers, it is not part of the proof). For a
trial value ``L``, the configuration LP ``min sum_S z_S`` s.t. ``sum_{S contains v} z_S = 1`` for
every node, ``z >= 0``, over the sets with ``load(S) <= L``, exceeds ``K`` exactly when some
``pi`` has ``pi(S) <= 1`` on all those sets and ``pi(V) > K`` (LP duality), and then
``bound(pi) > L``. We look for such ``pi`` in a small basis: ``t`` scaled by one weight per run of
the topological order (``REGIONS`` runs of equal work), so a middle region, whose parts pay two
boundaries, can be weighted above the ends. Cutting planes on the weights: the LP
``max pi(V)`` s.t. ``pi(S) <= 1`` over a pool of sets with ``load(S) <= L`` (seeded from the Pareto
front of ``pi = t``) gives ``pi``; the violated sets (``load(S) <= L``, ``pi(S) > 1``) join the
pool: first runs of the order (all O(n^2) of them are checked at once), else those the program
above returns when run with a cap ``L`` on the load (with a coarser dominance, for speed). The
largest ``L`` whose pool LP still exceeds ``K`` is tracked downwards from the best contiguous
plan's bottleneck; when no set is violated, ``bound(pi)`` is evaluated exactly and reported. Any
stop (time limit ``POLYDL_LP_SECONDS``, search width) leaves a valid bound: the best exact
``bound(pi)`` evaluated, ``pi = t`` first.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from .problem import Problem, edge_costs, node_times

MAX_NODES = 1000  # O(n^2) interval table, O(n) steps of the program per evaluation
MAX_FRONTIER = 8  # 2^f states per position
MAX_FRONT = 20_000  # Pareto entries per state; a larger front abandons the search
REGIONS = 8  # weights: t scaled per run of the order (a basis of R vectors)
ADD_PER_ROUND = 20  # most violated sets added to the pool per evaluation
SEED = 120  # sets of the first pool, from the Pareto front of pi = t
COARSE = 1e-3  # the search's own oracle drops sets within this of a better one
TOL = 1e-9

Front = tuple[np.ndarray, np.ndarray, np.ndarray]  # loads, pi values, bit masks of sets


class _Graph:
    """Node times, edge costs and the frontier structure along the topological order."""

    def __init__(self, p: Problem) -> None:

        self.n, self.k = p.n, p.k
        self.t = node_times(p)
        self.c = edge_costs(p)
        self.eu, self.ev = p.eu, p.ev
        n = self.n
        self.preds: list[list[tuple[int, float]]] = [[] for _ in range(n)]
        for u, v, c in zip(self.eu.tolist(), self.ev.tolist(), self.c.tolist(), strict=True):
            self.preds[v].append((u, c))
        last = np.arange(n)
        if len(self.eu):
            np.maximum.at(last, self.eu, self.ev)
        self.last = last.tolist()
        width, front = 0, 0
        opened = np.zeros(n + 1, dtype=np.int64)
        np.add.at(opened, np.flatnonzero(last > np.arange(n)), 1)
        closed = np.zeros(n + 1, dtype=np.int64)
        np.add.at(closed, last[last > np.arange(n)], 1)
        for i in range(n):
            front += int(opened[i]) - int(closed[i])
            width = max(width, front)
        self.width = width
        self._steps: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] | None = None
        self._intervals: np.ndarray | None = None

    def intervals(self) -> np.ndarray:
        """``L[a, b] = load(order[a .. b])`` for ``a <= b`` (``inf`` below the diagonal)."""
        if self._intervals is None:
            n = self.n
            m = np.zeros((n, n))
            np.add.at(m, (self.eu, self.ev), self.c)
            s = np.zeros((n + 1, n + 1))
            s[1:, 1:] = m.cumsum(0).cumsum(1)
            a, b = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
            out_t = s[b + 1, n] - s[a, n] - s[b + 1, b + 1] + s[a, b + 1]
            in_t = s[a, b + 1] - s[a, a]
            pre = np.concatenate(([0.0], np.cumsum(self.t)))
            load = pre[b + 1] - pre[a] + out_t + in_t
            self._intervals = np.where(b >= a, np.maximum(load, 0.0), np.inf)
        return self._intervals

    def set_load(self, members: np.ndarray) -> float:
        """``load(S)`` of the positions ``members``."""
        inside = np.zeros(self.n, dtype=bool)
        inside[members] = True
        cut = inside[self.eu] != inside[self.ev]
        return float(self.t[inside].sum() + self.c[cut].sum())


def _steps(g: _Graph) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per position ``i``, over the states (bit ``j`` = ``x`` of frontier slot ``j``) before it:
    the load added by ``x_i = 0`` and by ``x_i = 1`` minus ``t(i)`` (its cut in-edges), and the
    state after it for each choice."""
    if g._steps is None:
        steps = []
        frontier: list[int] = []
        for i in range(g.n):
            slot = {u: j for j, u in enumerate(frontier)}
            states = np.arange(1 << len(frontier))
            bits = (states[:, None] >> np.arange(len(frontier))[None, :]) & 1
            add0 = np.zeros(len(states))
            add1 = np.zeros(len(states))
            for u, c in g.preds[i]:
                add0 += c * bits[:, slot[u]]  # u in S, i not
                add1 += c * (1 - bits[:, slot[u]])  # i in S, u not
            keep = [slot[u] for u in frontier if g.last[u] > i]
            stays = g.last[i] > i
            after = (bits[:, keep] << np.arange(len(keep))[None, :]).sum(axis=1)
            new1 = after + ((1 << len(keep)) if stays else 0)
            steps.append((add0, add1, after, new1))
            frontier = [frontier[j] for j in keep] + ([i] if stays else [])
        g._steps = steps
    return g._steps


def _suffix(x: np.ndarray, op: np.ufunc) -> np.ndarray:
    """``out[i] = op over x[i:]`` (``out[n] = 0``)."""
    return np.concatenate((op.accumulate(x[::-1])[::-1], [0.0]))


def pareto_sets(
    g: _Graph, pi: np.ndarray, *, load_cap: float, value_floor: float, coarse: float = 0.0
) -> Front | None:
    """Every non-dominated ``(load(S), pi(S), S)`` over all node sets ``S`` (``S`` as rows of
    64-bit words, bit ``v`` = position ``v``), leaving out sets with ``load > load_cap`` or
    ``pi < value_floor`` (and dominated ones). ``None`` if the frontier or a front is too big.

    All states' partial sets are kept in flat arrays with a state column; each position extends
    every partial set both ways and keeps, per state, the Pareto set."""
    n = g.n
    if g.width > MAX_FRONTIER:
        return None
    words = (n + 63) // 64
    # what positions >= i can still add to pi(S): at most rem[i], and, under a load cap, at most
    # a fractional knapsack of them within the load still allowed (a node adds >= t(v) to it)
    pos = np.maximum(pi, 0.0)
    rem = _suffix(pos, np.add)  # rem[i]: every positive pi at positions >= i
    timed = g.t > 0
    knapsack = math.isfinite(load_cap)
    if knapsack:
        # nodes with t > 0 by pi / t, largest first (cum_t -> cum_v, piecewise linear), plus every
        # positive pi of a node with t = 0
        free = _suffix(np.where(timed, 0.0, pos), np.add)
        gain = np.where(timed, pos, 0.0)
        rank = np.argsort(-gain / np.where(timed, g.t, 1.0), kind="stable")
        later = rank[None, :] >= np.arange(n + 1)[:, None]  # row i: position >= i
        cum_t = np.concatenate((np.zeros((n + 1, 1)), np.cumsum(later * g.t[rank], 1)), 1)
        cum_v = np.concatenate((np.zeros((n + 1, 1)), np.cumsum(later * gain[rank], 1)), 1)
    slack = TOL * (float(np.abs(pi).sum()) + 1.0)
    ld, val = np.zeros(1), np.zeros(1)
    st = np.zeros(1, dtype=np.int64)
    msk = np.zeros((1, words), dtype=np.uint64)
    t = g.t
    for i, (add0, add1, new0, new1) in enumerate(_steps(g)):
        ld = np.concatenate((ld + add0[st], ld + add1[st] + t[i]))
        val = np.concatenate((val, val + pi[i]))
        m = len(st)
        st = np.concatenate((new0[st], new1[st]))
        room: float | np.ndarray = rem[i + 1]
        if knapsack:
            budget = np.interp(load_cap - ld, cum_t[i + 1], cum_v[i + 1]) + free[i + 1]
            room = np.minimum(budget, room)
        ok = np.flatnonzero((ld <= load_cap) & (val >= value_floor - room - slack))
        if len(ok) == 0:
            return np.zeros(0), np.zeros(0), np.zeros((0, words), dtype=np.uint64)
        # per state, by load: keep a set only if its value beats every set before it in its
        # state (by more than ``coarse``); two stable sorts (the runs are already by load)
        lv, vv, sv = ld[ok], val[ok], st[ok]
        order = np.argsort(lv, kind="stable")
        order = order[np.argsort(sv[order].astype(np.int16), kind="stable")]
        vs, ss = vv[order], sv[order]
        keep = np.ones(len(order), dtype=bool)
        cuts = np.flatnonzero(np.diff(ss)) + 1
        for a, b in zip(np.append(0, cuts), np.append(cuts, len(ss)), strict=True):
            run = vs[a:b]
            keep[a + 1 : b] = run[1:] > np.maximum.accumulate(run)[:-1] + coarse
        order = ok[order][keep]
        if len(order) > MAX_FRONT * max(1, len(add0)):
            return None
        src = np.where(order < m, order, order - m)
        msk = msk[src]
        ones = order >= m
        msk[ones, i // 64] |= np.uint64(1 << (i % 64))
        ld, val, st = ld[order], val[order], st[order]
    return ld, val, msk


def _members(mask: np.ndarray, n: int) -> np.ndarray:
    """Positions whose bit is set in one row of 64-bit words."""
    bits = np.unpackbits(mask.astype("<u8").view(np.uint8), bitorder="little")
    return np.flatnonzero(bits[:n]).astype(np.int64)


def min_load(g: _Graph, pi: np.ndarray) -> tuple[float, np.ndarray] | None:
    """``(bound(pi), a set attaining it)``: the smallest load of a node set with
    ``pi(S) >= pi(V) / K`` (see the module docstring), before the final safety factor; ``None``
    when the exact search is skipped."""
    got = _min_load(g, pi)
    return None if got is None else got[:2]


def _min_load(g: _Graph, pi: np.ndarray) -> tuple[float, np.ndarray, Front | None] | None:
    """:func:`min_load`, and the sets it found with ``pi(S) >= theta`` (non-dominated)."""
    theta = math.fsum(pi.tolist()) / g.k
    theta -= TOL * (float(np.abs(pi).sum()) + 1.0)
    if theta <= 0:
        return 0.0, np.zeros(0, dtype=np.int64), None
    # a known set with pi(S) >= theta caps the search: the best interval (the whole order has
    # pi(V) >= theta)
    load = g.intervals()
    pre = np.concatenate(([0.0], np.cumsum(pi)))
    val = pre[None, 1:] - pre[:-1, None]
    cand = np.where(val >= theta, load, np.inf)
    cap = float(cand.min())
    if not math.isfinite(cap):
        cap = g.set_load(np.arange(g.n))
    got = pareto_sets(g, pi, load_cap=cap, value_floor=theta)
    if got is None:
        return None
    hit = np.flatnonzero(got[1] >= theta)
    if len(hit) == 0:
        a, b = np.unravel_index(int(np.argmin(cand)), cand.shape)
        return cap, np.arange(a, b + 1), None
    j = hit[int(np.argmin(got[0][hit]))]
    return float(got[0][j]), _members(got[2][j], g.n), (got[0][hit], got[1][hit], got[2][hit])


def _region_basis(g: _Graph, regions: int) -> np.ndarray:
    """``(n, R)``: column ``r`` is ``t`` on the r-th of R runs of the order of equal work."""
    pre = np.concatenate(([0.0], np.cumsum(g.t)))
    total = float(pre[-1])
    mid = (pre[:-1] + 0.5 * g.t) / total if total > 0 else np.arange(g.n) / g.n
    reg = np.minimum((mid * regions).astype(np.int64), regions - 1)
    basis = np.zeros((g.n, regions))
    basis[np.arange(g.n), reg] = g.t
    return basis[:, basis.any(axis=0)]


class _Search:
    """Cutting planes on the region weights ``w`` (``pi = basis @ w``): a pool of node sets (as
    their work per region, and their load) and the restricted LP over it."""

    def __init__(self, g: _Graph, basis: np.ndarray) -> None:
        self.g, self.basis = g, basis
        self.total = basis.sum(axis=0)
        self.rows: list[np.ndarray] = []
        self.loads: list[float] = []
        self.cap = 8.0 * g.k / max(float(self.total.sum()), 1e-300)

    def add(self, members: np.ndarray, load: float) -> None:
        self.rows.append(self.basis[members].sum(axis=0))
        self.loads.append(load)

    def add_front(self, got: Front, order: np.ndarray) -> None:
        ld, _, msk = got
        for j in order:
            self.add(_members(msk[j], self.g.n), float(ld[j]))

    def add_intervals(self, pi: np.ndarray, limit: float) -> bool:
        """Pool the most violated runs ``order[a .. b]`` (``load <= limit``, ``pi > 1``)."""
        load = self.g.intervals()
        pre = np.concatenate(([0.0], np.cumsum(pi)))
        val = np.where(load <= limit, pre[None, 1:] - pre[:-1, None], -np.inf).ravel()
        hit = np.flatnonzero(val > 1.0 + 1e-7)
        for f in hit[np.argsort(-val[hit])][:ADD_PER_ROUND]:
            a, b = divmod(int(f), self.g.n)
            self.add(np.arange(a, b + 1), float(load[a, b]))
        return len(hit) > 0

    def lp(self, limit: float) -> tuple[float, np.ndarray]:
        """``max pi(V)`` over ``w`` in ``[0, cap]`` with ``pi(S) <= 1`` on pooled sets of load
        ``<= limit``: its value and ``w``."""
        from scipy.optimize import linprog

        use = np.asarray(self.loads) <= limit
        a = np.asarray(self.rows)[use] if use.any() else None
        b = np.ones(int(use.sum())) if use.any() else None
        res = linprog(
            -self.total,
            A_ub=a,
            b_ub=b,
            bounds=(0.0, self.cap),
            method="highs",
            options={"presolve": False},
        )
        if res.status != 0:
            return 0.0, np.zeros(len(self.total))
        return float(-res.fun), np.asarray(res.x)

    def largest(self, lo: float, hi: float, rel: float) -> tuple[float, np.ndarray] | None:
        """The largest trial value in ``[lo, hi]`` (to ``rel``) whose restricted LP exceeds K,
        searched downwards from ``hi`` (the previous answer), with its ``w``."""
        k = self.g.k
        value, w = self.lp(hi)
        if value > k:
            return hi, w
        step, top = rel * hi, hi
        while True:
            trial = max(lo, top - step)
            value, w = self.lp(trial)
            if value > k:
                bottom, best = trial, w
                break
            if trial <= lo:
                return None
            top, step = trial, 2.0 * step
        while top - bottom > rel * top:
            mid = 0.5 * (bottom + top)
            value, w = self.lp(mid)
            if value > k:
                bottom, best = mid, w
            else:
                top = mid
        return bottom, best


def configuration_bound(
    p: Problem,
    lo: float,
    hi: float,
    time_limit: float | None = None,
    *,
    regions: int = REGIONS,
    rel_tol: float = 2e-4,
) -> float | None:
    """Bound 4 (see the module docstring): the largest exact ``bound(pi)`` found for weights
    ``pi`` in the region basis, searching trial values in ``[lo, hi]`` (``lo``: a known bound,
    ``hi``: a known plan's bottleneck). ``None`` when skipped (too many nodes, frontier too wide,
    no time)."""
    if time_limit is None:
        time_limit = default_time_limit()
    if p.n > MAX_NODES or p.k < 2 or time_limit <= 0:
        return None
    g = _Graph(p)
    if g.width > MAX_FRONTIER or not math.isfinite(hi):
        return None
    deadline = time.perf_counter() + time_limit
    first = min_load(g, g.t)  # pi = t: already charges boundaries and granularity
    if first is None:
        return None
    best = first[0] * (1 - TOL)
    basis = _region_basis(g, max(1, min(regions, g.n)))
    if basis.shape[1] == 0:  # no node takes time
        return best
    search = _Search(g, basis)
    seed = pareto_sets(g, g.t / hi, load_cap=hi, value_floor=-math.inf, coarse=COARSE)
    if seed is None:
        return best
    search.add_front(seed, np.unique(np.linspace(0, len(seed[0]) - 1, SEED).astype(np.int64)))
    top = hi
    while time.perf_counter() < deadline and top > max(lo, best) * (1 + rel_tol):
        floor = max(lo, best)
        found = search.largest(floor, top, max(rel_tol, 0.05 * (top - floor) / top))
        if found is None:
            break
        top, w = found
        pi = search.basis @ w
        if search.add_intervals(pi, top):  # cheap first: violated runs of the order
            continue
        got = pareto_sets(g, pi, load_cap=top, value_floor=1.0, coarse=COARSE)
        if got is None:
            break
        violated = np.flatnonzero(got[1] > 1.0 + 1e-7)
        if len(violated) == 0:
            # the (coarse) oracle saw no set of load <= top with pi(S) > 1, and pi(V) > K:
            # evaluate bound(pi) exactly; sets it meets below top are violated after all
            exact = _min_load(g, pi)
            if exact is None:
                break
            best = max(best, exact[0] * (1 - TOL))
            if exact[0] > top or exact[2] is None:
                break
            got = exact[2]
            violated = np.flatnonzero((got[0] <= top) & (got[1] > 1.0 + 1e-7))
            if len(violated) == 0:
                break
        search.add_front(got, violated[np.argsort(-got[1][violated])][:ADD_PER_ROUND])
    return best


def default_time_limit() -> float:
    """Seconds the search may spend per problem: ``POLYDL_LP_SECONDS`` or 3."""
    try:
        value = float(os.environ.get("POLYDL_LP_SECONDS", "3"))
    except ValueError:
        return 3.0
    return value if math.isfinite(value) and value >= 0 else 3.0
