"""Exact pipeline partition: K contiguous stages of a topological order, stage s on device s,
minimising the slowest stage (compute + its communication), under per-device memory limits.

Dynamic programming over prefixes, as PipeDream's planner does for chains:
``D[s][j] = min_i max(D[s-1][i-1], cost_s(i..j))``. For each end ``j`` the cost of every stage
``i..j`` is kept in vectors over ``i`` updated edge by edge (an edge entering, leaving or falling
inside the stage), so one step is a handful of NumPy operations: O(K n^2) work, O(E n) updates.
Also the DeepSpeed-style ``uniform`` and ``parameters`` splits used as baselines.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from ..errors import PartitionError
from .problem import Problem, fmt_bytes

Progress = Callable[[int, int], None]


def _solve(
    p: Problem, objective: str, progress: Progress | None = None
) -> tuple[float, np.ndarray]:
    n, k, tr = p.n, p.k, p.cost.transfers
    classes: dict[tuple, int] = {}
    cls = [
        classes.setdefault(d.cost_key() + (p.times[i].tobytes(),), len(classes))
        for i, d in enumerate(p.devices)
    ]
    first = {c: cls.index(c) for c in set(cls)}
    tpre = {c: np.concatenate(([0.0], np.cumsum(p.times[d]))) for c, d in first.items()}
    lat = {c: tr * p.devices[d].link_latency for c, d in first.items()}
    bw = {c: p.devices[d].link_bandwidth / tr for c, d in first.items()}
    limits = np.array([p.memory_limit(d) for d in range(k)])
    use_mem = objective == "memory" or bool(np.isfinite(limits).any())
    ppre = np.concatenate(([0.0], np.cumsum(p.params))) * p.cost.param_factor
    apre = np.concatenate(([0.0], np.cumsum(p.outs)))
    infl = [p.inflight(s) for s in range(k)]
    ins: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    outs: list[list[float]] = [[] for _ in range(n)]
    for u, v, b in zip(p.eu.tolist(), p.ev.tolist(), p.eb.tolist(), strict=True):
        ins[v].append((u, b))
        outs[u].append(b)
    cnt = np.zeros(n)
    byt = np.zeros(n)
    peak = np.zeros(n)
    best = np.full((k, n), np.inf)
    choice = np.zeros((k, n), dtype=np.int64)
    step = max(1, n // 100)
    for j in range(n):
        for u, b in ins[j]:  # the edge u -> j: leaves stages starting <= u, enters those after u
            cnt[: u + 1] -= 1
            byt[: u + 1] -= b
            cnt[u + 1 : j + 1] += 1
            byt[u + 1 : j + 1] += b
        if outs[j]:
            cnt[: j + 1] += len(outs[j])
            byt[: j + 1] += sum(outs[j])
        if use_mem:
            np.maximum(peak[: j + 1], p.live[j], out=peak[: j + 1])
        base: dict[int, np.ndarray] = {}
        for s in range(max(0, k - (n - j)), min(k, j + 1)):
            lo = 0 if s == 0 else s
            hi = 1 if s == 0 else j + 1
            mem = None
            if use_mem:
                mem = (
                    ppre[j + 1] - ppre[lo:hi] + infl[s] * (apre[j + 1] - apre[lo:hi]) + peak[lo:hi]
                )
            if objective == "memory":
                cost = mem / limits[s]
            else:
                c = cls[s]
                if c not in base:
                    base[c] = (
                        tpre[c][j + 1]
                        - tpre[c][: j + 1]
                        + cnt[: j + 1] * lat[c]
                        + byt[: j + 1] / bw[c]
                    )
                cost = base[c][lo:hi]
                if mem is not None and np.isfinite(limits[s]):
                    cost = np.where(mem > limits[s], np.inf, cost)
            val = cost if s == 0 else np.maximum(best[s - 1, lo - 1 : hi - 1], cost)
            a = int(np.argmin(val))
            best[s, j] = val[a]
            choice[s, j] = lo + a
        if progress is not None and (j % step == 0 or j == n - 1):
            progress(j + 1, n)
    assign = np.empty(n, dtype=np.int64)
    j = n - 1
    for s in range(k - 1, -1, -1):
        i = int(choice[s, j])
        assign[i : j + 1] = s
        j = i - 1
    return float(best[k - 1, n - 1]), assign


def pipeline_partition(p: Problem, progress: Progress | None = None) -> np.ndarray:
    """The device of each position in ``p.order``: an optimal split into K contiguous stages."""
    value, assign = _solve(p, "time", progress)
    if np.isfinite(value):
        return assign
    raise PartitionError(memory_diagnosis(p))


def contiguous_optimum(p: Problem) -> float:
    """The best bottleneck among contiguous plans with memory limits ignored (a plan's value, so
    at least the optimum over all partitions when no limit is finite)."""
    devices = tuple(replace(d, memory_bytes=math.inf) for d in p.devices)
    return _solve(replace(p, devices=devices, cache={}), "time")[0]


def memory_diagnosis(p: Problem) -> str:
    """Why no split fits: a node too large for every device, or the least-overfull split."""
    name = p.model.name
    cap = max(p.memory_limit(d) for d in range(p.k))
    factor = p.cost.param_factor
    for i, v in enumerate(p.order):
        need = factor * p.params[i] + p.live[i] + (p.outs[i] if p.cost.training else 0)
        if need > cap:
            return (
                f"model {name!r}: node {v!r} alone needs {fmt_bytes(need)} "
                f"but the largest device memory is {fmt_bytes(cap)}"
            )
    ratio, assign = _solve(p, "memory")
    over = []
    for s in range(p.k):
        idx = np.flatnonzero(assign == s)
        need = factor * p.params[idx].sum() + p.inflight(s) * p.outs[idx].sum() + p.live[idx].max()
        if need > p.memory_limit(s):
            over.append(
                f"stage {s} ({p.order[idx[0]]} .. {p.order[idx[-1]]}) on device "
                f"{p.devices[s].name!r} needs {fmt_bytes(need)} > {fmt_bytes(p.memory_limit(s))}"
            )
    return (
        f"model {name!r} does not fit in the memory of {p.k} device(s) ({p.cost.mode}): even "
        f"the split that balances memory best overflows by {ratio - 1:.1%}: " + "; ".join(over)
    )


def balanced_split(weights: np.ndarray, k: int) -> np.ndarray:
    """K non-empty contiguous parts minimising the largest part weight (weights >= 0)."""
    n = len(weights)
    if k > n:
        raise PartitionError(f"cannot split {n} item(s) into {k} non-empty parts")
    pre = np.concatenate(([0.0], np.cumsum(weights)))

    def parts(limit: float) -> list[int] | None:
        starts, i = [0], 0
        for s in range(k - 1):
            # longest prefix within the limit, leaving at least one item per later part
            j = int(np.searchsorted(pre, pre[i] + limit, side="right")) - 1
            j = min(max(j, i + 1), n - (k - 1 - s))
            starts.append(j)
            i = j
        return starts if pre[n] - pre[i] <= limit else None

    lo, hi = float(max(weights.max(), pre[n] / k)), float(pre[n]) + 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if parts(mid) is None:
            lo = mid
        else:
            hi = mid
    starts = parts(hi) or parts(float(pre[n]) + 1.0)
    assign = np.empty(n, dtype=np.int64)
    for s, a in enumerate(starts):
        assign[a : starts[s + 1] if s + 1 < len(starts) else n] = s
    return assign


def uniform_partition(p: Problem) -> np.ndarray:
    """DeepSpeed ``uniform``: the same number of nodes in every stage."""
    return balanced_split(np.ones(p.n), p.k)


def parameters_partition(p: Problem) -> np.ndarray:
    """DeepSpeed ``parameters``: balance parameter counts (nodes without weights weigh little)."""
    return balanced_split(p.params + 1e-3 * max(1.0, float(p.params.max())) / max(p.n, 1), p.k)
