"""PolyBench-style kernels as a user writes them: ``/=`` (LU, Cholesky), time-step sizes that
shape no tensor (Jacobi, Seidel), triangular nests; compiled against the sequential reference
at odd and prime sizes, on 1 and 2 threads."""

from __future__ import annotations

import numpy as np
import pytest

import polydl as pd


@pd.kernel
def lu(A: pd.f32["N", "N"]):
    for i in range(N):
        for j in range(i):
            for k in range(j):
                A[i, j] -= A[i, k] * A[k, j]
            A[i, j] /= A[j, j]
        for j in range(i, N):
            for k in range(i):
                A[i, j] -= A[i, k] * A[k, j]


@pd.kernel
def cholesky(A: pd.f32["N", "N"]):
    for i in range(N):
        for j in range(i):
            for k in range(j):
                A[i, j] -= A[i, k] * A[j, k]
            A[i, j] /= A[j, j]
        for k in range(i):
            A[i, i] -= A[i, k] * A[i, k]
        A[i, i] = pd.sqrt(A[i, i])


@pd.kernel
def jacobi_1d(A: pd.f32["N"], B: pd.f32["N"]):
    for t in range(T):
        for i in range(1, N - 1):
            B[i] = 0.33333 * (A[i - 1] + A[i] + A[i + 1])
        for i in range(1, N - 1):
            A[i] = 0.33333 * (B[i - 1] + B[i] + B[i + 1])


@pd.kernel
def seidel_2d(A: pd.f32["N", "N"]):
    for t in range(T):
        for i in range(1, N - 1):
            for j in range(1, N - 1):
                A[i, j] = (
                    A[i - 1, j - 1]
                    + A[i - 1, j]
                    + A[i - 1, j + 1]
                    + A[i, j - 1]
                    + A[i, j]
                    + A[i, j + 1]
                    + A[i + 1, j - 1]
                    + A[i + 1, j]
                    + A[i + 1, j + 1]
                ) / 9.0


@pd.kernel
def row_scale(A: pd.f32["N", "M"], d: pd.f32["N"]):
    for i in range(N):
        for j in range(M):
            A[i, j] /= d[i]


def _spd(n: int, rng) -> np.ndarray:
    x = rng.standard_normal((n, n))
    return (x @ x.T + n * np.eye(n)).astype(np.float32)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [1, 7, 23])
@pytest.mark.parametrize("kern", [lu, cholesky])
def test_factorizations_match_reference(kern, n, threads):
    a = _spd(n, np.random.default_rng(n))
    mine, ref = a.copy(), a.copy()
    pd.compile(kern, N=n, threads=threads)(mine)
    kern.reference(ref)
    np.testing.assert_allclose(mine, ref, rtol=1e-4, atol=1e-5)
    if kern is cholesky:  # the lower triangle is NumPy's factor
        np.testing.assert_allclose(np.tril(mine), np.linalg.cholesky(a), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n,t", [(3, 1), (13, 5), (31, 2)])
def test_time_step_stencils_match_reference(n, t, threads):
    rng = np.random.default_rng(n)
    a, b = rng.random(n, dtype=np.float32), np.zeros(n, np.float32)
    mine, ref = (a.copy(), b.copy()), (a.copy(), b.copy())
    pd.compile(jacobi_1d, N=n, T=t, threads=threads)(*mine)
    jacobi_1d.reference(*ref, T=t)
    for x, y in zip(mine, ref, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    g = rng.random((n, n), dtype=np.float32)
    g1, g2 = g.copy(), g.copy()
    seidel_2d(g1, T=t)  # a direct call names the size no shape gives
    seidel_2d.reference(g2, T=t)
    np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-6)


def test_divide_assign_is_a_reorderable_update():
    rng = np.random.default_rng(0)
    a = rng.random((11, 13), dtype=np.float32)
    d = 1.0 + rng.random(11, dtype=np.float32)
    mine = a.copy()
    row_scale(mine, d)
    np.testing.assert_allclose(mine, a / d[:, None], rtol=1e-6)
    assert "fdiv" in pd.compile(row_scale, N=11, M=13).show("llvm")
