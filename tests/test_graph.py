"""pd.graph: operator chains compiled into one fused kernel, against NumPy float64 references
and against the same graph compiled one kernel per operator (fuse=False), on odd sizes."""

from __future__ import annotations

import numpy as np
import pytest
from kernels import numpy_conv
from scipy.special import erf

import polydl as pd
from polydl.graph import GraphError

rng = np.random.default_rng(31)


def r(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def plain_statements(f):
    return [s for s in f.kernel.kernel.statements if s.micro is None]


def micro_epilogues(f):
    return [s.micro.epilogue for s in f.kernel.kernel.statements if s.micro is not None]


def bottleneck(N, C, K, H, W, stride=1):
    """conv 3x3 -> batch norm -> ReLU -> conv 1x1 -> add (the input) -> ReLU."""
    g = pd.graph.Graph("bottleneck")
    x = g.input("x", (N, C, H, W))
    p = dict(
        w1=r(K, C, 3, 3, scale=0.2),
        mean=r(K),
        var=np.abs(r(K)) + 0.5,
        gamma=r(K),
        beta=r(K),
        w2=r(C, K, 1, 1, scale=0.2),
    )
    y = g.conv2d(x, p["w1"], padding=1)
    y = g.batch_norm(y, p["mean"], p["var"], p["gamma"], p["beta"])
    y = g.relu(y)
    y = g.conv2d(y, p["w2"])
    y = g.relu(g.add(y, x))
    g.output(y)
    return g, p


def bottleneck_ref(x, p):
    y = numpy_conv(x, p["w1"], 1, 1)
    inv = p["gamma"] / np.sqrt(p["var"].astype(np.float64) + 1e-5)
    y = (y - p["mean"][None, :, None, None]) * inv[None, :, None, None] + p["beta"][
        None, :, None, None
    ]
    y = np.maximum(y, 0)
    y = numpy_conv(y, p["w2"], 1, 0)
    return np.maximum(y + x, 0)


@pytest.mark.parametrize("N,C,K,H,W", [(1, 8, 12, 7, 9), (2, 5, 16, 11, 6)])
@pytest.mark.parametrize("threads", [1, 2])
def test_bottleneck_is_one_kernel_with_folded_epilogues(N, C, K, H, W, threads):
    g, p = bottleneck(N, C, K, H, W)
    f = g.compile(threads=threads)
    assert len(f.parts) == 1
    # batch norm folded into the weights at build time; bias, ReLU, the add and the last
    # ReLU computed in the BRGEMM calls' stores: nothing elementwise is left as a nest
    assert not any("batch_norm" in s.source for s in f.kernel.kernel.statements)
    epis = [e for e in micro_epilogues(f) if e is not None]
    assert epis and all("max" in e.text() for e in epis)
    assert not [s for s in plain_statements(f) if "relu" in s.source or "add" in s.source]
    x = r(N, C, H, W)
    want = bottleneck_ref(x, p)
    np.testing.assert_allclose(f(x), want, rtol=2e-4, atol=2e-4)
    u = g.compile(threads=threads, fuse=False)
    assert len(u.parts) == 5  # conv (+ folded bn), relu, conv, add, relu
    np.testing.assert_allclose(u(x), f(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_transformer_mlp(approximate):
    M, D, F = 13, 24, 56
    w1, b1, w2, b2 = r(D, F, scale=0.2), r(F), r(F, D, scale=0.2), r(D)
    g = pd.graph.Graph("mlp")
    x = g.input("x", (M, D))
    y = g.linear(g.gelu(g.linear(x, w1, b1), approximate=approximate), w2, b2)
    g.output(y)
    f = g.compile()
    xa = r(M, D)
    h = xa.astype(np.float64) @ w1 + b1
    if approximate == "none":
        h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    else:
        h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
    want = h @ w2 + b2
    np.testing.assert_allclose(f(xa), want, rtol=2e-5, atol=2e-5)
    assert not plain_statements(f)  # both biases and the GELU folded into the calls


@pytest.mark.parametrize(
    "M,K,N,nb",
    [(37, 53, 100, 50), (5, 67, 160, 40), (19, 31, 192, 64), (11, 29, 97, None), (3, 7, 24, None)],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_linear_weights_blocked_at_build_time(M, K, N, nb, threads):
    """A linear's constant weights laid out [N/nb][K][nb] once at build time (nb: the largest
    divisor of N up to four f32 vectors, at least two; else kept [K, N]): a torch-style [N, K]
    weight given transposed, a batch norm folded in before the layout, the residual add and
    ReLU folded into the calls; a second linear reading the first's output twice (GELU out
    of place, then the add). Fused vs unfused vs NumPy."""
    from polydl.graph.lower import linear_block

    assert linear_block(N) == nb
    w_torch, w2 = r(N, K, scale=0.3), r(N, N, scale=0.1)
    mean, var, gamma, beta, b2 = r(N), np.abs(r(N)) + 0.5, r(N), r(N), r(N)
    g = pd.graph.Graph("blocked_linear")
    x, res = g.input("x", (M, K)), g.input("res", (M, N))
    y = g.batch_norm(g.linear(x, w_torch.T), mean, var, gamma, beta)
    y = g.relu(g.add(y, res))
    z = g.linear(y, w2, b2)
    g.output(g.add(g.gelu(z), z))
    xa, ra = r(M, K), r(M, N)
    h = xa.astype(np.float64) @ w_torch.T.astype(np.float64)
    h = (h - mean) * (gamma / np.sqrt(var.astype(np.float64) + 1e-5)) + beta
    h = np.maximum(h + ra, 0)
    zz = h @ w2 + b2
    want = 0.5 * zz * (1 + erf(zz / np.sqrt(2))) + zz
    f = g.compile(threads=threads)
    u = g.compile(threads=threads, fuse=False)
    # the first linear's weights, as the kernel takes them
    shapes = [p.shape for _, p in f.parts[0][2] if p.ndim >= 2]
    assert shapes[0] == ((N // nb, K, nb) if nb else (K, N))
    assert shapes[1] == ((N // nb, N, nb) if nb else (N, N))
    # both biases, the residual add and ReLU folded into the calls: only the GELU and the add
    # after it (z read twice) stay a nest
    assert [s.source.split(":")[0] for s in plain_statements(f)] == ["gelu"]
    np.testing.assert_allclose(f(xa, ra), want, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(u(xa, ra), f(xa, ra), rtol=1e-5, atol=1e-5)


def test_linear_bias_softmax():
    M, K, N = 17, 33, 250
    w, b = r(K, N, scale=0.3), r(N)
    g = pd.graph.Graph("head")
    x = g.input("x", (M, K))
    g.output(g.softmax(g.linear(x, w, b)))
    f = g.compile()
    xa = r(M, K)
    z = xa.astype(np.float64) @ w + b
    e = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(f(xa), e / e.sum(axis=1, keepdims=True), rtol=2e-5, atol=1e-7)
    assert "fusion of consecutive nests" in f.show("fusion")


def test_elementwise_on_inputs_is_out_of_place_and_outputs_may_be_several():
    g = pd.graph.Graph("two")
    a = g.input("a", (3, 5))
    b = g.input("b", (3, 5))
    s = g.silu(g.add(a, b))
    t = g.scale(g.mul(a, b), 2.0)
    g.output(s, t)
    f = g.compile()
    xa, xb = r(3, 5), r(3, 5)
    keep = xa.copy(), xb.copy()
    out_s, out_t = f(xa, xb)
    np.testing.assert_array_equal(xa, keep[0])  # inputs are never written
    np.testing.assert_array_equal(xb, keep[1])
    z = xa.astype(np.float64) + xb
    np.testing.assert_allclose(out_s, z / (1 + np.exp(-z)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_t, 2 * xa * xb, rtol=1e-6)


def test_batch_norm_not_after_a_contraction_is_an_affine_nest():
    g = pd.graph.Graph("bn")
    x = g.input("x", (2, 3, 4, 5))
    mean, var = r(3), np.abs(r(3)) + 1
    g.output(g.batch_norm(x, mean, var))
    f = g.compile()
    xa = r(2, 3, 4, 5)
    want = (xa - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(f(xa), want, rtol=1e-5, atol=1e-6)


def test_unsupported_operator_and_shape_errors_name_the_op():
    g = pd.graph.Graph()
    x = g.input("x", (4, 4))
    with pytest.raises(GraphError, match="no operator 'group_norm'.*supports"):
        g.group_norm(x)
    with pytest.raises(GraphError, match="add: shapes"):
        g.add(x, g.input("y", (4, 5)))
    with pytest.raises(GraphError, match="linear.*does not multiply"):
        g.linear(x, np.zeros((5, 3)))
    with pytest.raises(GraphError, match="conv2d: input"):
        g.conv2d(x, np.zeros((1, 1, 1, 1)))
    with pytest.raises(GraphError, match="no output"):
        g.compile()
    f = pd.graph.Graph()
    v = f.input("v", (2, 2))
    f.output(f.relu(v))
    with pytest.raises(GraphError, match="expected float32"):
        f.compile()(np.zeros((2, 3), np.float32))


def test_kernels_per_contraction_share_identical_groups():
    """Two bottlenecks of one shape: a kernel per conv -> 1x1 conv pair and its chain
    (graph/groups.conv_pair), the second bottleneck's kernel the first's code with its own
    weights; views split even the one-kernel mode."""
    N, C, K, H, W = 1, 6, 10, 7, 5
    g = pd.graph.Graph("twice")
    x = g.input("x", (N, C, H, W))
    y, refs = x, []
    for _ in range(2):
        w1, w2 = r(K, C, 3, 3, scale=0.2), r(C, K, 1, 1, scale=0.2)
        refs.append((w1, w2))
        y = g.relu(g.add(g.conv2d(g.relu(g.conv2d(y, w1, padding=1)), w2), y))
    g.output(g.reshape(y, (N * C, H * W)))
    xa = r(N, C, H, W)
    want = xa
    for w1, w2 in refs:
        want = np.maximum(numpy_conv(np.maximum(numpy_conv(want, w1, 1, 1), 0), w2, 1, 0) + want, 0)
    want = want.reshape(N * C, H * W)
    per = g.compile(kernels="contraction")
    kernels = [ck for ck, *_ in per.parts if ck is not None]
    assert len(kernels) == 2 and len({id(k) for k in kernels}) == 1
    assert per.part_ops[0] == ["conv2d", "relu", "conv2d", "add", "relu"]
    assert per.parts[-1][0] is None  # the reshape: a view, no kernel
    np.testing.assert_allclose(per(xa), want, rtol=2e-4, atol=2e-4)
    one = g.compile()
    assert len([p for p in one.parts if p[0] is not None]) == 1
    np.testing.assert_allclose(one(xa), want, rtol=2e-4, atol=2e-4)
    assert len(per.seconds) == len(per.parts)


@pytest.mark.parametrize("N, H, W", [(1, 7, 7), (3, 11, 3)])
@pytest.mark.parametrize("threads", [1, 2])
def test_residual_chain_on_planes_with_a_narrow_tail(N, H, W, threads):
    """conv 1x1 + batch norm + add + ReLU on planes of 49 and 33 pixels (the calls' last
    column a vector of one live lane, accumulated half-width; a reduction of 300 channels,
    whole in one call on a Zen 4 host): fused, unfused and NumPy agree."""
    C, K = 300, 37
    p = dict(w=r(K, C, 1, 1, scale=0.1), m=r(K), v=np.abs(r(K)) + 0.5, g=r(K), b=r(K))
    g = pd.graph.Graph("narrow")
    x, res = g.input("x", (N, C, H, W)), g.input("res", (N, K, H, W))
    y = g.batch_norm(g.conv2d(x, p["w"]), p["m"], p["v"], p["g"], p["b"])
    g.output(g.relu(g.add(y, res)))
    xa, ra = r(N, C, H, W), r(N, K, H, W)
    scale = p["g"] / np.sqrt(p["v"] + 1e-5)
    bn = (numpy_conv(xa, p["w"], 1, 0) - p["m"][None, :, None, None]) * scale[
        None, :, None, None
    ] + p["b"][None, :, None, None]
    want = np.maximum(bn + ra, 0)
    fused, unfused = g.compile(threads=threads), g.compile(threads=threads, fuse=False)
    assert any("then" in ln for ln in fused.show("loops").splitlines() if "brgemm(" in ln)
    for f in (fused, unfused):
        np.testing.assert_allclose(f(xa, ra), want, rtol=3e-4, atol=3e-4)


@pytest.mark.parametrize("cache, streamed", [(2**14, True), (2**16, False)])
def test_an_output_of_a_kernel_streaming_past_the_caches_is_stored_non_temporally(cache, streamed):
    """The output (7.6 KiB) is under half the largest cache in both cases, the kernel's
    arguments together (input, residual, output, weights: 24 KiB) past half of a 16 KiB one:
    there the calls store it non-temporally, with 64 KiB caches they do not. Values as
    NumPy's either way."""
    import dataclasses

    from polydl.target import resolve

    N, C, K, H, W = 1, 16, 16, 11, 11
    h = resolve(None)
    tgt = dataclasses.replace(
        h, caches=tuple(dataclasses.replace(c, size_bytes=cache) for c in h.caches)
    )
    p = dict(w=r(K, C, 1, 1, scale=0.3), b=r(K))
    g = pd.graph.Graph("chain")
    x, res = g.input("x", (N, C, H, W)), g.input("res", (N, K, H, W))
    g.output(g.relu(g.add(g.conv2d(x, p["w"], p["b"]), res)))
    out = N * K * H * W * 4
    assert out < 2**13 and 3 * out > 2**13 and 3 * out < 2**15
    f = g.compile(target=tgt, threads=1)
    calls = [ln for ln in f.show("loops").splitlines() if "brgemm(" in ln]
    assert calls and all((", nt," in ln) == streamed for ln in calls)
    xa, ra = r(N, C, H, W), r(N, K, H, W)
    conv = numpy_conv(xa, p["w"], 1, 0) + p["b"][None, :, None, None]
    np.testing.assert_allclose(f(xa, ra), np.maximum(conv + ra, 0), rtol=2e-4, atol=2e-4)


def test_an_output_past_the_caches_is_stored_non_temporally():
    """conv 1x1 -> batch norm -> add -> ReLU: the output, larger than half the largest cache
    (caches shrunk to 64 KiB), is stored non-temporally by the calls that finish it; with the
    host's caches it is not; an intermediate (a scratch tensor) never is. Values as NumPy's."""
    import dataclasses

    from polydl.target import resolve

    N, C, K, H, W = 2, 16, 48, 13, 11
    h = resolve(None)
    small = dataclasses.replace(
        h, caches=tuple(dataclasses.replace(c, size_bytes=2**16) for c in h.caches)
    )
    p = dict(w=r(K, C, 1, 1, scale=0.3), s=np.abs(r(K)) + 0.5, t=r(K), w2=r(C, K, 1, 1))
    g = pd.graph.Graph("chain")
    x, res = g.input("x", (N, C, H, W)), g.input("res", (N, K, H, W))
    y = g.batch_norm(g.conv2d(x, p["w"]), np.zeros(K), p["s"] ** 2 - 1e-5, np.ones(K), p["t"])
    y = g.relu(g.add(y, res))
    g.output(y)
    xa, ra = r(N, C, H, W), r(N, K, H, W)
    conv = numpy_conv(xa, p["w"], 1, 0) / p["s"][None, :, None, None]
    want = np.maximum(conv + p["t"][None, :, None, None] + ra, 0)
    assert N * K * H * W * 4 > 2**15  # past half of the 64 KiB cache
    streamed, kept = g.compile(target=small), g.compile()
    calls = lambda f: [ln for ln in f.show("loops").splitlines() if "brgemm(" in ln]  # noqa: E731
    assert calls(streamed) and all(", nt," in ln for ln in calls(streamed))
    assert not any(", nt," in ln for ln in calls(kept))
    for f in (streamed, kept):
        np.testing.assert_allclose(f(xa, ra), want, rtol=2e-4, atol=2e-4)
    g2 = pd.graph.Graph("pair")
    x2 = g2.input("x", (N, C, H, W))
    g2.output(g2.conv2d(g2.relu(g2.conv2d(x2, p["w"])), p["w2"]))
    pair = g2.compile(target=small)  # one kernel: the first conv writes a scratch tensor
    assert N * K * H * W * 4 > 2**15  # the scratch intermediate too
    first = [ln for ln in calls(pair) if "; t0_conv2d@" in ln]
    assert first and not any(", nt," in ln for ln in first)
    want2 = numpy_conv(np.maximum(numpy_conv(xa, p["w"], 1, 0), 0), p["w2"], 1, 0)
    np.testing.assert_allclose(pair(xa), want2, rtol=2e-4, atol=2e-4)


def padded_pair(N, C, K, H, W):
    """conv 1x1 -> ReLU -> conv 3x3 (pad 1) -> add (the input): on the blocked layout, x packed
    with a zero border (the residual's pack without) and the ReLU's value repadded."""
    g = pd.graph.Graph("padded_pair")
    x = g.input("x", (N, C, H, W))
    w1, w2 = r(K, C, 1, 1, scale=0.3), r(C, K, 3, 3, scale=0.2)
    w0 = r(C, C, 3, 3, scale=0.2)
    y = g.relu(g.conv2d(g.conv2d(x, w0, padding=1), w1))
    g.output(g.add(g.conv2d(y, w2, padding=1), x))
    want = lambda a: (  # noqa: E731
        numpy_conv(np.maximum(numpy_conv(numpy_conv(a, w0, 1, 1), w1, 1, 0), 0), w2, 1, 1) + a
    )
    return g, want


@pytest.mark.parametrize("N,C,K,H,W", [(1, 8, 12, 7, 9), (2, 5, 16, 11, 6)])
def test_blocked_one_kernel_writes_its_scratch_borders(N, C, K, H, W):
    """layout="blocked" as one kernel: the pack and the repad write scratch tensors of the
    call (allocated uninitialised), whose zero borders the 3x3 convs read as their padding;
    compiled, and the compiled loop tree walked by the interpreter (scratch filled with NaN)."""
    from polydl.ir import interp

    g, ref = padded_pair(N, C, K, H, W)
    f = g.compile(kernels="one", layout="blocked")
    assert [ck is not None for ck, *_ in f.parts] == [True]
    assert f.part_ops[0].count("pack") == 2 and "repad" in f.part_ops[0]
    for _ in range(3):
        x = r(N, C, H, W)
        np.testing.assert_allclose(f(x), ref(x), rtol=2e-4, atol=2e-4)
    ck, _, params, _ = f.parts[0]
    x = r(N, C, H, W)
    out = np.full((N, C, H, W), np.nan, np.float32)
    names = [t.name for t in ck.kernel.tensors]
    arrays = dict(zip(names, [x, *(p for _, p in params), out], strict=True))
    interp.run(ck.kernel, arrays, tree=ck.tree)
    np.testing.assert_allclose(out, ref(x), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("N,C,K,H,W", [(1, 8, 12, 7, 9), (2, 5, 16, 11, 6)])
def test_blocked_layout_keeps_activations_blocked(N, C, K, H, W):
    """layout="blocked": the bottleneck's convs on blocked values, one pack of the input (the
    3x3's zero border), the residual read blocked, one unpack at the end."""
    g, p = bottleneck(N, C, K, H, W)
    f = g.compile(kernels="contraction", layout="blocked")
    x = r(N, C, H, W)
    want = bottleneck_ref(x, p)
    np.testing.assert_allclose(f(x), want, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(f(x), want, rtol=2e-4, atol=2e-4)  # the kept borders stay zero
    text = f.show("loops")
    assert text.count("pack: Xp") == 2 and text.count("unpack: Y") == 1  # x: bordered, plain
    assert "then max((acc + in1), 0.0)" in text  # the residual add and ReLU in the calls


@pytest.mark.parametrize("kernels", ["one", "contraction"])
def test_output_buffers_reused_only_when_let_go(kernels):
    """A call writes the buffers of its last call when nothing refers to them any more, and
    never an array the caller still holds (itself, a NumPy view, a torch tensor on its memory,
    a memoryview); a thread of its own has buffers of its own. Every result stays right."""
    import threading

    import torch

    w, b = r(7, 9, scale=0.3), r(9)
    g = pd.graph.Graph("reuse")
    x = g.input("x", (5, 7))
    y = g.relu(g.linear(x, w, b))
    g.output(g.tanh(g.linear(y, r(9, 9, scale=0.3))) if kernels == "contraction" else y)
    f = g.compile(kernels=kernels)
    u = g.compile(fuse=False)
    xs = [r(5, 7) for _ in range(8)]
    want = [u(a) for a in xs]
    first = f(xs[0])
    ptr = first.ctypes.data
    del first
    again = f(xs[1])
    assert again.ctypes.data == ptr  # let go: written again
    held = {
        "array": again,
        "view": f(xs[2])[1:],
        "torch": torch.from_numpy(f(xs[3])),
        "memoryview": memoryview(f(xs[4])),
    }
    for i in range(5, 8):
        np.testing.assert_allclose(f(xs[i]), want[i], rtol=1e-5, atol=1e-6)
    other = []
    t = threading.Thread(target=lambda: other.append(f(xs[5])))
    t.start()
    t.join()
    np.testing.assert_allclose(f(xs[6]), want[6], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(held["array"], want[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(held["view"], want[2][1:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(held["torch"].numpy(), want[3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(held["memoryview"]), want[4], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(other[0], want[5], rtol=1e-5, atol=1e-6)
