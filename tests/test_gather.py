"""Gathers of strided operands into dense scratch (transform/gather.py): strided NCHW
convolutions and transposed or strided GEMM operands written by hand run on BRGEMM calls, checked
against float64 NumPy and against the untransformed kernel; cases the pass must leave alone."""

from __future__ import annotations

import numpy as np
import pytest
from kernels import check_strided_conv, conv_ref, gemm_bt

import polydl as pd
from polydl.ir.verify import verify
from polydl.pipeline import bind_sizes, compile_kernel
from polydl.transform.gather import gather_operands

rng = np.random.default_rng(5)


def rand(*shape):
    return rng.uniform(-1, 1, size=shape).astype(np.float32)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "case",
    [
        # N, C, K, H, W, R, S, stride, padding
        (1, 16, 32, 9, 9, 1, 1, 2, 0),  # a ResNet downsampling 1x1, odd image
        (2, 7, 19, 13, 11, 1, 1, 2, 0),
        (1, 3, 16, 23, 23, 7, 7, 2, 3),  # the first ResNet layer: guards become zeros
        (1, 5, 24, 11, 13, 3, 3, 2, 1),
        (1, 4, 17, 10, 15, 3, 1, (2, 3), (1, 0)),
        (1, 3, 11, 7, 5, 2, 2, 3, 1),  # stride larger than the filter
    ],
)
def test_strided_convs_run_on_brgemm(case, threads):
    k = check_strided_conv(case, threads, fill=7.0)
    loops = k.show("loops")
    assert "brgemm(" in loops and "I_g0" in loops and "gathered for" in loops


def test_pass_against_the_untransformed_kernel():
    kern = pd.ops.conv2d(2, 5, 24, 11, 13, 3, 3, stride=2, padding=1)
    bound = bind_sizes(kern.ir, {})
    gathered = gather_operands(bound)
    verify(gathered)
    assert [t.name for t in gathered.temps] == ["I_g0"]
    assert gathered.arg("I_g0").shape[-2:] == bound.arg("O").shape[-2:]  # columns last: P, Q
    x, w = rand(2, 5, 11, 13), rand(24, 5, 3, 3)
    outs = []
    for ir in (bound, gathered):  # both on the plain schedule: the pass alone
        o = np.zeros((2, 24, 6, 7), np.float32)
        compile_kernel(ir, {}, optimize=False, threads=1)(o, x, w)
        outs.append(o)
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-5)


@pd.kernel
def gemm_strided(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "L"]):
    for i in range(M):
        for j in range(N):
            for k in range(K):
                C[i, j] += A[i, k] * B[k, 3 * j + 1]


@pytest.mark.parametrize("threads", [1, 2])
def test_transposed_and_strided_gemm_operands(threads):
    a, bt = rand(37, 41), rand(53, 41)
    c = np.full((37, 53), 3.0, np.float32)
    k = pd.compile(gemm_bt, M=37, N=53, K=41, threads=threads)
    k(c, a, bt)
    np.testing.assert_allclose(c, a.astype(np.float64) @ bt.T, rtol=1e-4, atol=1e-4)
    assert "B_g0" in k.show("loops") and "brgemm(" in k.show("loops")
    b = rand(41, 3 * 29 + 2)
    c = rand(37, 29)
    want = c + a.astype(np.float64) @ b[:, 1::3][:, :29]
    k = pd.compile(gemm_strided, M=37, N=29, K=41, L=3 * 29 + 2, threads=threads)
    k(c, a, b)
    np.testing.assert_allclose(c, want, rtol=1e-4, atol=1e-4)
    assert "B_g0" in k.show("loops")


@pd.kernel
def strided_written(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "L"]):
    for i in range(M):
        for j in range(N):
            for k in range(K):
                C[i, j] += A[i, k] * B[k, 2 * j]
    for k in range(K):
        B[k, 0] = 1.0


@pd.kernel
def strided_other_guard(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "L"]):
    for i in range(M):
        for j in range(N):
            for k in range(K):
                if k < i:
                    C[i, j] += A[i, k] * B[k, 2 * j]


def test_left_alone():
    sizes = dict(M=16, N=16, K=16, L=32)
    # too little reuse of each gathered element (one output channel)
    tiny = bind_sizes(pd.ops.conv2d(1, 8, 1, 9, 9, 1, 1, stride=2).ir, {})
    assert gather_operands(tiny) is tiny
    # the operand is written in the kernel; a guard that is not the operand's bounds
    for kern in (strided_written, strided_other_guard):
        bound = bind_sizes(kern.ir, sizes)
        assert gather_operands(bound) is bound
    c, a, b = rand(16, 16), rand(16, 16), rand(16, 32)
    want = c.astype(np.float64) + np.tril(a, -1) @ b[:, ::2]
    pd.compile(strided_other_guard, **sizes)(c, a, b)
    np.testing.assert_allclose(c, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "case",
    [
        (1, 64, 48, 7, 7, 3, 3, 1),  # a small image: im2col calls cover all 49 pixels
        (2, 13, 17, 9, 11, 3, 3, 1),
        (1, 24, 40, 14, 14, 5, 3, (2, 1)),
    ],
)
def test_guarded_convs_take_the_cheaper_lowering(case, threads):
    """A padded stride-1 conv has two lowerings: its guards split away, or its input gathered
    (im2col); the pipeline keeps the one the cost model predicts cheaper, and says so."""
    from polydl.pipeline import _cheapest
    from polydl.target import resolve

    N, C, K, H, W, R, S, pad = case
    kern = pd.ops.conv2d(N, C, K, H, W, R, S, padding=pad, bias=True)
    k = pd.compile(kern, threads=threads)
    x, w, b = rand(N, C, H, W), rand(K, C, R, S), rand(K)
    P, Q = pd.ops.conv_shape(H, W, R, S, 1, pad)
    o = np.full((N, K, P, Q), 7.0, np.float32)
    k(o, x, w, b)
    ph, pw = pad if isinstance(pad, tuple) else (pad, pad)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    np.testing.assert_allclose(o, conv_ref(xp, w, b, 1, 0, False), rtol=1e-4, atol=1e-4)
    assert k.show("variants").startswith("lowering: ")
    # the choice is the cheaper prediction of the two
    bound = bind_sizes(kern.ir, {})
    wide = gather_operands(bound, guarded=True)
    assert wide is not bound and gather_operands(bound) is bound
    tgt = resolve(None)
    chosen, _ = _cheapest([bound, wide], tgt.isa, target=tgt, threads=threads, variant=0)
    assert (chosen is wide) == bool(k.kernel.temps)


def test_small_images_gather_large_ones_split():
    """On the 3x3 ResNet layers the cost model gathers where the split's border calls are
    short (a 7x7 image: 6-7 pixels a call) and splits a 56x56 image (its im2col is 9x the
    input and the split's calls are long)."""
    small = pd.compile(pd.ops.conv2d(1, 256, 256, 7, 7, 3, 3, padding=1), threads=1)
    large = pd.compile(pd.ops.conv2d(1, 64, 64, 56, 56, 3, 3, padding=1), threads=1)
    assert [t.name for t in small.kernel.temps] == ["I_g0"]
    assert large.kernel.temps == ()
