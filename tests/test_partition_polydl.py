"""``run_plan(..., backend="polydl")``: a plan's stages compiled by polydl in gloo processes
(skipped without torch)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is an optional dependency")

import polydl as pd  # noqa: E402
from polydl.errors import PartitionError  # noqa: E402
from polydl.partition.distributed import run_plan  # noqa: E402
from polydl.partition.stages import split_stages, stage_module  # noqa: E402
from polydl.partition.torch_import import export  # noqa: E402


class Branchy(torch.nn.Module):
    """Two branches joined by an add: a DAG plan can give a device two separate stages."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(37, 53)
        self.b = torch.nn.Linear(37, 53)
        self.c = torch.nn.Linear(53, 11)

    def forward(self, x):
        return self.c(torch.relu(self.a(x)) + torch.relu(self.b(x)))


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(37, 53),
        torch.nn.ReLU(),
        torch.nn.Linear(53, 29),
        torch.nn.ReLU(),
        torch.nn.Linear(29, 11),
    ).eval()


def test_stages_run_in_order_equal_the_module():
    """Split on an interleaved assignment (device 0, 1, 0, ...): each stage's fx module, run
    in order on the values before it, gives the module's output."""
    torch.manual_seed(1)
    model = Branchy().eval()
    x = torch.randn(7, 37)
    ep = export(model, (x,))
    calls = [n.name for n in ep.graph.nodes if n.op == "call_function"]
    assignment = {name: i % 2 for i, name in enumerate(calls)}
    stages = split_stages(ep, assignment)
    assert len(stages) == len(calls)  # every node its own stage: the devices alternate
    assert [s.device for s in stages] == [i % 2 for i in range(len(calls))]
    (user,) = ep.graph_signature.user_inputs
    env = {user: x}
    with torch.no_grad():
        for s in stages:
            out = stage_module(ep, s)(*[env[n] for n in s.inputs])
            env.update(zip(s.outputs, out if isinstance(out, tuple) else (out,), strict=True))
        want = model(x)
    assert stages[-1].outputs == (calls[-1],)
    torch.testing.assert_close(env[calls[-1]], want)


def test_pipeline_assignment_gives_one_stage_per_device():
    model = _mlp()
    x = torch.randn(5, 37)
    ep = export(model, (x,))
    calls = [n.name for n in ep.graph.nodes if n.op == "call_function"]
    assignment = {name: int(i >= 2) for i, name in enumerate(calls)}
    first, second = split_stages(ep, assignment)
    assert (first.device, second.device) == (0, 1)
    assert first.nodes == tuple(calls[:2]) and second.nodes == tuple(calls[2:])
    assert first.outputs == (calls[1],) and second.inputs == (calls[1],)
    assert second.outputs == (calls[-1],)


def test_two_process_polydl_run_equals_torch_and_compile_model():
    model = _mlp()
    x = torch.randn(13, 37)
    plan = pd.partition(model, devices=2, example_inputs=(x,), bandwidth="1TB/s")
    assert {a["device"] for a in plan.nodes.values()} == {0, 1}
    out, stages = run_plan(model, (x,), plan, timeout=60, backend="polydl", report=True)
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    single = pd.compile_model(model, (x,), threads=1)(x).numpy()
    np.testing.assert_allclose(out, single, rtol=1e-5, atol=1e-6)
    assert [len(s) for s in stages] == [1, 1]  # a pipeline plan: one stage per process
    ran = [n for s in stages for st in s for n in st["nodes"]]
    assert sorted(ran) == sorted(plan.nodes)  # every node ran, each once
    for rank, (st,) in enumerate(stages):
        assert st["device"] == rank
        assert st["kernels"] >= 1, st["report"]  # the stage ran polydl kernels ...
        assert st["fallbacks"] == 0, st["report"]  # ... and nothing of it fell back
        assert "polydl kernel" in st["report"]


def test_interleaved_plan_runs_two_stages_per_process():
    """A DAG placement: device 0 runs branch a, then the add (reading device 1's branch b),
    device 1 runs branch b, then the last linear (reading the add): two stages each."""
    from polydl.partition.placement import Plan

    torch.manual_seed(2)
    model = Branchy().eval()
    x = torch.randn(11, 37)
    ep = export(model, (x,))
    calls = [n.name for n in ep.graph.nodes if n.op == "call_function"]
    assert calls == ["linear", "relu", "linear_1", "relu_1", "add", "linear_2"]
    devices = dict(zip(calls, [0, 0, 1, 1, 0, 1], strict=True))
    plan = Plan(
        model="Branchy",
        devices=2,
        nodes={n: {"device": d} for n, d in devices.items()},
        edges=[],
        stages=[],
        bottleneck_s=0.0,
        lower_bound_s=None,
        comm_bytes=0,
    )
    out, stages = run_plan(model, (x,), plan, timeout=60, backend="polydl", report=True)
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x).numpy(), rtol=1e-4, atol=1e-5)
    assert [[st["nodes"] for st in s] for s in stages] == [
        [["linear", "relu"], ["add"]],
        [["linear_1", "relu_1"], ["linear_2"]],
    ]
    assert all(st["kernels"] >= 1 and st["fallbacks"] == 0 for s in stages for st in s)


def test_unknown_backend_is_named():
    model = _mlp()
    x = torch.randn(3, 37)
    plan = pd.partition(model, devices=2, example_inputs=(x,), bandwidth="1TB/s")
    with pytest.raises(PartitionError, match="backend must be 'torch' or 'polydl'.*'tvm'"):
        run_plan(model, (x,), plan, backend="tvm")
