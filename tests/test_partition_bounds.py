"""Lower bounds (valid for every partition, checked by brute force) and the local search."""

from __future__ import annotations

import itertools
import random

import networkx as nx
import numpy as np
import pytest
from partition_util import general_optimum

from polydl.partition import Device, from_networkx, partition
from polydl.partition import milp as milp_module
from polydl.partition.bounds import bounds, lower_bound, min_cut, window_cut_bound, work_bound
from polydl.partition.milp import milp_bound
from polydl.partition.placement import make_plan
from polydl.partition.problem import build_problem, stage_costs
from polydl.partition.refine import refine
from polydl.partition.roofline import CostModel


def chain_graph(rng: random.Random, n: int) -> nx.DiGraph:
    """A chain with a few skip edges, like a network's dataflow graph."""
    g = nx.DiGraph()
    for i in range(n):
        g.add_node(
            f"v{i}",
            op=rng.choice(["MatMul", "Conv", "Relu"]),
            flops=rng.uniform(1e8, 5e9),
            param_bytes=rng.randint(0, 4) * 1_000_000,
            out_bytes=rng.randint(1, 50) * 100_000,
        )
    for j in range(1, n):
        g.add_edge(f"v{j - 1}", f"v{j}")
        if j >= 2 and rng.random() < 0.3:
            g.add_edge(f"v{rng.randrange(j - 1)}", f"v{j}")
    return g


def small_problem(seed: int, n: int | None = None):
    rng = random.Random(seed)
    n = n or rng.randint(4, 7)
    k = rng.randint(2, 3)
    bw = rng.choice([2e8, 1e9, 25e9])
    devs = [
        Device(name=f"d{i}", peak_flops=rng.choice([1e12, 2e12]), link_bandwidth=bw)
        for i in range(k)
    ]
    mode = rng.choice(["inference", "training"])
    return build_problem(from_networkx(chain_graph(rng, n)), devs, CostModel(mode=mode))


@pytest.mark.parametrize("seed", range(40))
def test_lower_bound_never_exceeds_the_general_optimum(seed):
    p = small_problem(seed)
    assert lower_bound(p) <= general_optimum(p) * (1 + 1e-9)


def test_window_cut_bound_is_exercised():
    # the communication term must lift the bound above max(W/K, heaviest) on some of these
    lifted = 0
    for seed in range(40):
        p = small_problem(seed)
        lifted += window_cut_bound(p) > work_bound(p) * (1 + 1e-9)
    assert lifted >= 5


@pytest.mark.parametrize("seed", range(10))
def test_min_cut_equals_stoer_wagner(seed):
    rng = random.Random(seed)
    g = nx.connected_watts_strogatz_graph(rng.randint(3, 25), 4, 0.3, seed=seed)
    m = g.number_of_nodes()
    w = np.zeros((m, m))
    for u, v in g.edges:
        x = rng.choice([1.0, 2.0, 5.0, rng.uniform(0.1, 10)])
        g.edges[u, v]["weight"] = x
        w[u, v] = w[v, u] = x
    want, _ = nx.stoer_wagner(g)
    assert min_cut(w) == pytest.approx(want)
    w2 = np.zeros((m + 2, m + 2))
    w2[:m, :m] = w
    w2[m, m + 1] = w2[m + 1, m] = 1.0
    assert min_cut(w2) == 0.0  # disconnected
    assert min_cut(np.zeros((1, 1))) == np.inf


def test_builtin_bounds_below_plans():
    for model in ("resnet50", "bert-base"):
        plan = partition(model, devices=4, algorithm="auto")
        assert work_bound(plan.problem) <= plan.lower_bound_s <= plan.bottleneck_s
        assert plan.bottleneck_s <= plan.contiguous_optimum_s * (1 + 1e-12)


def _bottleneck(p, assign) -> float:
    compute, comm, _ = stage_costs(p, assign)
    return float((compute + comm).max())


@pytest.mark.parametrize("seed", range(15))
def test_local_search_never_worsens_and_keeps_plans_valid(seed):
    rng = random.Random(1000 + seed)
    n = rng.randint(8, 30)
    k = rng.randint(2, 4)
    g = from_networkx(chain_graph(rng, n))
    free = build_problem(g, [Device()] * k, CostModel(mode="training"), micro_batches=2)
    start = np.array([rng.randrange(k) for _ in range(n)], dtype=np.int64)
    mem = make_plan(free, start, "x").stages
    limit = max(s["peak_memory_bytes"] for s in mem)  # the start fits, tighter ones may not
    devs = [Device(name=f"d{i}", memory_bytes=limit, link_bandwidth=5e9) for i in range(k)]
    p = build_problem(g, devs, CostModel(mode="training"), micro_batches=2)
    out = refine(p, start)
    assert out.shape == (n,) and out.min() >= 0 and out.max() < k
    assert _bottleneck(p, out) <= _bottleneck(p, start) * (1 + 1e-12)
    make_plan(p, out, "refined")  # raises if a memory limit is broken
    assert lower_bound(p) <= _bottleneck(p, out) * (1 + 1e-9)
    # monotone (pipeline) plans stay monotone with acyclic=True
    mono = np.sort(start)
    p = build_problem(g, [Device(link_bandwidth=5e9)] * k, CostModel(mode="training"))
    out = refine(p, mono, acyclic=True)
    assert np.all(out[p.eu] <= out[p.ev])
    assert _bottleneck(p, out) <= _bottleneck(p, mono) * (1 + 1e-12)


def test_auto_improves_on_the_contiguous_plan_and_metis_on_bert():
    pytest.importorskip("pymetis", reason="pymetis is an optional baseline")
    auto = partition("bert-base", devices=2, algorithm="auto")
    metis = partition("bert-base", devices=2, algorithm="metis")
    assert auto.bottleneck_s <= metis.bottleneck_s * (1 + 1e-12)
    assert auto.bottleneck_s < auto.contiguous_optimum_s


def general_optimum_fitting(p) -> float:
    """Best bottleneck over every assignment that ``make_plan`` accepts (memory limits kept)."""
    best = np.inf
    limits = np.array([p.memory_limit(d) for d in range(p.k)])
    for assign in itertools.product(range(p.k), repeat=p.n):
        compute, comm, memory = stage_costs(p, np.array(assign, dtype=np.int64))
        if np.all(memory <= limits * (1 + 1e-12)):
            best = min(best, float((compute + comm).max()))
    return best


@pytest.mark.parametrize("seed", range(30))
def test_milp_bound_is_valid_and_exact_when_solved(seed):
    pytest.importorskip("scipy.optimize", reason="the MILP bound needs scipy")
    p = small_problem(seed)
    opt = general_optimum(p)
    value = milp_bound(p, time_limit=60.0)
    assert value is not None
    assert value <= opt * (1 + 1e-9)
    # tiny graphs are solved to optimality, and the program is exactly the planner's objective
    assert value == pytest.approx(opt, rel=1e-5)


@pytest.mark.parametrize("seed", range(8))
def test_milp_bound_with_memory_limits_is_valid_and_exact(seed):
    pytest.importorskip("scipy.optimize", reason="the MILP bound needs scipy")
    rng = random.Random(500 + seed)
    n, k = rng.randint(4, 6), rng.randint(2, 3)
    g = from_networkx(chain_graph(rng, n))
    free = build_problem(g, [Device()] * k, CostModel(mode="training"), micro_batches=2)
    start = np.array([rng.randrange(k) for _ in range(n)], dtype=np.int64)
    limit = max(s["peak_memory_bytes"] for s in make_plan(free, start, "x").stages)
    devs = [Device(name=f"d{i}", memory_bytes=limit, link_bandwidth=5e8) for i in range(k)]
    p = build_problem(g, devs, CostModel(mode="training"), micro_batches=2)
    opt = general_optimum_fitting(p)  # finite: ``start`` fits
    value = milp_bound(p, time_limit=60.0)
    assert value is not None
    assert value <= opt * (1 + 1e-9)
    assert value == pytest.approx(opt, rel=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_milp_bound_under_a_tight_time_limit_stays_below_the_optimum(seed):
    pytest.importorskip("scipy.optimize", reason="the MILP bound needs scipy")
    p = small_problem(900 + seed, n=8)
    for limit in (0.0, 0.01):
        value = milp_bound(p, time_limit=limit)
        assert value is None or value <= general_optimum(p) * (1 + 1e-9)


def test_milp_bound_skipped_cleanly(monkeypatch):
    p = small_problem(3)
    assert milp_bound(p, max_nodes=p.n - 1) is None  # above the node limit
    monkeypatch.setattr(milp_module, "milp_available", lambda: False)
    q = small_problem(3)
    assert milp_bound(q) is None
    got = bounds(q)
    assert got["milp"] is None
    assert lower_bound(q) == max(v for k, v in got.items() if k != "milp" and v is not None)


def test_milp_bound_lifts_the_bound_on_resnet50(monkeypatch):
    pytest.importorskip("scipy.optimize", reason="the MILP bound needs scipy")
    monkeypatch.setenv("POLYDL_MILP_SECONDS", "1")
    plan = partition("resnet50", devices=4, algorithm="auto")
    got = bounds(plan.problem)
    assert got["milp"] is not None
    assert got["milp"] <= plan.bottleneck_s
    assert plan.lower_bound_s == max(v for v in got.values() if v is not None)
