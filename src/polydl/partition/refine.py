"""Bottleneck-aimed local search on a plan: move single nodes and swap the ends of cut edges.

A move is accepted only if it makes the vector of device loads (compute + communication),
sorted from the largest, lexicographically smaller: the bottleneck never grows and the search
terminates. Candidates: nodes of the slowest device next to another device (moved there),
nodes next to the slowest device (moved onto it, which can save its communication), and swaps
across its cut edges. Memory limits are kept; with ``acyclic=True`` every edge keeps going from
a device to the same or a later device (so stage ``d`` stays before ``d + 1`` and the stage graph
stays acyclic), which holds for pipeline plans.
"""

from __future__ import annotations

import math

import numpy as np

from .problem import Problem


class _State:
    def __init__(self, p: Problem, assign: np.ndarray) -> None:
        self.p = p
        k, n = p.k, p.n
        self.k = k
        self.a = [int(x) for x in assign]
        self.times = p.times.T.tolist()  # times[v][d]
        tr = p.cost.transfers
        self.lat = [tr * d.link_latency for d in p.devices]
        self.ibw = [tr / d.link_bandwidth for d in p.devices]
        self.nbr: list[list[tuple[int, float]]] = [[] for _ in range(n)]
        self.preds: list[list[int]] = [[] for _ in range(n)]
        self.succs: list[list[int]] = [[] for _ in range(n)]
        for u, v, b in zip(p.eu.tolist(), p.ev.tolist(), p.eb.tolist(), strict=True):
            self.nbr[u].append((v, b))
            self.nbr[v].append((u, b))
            self.succs[u].append(v)
            self.preds[v].append(u)
        self.compute = [0.0] * k
        self.ncut = [0] * k
        self.nbytes = [0.0] * k
        for v in range(n):
            self.compute[self.a[v]] += self.times[v][self.a[v]]
        for u, v, b in zip(p.eu.tolist(), p.ev.tolist(), p.eb.tolist(), strict=True):
            du, dv = self.a[u], self.a[v]
            if du != dv:
                for d in (du, dv):
                    self.ncut[d] += 1
                    self.nbytes[d] += b
        self.limits = [p.memory_limit(d) for d in range(k)]
        self.check_memory = any(math.isfinite(x) for x in self.limits)
        if self.check_memory:
            self.pf = p.cost.param_factor
            self.infl = [p.inflight(d) for d in range(k)]
            self.params = p.params.tolist()
            self.outs = p.outs.tolist()
            self.live = p.live.tolist()
            self.pbytes = [0.0] * k
            self.act = [0.0] * k
            for v in range(n):
                self.pbytes[self.a[v]] += self.params[v]
                self.act[self.a[v]] += self.outs[v]

    def load(self, d: int) -> float:
        return self.compute[d] + self.ncut[d] * self.lat[d] + self.nbytes[d] * self.ibw[d]

    def key(self) -> list[float]:
        return sorted((self.load(d) for d in range(self.k)), reverse=True)

    def move(self, v: int, b: int) -> None:
        a = self.a[v]
        if a == b:
            return
        tv = self.times[v]
        self.compute[a] -= tv[a]
        self.compute[b] += tv[b]
        for u, by in self.nbr[v]:
            du = self.a[u]
            if du != a:  # was cut: uncharge a and du
                self.ncut[a] -= 1
                self.nbytes[a] -= by
                self.ncut[du] -= 1
                self.nbytes[du] -= by
            if du != b:  # is cut: charge b and du
                self.ncut[b] += 1
                self.nbytes[b] += by
                self.ncut[du] += 1
                self.nbytes[du] += by
        if self.check_memory:
            self.pbytes[a] -= self.params[v]
            self.pbytes[b] += self.params[v]
            self.act[a] -= self.outs[v]
            self.act[b] += self.outs[v]
        self.a[v] = b

    def memory_ok(self, devices: set[int]) -> bool:
        if not self.check_memory:
            return True
        for d in devices:
            if not math.isfinite(self.limits[d]):
                continue
            peak = max((self.live[v] for v in range(len(self.a)) if self.a[v] == d), default=0.0)
            need = self.pf * self.pbytes[d] + self.infl[d] * self.act[d] + peak
            if need > self.limits[d] * (1 + 1e-12):
                return False
        return True

    def monotone_ok(self, v: int, b: int) -> bool:
        return all(self.a[u] <= b for u in self.preds[v]) and all(
            self.a[w] >= b for w in self.succs[v]
        )


def _better(new: list[float], old: list[float]) -> bool:
    tol = 1e-12 * max(old[0], 1e-300)
    for x, y in zip(new, old, strict=True):
        if x < y - tol:
            return True
        if x > y + tol:
            return False
    return False


def refine(
    p: Problem,
    assign: np.ndarray,
    *,
    acyclic: bool = False,
    max_evals: int = 200_000,
) -> np.ndarray:
    """An assignment no worse than ``assign`` (same bottleneck or lower), valid for memory (if
    ``assign`` was) and monotone along the device order if ``acyclic`` (if ``assign`` was)."""
    st = _State(p, np.asarray(assign, dtype=np.int64))
    k = p.k
    if k < 2:
        return np.asarray(assign, dtype=np.int64).copy()
    evals = 0
    cur = st.key()

    def attempt(moves: list[tuple[int, int]]) -> bool:
        nonlocal cur, evals
        evals += 1
        if acyclic:
            # check each move against the assignment after the earlier moves of the group
            undo: list[tuple[int, int]] = []
            ok = True
            for v, b in moves:
                if not st.monotone_ok(v, b):
                    ok = False
                    break
                undo.append((v, st.a[v]))
                st.move(v, b)
            if not ok:
                for v, a in reversed(undo):
                    st.move(v, a)
                return False
        else:
            undo = [(v, st.a[v]) for v, _ in moves]
            for v, b in moves:
                st.move(v, b)
        new = st.key()
        touched = {a for _, a in undo} | {b for _, b in moves}
        if _better(new, cur) and st.memory_ok(touched):
            cur = new
            return True
        for v, a in reversed(undo):
            st.move(v, a)
        return False

    improved = True
    while improved and evals < max_evals:
        improved = False
        top = max(range(k), key=st.load)
        # nodes on the slowest device with a neighbour elsewhere, and nodes next to it
        out_c: list[tuple[int, int]] = []
        in_c: list[int] = []
        swaps: list[tuple[int, int]] = []
        for v in range(p.n):
            dv = st.a[v]
            for u, _ in st.nbr[v]:
                du = st.a[u]
                if dv == top and du != top:
                    out_c.append((v, du))
                    swaps.append((v, u))
                elif dv != top and du == top:
                    in_c.append(v)
        seen: set[tuple[int, int]] = set()
        for v, b in out_c:
            if (v, b) in seen or st.a[v] != top:
                continue
            seen.add((v, b))
            if attempt([(v, b)]):
                improved = True
                break
        if improved:
            continue
        for v in dict.fromkeys(in_c):
            if st.a[v] != top and attempt([(v, top)]):
                improved = True
                break
        if improved:
            continue
        for v, u in swaps:
            dv, du = st.a[v], st.a[u]
            if dv != top or du == top:
                continue
            if attempt([(v, du), (u, dv)]):
                improved = True
                break
            if evals >= max_evals:
                break
        if not improved and evals < max_evals:
            improved, used = _fm_pass(st, cur, acyclic, max_evals - evals)
            evals += used
            cur = st.key()
    return np.array(st.a, dtype=np.int64)


def _fm_pass(
    st: _State, cur: list[float], acyclic: bool, budget: int, max_steps: int = 40
) -> tuple[bool, int]:
    """One Fiduccia-Mattheyses pass: move boundary nodes one at a time, each time the best move
    (smallest sorted load vector, even if worse than now), each node at most once; then roll back
    to the best prefix of the sequence. Finds group moves (a run of nodes crossing together) that
    no single move or swap improves. Returns (improved, evaluations used)."""
    n = len(st.a)
    locked: set[int] = set()
    history: list[tuple[int, int]] = []
    best, best_len, evals = cur, 0, 0
    cands = {v for v in range(n) if any(st.a[u] != st.a[v] for u, _ in st.nbr[v])}
    for _ in range(max_steps):
        choice: tuple[list[float], int, int] | None = None
        for v in sorted(cands - locked):
            dv = st.a[v]
            targets = {st.a[u] for u, _ in st.nbr[v]} - {dv}
            for b in targets:
                if acyclic and not st.monotone_ok(v, b):
                    continue
                evals += 1
                st.move(v, b)
                key = st.key()
                if (choice is None or key < choice[0]) and st.memory_ok({dv, b}):
                    choice = (key, v, b)
                st.move(v, dv)
        if choice is None or evals >= budget:
            break
        key, v, b = choice
        history.append((v, st.a[v]))
        st.move(v, b)
        locked.add(v)
        cands.update(u for u, _ in st.nbr[v])
        if _better(key, best):
            best, best_len = key, len(history)
    for v, a in reversed(history[best_len:]):
        st.move(v, a)
    return best_len > 0, evals
