"""Partitioner I/O: ONNX import, bad files, CLI, pictures, timelines, DAG and METIS algorithms."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import polydl as pd
from polydl.cli import main
from polydl.errors import PartitionError
from polydl.partition.onnx_import import UnknownOpWarning, load_onnx
from polydl.partition.schedule import simulate


def small_onnx(path, *, unknown: bool = False, cyclic: bool = False) -> str:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((8 * 30 * 30, 10)).astype(np.float32), "w2")
    shape = numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], name="conv"),
        helper.make_node(
            "FancyOp" if unknown else "Relu",
            ["c"],
            ["r"],
            name="act",
            **({"domain": "custom"} if unknown else {}),
        ),
        helper.make_node("Reshape", ["r", "shape"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "w2"], ["m"], name="fc"),
        helper.make_node("Add", ["m", "m"] if not cyclic else ["m", "y"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        initializer=[w1, w2, shape],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("custom", 1)] if unknown else [])
    model = helper.make_model(graph, opset_imports=opsets)
    onnx.save(model, str(path))
    return str(path)


def test_onnx_import_shapes_flops_params(tmp_path):
    g = load_onnx(small_onnx(tmp_path / "m.onnx"))
    a = g.graph.nodes
    assert list(g.topological_order()) == ["conv", "act", "flatten", "fc", "add"]
    assert a["conv"]["flops"] == 2.0 * 8 * 30 * 30 * 3 * 3 * 3
    assert a["conv"]["param_bytes"] == 8 * 3 * 3 * 3 * 4
    assert a["conv"]["out_bytes"] == 8 * 30 * 30 * 4
    assert a["fc"]["flops"] == 2.0 * 10 * 8 * 30 * 30
    assert g.graph.edges["act", "flatten"]["bytes"] == 8 * 30 * 30 * 4
    assert g.graph.edges["fc", "add"]["bytes"] == 40
    plan = pd.partition(str(tmp_path / "m.onnx"), devices=2)
    assert set(plan.nodes) == {"conv", "act", "flatten", "fc", "add"}


def test_unknown_op_warns_once_naming_it(tmp_path):
    path = small_onnx(tmp_path / "u.onnx", unknown=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = load_onnx(path)
    msgs = [str(w.message) for w in caught if issubclass(w.category, UnknownOpWarning)]
    assert len(msgs) == 1 and "'FancyOp'" in msgs[0]
    assert g.graph.nodes["act"]["flops"] > 0


def test_bad_onnx_files(tmp_path):
    good = small_onnx(tmp_path / "m.onnx")
    data = open(good, "rb").read()
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(data[: len(data) // 3])
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage\xff\xff\xff" * 10)
    for bad in (trunc, junk):
        with pytest.raises(PartitionError, match=str(bad.name)):
            pd.partition(str(bad), devices=2)
    with pytest.raises(PartitionError, match="cycle"):
        load_onnx(small_onnx(tmp_path / "c.onnx", cyclic=True))
    with pytest.raises(PartitionError, match="no such file"):
        load_onnx(tmp_path / "missing.onnx")


def test_cli_writes_plan_and_pictures(tmp_path, capsys):
    plan, svg, tl = tmp_path / "p.json", tmp_path / "p.svg", tmp_path / "t.png"
    rc = main(["partition", "bert-base", "--devices", "4", "--mode", "training", "--micro-batches", "4",
               "--json", str(plan), "--svg", str(svg), "--timeline", str(tl)])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "bottleneck" in out and "bubble" in out and "dev3" in out
    data = json.loads(plan.read_text())
    assert data["devices"] == 4 and data["model"] == "bert-base"
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
    assert tl.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_exit_2(tmp_path, capsys):
    trunc = tmp_path / "t.onnx"
    trunc.write_bytes(open(small_onnx(tmp_path / "m.onnx"), "rb").read()[:50])
    assert main(["partition", str(trunc), "--devices", "2"]) == 2
    assert "t.onnx" in capsys.readouterr().err
    assert main(["partition", "mlp3", "--devices", "9"]) == 2
    assert main(["partition", "gpt2-small", "--devices", "2", "--memory", "10MB"]) == 2
    assert "embed.word" in capsys.readouterr().err
    assert main(["partition", "mlp3", "--memory", "lots"]) == 2
    with pytest.raises(SystemExit) as e:
        main(["partition", "mlp3", "--mode", "sideways"])
    assert e.value.code == 2


def test_cli_quiet_and_onnx(tmp_path, capsys):
    assert main(["partition", small_onnx(tmp_path / "m.onnx"), "--devices", "2", "--quiet"]) == 0
    assert capsys.readouterr().out == ""


def test_timeline_bubble_matches_theory_for_equal_stages():
    plan = pd.partition("gpt2-small", devices=4, mode="training", bandwidth="1TB/s", latency=0)
    # equal stages make GPipe's bubble (K-1)/(m+K-1); ours are nearly equal
    for m in (1, 4, 16):
        sim = simulate(plan, m, "gpipe")
        theory = 3 / (m + 3)
        assert sim.bubble == pytest.approx(theory, abs=0.05)
        assert simulate(plan, m, "1f1b").makespan == pytest.approx(sim.makespan, rel=0.05)
    inf = pd.partition("bert-base", devices=2)
    assert simulate(inf, 1, "gpipe").makespan == pytest.approx(
        sum(s["compute_s"] + s["comm_s"] for s in inf.stages)
    )


@pytest.mark.parametrize("model", ["resnet50", "random-dag-2000"])
def test_dag_partition_balanced_and_auto_never_worse(model):
    dag = pd.partition(model, devices=4, algorithm="dag", imbalance=0.05)
    loads = [s["compute_s"] for s in dag.stages]
    heaviest = max(a["compute_s"] for a in dag.nodes.values())
    assert max(loads) <= 1.05 * sum(loads) / 4 + heaviest
    pipe = pd.partition(model, devices=4)
    auto = pd.partition(model, devices=4, algorithm="auto")
    assert auto.bottleneck_s <= min(pipe.bottleneck_s, dag.bottleneck_s) * (1 + 1e-9)


def test_metis_baseline_if_installed():
    pytest.importorskip("pymetis", reason="pymetis is an optional baseline")
    plan = pd.partition("bert-base", devices=4, algorithm="metis")
    assert {a["device"] for a in plan.nodes.values()} == {0, 1, 2, 3}
