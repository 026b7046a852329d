"""Partitioner core: models, cost model, exact pipeline DP (vs brute force), plan JSON, errors."""

from __future__ import annotations

import itertools
import json
import math
import random

import networkx as nx
import numpy as np
import pytest

import polydl as pd
from polydl.errors import PartitionError, PolyDLError
from polydl.partition import Device, builtin, from_networkx, partition
from polydl.partition.contiguous import balanced_split
from polydl.partition.placement import make_plan
from polydl.partition.problem import build_problem
from polydl.partition.roofline import CostModel, load_devices, parse_quantity

PLAN_KEYS = {
    "model",
    "devices",
    "nodes",
    "edges",
    "stages",
    "bottleneck_s",
    "lower_bound_s",
    "comm_bytes",
}


def random_graph(rng: random.Random, n: int) -> nx.DiGraph:
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
        for i in rng.sample(range(j), k=min(j, rng.randint(1, 2))):
            g.add_edge(f"v{i}", f"v{j}")
    return g


def brute_force(p) -> float:
    """Best bottleneck over every split of p.order into K non-empty contiguous stages."""
    best = math.inf
    for cuts in itertools.combinations(range(1, p.n), p.k - 1):
        assign = np.zeros(p.n, dtype=np.int64)
        for c in cuts:
            assign[c:] += 1
        try:
            plan = make_plan(p, assign, "brute")
        except PartitionError:
            continue
        best = min(best, plan.bottleneck_s)
    return best


def test_builtin_models_have_their_published_sizes():
    assert builtin("resnet50").total_param_bytes() / 4 == pytest.approx(25.557e6, rel=1e-3)
    assert builtin("bert-base").total_param_bytes() / 4 == pytest.approx(109.48e6, rel=1e-3)
    assert builtin("gpt2-small").total_param_bytes() / 4 == pytest.approx(124.44e6, rel=1e-3)
    assert builtin("resnet50").total_flops() == pytest.approx(8.24e9, rel=0.02)
    r2 = builtin("resnet50", batch=2)
    assert r2.total_flops() == pytest.approx(2 * builtin("resnet50").total_flops())
    assert builtin("random-dag-500").num_nodes == 500


def test_plan_json_fields_and_consistency(tmp_path):
    plan = partition("bert-base", devices=4)
    data = json.loads(plan.to_json())
    assert set(data) == PLAN_KEYS
    assert data["devices"] == 4 and len(data["stages"]) == 4
    assert {s["device"] for s in data["stages"]} == {0, 1, 2, 3}
    assert set(data["nodes"]) == set(builtin("bert-base").graph.nodes)
    for a in data["nodes"].values():
        assert set(a) == {"device", "flops", "compute_s", "param_bytes", "out_bytes"}
    for e in data["edges"]:
        assert set(e) == {"src", "dst", "bytes", "cut"}
        assert e["cut"] == (data["nodes"][e["src"]]["device"] != data["nodes"][e["dst"]]["device"])
    assert data["comm_bytes"] == sum(e["bytes"] for e in data["edges"] if e["cut"])
    totals = [s["compute_s"] + s["comm_s"] for s in data["stages"]]
    assert data["bottleneck_s"] == pytest.approx(max(totals))
    assert data["lower_bound_s"] <= data["bottleneck_s"]
    for d in range(4):
        assert data["stages"][d]["compute_s"] == pytest.approx(
            sum(a["compute_s"] for a in data["nodes"].values() if a["device"] == d)
        )
    path = tmp_path / "plan.json"
    plan.to_json(str(path))
    assert json.loads(path.read_text()) == data


def test_pipeline_stages_are_contiguous_in_topological_order():
    plan = partition("resnet50", devices=4)
    order = plan.problem.order
    devs = [plan.nodes[v]["device"] for v in order]
    assert devs == sorted(devs) and set(devs) == {0, 1, 2, 3}
    assert plan.stages[0]["comm_s"] > 0


@pytest.mark.parametrize("seed", range(12))
def test_dp_equals_brute_force_on_random_dags(seed):
    rng = random.Random(seed)
    n = rng.randint(4, 9)
    g = random_graph(rng, n)
    k = rng.randint(2, min(4, n))
    mode = rng.choice(["inference", "training"])
    devs = [
        Device(
            name=f"d{i}",
            peak_flops=rng.choice([1e12, 2e12]),
            link_bandwidth=rng.choice([1e9, 25e9]),
            link_latency=rng.choice([0.0, 1e-4]),
        )
        for i in range(k)
    ]
    p = build_problem(from_networkx(g), devs, CostModel(mode=mode), micro_batches=rng.randint(1, 4))
    plan = partition(from_networkx(g), devs, mode=mode, micro_batches=p.micro_batches)
    assert plan.bottleneck_s == pytest.approx(brute_force(p), rel=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_dp_respects_memory_limits_like_brute_force(seed):
    rng = random.Random(100 + seed)
    g = random_graph(rng, 8)
    k = 3
    free = build_problem(
        from_networkx(g), [Device()] * k, CostModel(mode="training"), micro_batches=2
    )
    need = [make_plan(free, a, "x").stages for a in [np.repeat(np.arange(k), [3, 3, 2])]][0]
    limit = 0.8 * max(s["peak_memory_bytes"] for s in need)
    devs = [Device(name=f"d{i}", memory_bytes=limit) for i in range(k)]
    p = build_problem(from_networkx(g), devs, CostModel(mode="training"), micro_batches=2)
    want = brute_force(p)
    if math.isinf(want):
        with pytest.raises(PartitionError, match="memory|needs"):
            partition(from_networkx(g), devs, mode="training", micro_batches=2)
    else:
        plan = partition(from_networkx(g), devs, mode="training", micro_batches=2)
        assert plan.bottleneck_s == pytest.approx(want, rel=1e-9)
        assert all(s["peak_memory_bytes"] <= limit for s in plan.stages)


def test_dp_never_worse_than_deepspeed_baselines():
    for model in ("resnet50", "gpt2-small"):
        for k in (2, 4):
            best = partition(model, devices=k).bottleneck_s
            for alg in ("uniform", "parameters"):
                assert best <= partition(model, devices=k, algorithm=alg).bottleneck_s * (1 + 1e-12)


def test_lower_bound_is_below_every_plan_and_at_least_work_over_k():
    plan = partition("gpt2-small", devices=8, mode="training")
    work = sum(a["compute_s"] for a in plan.nodes.values())
    heaviest = max(a["compute_s"] for a in plan.nodes.values())
    assert plan.lower_bound_s >= max(work / 8, heaviest) * (1 - 1e-12)
    assert plan.lower_bound_s <= plan.bottleneck_s


def test_training_costs_more_than_inference():
    inf = partition("mlp3", devices=2)
    tr = partition("mlp3", devices=2, mode="training")
    fc2_inf, fc2_tr = inf.nodes["fc2"], tr.nodes["fc2"]
    assert fc2_tr["flops"] == pytest.approx(3 * fc2_inf["flops"])
    assert sum(s["peak_memory_bytes"] for s in tr.stages) > sum(
        s["peak_memory_bytes"] for s in inf.stages
    )


def test_cost_model_roofline_and_hook():
    attrs = {"op": "MatMul", "flops": 2e12, "param_bytes": 0, "out_bytes": 4, "in_bytes": 4}
    dev = Device(peak_flops=1e12, efficiency={"MatMul": 0.5, "default": 0.5})
    assert CostModel().node_time(attrs, dev) == pytest.approx(4.0)
    relu = {"op": "Relu", "flops": 1e6, "param_bytes": 0, "out_bytes": 10**9, "in_bytes": 10**9}
    assert CostModel().node_time(relu, Device(mem_bandwidth=1e11)) == pytest.approx(0.02)
    hook = CostModel(kernel_time=lambda op, a, d, mode: 1.0 if op == "MatMul" else None)
    assert hook.node_time(attrs, dev) == 1.0 and hook.node_time(relu, dev) < 1.0


def test_bandwidth_changes_the_communication_time():
    slow = partition("bert-base", devices=2, bandwidth="1GB/s")
    fast = partition("bert-base", devices=2, bandwidth="100GB/s")
    assert slow.stages[0]["comm_s"] > fast.stages[0]["comm_s"]
    assert slow.bottleneck_s >= fast.bottleneck_s


def test_parse_quantity():
    assert parse_quantity("16GB", "memory", "B") == 16e9
    assert parse_quantity("512MiB", "memory", "B") == 512 * 2**20
    assert parse_quantity("25GB/s", "bw", "B/s") == 25e9
    with pytest.raises(PartitionError, match="memory"):
        parse_quantity("lots", "memory", "B")


def test_heterogeneous_devices_from_json(tmp_path):
    desc = {
        "devices": [
            {"name": "big", "peak_flops": "8TFLOPS", "link_bandwidth": "50GB/s"},
            {"name": "small", "peak_flops": "1TFLOPS", "count": 2},
        ]
    }
    path = tmp_path / "devices.json"
    path.write_text(json.dumps(desc))
    devs = load_devices(path)
    assert [d.name for d in devs] == ["big", "small.0", "small.1"]
    plan = partition("bert-base", devices=str(path))
    work = [s["compute_s"] for s in plan.stages]
    counts = [sum(1 for a in plan.nodes.values() if a["device"] == d) for d in range(3)]
    assert counts[0] > counts[1] and counts[0] > counts[2]
    assert max(work) <= plan.bottleneck_s
    bad = tmp_path / "bad.json"
    bad.write_text('{"devices": [{"name": "x", "speed": 3}]}')
    with pytest.raises(PartitionError, match="unknown fields"):
        load_devices(bad)


def test_errors_are_partition_errors_naming_the_problem():
    g = nx.DiGraph()
    g.add_edges_from([("a", "b"), ("b", "c"), ("c", "a")])
    with pytest.raises(PartitionError, match="cycle"):
        partition(g, devices=2)
    with pytest.raises(PartitionError, match="K=8 is larger"):
        partition("mlp3", devices=8)
    with pytest.raises(PartitionError, match="unknown model 'nope'"):
        partition("nope", devices=2)
    with pytest.raises(PartitionError, match="node .embed.word. alone needs"):
        partition("gpt2-small", devices=2, memory="100MB")
    assert issubclass(PartitionError, PolyDLError)


def test_infeasible_memory_names_a_node_or_stage():
    with pytest.raises(PartitionError, match=r"node 'embed.word' alone needs"):
        partition("gpt2-small", devices=4, memory="150MB", mode="training")
    with pytest.raises(PartitionError, match=r"stage \d .* on device"):
        partition("resnet50", devices=2, memory="50MB")


def test_memory_limit_changes_the_split_but_is_respected():
    free = partition("resnet50", devices=2, mode="training")
    heavy = max(s["peak_memory_bytes"] for s in free.stages)
    light = min(s["peak_memory_bytes"] for s in free.stages)
    limit = (heavy + max(light, heavy * 0.6)) / 2
    plan = partition("resnet50", devices=2, mode="training", memory=limit)
    assert all(s["peak_memory_bytes"] <= limit for s in plan.stages)
    assert plan.bottleneck_s >= free.bottleneck_s


def test_balanced_split_is_optimal_for_small_inputs():
    rng = random.Random(5)
    for _ in range(30):
        w = np.array([rng.uniform(0, 10) for _ in range(rng.randint(3, 8))])
        k = rng.randint(1, len(w))
        a = balanced_split(w, k)
        got = max(w[a == s].sum() for s in range(k))
        assert set(a) == set(range(k)) and list(a) == sorted(a)
        best = min(
            max(w[i:j].sum() for i, j in zip((0, *c), (*c, len(w)), strict=True))
            for c in itertools.combinations(range(1, len(w)), k - 1)
        )
        assert got == pytest.approx(best)


def test_public_name():
    assert pd.partition is partition
