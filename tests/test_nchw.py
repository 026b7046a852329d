"""Convolutions on NCHW without packing: column coalescing (transform/coalesce.py) and the two
routes of ``pd.nn.conv2d`` (direct NCHW kernel, blocked with packing), against a float64 NumPy
convolution. Extents are odd or prime on purpose."""

from __future__ import annotations

import numpy as np
import pytest
from kernels import conv_ref

import polydl as pd
from polydl.analysis.contraction import find_all, linearize
from polydl.ir.nodes import Int, IntOp, Load, Var
from polydl.ir.verify import verify
from polydl.transform.coalesce import coalesce_columns

rng = np.random.default_rng(5)


def rand(*shape):
    return rng.uniform(-1, 1, size=shape).astype(np.float32)


def micro_statements(k):
    return [s for s in k.kernel.statements if s.micro is not None]


# ---------------------------------------------------------------- coalescing


def test_1x1_columns_coalesce_into_one_run():
    kern = pd.ops.conv2d(2, 5, 7, 3, 11, 1, 1, bias=True, activation="relu").ir.bind({})
    (c,) = find_all(kern)
    assert (c.n, c.extent("q")) == ("q", 11) and "p" in c.outer
    fused, found = coalesce_columns(kern, (c,))
    verify(fused)
    (c2,) = found
    assert found == find_all(fused)
    assert (c2.n, c2.extent(c2.n), c2.m, c2.k) == ("pq", 33, "k", "c")
    assert "p" not in c2.outer and c2.init and c2.epilogue
    (bias,) = c2.post.operands  # b[k]: one value per row of the call
    assert (bias.col, bias.ld) == (0, 1)
    assert c2.linear("C").coef("pq") == 1 and c2.linear("B").coef("pq") == 1
    # every statement of the nest is re-indexed; the elements are the same ones
    for s in fused.statements:
        assert "pq" in s.iterators and "p" not in s.iterators


@pytest.mark.parametrize(
    "shape",
    [
        # (N, C, K, H, W, R, S, stride, pad): not one run of pixels, or not a box
        (1, 3, 5, 9, 7, 1, 1, 2, 0),  # strided columns
        (1, 3, 5, 7, 5, 3, 3, 1, 0),  # I rows are W = Q + 2 wide
        (1, 3, 5, 7, 5, 1, 1, 1, 1),  # padded: the split pieces do not span whole rows
    ],
)
def test_columns_not_contiguous_are_left_alone(shape):
    N, C, K, H, W, R, S, st, pad = shape
    kern = pd.ops.conv2d(N, C, K, H, W, R, S, stride=st, padding=pad).ir.bind({})
    out, _ = coalesce_columns(kern, find_all(kern))
    assert all("pq" not in s.iterators for s in out.statements)


def test_linearize_reads_div_mod_halves_as_the_iterator():
    kern = pd.ops.conv2d(1, 3, 5, 4, 6, 1, 1).ir.bind({})  # O[1, 5, 4, 6]
    pq = Var(name="pq")
    halves = (IntOp(op="//", a=pq, b=Int(value=6)), IntOp(op="%", a=pq, b=Int(value=6)))
    lin = linearize(kern, Load(tensor="O", index=(Var(name="n"), Var(name="k"), *halves)))
    assert dict(lin.coefs) == {"n": 120, "k": 24, "pq": 1} and lin.const == 0
    # the wrong divisor for the row length, or a half alone, is not affine
    wrong = (IntOp(op="//", a=pq, b=Int(value=4)), IntOp(op="%", a=pq, b=Int(value=4)))
    assert linearize(kern, Load(tensor="O", index=(Var(name="n"), Var(name="k"), *wrong))) is None
    alone = (IntOp(op="//", a=pq, b=Int(value=6)), Var(name="q"))
    assert linearize(kern, Load(tensor="O", index=(Var(name="n"), Var(name="k"), *alone))) is None


@pd.kernel
def pointwise(
    O: pd.f32["N", "K", "P", "Q"],
    I: pd.f32["N", "C", "P", "Q"],
    Wt: pd.f32["K", "C"],
    b: pd.f32["K"],
):
    for n in range(N):
        for k in range(K):
            for p in range(P):
                for q in range(Q):
                    O[n, k, p, q] = 0.0
                    for c in range(C):
                        O[n, k, p, q] += Wt[k, c] * I[n, c, p, q]
                for q in range(Q):
                    O[n, k, p, q] = max(O[n, k, p, q] + b[k], 0.0)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "shape",
    [(1, 5, 7, 3, 11), (2, 13, 3, 5, 7), (1, 67, 37, 7, 7), (3, 3, 19, 1, 97), (1, 17, 71, 13, 1)],
)
def test_pointwise_user_kernel(shape, threads):
    N, C, K, P, Q = shape
    x, w, b = rand(N, C, P, Q), rand(K, C), rand(K)
    ref = conv_ref(x, w[:, :, None, None], b, 1, 0, True)
    k = pd.compile(pointwise, threads=threads, N=N, C=C, K=K, P=P, Q=Q)
    assert micro_statements(k)
    o = np.full((N, K, P, Q), 7.0, np.float32)
    k(o, x, w, b)
    np.testing.assert_allclose(o, ref, rtol=1e-4, atol=1e-4)
    # the next ranked variants compute the same
    for v in (1, 2):
        try:
            kv = pd.compile(pointwise, threads=threads, variant=v, N=N, C=C, K=K, P=P, Q=Q)
        except ValueError:  # fewer legal variants
            break
        o2 = np.full_like(o, 7.0)
        kv(o2, x, w, b)
        np.testing.assert_allclose(o2, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bias,relu", [(False, False), (True, True)])
@pytest.mark.parametrize(
    "shape", [(1, 3, 5, 7, 11), (2, 11, 13, 5, 3), (1, 70, 66, 9, 9), (1, 7, 3, 1, 1)]
)
def test_ops_1x1_nchw_coalesced(shape, bias, relu, threads):
    N, C, K, H, W = shape
    kern = pd.ops.conv2d(N, C, K, H, W, 1, 1, bias=bias, activation="relu" if relu else None)
    k = pd.compile(kern, threads=threads)
    plain = pd.compile(kern, threads=1, optimize=False)
    (mk, *_) = micro_statements(k)
    assert "pq" in mk.iterators or H == 1
    x, w, b = rand(N, C, H, W), rand(K, C, 1, 1), rand(K)
    args = [x, w, *([b] if bias else [])]
    o1, o2 = np.full((N, K, H, W), 7.0, np.float32), np.full((N, K, H, W), 7.0, np.float32)
    k(o1, *args)
    plain(o2, *args)
    ref = conv_ref(x, w, b if bias else None, 1, 0, relu)
    np.testing.assert_allclose(o1, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(o2, ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- nn.conv2d routes


def test_route_rule():
    assert pd.nn.conv_route((1, 64, 56, 56), (64, 64, 3, 3), 1, 1) == "rows"
    assert pd.nn.conv_route((1, 64, 56, 56), (256, 64, 1, 1), (1, 1), 0) == "rows"
    # strided: the compiler gathers the input
    assert pd.nn.conv_route((1, 256, 56, 56), (512, 256, 1, 1), 2, 0) == "direct"
    assert pd.nn.conv_route((1, 256, 56, 56), (512, 256, 1, 1), 2, 1) == "direct"
    assert pd.nn.conv_route((1, 3, 224, 224), (64, 3, 7, 7), (2, 2), 3) == "direct"
    # 3x3 stride 1 with >= 512 channels: blocked once the packed weights serve >= 256 pixels
    assert pd.nn.conv_route((1, 128, 28, 28), (128, 128, 3, 3), 1, 1) == "rows"
    assert pd.nn.conv_route((8, 512, 7, 7), (512, 512, 3, 3), 1, 1) == "blocked"
    assert pd.nn.conv_route((1, 512, 7, 7), (512, 512, 3, 3), 1, 1) == "rows"
    assert pd.nn.conv_route((1, 256, 14, 14), (256, 256, 3, 3), 1, 1) == "rows"
    # a batch of 14x14 images: "rows" would drop 2 of every 16 columns
    assert pd.nn.conv_route((8, 256, 14, 14), (256, 256, 3, 3), 1, 1) == "blocked"
    assert pd.nn.conv_route((8, 128, 28, 28), (128, 128, 3, 3), 1, 1) == "rows"
    assert pd.nn.conv_route((8, 64, 56, 56), (64, 64, 3, 3), 1, 1) == "rows"


CASES = [
    # N, C, K, H, W, R, S, stride, pad
    (1, 5, 7, 9, 11, 3, 3, 1, 1),
    (2, 3, 13, 7, 5, 1, 1, 1, 0),
    (1, 17, 11, 5, 7, 1, 1, 1, 1),
    (1, 6, 5, 13, 11, 5, 5, 1, 2),
    (3, 7, 3, 11, 13, 3, 3, 2, 1),
    (1, 3, 5, 11, 13, 7, 7, 2, 3),
    (2, 7, 5, 13, 11, 1, 1, 2, 0),  # strided 1x1: "rows" subsamples the input first
    (1, 5, 3, 11, 8, 1, 1, 3, 0),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("route", [None, "rows", "direct", "blocked"])
@pytest.mark.parametrize("case", CASES)
def test_nn_conv2d_routes(case, route, threads):
    N, C, K, H, W, R, S, st, pad = case
    x, w, b = rand(N, C, H, W), rand(K, C, R, S), rand(K)
    pointwise = (R, S, pad) == (1, 1, 0)
    if st != 1 and route == "rows" and not pointwise:
        with pytest.raises(ValueError, match="stride 1"):
            pd.nn.conv2d(x, w, stride=st, padding=pad, route=route)
        return
    for bias, act in ((None, None), (b, "relu")):
        y = pd.nn.conv2d(
            x, w, bias=bias, stride=st, padding=pad, activation=act, threads=threads, route=route
        )
        ref = conv_ref(x, w, bias, st, pad, act == "relu")
        assert y.shape == ref.shape and y.dtype == np.float32
        np.testing.assert_allclose(y, ref, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("threads", [1, 2])
def test_default_route_blocked_for_wide_3x3(threads):
    """512 channels, 3x3, 17 x 16 output pixels: the rule takes the blocked route (packing
    included), which matches the reference like the others."""
    x, w, b = rand(1, 512, 16, 17), rand(24, 512, 3, 3), rand(24)
    assert pd.nn.conv_route(x.shape, w.shape, 1, 1) == "blocked"
    y = pd.nn.conv2d(x, w, bias=b, padding=1, activation="relu", threads=threads)
    np.testing.assert_allclose(y, conv_ref(x, w, b, 1, 1, True), rtol=3e-4, atol=3e-4)


@pytest.mark.parametrize("threads", [1, 2])
def test_default_route_blocked_for_a_batch_of_small_images(threads):
    """3 images of 13 x 11 pixels, 3x3, 5 channels: "rows" would drop 2 of every 13 padded
    columns, so the rule takes the blocked route, which matches the reference."""
    x, w, b = rand(3, 5, 13, 11), rand(7, 5, 3, 3), rand(7)
    assert pd.nn.conv_route(x.shape, w.shape, 1, 1) == "blocked"
    y = pd.nn.conv2d(x, w, bias=b, padding=1, activation="relu", threads=threads)
    np.testing.assert_allclose(y, conv_ref(x, w, b, 1, 1, True), rtol=2e-4, atol=2e-4)


def test_nn_conv2d_routes_agree():
    x, w, b = rand(2, 19, 9, 7), rand(23, 19, 3, 3), rand(23)
    kw = dict(bias=b, padding=1, activation="relu", threads=2)
    rows = pd.nn.conv2d(x, w, route="rows", **kw)
    direct = pd.nn.conv2d(x, w, route="direct", **kw)
    blocked = pd.nn.conv2d(x, w, route="blocked", **kw)
    np.testing.assert_allclose(rows, blocked, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(direct, blocked, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 5, 7, 6, 9, 3, 3, 1), (2, 3, 4, 7, 5, 1, 3, 0)])
def test_rows_kernel_is_one_coalesced_nest(shape):
    N, C, K, H, W, R, S, pad = shape
    Hp, Wp = H + 2 * pad, W + 2 * pad
    k = pd.nn.compiled(pd.nn.conv2d_rows, N, C, K, Hp, Wp, R, S, bias=True, threads=1)
    micro = micro_statements(k)
    assert micro and all(s.micro.b == "I" and "j" in s.iterators for s in micro)
    # the rows past Q mix two input rows: computed, then dropped by nn.conv2d
    x, w, b = rand(N, C, H, W), rand(K, C, R, S), rand(K)
    y = pd.nn.conv2d(x, w, bias=b, padding=pad, route="rows", threads=1)
    np.testing.assert_allclose(y, conv_ref(x, w, b, 1, pad, False), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("threads", [1, 2])
def test_direct_route_batches_large_gathers_per_image(threads, monkeypatch):
    """A strided 5x5 conv over a batch: the compiled kernel gathers its im2col; when the
    batch's copy exceeds a core's share of the cache, nn.conv2d runs it one image at a time
    (here forced by a small share); both ways give the reference."""
    x, w, b = rand(3, 4, 67, 71), rand(8, 4, 5, 5), rand(8)
    one = pd.nn.compiled(
        pd.ops.conv2d,
        1,
        4,
        8,
        67,
        71,
        5,
        5,
        layout="nchw",
        threads=threads,
        stride=(2, 2),
        padding=(2, 2),
        bias=True,
        activation="relu",
    )
    assert one.kernel.temps  # the input is gathered
    want = conv_ref(x, w, b, 2, 2, True)
    for share in (1 << 40, 1 << 16):  # whole batch, then one image at a time
        monkeypatch.setattr(pd.nn, "_cache_share_bytes", lambda s=share: s)
        y = pd.nn.conv2d(x, w, bias=b, stride=2, padding=2, activation="relu", threads=threads)
        np.testing.assert_allclose(y, want, rtol=2e-4, atol=2e-4)


def test_nn_conv2d_route_errors():
    with pytest.raises(ValueError, match="route"):
        pd.nn.conv2d(rand(1, 3, 5, 5), rand(4, 3, 1, 1), route="nhwc")


@pytest.mark.parametrize("threads", [1, 2])
def test_pad_and_crop_rows_kernels(threads):
    x = rand(2, 3, 5, 7)
    xp = np.full((2, 3, 7 * 11 + 2), 0.0, np.float32)
    pd.nn.compiled(pd.ops.pad_rows, 2, 3, 5, 7, (1, 2), 2, threads=threads)(xp, x)
    want = np.zeros((2, 3, 7 * 11 + 2), np.float32)
    want[:, :, : 7 * 11].reshape(2, 3, 7, 11)[:, :, 1:6, 2:9] = x
    np.testing.assert_array_equal(xp, want)
    o = rand(2, 3, 5 * 11)
    y = np.zeros((2, 3, 5, 9), np.float32)
    pd.nn.compiled(pd.ops.crop_rows, 2, 3, 5, 9, 11, threads=threads)(y, o)
    np.testing.assert_array_equal(y, o.reshape(2, 3, 5, 11)[:, :, :, :9])


def test_rows_route_scratch_reused_across_calls():
    """The padded input and the uncropped output are kept per shape and thread: a second call
    with other data (and a call of another shape between) gives the right result."""
    w = rand(6, 5, 3, 3)
    for scale in (1.0, 100.0, -3.0):
        x = rand(2, 5, 9, 8) * scale
        y = pd.nn.conv2d(x, w, padding=1, route="rows", threads=2)
        np.testing.assert_allclose(y, conv_ref(x, w, None, 1, 1, False), rtol=2e-4, atol=2e-3)
        other = rand(1, 5, 4, 4)
        pd.nn.conv2d(other, w, padding=1, route="rows", threads=1)
