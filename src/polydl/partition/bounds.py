"""Lower bounds on the bottleneck of every partition of a problem, with their proofs.

A *partition* here is any assignment of nodes to the K devices: parts need not be contiguous, the
stage graph may have cycles, devices may stay empty. That is every plan ``make_plan`` accepts, so
every algorithm's plan (pipeline, dag, auto, local search, baselines) is covered. Notation:
``t(v) = min_d times[d, v]`` (a node's fastest compute time), ``W = sum_v t(v)``,
``c(e) = transfers * min_d (latency_d + bytes_e / bandwidth_d)`` (the cheapest charge of a cut edge
to one of its two devices), ``load_d = compute_d + comm_d``, bottleneck ``B = max_d load_d``.

1. :func:`work_bound` ``max(W / K, max_v t(v))``: the K loads sum to at least ``W`` (a node costs
   at least ``t(v)`` on any device, communication is non-negative), so the largest is at least the
   mean; and the device running the heaviest node spends at least ``t(v)`` on it.

2. :func:`window_cut_bound` (communication that balance forces). A cut edge is charged to both of
   its devices, each at least ``c(e)``, so ``sum_d load_d >= W + 2 * Cut`` with
   ``Cut = sum_{cut e} c(e)`` and ``B >= (W + 2 * Cut) / K`` (*). Take any value ``L``. If
   ``B <= L``, every part has compute ``<= L``, so a node set ``X`` with ``t(X) > L`` cannot lie in
   one part: the partition restricted to ``X`` has at least two classes, and the cut edges with
   both ends in ``X`` contain a cut of the induced subgraph ``G[X]`` between two non-empty node
   sets, of cost at least ``lambda(G[X])``, the weighted global minimum cut of ``G[X]`` (Stoer and
   Wagner; 0 if ``G[X]`` is disconnected; a single node heavier than ``L`` makes ``B <= L``
   impossible). Disjoint windows ``X_1, X_2, ...`` have disjoint induced edge sets, so
   ``Cut >= C(L) = sum_j lambda(G[X_j])`` and by (*) ``B >= V(L) = (W + 2 C(L)) / K``. Hence
   either ``B > L`` or ``B >= V(L)``: for every ``L``, ``B >= min(L, V(L))``, whatever windows were
   chosen; the bound is the best ``min(L, V(L))`` over the values of ``L`` tried (no monotonicity
   is assumed). The windows are runs of consecutive positions of the topological order, chosen by
   a dynamic program maximising ``C(L)`` among the shortest windows heavier than ``L``; windows of
   more than ``MAX_WINDOW`` nodes are not used (a cost cap: dropping a window keeps the bound
   valid, only weaker), so very large graphs (random-dag-10000) keep bound 1.

3. :func:`~polydl.partition.lagrange.configuration_bound`: the per-device bound
   ``min { load(S) : pi(S) >= pi(V) / K }`` for node weights ``pi`` found by cutting planes on
   the configuration LP, evaluated exactly by a dynamic program over the topological order; it
   sees that a middle stage pays two boundaries and that nodes come in lumps. Proof and search in
   :mod:`polydl.partition.lagrange`. Skipped (``None``) above ``lagrange.MAX_NODES`` nodes or when
   the order's frontier is wider than ``lagrange.MAX_FRONTIER``.

4. :func:`~polydl.partition.milp.milp_bound`: the dual bound of an exact mixed-integer program
   of the planner's objective (per-device compute + communication, the memory limits), solved by
   HiGHS under a time limit; proof and formulation in :mod:`polydl.partition.milp`. Skipped
   (``None``) without scipy or above ``milp.MAX_NODES`` nodes, and when no memory limit is
   finite and bound 3 already reaches a plan's bottleneck (the contiguous optimum): the MILP
   optimum is then at most that plan's value, so it cannot be larger.

The reported bound is the largest of the four, each valid on its own.

The *optimum among contiguous plans* (the pipeline dynamic program's value) is not a bound for
general partitions; plans report it separately (``Plan.contiguous_optimum_s``).
"""

from __future__ import annotations

import math

import numpy as np

from .problem import Problem, edge_costs, node_times  # noqa: F401 (node_times, edge_costs: re-exported)

MAX_WINDOW = 160  # nodes; Stoer-Wagner is O(m^3) per window
MAX_WORK = 6e6  # sum of m^2 Stoer-Wagner steps over all windows of one problem
STEPS = 14  # values of L tried


def work_bound(p: Problem) -> float:
    """Bound 1: ``max(W / K, heaviest node)``."""
    t = node_times(p)
    return float(max(t.sum() / p.k, t.max()))


def _contract(w: np.ndarray, heavy: np.ndarray) -> np.ndarray:
    """Merge the endpoints of every ``heavy`` edge (connected components of them)."""
    m = w.shape[0]
    parent = list(range(m))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(*np.nonzero(heavy), strict=True):
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[rb] = ra
    roots = np.array([find(x) for x in range(m)])
    _, label = np.unique(roots, return_inverse=True)
    onehot = np.zeros((m, int(label.max()) + 1))
    onehot[np.arange(m), label] = 1.0
    out = onehot.T @ w @ onehot
    np.fill_diagonal(out, 0.0)
    return out


def min_cut(w: np.ndarray) -> float:
    """Weighted global minimum cut of an undirected graph given as a dense symmetric matrix
    (Stoer-Wagner); ``inf`` for a single node (it cannot be split), 0 if disconnected.

    First, Padberg-Rinaldi contraction: with ``u`` = the smallest weighted degree (the value of
    a cut, so ``u >= lambda``), an edge of weight ``>= u`` may be contracted: a cut separating its
    ends costs at least ``u``, so either some minimum cut keeps both ends together (and survives
    the contraction) or ``lambda = u``. The result is ``min(u, lambda(contracted graph))``.
    """
    m = w.shape[0]
    if m <= 1:
        return math.inf
    w = w.astype(float, copy=True)
    np.fill_diagonal(w, 0.0)
    upper = math.inf
    while w.shape[0] > 1:
        upper = min(upper, float(w.sum(axis=1).min()))
        if upper <= 0.0:
            return 0.0
        heavy = np.triu(w >= upper, 1)
        if not heavy.any():
            break
        w = _contract(w, heavy)
    m = w.shape[0]
    if m <= 1:
        return upper
    alive = np.ones(m, dtype=bool)
    best = math.inf
    for _ in range(m - 1):
        idx = np.flatnonzero(alive)
        used = ~alive
        last = int(idx[0])
        used[last] = True
        key = w[last].copy()
        prev, cut = last, 0.0
        for _ in range(len(idx) - 1):
            cand = np.where(used, -np.inf, key)
            nxt = int(np.argmax(cand))
            cut = float(cand[nxt])
            used[nxt] = True
            key += w[nxt]
            prev, last = last, nxt
        best = min(best, cut)
        if best <= 0.0:
            return 0.0
        w[prev] += w[last]
        w[:, prev] += w[:, last]
        w[prev, prev] = 0.0
        w[last] = 0.0
        w[:, last] = 0.0
        alive[last] = False
    return min(best, upper)


class _Windows:
    """Minimum cuts of windows ``order[i:e]``, computed once per window."""

    def __init__(self, p: Problem) -> None:
        self.n = p.n
        self.t = node_times(p)
        self.pre = np.concatenate(([0.0], np.cumsum(self.t)))
        self.c = edge_costs(p)
        self.eu, self.ev = p.eu, p.ev
        self.cache: dict[tuple[int, int], float] = {}
        self.work = 0.0

    def cut(self, i: int, e: int) -> float:
        key = (i, e)
        if key in self.cache:
            return self.cache[key]
        m = e - i
        value = 0.0
        if m == 1:
            value = math.inf
        elif m <= MAX_WINDOW and self.work + m * m <= MAX_WORK:
            self.work += m * m
            inside = (self.eu >= i) & (self.ev < e)
            w = np.zeros((m, m))
            np.add.at(w, (self.eu[inside] - i, self.ev[inside] - i), self.c[inside])
            value = min_cut(w + w.T)
        self.cache[key] = value
        return value

    def best_sum(self, limit: float) -> float:
        """``C(L)``: the largest sum of window cuts over disjoint shortest windows heavier than L."""
        n, pre = self.n, self.pre
        ends = np.searchsorted(pre, pre[:n] + limit, side="right")  # first e with t(i:e) > L
        best = np.zeros(n + 2)
        for i in range(n - 1, -1, -1):
            best[i] = best[i + 1]
            e = int(ends[i])
            if e <= n:
                best[i] = max(best[i], self.cut(i, e) + best[e])
        return float(best[0])


def window_cut_bound(p: Problem, upper: float | None = None) -> float:
    """Bound 2 (see the module docstring): ``max over L tried of min(L, (W + 2 C(L)) / K)``."""
    if p.k < 2 or len(p.eb) == 0:
        return 0.0
    win = _Windows(p)
    total = float(win.pre[-1])
    base = work_bound(p)
    hi = total / p.k + 2.0 * float(win.c.sum()) / p.k
    if upper is not None:
        hi = min(hi, upper)
    hi = min(hi, total)
    lo, found = base, 0.0
    if hi <= lo:
        return 0.0
    n, pre = p.n, win.pre
    shortest = np.searchsorted(pre, pre[:n] + lo, side="right") - np.arange(n)
    if shortest.min() > MAX_WINDOW:  # windows only grow with L: none would be used
        return 0.0
    for _ in range(STEPS):
        mid = 0.5 * (lo + hi)
        value = (total + 2.0 * win.best_sum(mid)) / p.k
        found = max(found, min(mid, value))
        if value > mid:
            lo = mid
        else:
            hi = mid
    return found


def bounds(p: Problem) -> dict[str, float | None]:
    """Every bound by name (``configuration`` and ``milp`` are ``None`` when skipped), computed
    once per problem."""
    cached = p.cache.get("bounds")
    if cached is None:
        from . import lagrange
        from .contiguous import contiguous_optimum
        from .milp import milp_bound

        cached = {"work": work_bound(p), "window_cut": window_cut_bound(p)}
        known = max(cached.values())
        # a plan's bottleneck when no memory limit is finite (an O(K n^2) program: not computed
        # for graphs bound 3 skips anyway)
        plan = contiguous_optimum(p) if p.n <= lagrange.MAX_NODES else math.inf
        cached["configuration"] = lagrange.configuration_bound(p, known, plan)
        known = max(known, cached["configuration"] or 0.0)
        limited = any(math.isfinite(p.memory_limit(d)) for d in range(p.k))
        proven = not limited and known >= plan * (1 - 1e-9)
        cached["milp"] = None if proven else milp_bound(p)
        p.cache["bounds"] = cached
    return dict(cached)


def lower_bound(p: Problem) -> float:
    """The best valid lower bound on the bottleneck of any partition: the largest of
    :func:`bounds` (cached on the problem)."""
    return max(v for v in bounds(p).values() if v is not None)
