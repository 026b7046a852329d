"""The Lagrangian (configuration-LP) lower bound: exact set search, validity, strength."""

from __future__ import annotations

import itertools
import math
import random

import networkx as nx
import numpy as np
import pytest
from partition_util import general_optimum

from polydl.partition import Device, from_networkx, lagrange, partition
from polydl.partition.bounds import bounds, window_cut_bound, work_bound
from polydl.partition.contiguous import contiguous_optimum
from polydl.partition.problem import build_problem
from polydl.partition.roofline import CostModel


def random_dag(rng: random.Random, n: int) -> nx.DiGraph:
    """A DAG with a chain backbone, branches and skip edges; some nodes take no time."""
    g = nx.DiGraph()
    for i in range(n):
        g.add_node(
            f"v{i}",
            op=rng.choice(["MatMul", "Conv", "Relu"]),
            flops=rng.choice([0.0, rng.uniform(1e8, 5e9), rng.uniform(1e8, 5e9)]),
            param_bytes=rng.randint(0, 4) * 1_000_000,
            out_bytes=rng.randint(1, 50) * 100_000,
        )
    for j in range(1, n):
        if rng.random() < 0.8:
            g.add_edge(f"v{j - 1}", f"v{j}")
        for i in range(j - 1):
            if rng.random() < 0.2:
                g.add_edge(f"v{i}", f"v{j}")
    return g


def random_problem(seed: int, n: int | None = None):
    rng = random.Random(seed)
    n = n or rng.randint(4, 7)
    k = rng.randint(2, 3)
    bw = rng.choice([2e8, 1e9, 25e9])
    devs = [
        Device(name=f"d{i}", peak_flops=rng.choice([1e12, 2e12]), link_bandwidth=bw)
        for i in range(k)
    ]
    mode = rng.choice(["inference", "training"])
    return build_problem(from_networkx(random_dag(rng, n)), devs, CostModel(mode=mode))


def weights(g, rng: np.random.Generator) -> list[np.ndarray]:
    """``pi = t``, scaled ``t``, and weights of both signs."""
    return [g.t, g.t * rng.uniform(0.2, 3.0, g.n), rng.uniform(-1.0, 2.0, g.n)]


@pytest.mark.parametrize("seed", range(40))
def test_min_load_equals_brute_force_over_all_node_sets(seed):
    rng = random.Random(seed)
    p = random_problem(seed, n=rng.randint(4, 11))
    g = lagrange._Graph(p)
    loads = np.array([g.set_load(np.flatnonzero(b)) for b in itertools.product([0, 1], repeat=p.n)])
    members = np.array(list(itertools.product([0, 1], repeat=p.n)), dtype=float)
    for pi in weights(g, np.random.default_rng(seed)):
        values = members @ pi
        theta = pi.sum() / p.k
        want = 0.0 if theta <= 0 else float(loads[values >= theta * (1 - 1e-12)].min())
        got, s = lagrange.min_load(g, pi)
        assert got == pytest.approx(want, rel=1e-9, abs=1e-15)
        assert g.set_load(s) == pytest.approx(got, rel=1e-9, abs=1e-15)
        # the Pareto sets under a load cap are real sets, and the best value is found
        cap = float(rng.uniform(0, loads.max()))
        front = lagrange.pareto_sets(g, pi, load_cap=cap, value_floor=-math.inf)
        assert front is not None
        for ld, v, m in zip(*front, strict=True):
            inside = lagrange._members(m, p.n)
            assert g.set_load(inside) == pytest.approx(ld, rel=1e-9, abs=1e-15)
            assert pi[inside].sum() == pytest.approx(v, rel=1e-9, abs=1e-12)
        assert front[1].max() == pytest.approx(values[loads <= cap].max(), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("seed", range(40))
def test_certificate_is_below_the_general_optimum_for_any_weights(seed):
    # the theorem: bound(pi) <= the bottleneck of every partition, whatever pi
    p = random_problem(seed)
    opt = general_optimum(p)
    g = lagrange._Graph(p)
    for pi in weights(g, np.random.default_rng(100 + seed)):
        assert lagrange.min_load(g, pi)[0] <= opt * (1 + 1e-9)


@pytest.mark.parametrize("seed", range(40))
def test_configuration_bound_never_exceeds_the_general_optimum(seed):
    p = random_problem(500 + seed)
    opt = general_optimum(p)
    value = lagrange.configuration_bound(p, work_bound(p), contiguous_optimum(p), time_limit=5.0)
    assert value is not None
    # pi = t is tried first: every set with t(S) >= W / K has load >= W / K
    assert lagrange._Graph(p).t.sum() / p.k * (1 - 1e-9) <= value <= opt * (1 + 1e-9)


def unit_chain(n: int) -> nx.DiGraph:
    """n nodes of 1 ms each in a chain; each edge costs 0.5 ms + 5 us of latency when cut."""
    g = nx.DiGraph()
    for i in range(n):  # 1e9 FLOPs at 2e12 * 0.5: 1 ms
        g.add_node(f"v{i}", op="Relu", flops=1e9, param_bytes=0, out_bytes=12_500_000)
    for i in range(1, n):
        g.add_edge(f"v{i - 1}", f"v{i}")  # 12.5 MB at 25 GB/s: 0.5 ms
    return g


def test_configuration_bound_sees_the_middle_stage_pay_two_boundaries():
    # 6 nodes over 3 devices: the best plan has a middle stage of 2 nodes + 2 boundaries
    # (3.01 ms); averaging the communication over the devices (window cut) only proves
    # (6 + 2 * 1.01) / 3 = 2.67 ms
    p = build_problem(from_networkx(unit_chain(6)), [Device()] * 3, CostModel())
    opt = general_optimum(p)
    assert opt == pytest.approx(3.01e-3, rel=1e-3)
    window = window_cut_bound(p)
    assert window == pytest.approx((6 + 2 * 1.01) / 3 * 1e-3, rel=1e-3)
    value = lagrange.configuration_bound(p, work_bound(p), contiguous_optimum(p), time_limit=5.0)
    assert value is not None
    assert value > window * 1.1
    assert value == pytest.approx(opt, rel=1e-6)


def test_configuration_bound_skips_wide_frontiers_and_no_time(monkeypatch):
    p = random_problem(7, n=7)
    hi = contiguous_optimum(p)
    assert lagrange.configuration_bound(p, 0.0, hi, time_limit=0.0) is None
    monkeypatch.setattr(lagrange, "MAX_FRONTIER", 0)
    assert lagrange.configuration_bound(p, 0.0, hi, time_limit=1.0) is None
    monkeypatch.setattr(lagrange, "MAX_NODES", 3)
    assert lagrange.configuration_bound(p, 0.0, hi, time_limit=1.0) is None
    monkeypatch.setenv("POLYDL_LP_SECONDS", "0")
    assert bounds(random_problem(7, n=7))["configuration"] is None


@pytest.mark.parametrize("mode", ["inference", "training"])
def test_bottleneck_within_5_percent_of_the_bound_at_k4(monkeypatch, mode):
    # the target for the built-in models at K = 4
    monkeypatch.setenv("POLYDL_LP_SECONDS", "60")  # converges in ~1-2 s; the limit only guards
    for model in ("resnet50", "bert-base"):
        plan = partition(model, devices=4, mode=mode, algorithm="auto")
        got = bounds(plan.problem)
        assert got["configuration"] is not None
        assert got["configuration"] > max(got["work"], got["window_cut"])
        assert plan.lower_bound_s <= plan.bottleneck_s
        assert plan.bottleneck_s <= 1.05 * plan.lower_bound_s
