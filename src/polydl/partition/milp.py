"""Lower bound 3: the dual bound of an exact mixed-integer program for the bottleneck.

Formulation (every index as in :class:`~polydl.partition.problem.Problem`; ``d`` ranges over the K
devices, ``v`` over the n nodes, ``e = (u, w)`` over the E edges)::

    minimise   B
    subject to sum_d x[v, d] = 1                                     for every node v
               y[e, d] >= x[u, d] - x[w, d],  y[e, d] >= x[w, d] - x[u, d]   for every e, d
               sum_v times[d, v] x[v, d]
                 + sum_e transfers * (latency_d + bytes_e / bandwidth_d) y[e, d] <= B   for every d
               (only when some device has a finite memory limit, for every d and v:)
               q[d] >= live[v] x[v, d]
               param_factor * sum_v params[v] x[v, d] + inflight(d) * sum_v outs[v] x[v, d]
                 + q[d] <= memory_limit(d) * (1 + 1e-12)
               x binary, y >= 0, q >= 0

This is exactly the plan evaluation of :func:`~polydl.partition.problem.stage_costs` and the memory
check of :func:`~polydl.partition.placement.make_plan`, for *any* assignment of nodes to devices (parts
need not be contiguous, devices may stay empty): an edge is cut iff its ends lie on different
devices, and then it is charged ``latency_d + bytes / bandwidth_d`` (times ``transfers``) to each of
its two devices ``d`` -- which is exactly ``|x[u, d] - x[w, d]|`` summed with that weight over all
``d`` -- and the peak-live term ``max_{v on d} live[v]`` (0 on an empty device) is ``<= q[d]``
exactly when every ``live[v] x[v, d] <= q[d]``.

Why the optimum is the best bottleneck of any accepted plan. Given an assignment ``a`` that
``make_plan`` accepts, ``x[v, d] = [a(v) = d]``, ``y[e, d] = |x[u, d] - x[w, d]|``,
``q[d] = max_{v on d} live[v]`` and ``B = max_d load_d`` is feasible with objective its
bottleneck. Conversely in any feasible point ``y >= |x[u, d] - x[w, d]|`` and all coefficients are
non-negative, so every load constraint's left side is at least that device's load under the
assignment ``x`` encodes, hence ``B`` is at least its bottleneck. So the MILP optimum ``B*`` equals
the minimum bottleneck over all accepted plans.

Why the reported value is a lower bound. Branch and bound (HiGHS, through
``scipy.optimize.milp``) keeps a *dual bound*: the minimum, over the open subproblems, of their
LP relaxation values. Every integer point lies in some open subproblem or was excluded by a
bound no better than the incumbent, so the dual bound is ``<= B*`` at every moment, in particular
when the time limit stops the search. Without that figure (an older scipy) the LP relaxation
optimum is used, also ``<= B*`` (the relaxation only enlarges the feasible set). Times are scaled
so that ``B`` is about 1, and the value is multiplied by ``1 - SAFETY`` to absorb the solver's
floating-point feasibility tolerances (1e-7 .. 1e-6 relative). An infeasible MILP (no plan fits
in memory) or a solver failure gives no bound (0): the other bounds then stand alone.

Symmetry: identical devices make the program symmetric; HiGHS detects the symmetry itself
(orbitopes), which in our measurements beat fixing ``x[v, d] = 0`` for ``d > v`` by hand, so no
manual symmetry breaking is added (it would not change ``B*`` either). Nodes are not coarsened.

scipy is optional: without it the bound is skipped (``None``) and the other bounds are reported.
Graphs of more than ``MAX_NODES`` nodes are skipped too (building the program costs
``O(K (n + E))`` and the dual bound barely moves in a few seconds on large graphs).
"""

from __future__ import annotations

import math
import os

import numpy as np

from .problem import Problem

MAX_NODES = 600
SAFETY = 1e-6


def default_time_limit() -> float:
    """Seconds HiGHS may spend per problem: ``POLYDL_MILP_SECONDS`` or 2."""
    try:
        value = float(os.environ.get("POLYDL_MILP_SECONDS", "2"))
    except ValueError:
        return 2.0
    return value if math.isfinite(value) and value >= 0 else 2.0


def milp_available() -> bool:
    try:
        import scipy.optimize  # noqa: F401
    except ImportError:
        return False
    return True


def build_program(p: Problem, scale: float):
    """``(c, A, lo, hi, integrality, lb, ub)`` of the program above, times divided by ``scale``."""
    import scipy.sparse as sp

    n, k, m = p.n, p.k, len(p.eb)
    tr = p.cost.transfers
    limits = np.array([p.memory_limit(d) for d in range(k)], dtype=float)
    use_mem = bool(np.isfinite(limits).any())
    nxv, nyv = n * k, m * k
    xi = np.arange(nxv).reshape(n, k)  # x[v, d]
    yi = nxv + np.arange(nyv).reshape(m, k)  # y[e, d]
    qi = nxv + nyv + np.arange(k) if use_mem else np.zeros(0, dtype=np.int64)
    bi = nxv + nyv + len(qi)
    nvar = bi + 1
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    lo: list[np.ndarray] = []
    hi: list[np.ndarray] = []
    r = 0

    def add(rr: np.ndarray, cc: np.ndarray, vv: np.ndarray, nrows: int, low, high) -> None:
        nonlocal r
        rows.append(rr + r)
        cols.append(cc)
        vals.append(vv)
        lo.append(np.broadcast_to(np.asarray(low, dtype=float), (nrows,)))
        hi.append(np.broadcast_to(np.asarray(high, dtype=float), (nrows,)))
        r += nrows

    # every node on exactly one device
    add(np.repeat(np.arange(n), k), xi.ravel(), np.ones(nxv), n, 1.0, 1.0)
    # y[e, d] - x[u, d] + x[w, d] >= 0 and y[e, d] + x[u, d] - x[w, d] >= 0
    if m:
        ed = np.arange(nyv)
        xu = xi[p.eu].ravel()
        xw = xi[p.ev].ravel()
        for sign in (1.0, -1.0):
            add(
                np.repeat(ed, 3),
                np.stack((yi.ravel(), xu, xw), axis=1).ravel(),
                np.tile([1.0, -sign, sign], nyv),
                nyv,
                0.0,
                np.inf,
            )
    # loads: compute + communication - B <= 0
    lat = np.array([dev.link_latency for dev in p.devices])
    bw = np.array([dev.link_bandwidth for dev in p.devices])
    for d in range(k):
        comm = tr * (lat[d] + p.eb / bw[d]) / scale
        cc = np.concatenate((xi[:, d], yi[:, d], [bi]))
        vv = np.concatenate((p.times[d] / scale, comm, [-1.0]))
        add(np.zeros(len(cc), dtype=np.int64), cc, vv, 1, -np.inf, 0.0)
    if use_mem:
        for d in range(k):
            if not math.isfinite(limits[d]):
                continue
            unit = limits[d]
            # q[d] - live[v] x[v, d] >= 0, in units of the limit
            add(
                np.repeat(np.arange(n), 2),
                np.stack((np.full(n, qi[d]), xi[:, d]), axis=1).ravel(),
                np.stack((np.ones(n), -p.live / unit), axis=1).ravel(),
                n,
                0.0,
                np.inf,
            )
            coef = (p.cost.param_factor * p.params + p.inflight(d) * p.outs) / unit
            cc = np.concatenate((xi[:, d], [qi[d]]))
            vv = np.concatenate((coef, [1.0]))
            add(np.zeros(len(cc), dtype=np.int64), cc, vv, 1, -np.inf, 1.0 + 1e-12)
    a = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(r, nvar)
    )
    c = np.zeros(nvar)
    c[bi] = 1.0
    integrality = np.zeros(nvar)
    integrality[:nxv] = 1
    lb = np.zeros(nvar)
    ub = np.full(nvar, np.inf)
    ub[:nxv] = 1.0
    return c, a, np.concatenate(lo), np.concatenate(hi), integrality, lb, ub


def milp_bound(
    p: Problem,
    time_limit: float | None = None,
    *,
    max_nodes: int = MAX_NODES,
    mip_rel_gap: float = 1e-6,
) -> float | None:
    """Bound 3 (see the module docstring): HiGHS's dual bound on the exact MILP, or ``None`` when
    skipped (scipy missing, more than ``max_nodes`` nodes, no plan fits, solver failure)."""
    if p.n > max_nodes or p.n == 0 or not milp_available():
        return None
    from scipy.optimize import Bounds, LinearConstraint, milp

    if time_limit is None:
        time_limit = default_time_limit()
    fastest = p.times.min(axis=0)
    scale = max(float(fastest.sum()) / p.k, float(fastest.max()))
    if not scale > 0 or not math.isfinite(scale):
        return None
    c, a, lo, hi, integrality, lb, ub = build_program(p, scale)
    res = milp(
        c,
        constraints=LinearConstraint(a, lo, hi),
        integrality=integrality,
        bounds=Bounds(lb, ub),
        options={"time_limit": float(time_limit), "disp": False, "mip_rel_gap": mip_rel_gap},
    )
    if res.status == 2:  # infeasible: no plan fits in memory, so there is nothing to bound
        return None
    value = getattr(res, "mip_dual_bound", None)
    if value is None:  # older scipy: fall back to the LP relaxation optimum
        relax = milp(
            c,
            constraints=LinearConstraint(a, lo, hi),
            integrality=np.zeros_like(integrality),
            bounds=Bounds(lb, ub),
            options={"time_limit": float(time_limit), "disp": False},
        )
        value = relax.fun if relax.status == 0 else None
    if value is None or not math.isfinite(value):
        return None
    return max(0.0, float(value) * scale * (1.0 - SAFETY))
