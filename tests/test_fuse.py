"""Loop fusion of nests (transform/fuse.py): legality apart from profit, the verdicts that
``show("fusion")`` prints, fused kernels against the unfused ones and NumPy on odd sizes, a
fusion that would reverse a dependence refused, and random chains of nests (hypothesis) run by
the interpreter fused (where legal) against unfused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernels import define

import polydl as pd
from polydl.ir import interp, poly
from polydl.ir.verify import verify
from polydl.pipeline import bind_sizes
from polydl.target import resolve
from polydl.transform.fuse import fuse_nests, legality, profit, spine

rng = np.random.default_rng(23)


def rand(*shape):
    return rng.uniform(-1, 1, size=shape).astype(np.float32)


@pd.kernel
def chain(Y: pd.f32["M", "N"], T: pd.f32["M", "N"], X: pd.f32["M", "N"], r: pd.f32["M"]):
    for i in range(M):
        for j in range(N):
            T[i, j] = pd.tanh(X[i, j]) + 1.0
    for i in range(M):
        for j in range(N):
            Y[i, j] = T[i, j] * r[i]


@pd.kernel
def softmax(Y: pd.f32["M", "N"], X: pd.f32["M", "N"], m: pd.f32["M"], s: pd.f32["M"]):
    for i in range(M):
        m[i] = -1e30
        for j in range(N):
            m[i] = max(m[i], X[i, j])
    for i in range(M):
        s[i] = 0.0
        for j in range(N):
            Y[i, j] = pd.exp(X[i, j] - m[i])
            s[i] += Y[i, j]
    for i in range(M):
        for j in range(N):
            Y[i, j] = Y[i, j] / s[i]


@pd.kernel
def reversed_read(Y: pd.f32["N"], X: pd.f32["N"]):
    for i in range(N):
        X[i] = X[i] * 2.0
    for i in range(N):
        Y[i] = X[N - 1 - i]


@pd.kernel
def gemm_softmax(
    C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "N"], m: pd.f32["M"], s: pd.f32["M"]
):
    for i in range(M):
        for j in range(N):
            C[i, j] = 0.0
        for k in range(K):
            for j in range(N):
                C[i, j] += A[i, k] * B[k, j]
    for i in range(M):
        m[i] = -1e30
        for j in range(N):
            m[i] = max(m[i], C[i, j])
    for i in range(M):
        s[i] = 0.0
        for j in range(N):
            C[i, j] = pd.exp(C[i, j] - m[i])
            s[i] += C[i, j]
    for i in range(M):
        for j in range(N):
            C[i, j] = C[i, j] / s[i]


def np_softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def one_nest(ck) -> bool:
    return len({poly.top_position(ck.kernel, s) for s in ck.kernel.statements}) == 1


@pytest.mark.parametrize("M,N", [(257, 1031), (600, 700)])
@pytest.mark.parametrize("threads", [1, 2])
def test_elementwise_chain_fuses(M, N, threads):
    x, r = rand(M, N), rand(M)
    ck = pd.compile(chain, M=M, N=N, threads=threads)
    assert "S0 | S1: fused at depth 2" in ck.show("fusion"), ck.show("fusion")
    assert one_nest(ck)
    y, t = np.zeros((M, N), np.float32), np.zeros((M, N), np.float32)
    ck(y, t, x, r)
    np.testing.assert_allclose(t, np.tanh(x.astype(np.float64)) + 1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        y, (np.tanh(x.astype(np.float64)) + 1) * r[:, None], rtol=1e-5, atol=1e-6
    )
    u = pd.compile(chain, M=M, N=N, threads=threads, fuse=False)
    assert not one_nest(u) and "none considered" in u.show("fusion")
    y2, t2 = np.zeros_like(y), np.zeros_like(t)
    u(y2, t2, x, r)
    np.testing.assert_allclose(y, y2, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("M,N", [(515, 2053), (64, 16411)])  # rows past any L2
def test_softmax_rows_fuse_at_the_row_loop(M, N):
    x = rand(M, N) * 4
    ck = pd.compile(softmax, M=M, N=N)
    report = ck.show("fusion")
    assert report.count("fused at depth 1") == 2, report
    assert one_nest(ck)
    y, m, s = np.zeros((M, N), np.float32), np.zeros(M, np.float32), np.zeros(M, np.float32)
    ck(y, x, m, s)
    np.testing.assert_allclose(y, np_softmax(x.astype(np.float64)), rtol=2e-5, atol=1e-8)


def test_small_nests_are_not_worth_fusing():
    ck = pd.compile(chain, M=7, N=9)
    report = ck.show("fusion")
    assert "unprofitable at depth 2: shared T" in report and "(L1)" in report, report
    assert not one_nest(ck)


def test_reversed_dependence_is_refused():
    """Fusing would read X[N-1-i] before the first nest doubled it: illegal, and the verdict
    names the dependence, the tensor and both statements' lines."""
    ck = pd.compile(reversed_read, N=1001)
    report = ck.show("fusion")
    assert "S0 | S1: illegal" in report, report
    assert "RAW dependence" in report and "`X`" in report and "test_fuse.py" in report
    assert not one_nest(ck)
    x = rand(1001)
    y = np.zeros(1001, np.float32)
    want = (x * 2)[::-1]
    ck(y, x)
    np.testing.assert_allclose(y, want, rtol=1e-6)


def test_legality_and_profit_are_separate_questions():
    k = bind_sizes(reversed_read.ir, {"N": 50})
    nests = [[k.statements[0]], [k.statements[1]]]
    assert spine(k, nests[0]) == [(0, 49)] == spine(k, nests[1])
    assert "RAW" in legality(k, *nests, 1)
    pays, why = profit(k, *nests, 1, resolve(None))  # profit does not ask about legality
    assert not pays and "shared X" in why


@pytest.mark.parametrize("M,N,K", [(37, 301, 29), (64, 1024, 64)])
def test_gemm_then_softmax_rows(M, N, K):
    """The GEMM stays BRGEMM calls; the softmax nests after it fuse among themselves."""
    a, b = rand(M, K), rand(K, N)
    ck = pd.compile(gemm_softmax, M=M, N=N, K=K)
    report = ck.show("fusion")
    assert "not fusable" in report and "contraction" in report, report
    assert any(s.micro is not None for s in ck.kernel.statements)
    c, m, s = np.zeros((M, N), np.float32), np.zeros(M, np.float32), np.zeros(M, np.float32)
    ck(c, a, b, m, s)
    np.testing.assert_allclose(c, np_softmax(a.astype(np.float64) @ b), rtol=2e-5, atol=1e-7)


# ------------------------------------------------------------------ random chains of nests
READS = {
    "same": "P[i, j]",
    "row": "P[i, 0]",  # within the row: fusable at depth 1 only once the row is done
    "transposed": "P[j % M, i % N]",  # other rows: not fusable at all in general
    "shifted": "P[i, (j + 1) % N]",
}


def nests_kernel(steps, M: int, N: int):
    """T0 = X; T_{s+1}[i, j] = f(T_s read as READS[kind]) for each step, one nest each (the
    sizes written in, so that the reads may wrap around with ``%``)."""
    n = len(steps)
    params = ", ".join(f"T{t}: pd.f32[{M}, {N}]" for t in range(n + 1))
    src = [f"def nests({params}):"]
    for t, (kind, scale) in enumerate(steps):
        read = READS[kind].replace("P", f"T{t}").replace("M", str(M)).replace("N", str(N))
        src += [f"    for i in range({M}):", f"        for j in range({N}):"]
        src += [f"            T{t + 1}[i, j] = {read} * {scale} + pd.tanh(T{t + 1}[i, j])"]
    return pd.kernel(define("\n".join(src), "nests", "test_fuse.nests"))


@settings(
    max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(sorted(READS)), st.sampled_from([0.5, -2.0])),
        min_size=1,
        max_size=4,
    ),
    M=st.integers(2, 7),
    N=st.integers(2, 9),
)
def test_random_nest_chains_fused_vs_unfused(steps, M, N):
    kern = bind_sizes(nests_kernel(steps, M, N).ir, {})
    fused, report = fuse_nests(kern, resolve(None), force=True)  # every legal pair fuses
    verify(fused)
    for c in report:
        assert c.verdict in ("fused", "illegal", "not fusable"), c.line()
    data = {
        t.name: rng.uniform(-1, 1, kern.shape_of(t.name)).astype(np.float32) for t in kern.tensors
    }
    want = {k: v.copy() for k, v in data.items()}
    got = {k: v.copy() for k, v in data.items()}
    interp.run(kern, want)
    interp.run(fused, got)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6, err_msg=name)
    # same-element steps always fuse with the nest before them
    for c, (kind, _) in zip(report, steps[1:], strict=True):
        if kind == "same":
            assert c.fused, c.line()
