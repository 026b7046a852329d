"""DSL kernels and NumPy references shared by several test files (not collected by pytest)."""

from __future__ import annotations

import itertools
import linecache
import textwrap

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
    """:func:`numpy_conv` with an optional bias (per output channel) and ReLU; ``pad`` an int
    or a pair (rows, columns)."""
    ph, pw = pad if isinstance(pad, tuple) else (pad, pad)
    out = numpy_conv(np.pad(x, ((0, 0),) * (x.ndim - 2) + ((ph, ph), (pw, pw))), w, stride, 0)
    if b is not None:
        out += b[None, :, None, None]
    return np.maximum(out, 0) if relu else out


_ids = itertools.count()


def define(source: str, name: str, tag: str = "generated"):
    """The function ``name`` defined by generated source text (dedented; ``pd`` in scope),
    its lines registered under a linecache file name ``<tag#n>`` so that DSL errors and
    ``show()`` quote them."""
    filename = f"<{tag}#{next(_ids)}>"
    text = textwrap.dedent(source).lstrip("\n")
    text += "" if text.endswith("\n") else "\n"
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    ns: dict = {"pd": pd}
    exec(compile(text, filename, "exec"), ns)  # noqa: S102
    return ns[name]


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


def check_strided_conv(case, threads, fill):
    """Compile ``pd.ops.conv2d`` (bias, ReLU) for ``case`` = (N, C, K, H, W, R, S, stride, pad),
    run it on an output pre-filled with ``fill`` (the init must overwrite it), compare it with
    the NumPy reference and return the compiled kernel."""
    N, C, K, H, W, R, S, stride, pad = case
    P, Q = pd.ops.conv_shape(H, W, R, S, stride, pad)
    kern = pd.ops.conv2d(
        N, C, K, H, W, R, S, stride=stride, padding=pad, bias=True, activation="relu"
    )
    k = pd.compile(kern, threads=threads)
    rng = np.random.default_rng(0)
    x, w, b = (rng.uniform(-1, 1, s).astype(np.float32) for s in ((N, C, H, W), (K, C, R, S), (K,)))
    o = np.full((N, K, P, Q), fill, np.float32)
    k(o, x, w, b)
    sh, sw = stride if isinstance(stride, tuple) else (stride, stride)
    ph, pw = pad if isinstance(pad, tuple) else (pad, pad)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    want = conv_ref(xp, w, b, 1, 0, True)[:, :, ::sh, ::sw][:, :, :P, :Q]
    np.testing.assert_allclose(o, want, rtol=1e-4, atol=1e-4)
    return k
