"""torch import and a real 2-process gloo run of a partitioned model (skipped without torch)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is an optional dependency")

import polydl as pd  # noqa: E402
from polydl.partition import builtin, load_model  # noqa: E402
from polydl.partition.distributed import run_plan, torch_mlp3  # noqa: E402


class Branchy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(64, 128)
        self.b = torch.nn.Linear(64, 128)
        self.c = torch.nn.Linear(128, 16)

    def forward(self, x):
        return self.c(torch.relu(self.a(x)) + torch.tanh(self.b(x)))


def test_torch_import_matches_builtin_mlp3():
    x = torch.randn(32, 256)
    g = load_model(torch_mlp3(), example_inputs=(x,))
    ref = builtin("mlp3")
    assert g.total_param_bytes() == ref.total_param_bytes()
    assert g.total_flops() >= ref.total_flops() * 0.99
    plan = pd.partition(torch_mlp3(), devices=2, example_inputs=(x,))
    assert {a["device"] for a in plan.nodes.values()} == {0, 1}


@pytest.mark.parametrize("algorithm", ["pipeline", "dag"])
def test_two_process_run_equals_unpartitioned(algorithm):
    x = torch.randn(8, 64)
    model = Branchy().eval()
    plan = pd.partition(
        model, devices=2, example_inputs=(x,), algorithm=algorithm, bandwidth="1TB/s"
    )
    if algorithm == "pipeline":
        assert len({a["device"] for a in plan.nodes.values()}) == 2
    out = run_plan(model, (x,), plan, timeout=60)
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_two_process_mlp3():
    x = torch.randn(32, 256)
    model = torch_mlp3()
    plan = pd.partition(model, devices=2, example_inputs=(x,))
    assert any(e["cut"] for e in plan.edges)
    out = run_plan(model, (x,), plan, timeout=60)
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x).numpy(), rtol=1e-5, atol=1e-5)
