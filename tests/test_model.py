"""pd.compile_model: ONNX models as fused polydl kernels with NumPy fallbacks, against ONNX's
reference implementation of the whole model (float32 tolerances: 1e-4 relative)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from onnx.reference import ReferenceEvaluator

import polydl as pd
from polydl.model import ModelError

rng = np.random.default_rng(7)


def const(name, a):
    return nh.from_array(np.asarray(a, np.float32), name)


def model_of(nodes, inputs, inits, opset=17):
    graph = h.make_graph(
        nodes,
        "net",
        [h.make_tensor_value_info(n, T.FLOAT, s) for n, s in inputs],
        [h.make_tensor_value_info(nodes[-1].output[0], T.FLOAT, None)],
        inits,
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])


def check(model, *xs, rtol=1e-4):
    m = pd.compile_model(model)
    got = m(*xs)
    feeds = {i.name: x for i, x in zip(model.graph.input, xs, strict=False)}
    want = ReferenceEvaluator(model).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(1.0, np.abs(want).max()))
    return m


def test_residual_block_with_a_head():
    N, C, H, W, K = 2, 8, 9, 7, 16
    inits = [
        const("w1", rng.standard_normal((K, C, 3, 3)) * 0.2),
        const("b1", rng.standard_normal(K)),
        const("s", rng.random(K) + 0.5),
        const("bb", rng.standard_normal(K)),
        const("m", rng.standard_normal(K)),
        const("v", rng.random(K) + 0.5),
        const("w2", rng.standard_normal((C, K, 1, 1)) * 0.2),
        const("fc", rng.standard_normal((10, C))),
        const("fb", rng.standard_normal(10)),
    ]
    nodes = [
        h.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        h.make_node("BatchNormalization", ["c1", "s", "bb", "m", "v"], ["n1"], name="bn1"),
        h.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        h.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
        h.make_node("Add", ["c2", "x"], ["a"], name="add"),
        h.make_node("Relu", ["a"], ["r2"], name="relu2"),
        h.make_node("GlobalAveragePool", ["r2"], ["gp"], name="gap"),
        h.make_node("Flatten", ["gp"], ["f"], name="flatten"),
        h.make_node("Gemm", ["f", "fc", "fb"], ["y"], transB=1, name="fc"),
    ]
    model = model_of(nodes, [("x", [N, C, H, W])], inits)
    m = check(model, rng.standard_normal((N, C, H, W)).astype(np.float32))
    report = m.report()
    # one run of kernels: the 3x3 conv and the 1x1 conv after it one kernel (a conv -> conv
    # pair, graph/groups.conv_pair), the batch norm folded and the elementwise chain fused (the
    # residual add too); the pooling and flatten, the head; the blocked layout: x packed with
    # the 3x3's border and without, the sum unpacked
    what = "conv1 .* [(]fused with bn1, relu1, conv2, add, relu2[)]"
    assert re.search(what, report), report
    assert re.search("gap .* [(]fused with flatten[)]", report)
    assert re.search("fc .* [(]fused with nothing[)]", report)
    assert report.count("(layout)") == 3 and "(unpack)" in report and "(pack)" in report
    assert "6 polydl kernel(s)" in report and "% of the last call" in report
    assert not m.fallbacks and len(m.steps) == 1
    nchw = pd.compile_model(model, layout="nchw")
    nchw(rng.standard_normal((N, C, H, W)).astype(np.float32))
    assert "3 polydl kernel(s)" in nchw.report() and "(layout)" not in nchw.report()


def test_residual_block_blocked_layout():
    N, C, H, W, K = 1, 16, 9, 8, 24
    inits = [
        const("w0", rng.standard_normal((C, 3, 3, 3)) * 0.3),
        const("w1", rng.standard_normal((K, C, 3, 3)) * 0.2),
        const("w2", rng.standard_normal((C, K, 1, 1)) * 0.2),
        const("fc", rng.standard_normal((10, C))),
    ]
    nodes = [
        h.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1], strides=[2, 2]),
        h.make_node("MaxPool", ["c0"], ["m0"], kernel_shape=[2, 2], strides=[1, 1]),
        h.make_node("Conv", ["m0", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c1"], ["r1"]),
        h.make_node("Conv", ["r1", "w2"], ["c2"]),
        h.make_node("Add", ["c2", "m0"], ["a"]),
        h.make_node("GlobalAveragePool", ["a"], ["gp"]),
        h.make_node("Flatten", ["gp"], ["f"]),
        h.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    model = model_of(nodes, [("x", [N, 3, 2 * H, 2 * W])], inits)
    x = rng.standard_normal((N, 3, 2 * H, 2 * W)).astype(np.float32)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    m = pd.compile_model(model, layout="blocked")
    np.testing.assert_allclose(m(x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert not m.fallbacks
    with pytest.raises(ModelError, match="layout must be"):
        pd.compile_model(model, layout="nhwc")


def test_mlp_with_softmax_and_an_unsupported_node_between():
    M, D, F = 5, 12, 20
    inits = [
        const("w1", rng.standard_normal((D, F)) * 0.3),
        const("b1", rng.standard_normal(F)),
        const("w2", rng.standard_normal((D, F)) * 0.3),
    ]
    nodes = [
        h.make_node("MatMul", ["x", "w1"], ["h0"], name="mm1"),
        h.make_node("Add", ["h0", "b1"], ["h1"], name="bias1"),
        h.make_node("Tanh", ["h1"], ["h2"], name="tanh"),
        h.make_node("Abs", ["h2"], ["h2a"], name="abs"),
        h.make_node("Transpose", ["w2"], ["w2t"], perm=[1, 0], name="transpose"),
        h.make_node("MatMul", ["h2a", "w2t"], ["h3"], name="mm2"),
        h.make_node("Softmax", ["h3"], ["y"], axis=-1, name="softmax"),
    ]
    model = model_of(nodes, [("x", [M, D])], inits)
    m = check(model, rng.standard_normal((M, D)).astype(np.float32))
    # the transpose of a constant is folded at compile time; Abs falls back
    assert [f.node for f in m.fallbacks] == ["abs"]
    assert "mm2" in m.report() and "fused with softmax" in m.report()


def test_dynamic_shapes_need_example_inputs():
    nodes = [h.make_node("Relu", ["x"], ["y"])]
    model = model_of(nodes, [("x", ["batch", 6])], [])
    with pytest.raises(ModelError, match="no static shape"):
        pd.compile_model(model)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    m = pd.compile_model(model, [x])
    np.testing.assert_array_equal(m(x), np.maximum(x, 0))
    with pytest.raises(ModelError, match="takes 1 input"):
        m()
    with pytest.raises(ModelError, match="ONNX model"):
        pd.compile_model(42)


torch = pytest.importorskip("torch")


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(6, 12, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(12)
        self.conv2 = torch.nn.Conv2d(12, 6, 1, bias=False)
        self.fc = torch.nn.Linear(6 * 5 * 7, 9)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv1(x)))
        y = torch.relu(self.conv2(y) + x)
        return self.fc(torch.flatten(y, 1))


@pytest.mark.torch
def test_torch_module_and_the_torch_compile_backend():
    from polydl.model.torch_backend import register

    torch.manual_seed(0)
    net = Block().eval()
    x = torch.randn(2, 6, 5, 7)
    with torch.no_grad():
        want = net(x)
    m = pd.compile_model(net, (x,))
    got = m(x)
    assert isinstance(got, torch.Tensor)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert "fused with" in m.report()
    register()  # (installed, the torch_dynamo_backends entry point finds it too)
    torch._dynamo.reset()
    fast = torch.compile(net, backend="polydl")
    with torch.no_grad():
        torch.testing.assert_close(fast(x), want, rtol=1e-4, atol=1e-4)
