"""``@pd.kernel`` objects: the NumPy reference against independent NumPy, shape inference, calls."""

from __future__ import annotations

import numpy as np
import pytest
from kernels import numpy_conv

import polydl as pd

rng = np.random.default_rng(3)


def rand(*shape):
    return rng.uniform(-1, 1, size=shape).astype(np.float32)


@pd.kernel
def gemm(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "N"], alpha: pd.f32):
    for i in range(M):
        for j in range(N):
            for k in range(K):
                C[i, j] += alpha * A[i, k] * B[k, j]


def test_reference_gemm_matches_numpy_positional_and_keyword():
    C, A, B = rand(3, 4), rand(3, 5), rand(5, 4)
    want = C + 0.5 * A @ B
    got = C.copy()
    gemm.reference(got, A, B, 0.5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    got = C.copy()
    gemm.reference(alpha=0.5, B=B, A=A, C=got)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


SH, PD = 2, 1


@pd.kernel
def conv_relu(
    O: pd.f32["K", "P", "Q"], I: pd.f32["C", "H", "W"], Wt: pd.f32["K", "C", 3, 3], b: pd.f32["K"]
):
    for k in range(K):
        for p in range(P):
            for q in range(Q):
                O[k, p, q] = b[k]
                for c in range(C):
                    for r in range(3):
                        for s in range(3):
                            if 0 <= SH * p + r - PD < H and 0 <= SH * q + s - PD < W:
                                O[k, p, q] += (
                                    I[c, SH * p + r - PD, SH * q + s - PD] * Wt[k, c, r, s]
                                )
                O[k, p, q] = pd.sigmoid(max(O[k, p, q], 0.0))


def test_reference_conv_with_padding_stride_and_epilogue():
    I, Wt, b = rand(2, 7, 6), rand(3, 2, 3, 3), rand(3)
    O = np.zeros((3, 4, 3), np.float32)
    conv_relu.reference(O, I, Wt, b)
    z = np.maximum(numpy_conv(I, Wt, SH, PD) + b[:, None, None], 0.0)
    np.testing.assert_allclose(O, 1 / (1 + np.exp(-z)), rtol=1e-5, atol=1e-6)


def test_sizes_for_unifies_every_dimension():
    C, A, B = rand(3, 4), rand(3, 5), rand(5, 4)
    assert gemm.sizes_for(C, A, B, 1.0) == {"M": 3, "N": 4, "K": 5}
    assert gemm.sizes_for(C=C, A=A, B=B, alpha=1.0) == {"M": 3, "N": 4, "K": 5}
    with pytest.raises(ValueError) as ei:
        gemm.sizes_for(C, A, rand(4, 4), 1.0)
    msg = str(ei.value)
    assert "'B'" in msg and "(4, 4)" in msg and "K=5" in msg and "'A'" in msg
    with pytest.raises(ValueError, match=r"'C'.*\(3,\).*2 dimensions"):
        gemm.sizes_for(rand(3), A, B, 1.0)
    with pytest.raises(TypeError, match="'A'"):
        gemm.sizes_for(C, [[1.0]], B, 1.0)
    with pytest.raises(TypeError, match="gemm"):
        gemm.sizes_for(C, A, B)
    with pytest.raises(ValueError, match=r"'Wt'.*dimension 2 must be 3"):
        conv_relu.sizes_for(rand(3, 4, 3), rand(2, 7, 6), rand(3, 2, 2, 3), rand(3))


def test_reference_refuses_mismatched_shapes_before_writing():
    C = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError):
        gemm.reference(C, rand(3, 5), rand(6, 4), 1.0)
    assert not C.any()


def test_kernel_function_attributes():
    assert gemm.name == "gemm" and gemm.__name__ == "gemm"
    assert gemm.ir.sizes == ("M", "N", "K")
    assert "gemm" in repr(gemm)


def test_call_compiles_per_sizes_and_caches():
    C, A, B = np.zeros((2, 3), np.float32), rand(2, 4), rand(4, 3)
    gemm(C, A, B, 1.0)
    np.testing.assert_allclose(C, A @ B, rtol=1e-5, atol=1e-5)
    gemm(C, A, B, alpha=-1.0)
    np.testing.assert_allclose(C, 0 * C, atol=1e-5)
    assert len([k for k in gemm._compiled if dict(k) == {"M": 2, "N": 3, "K": 4}]) == 1
