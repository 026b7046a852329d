"""pd.compile_model's operators beyond conv/linear chains, against ONNX's reference evaluator
(float32, 1e-4 relative) on odd sizes, and a MobileNet-style depthwise net and a BERT-style
encoder layer built in torch, against torch (no fallback node in either)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from onnx import helper as h
from test_model import check, const, model_of

import polydl as pd

rng = np.random.default_rng(11)


def r(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def no_fallback(m):
    assert not m.fallbacks, m.report()
    return m


@pytest.mark.parametrize(
    "C,K,groups,stride,dilation", [(6, 9, 3, 1, 1), (5, 5, 5, 2, 1), (4, 8, 4, 1, 2)]
)
def test_grouped_and_depthwise_conv(C, K, groups, stride, dilation):
    N, H, W = 2, 9, 7
    inits = [const("w", r(K, C // groups, 3, 3, scale=0.3)), const("b", r(K))]
    nodes = [
        h.make_node(
            "Conv",
            ["x", "w", "b"],
            ["c"],
            group=groups,
            strides=[stride, stride],
            dilations=[dilation, dilation],
            pads=[dilation] * 4,
        ),
        h.make_node("Clip", ["c", "lo", "hi"], ["y"]),
    ]
    inits += [const("lo", np.float32(0.0)), const("hi", np.float32(0.5))]
    no_fallback(check(model_of(nodes, [("x", [N, C, H, W])], inits), r(N, C, H, W)))


@pytest.mark.parametrize("include_pad", [0, 1])
def test_avg_pool_and_concat(include_pad):
    N, C, H, W = 1, 3, 7, 6
    inits = [const("w", r(5, C, 1, 1))]
    nodes = [
        h.make_node(
            "AveragePool",
            ["x"],
            ["p"],
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            count_include_pad=include_pad,
        ),
        h.make_node("Conv", ["x", "w"], ["c"], strides=[2, 2]),
        h.make_node("Concat", ["p", "c"], ["y"], axis=1),
    ]
    no_fallback(check(model_of(nodes, [("x", [N, C, H, W])], inits), r(N, C, H, W)))


def test_views_transpose_batched_matmul_layer_norm():
    B, S, D, Hd = 2, 5, 12, 3
    inits = [
        const("wq", r(D, D, scale=0.3)),
        h.make_tensor("shape", 7, [4], [B, S, Hd, D // Hd]),  # int64
        const("g", r(D)),
        const("bb", r(D)),
        const("two", np.float32(2.0)),
    ]
    nodes = [
        h.make_node("MatMul", ["x", "wq"], ["q"]),
        h.make_node("Reshape", ["q", "shape"], ["q4"]),
        h.make_node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]),  # B, H, S, d
        h.make_node("Transpose", ["q4"], ["kt"], perm=[0, 2, 3, 1]),  # B, H, d, S
        h.make_node("MatMul", ["qt", "kt"], ["sc"]),  # B, H, S, S
        h.make_node("Div", ["sc", "two"], ["sd"]),
        h.make_node("Softmax", ["sd"], ["a"], axis=-1),
        h.make_node("MatMul", ["a", "qt"], ["o"]),  # B, H, S, d
        h.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
        h.make_node("Flatten", ["ot"], ["of"], axis=2),  # B*S, D
        h.make_node("Sub", ["of", "two"], ["os"]),
        h.make_node("LayerNormalization", ["os", "g", "bb"], ["y"], axis=-1, epsilon=1e-5),
    ]
    m = check(model_of(nodes, [("x", [B, S, D])], inits), r(B, S, D))
    no_fallback(m)
    assert "a view (no kernel, no copy)" in m.report()


torch = pytest.importorskip("torch")


@pytest.mark.torch
@pytest.mark.parametrize(
    "name,sizes,shape,layout",
    [
        ("mobilenet", {"width": 8}, (2, 3, 19, 17), "auto"),
        ("mobilenet", {"width": 8}, (1, 3, 16, 13), "blocked"),
        ("bert", {"d": 24, "heads": 4, "ff": 40}, (2, 7, 24), "nchw"),
    ],
)
def test_torch_models_compile_without_fallbacks(name, sizes, shape, layout):
    from polydl.model import zoo

    torch.manual_seed(3)
    net = zoo.MODELS[name](**sizes)
    x = torch.randn(*shape)
    with torch.no_grad():
        want = net(x)
    m = pd.compile_model(net, (x,), threads=2, layout=layout)
    torch.testing.assert_close(m(x), want, rtol=1e-4, atol=1e-4)
    no_fallback(m.compiled)
    report = m.report()
    if name == "mobilenet":
        # the two identical blocks' kernels compiled once: fewer compiled than run
        run, compiled = map(int, re.match(r"// (\d+) polydl kernel\(s\) \((\d+)", report).groups())
        assert compiled < run, report
        assert "the code of kernel" in report
        # "auto": depthwise convs, so NCHW throughout (no conversion); "blocked": around them
        assert ("(layout)" in report) == (layout == "blocked"), report
    else:
        assert "/Erf" in report and "LayerNormalization" in report


def test_built_in_names():
    from polydl.model import ModelError

    with pytest.raises(ModelError, match="no built-in model 'resnet5'.*mobilenet"):
        pd.compile_model("resnet5", (np.zeros((1, 3, 8, 8), np.float32),))
