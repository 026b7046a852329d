"""General DAG partition: minimum communication under a balance bound (the seed paper's
heuristic, METIS-like): multilevel coarsening by heavy-edge matching, an initial partition of
the coarsest graph, then greedy boundary refinement while uncoarsening.

Node weight: compute time on the device of reference (device 0); device capacities are
proportional to device speed, times ``1 + imbalance``. Edge weight: the seconds of one transfer
(``latency * bandwidth + bytes``, in bytes at the reference link), summed over both directions.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import numpy as np

from .contiguous import balanced_split
from .problem import Problem

Adj = list[dict[int, float]]


def _adjacency(p: Problem) -> Adj:
    d0 = p.devices[0]
    adj: Adj = [{} for _ in range(p.n)]
    for u, v, b in zip(p.eu.tolist(), p.ev.tolist(), p.eb.tolist(), strict=True):
        w = b + d0.link_latency * d0.link_bandwidth
        adj[u][v] = adj[u].get(v, 0.0) + w
        adj[v][u] = adj[v].get(u, 0.0) + w
    return adj


def _coarsen(
    w: np.ndarray, adj: Adj, maxw: float, rng: random.Random
) -> tuple[np.ndarray, np.ndarray, Adj]:
    n = len(w)
    match = np.full(n, -1, dtype=np.int64)
    order = list(range(n))
    rng.shuffle(order)
    nc = 0
    for v in order:
        if match[v] >= 0:
            continue
        best, bw = -1, -1.0
        for u, ew in adj[v].items():
            if match[u] < 0 and u != v and ew > bw and w[u] + w[v] <= maxw:
                best, bw = u, ew
        match[v] = nc
        if best >= 0:
            match[best] = nc
        nc += 1
    cw = np.zeros(nc)
    np.add.at(cw, match, w)
    cadj: Adj = [{} for _ in range(nc)]
    for v in range(n):
        a = match[v]
        for u, ew in adj[v].items():
            b = match[u]
            if a != b:
                cadj[a][b] = cadj[a].get(b, 0.0) + ew
    return match, cw, cadj


def _refine(
    part: np.ndarray,
    w: np.ndarray,
    adj: Adj,
    cap: np.ndarray,
    k: int,
    rng: random.Random,
    passes: int = 6,
) -> None:
    load = np.zeros(k)
    np.add.at(load, part, w)
    nodes = list(range(len(w)))
    for _ in range(passes):
        moved = 0
        rng.shuffle(nodes)
        for v in nodes:
            if not adj[v]:
                continue
            own = part[v]
            conn: dict[int, float] = {}
            for u, ew in adj[v].items():
                conn[part[u]] = conn.get(part[u], 0.0) + ew
            here = conn.get(own, 0.0)
            best, gain = -1, 0.0
            for q, c in conn.items():
                if q == own:
                    continue
                g = c - here
                fits = load[q] + w[v] <= cap[q]
                rebalance = load[own] > cap[own] and load[q] + w[v] < load[own]
                if (
                    fits
                    and (
                        g > gain
                        or (g == gain and g >= 0 and best < 0 and load[q] + w[v] < load[own] - w[v])
                    )
                ) or (rebalance and best < 0):
                    best, gain = q, g
            if best >= 0 and (
                gain > 0 or load[own] > cap[own] or load[best] + w[v] < load[own] - w[v]
            ):
                load[own] -= w[v]
                load[best] += w[v]
                part[v] = best
                moved += 1
        if not moved:
            break


def dag_partition(
    p: Problem,
    *,
    imbalance: float = 0.03,
    seed: Mapping[str, int] | None = None,
    random_seed: int = 0,
) -> np.ndarray:
    """The device of each position in ``p.order``; ``seed`` optionally gives a starting plan."""
    rng = random.Random(random_seed)
    k = p.k
    w = p.times[0].copy()
    speed = p.times[0].sum() / np.maximum(p.times.sum(axis=1), 1e-300)
    cap = (1 + imbalance) * w.sum() * speed / speed.sum()
    cap = np.maximum(cap, w.max())
    adj = _adjacency(p)
    levels: list[tuple[np.ndarray, np.ndarray, Adj]] = [(np.arange(p.n), w, adj)]
    cw, cadj = w, adj
    while len(cw) > 30 * k:
        match, nw, nadj = _coarsen(cw, cadj, w.sum() / (3 * k), rng)
        if len(nw) > 0.95 * len(cw):
            break
        levels.append((match, nw, nadj))
        cw, cadj = nw, nadj
    # map every fine node to its coarsest node
    to_coarse = np.arange(p.n)
    for match, _, _ in levels[1:]:
        to_coarse = match[to_coarse]
    nc = len(cw)
    if seed is not None:
        fine = np.array([seed[v] for v in p.order], dtype=np.int64)
        votes = np.zeros((nc, k))
        np.add.at(votes, (to_coarse, fine), w + 1e-30)
        part = votes.argmax(axis=1)
    else:
        mean_pos = np.zeros(nc)
        np.add.at(mean_pos, to_coarse, np.arange(p.n, dtype=float))
        mean_pos /= np.bincount(to_coarse, minlength=nc)
        order = np.argsort(mean_pos, kind="stable")
        part = np.empty(nc, dtype=np.int64)
        part[order] = balanced_split(cw[order], k) if nc >= k else np.arange(nc) % k
    for li in range(len(levels) - 1, -1, -1):
        _, lw, ladj = levels[li]
        _refine(part, lw, ladj, cap, k, rng)
        if li > 0:
            part = part[levels[li][0]]
    return part.astype(np.int64)
