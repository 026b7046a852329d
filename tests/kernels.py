"""DSL kernels and NumPy references shared by several test files (not collected by pytest)."""

from __future__ import annotations

import numpy as np

import polydl as pd


def numpy_conv(x, w, stride, pad):
    """NCHW x KCRS convolution in float64 (a CHW input is taken as a batch of one)."""
    if x.ndim == 3:
        return numpy_conv(x[None], w, stride, pad)[0]
    n, c, h, wd = x.shape
    k, _, r, s = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    p = (h + 2 * pad - r) // stride + 1
    q = (wd + 2 * pad - s) // stride + 1
    out = np.zeros((n, k, p, q))
    for i in range(r):
        for j in range(s):
            patch = xp[:, :, i : i + stride * p : stride, j : j + stride * q : stride]
            out += np.einsum("nchw,kc->nkhw", patch, w[:, :, i, j].astype(np.float64))
    return out


def conv_ref(x, w, b, stride, pad, relu):
    """:func:`numpy_conv` with an optional bias (per output channel) and ReLU."""
    out = numpy_conv(x, w, stride, pad)
    if b is not None:
        out += b[None, :, None, None]
    return np.maximum(out, 0) if relu else out


@pd.kernel
def bmm(C: pd.f32["Bt", "M", "N"], A: pd.f32["Bt", "M", "K"], B: pd.f32["Bt", "K", "N"]):
    for b in range(Bt):
        for i in range(M):
            for j in range(N):
                C[b, i, j] = 0.0
                for k in range(K):
                    C[b, i, j] += A[b, i, k] * B[b, k, j]


@pd.kernel
def gemm_bias_relu(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "N"], b: pd.f32["N"]):
    for i in range(M):
        for j in range(N):
            C[i, j] = 0.0
            for k in range(K):
                C[i, j] += A[i, k] * B[k, j]
            C[i, j] = max(C[i, j] + b[j], 0.0)


@pd.kernel
def gemm_bt(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["N", "K"]):
    """C = A @ B.T: B read across its rows (gathered into a dense copy, transform/gather.py)."""
    for i in range(M):
        for j in range(N):
            C[i, j] = 0.0
            for k in range(K):
                C[i, j] += A[i, k] * B[j, k]
