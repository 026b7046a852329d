"""Compiled code against the sequential reference and against independent NumPy code.

Extents are 1, primes and odd sizes on purpose; every kernel runs with 1 and 2 threads.
"""

from __future__ import annotations

import numpy as np
import pytest
from kernels import bmm, numpy_conv

import polydl as pd

rng = np.random.default_rng(7)


def rand(*shape, dtype=np.float32):
    return rng.uniform(-1, 1, size=shape).astype(dtype)


def run_both(kern, args: dict, sizes: dict, threads: int, rtol=2e-5, atol=2e-5):
    """Run compiled and reference on copies of ``args``; compare every array."""
    mine = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in args.items()}
    ref = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in args.items()}
    ck = pd.compile(kern, threads=threads, **sizes)
    ck(**mine)
    kern.reference(**ref)
    for k, v in args.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_allclose(mine[k], ref[k], rtol=rtol, atol=atol, err_msg=k)
    return mine


@pd.kernel
def gemm(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "N"], alpha: pd.f32):
    for i in range(M):
        for j in range(N):
            for k in range(K):
                C[i, j] += alpha * A[i, k] * B[k, j]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (7, 13, 5), (17, 3, 29), (33, 31, 1)])
def test_gemm(M, N, K, threads):
    C, A, B = rand(M, N), rand(M, K), rand(K, N)
    out = run_both(gemm, dict(C=C, A=A, B=B, alpha=1.5), dict(M=M, N=N, K=K), threads)
    np.testing.assert_allclose(out["C"], C + 1.5 * A @ B, rtol=1e-4, atol=1e-4)


def test_gemm_called_directly_caches():
    C, A, B = np.zeros((5, 6), np.float32), rand(5, 3), rand(3, 6)
    gemm(C, A, B, 2.0)
    np.testing.assert_allclose(C, 2.0 * A @ B, rtol=1e-5, atol=1e-5)
    gemm(C, A, B, alpha=-2.0)
    np.testing.assert_allclose(C, 0 * C, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_batched_matmul(threads):
    Bt, M, N, K = 3, 5, 7, 11
    A, B = rand(Bt, M, K), rand(Bt, K, N)
    C = np.full((Bt, M, N), 9.0, np.float32)
    out = run_both(bmm, dict(C=C, A=A, B=B), dict(Bt=Bt, M=M, N=N, K=K), threads)
    np.testing.assert_allclose(out["C"], A @ B, rtol=1e-4, atol=1e-4)


STRIDE = 2
PAD = 1


@pd.kernel
def conv_pad(
    O: pd.f32["Nb", "K", "P", "Q"],
    I: pd.f32["Nb", "C", "H", "W"],
    Wt: pd.f32["K", "C", "R", "S"],
):
    for n in range(Nb):
        for k in range(K):
            for p in range(P):
                for q in range(Q):
                    for c in range(C):
                        for r in range(R):
                            for s in range(S):
                                if 0 <= STRIDE * p + r - PAD < H and 0 <= STRIDE * q + s - PAD < W:
                                    O[n, k, p, q] += (
                                        I[n, c, STRIDE * p + r - PAD, STRIDE * q + s - PAD]
                                        * Wt[k, c, r, s]
                                    )


@pytest.mark.parametrize("threads", [1, 2])
def test_conv_stride2_padding(threads):
    Nb, C, K, H, W, R, S = 2, 3, 5, 11, 9, 3, 3
    P = (H + 2 * PAD - R) // STRIDE + 1
    Q = (W + 2 * PAD - S) // STRIDE + 1
    x, w = rand(Nb, C, H, W), rand(K, C, R, S)
    O = np.zeros((Nb, K, P, Q), np.float32)
    sizes = dict(Nb=Nb, C=C, K=K, H=H, W=W, R=R, S=S, P=P, Q=Q)
    out = run_both(conv_pad, dict(O=O, I=x, Wt=w), sizes, threads)
    np.testing.assert_allclose(out["O"], numpy_conv(x, w, STRIDE, PAD), rtol=1e-4, atol=1e-4)


@pd.kernel
def conv_bias_relu(
    O: pd.f32["K", "P", "Q"],
    I: pd.f32["C", "H", "W"],
    Wt: pd.f32["K", "C", "R", "S"],
    b: pd.f32["K"],
):
    for k in range(K):
        for p in range(P):
            for q in range(Q):
                O[k, p, q] = 0.0
                for c in range(C):
                    for r in range(R):
                        for s in range(S):
                            O[k, p, q] += I[c, p + r, q + s] * Wt[k, c, r, s]
                O[k, p, q] = max(O[k, p, q] + b[k], 0.0)


@pytest.mark.parametrize("threads", [1, 2])
def test_multi_statement_conv(threads):
    C, K, H, W, R, S = 3, 4, 7, 8, 3, 2
    P, Q = H - R + 1, W - S + 1
    x, w, b = rand(C, H, W), rand(K, C, R, S), rand(K)
    O = np.full((K, P, Q), 5.0, np.float32)
    sizes = dict(C=C, K=K, H=H, W=W, R=R, S=S, P=P, Q=Q)
    out = run_both(conv_bias_relu, dict(O=O, I=x, Wt=w, b=b), sizes, threads)
    want = numpy_conv(x[None], w, 1, 0)[0] + b[:, None, None]
    np.testing.assert_allclose(out["O"], np.maximum(want, 0), rtol=1e-4, atol=1e-4)


@pd.kernel
def syrk(C: pd.f32["N", "N"], A: pd.f32["N", "K"]):
    for i in range(N):
        for j in range(i + 1):
            for k in range(K):
                C[i, j] += A[i, k] * A[j, k]


@pd.kernel
def lu(A: pd.f64["N", "N"]):
    for k in range(N):
        for i in range(k + 1, N):
            A[i, k] = A[i, k] / A[k, k]
            for j in range(k + 1, N):
                A[i, j] -= A[i, k] * A[k, j]


@pytest.mark.parametrize("threads", [1, 2])
def test_triangular(threads):
    N, K = 13, 7
    A = rand(N, K)
    C = np.zeros((N, N), np.float32)
    out = run_both(syrk, dict(C=C, A=A), dict(N=N, K=K), threads)
    np.testing.assert_allclose(out["C"], np.tril(A @ A.T), rtol=1e-4, atol=1e-4)
    M = rand(N, N, dtype=np.float64) + N * np.eye(N)
    out = run_both(lu, dict(A=M), dict(N=N), threads, rtol=1e-10, atol=1e-10)
    low, up = np.tril(out["A"], -1) + np.eye(N), np.triu(out["A"])
    np.testing.assert_allclose(low @ up, M, rtol=1e-9, atol=1e-9)


T = 5


@pd.kernel
def jacobi(A: pd.f32["N"], B: pd.f32["N"]):
    for t in range(T):
        for i in range(1, N - 1):
            B[i] = 0.33333 * (A[i - 1] + A[i] + A[i + 1])
        for i in range(1, N - 1):
            A[i] = B[i]


@pd.kernel
def seidel(A: pd.f32["N", "N"]):
    for t in range(T):
        for i in range(1, N - 1):
            for j in range(1, N - 1):
                A[i, j] = 0.2 * (A[i - 1, j] + A[i, j - 1] + A[i, j] + A[i + 1, j] + A[i, j + 1])


@pytest.mark.parametrize("threads", [1, 2])
def test_time_iterated_stencils(threads):
    N = 19
    A, B = rand(N), np.zeros(19, np.float32)
    out = run_both(jacobi, dict(A=A, B=B), dict(N=N), threads)
    a = A.astype(np.float64)
    for _ in range(T):
        b = a.copy()
        b[1:-1] = 0.33333 * (a[:-2] + a[1:-1] + a[2:])
        a = b
    np.testing.assert_allclose(out["A"], a, rtol=1e-5, atol=1e-5)
    run_both(seidel, dict(A=rand(11, 11)), dict(N=11), threads)


@pd.kernel
def two_nests(Y: pd.f32["N"], Z: pd.f32["N"], X: pd.f32["N"], s: pd.f32):
    for i in range(N):
        Y[i] = pd.exp(X[i]) - pd.sqrt(X[i] * X[i] + 1.0)
    for i in range(N):
        Z[i] = pd.tanh(Y[i]) * s + pd.sigmoid(-X[i]) / 2 + min(X[i], 0.25)
    for i in range(N // 2):
        Z[2 * i + N % 2] *= 3.0


@pytest.mark.parametrize("threads", [1, 2])
def test_several_nests_and_intrinsics(threads):
    N = 23
    x = rand(N)
    out = run_both(
        two_nests,
        dict(Y=np.zeros(N, np.float32), Z=np.zeros(N, np.float32), X=x, s=0.5),
        dict(N=N),
        threads,
        rtol=1e-5,
    )
    y = np.exp(x.astype(np.float64)) - np.sqrt(x.astype(np.float64) ** 2 + 1)
    z = np.tanh(y) * 0.5 + 1 / (1 + np.exp(x)) / 2 + np.minimum(x, 0.25)
    z[1::2] *= 3.0
    np.testing.assert_allclose(out["Z"], z, rtol=1e-5, atol=1e-5)


def test_poorly_balanced_parallel_loop_is_collapsed():
    # 3 batches on 2 threads: the batch loop and the row loop run as one loop of 3*5 iterations
    import re

    k = pd.compile(bmm, Bt=3, M=5, N=7, K=11, threads=2, optimize=False)
    assert re.search(r"; for c\d+_c\d+", k.show("llvm"))
    A, B = rand(3, 5, 11), rand(3, 11, 7)
    C = np.zeros((3, 5, 7), np.float32)
    k(C, A, B)
    np.testing.assert_allclose(C, A @ B, rtol=1e-4, atol=1e-4)
