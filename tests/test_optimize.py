"""The optimised path (contractions lowered to BRGEMM calls) against the plain path and NumPy.

Shapes are odd, prime or 1 on purpose; every ResNet-50 layer runs shrunk spatially with bias and
ReLU, at batch 1 and 3, with 1 and 2 threads, against a float64 NumPy convolution.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from kernels import bmm, conv_ref

import polydl as pd
from polydl.analysis.contraction import find_all

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from common import resnet50_layers  # noqa: E402

rng = np.random.default_rng(3)


def rand(*shape):
    return rng.uniform(-1, 1, size=shape).astype(np.float32)


def micro_statements(k: pd.CompiledKernel) -> list:
    return [s for s in k.kernel.statements if s.micro is not None]


@pd.kernel
def gemm_alpha(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "N"]):
    for i in range(M):
        for j in range(N):
            for k in range(K):
                C[i, j] += 1.5 * A[i, k] * B[k, j]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (7, 13, 5), (97, 131, 67), (64, 200, 48)])
def test_user_gemm_becomes_brgemm(M, N, K, threads):
    A, B, C = rand(M, K), rand(K, N), rand(M, N)
    k = pd.compile(gemm_alpha, M=M, N=N, K=K, threads=threads)
    assert micro_statements(k), k.show("loops")
    assert "brgemm" in k.show("loops")
    mine, plain = C.copy(), C.copy()
    k(mine, A, B)
    pd.compile(gemm_alpha, M=M, N=N, K=K, threads=threads, optimize=False)(plain, A, B)
    np.testing.assert_allclose(mine, plain, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(mine, C + 1.5 * (A.astype(np.float64) @ B), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
def test_batched_matmul_becomes_brgemm(threads):
    Bt, M, N, K = 3, 11, 37, 19
    A, B = rand(Bt, M, K), rand(Bt, K, N)
    C = np.full((Bt, M, N), 5.0, np.float32)
    k = pd.compile(bmm, Bt=Bt, M=M, N=N, K=K, threads=threads)
    assert micro_statements(k)
    k(C, A, B)
    np.testing.assert_allclose(C, A @ B, rtol=1e-4, atol=1e-4)


def test_contraction_roles_of_blocked_conv():
    kern = pd.ops.conv2d(
        1, 32, 48, 9, 9, 3, 3, stride=2, padding=1, bias=True, activation="relu", layout="nchwc"
    )
    bound = kern.ir.bind({})
    (c,) = find_all(bound)
    # output rows p coalesce over the pixels q of a row: the input rows (stride 2) do not
    # continue each other, so a call's rows come in groups of Q = 5 (kernels/config.py)
    assert (c.m, c.m_inner, c.n, c.k) == ("p", "q", "kv", "cv")
    assert set(c.batch) == {"cb", "r", "s"} and set(c.outer) == {"n", "kb"}
    # padded input rows of 11 pixels of cb channels, output rows of 5 pixels of kb channels
    blk = pd.ops.conv_block(5, 5)
    cb, kb = pd.ops.channel_block(32, blk), pd.ops.channel_block(48, blk)
    assert c.row_groups() == {"row_group": 5, "lda_group": 2 * 11 * cb, "ldc_group": 5 * kb}
    assert c.init is not None and c.epilogue
    assert (
        c.post.expr == ("max", ("+", ("acc",), ("in", 0)), ("num", 0.0))
        and c.post.operands[0].col == 1
    )


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("bias", [False, True])
def test_ops_matmul(bias, activation):
    M, N, K = 13, 29, 17
    A, B, b = rand(M, K), rand(K, N), rand(N)
    want = A.astype(np.float64) @ B + (b if bias else 0)
    want = np.maximum(want, 0) if activation else want
    out = pd.nn.matmul(A, B, bias=b if bias else None, activation=activation)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    k = pd.compile(pd.ops.matmul(M, N, K, bias=bias, activation=activation))
    assert micro_statements(k)


@pytest.mark.parametrize("layer", [r["name"] for r in resnet50_layers()])
def test_resnet50_layers_shrunk(layer):
    row = next(r for r in resnet50_layers() if r["name"] == layer)
    C, K, R, S, st, pad = (int(row[x]) for x in ("C", "K", "R", "S", "stride", "pad"))
    # shrink: channels at most 64, spatial 9x9 (11x11 for the 7x7 filter), keep everything else
    C, K = min(C, 64), min(K, 48)
    H = W = 11 if R == 7 else 9
    for batch, threads in ((1, 1), (1, 2), (3, 1), (3, 2)):
        x, w, b = rand(batch, C, H, W), rand(K, C, R, S), rand(K)
        y = pd.nn.conv2d(x, w, bias=b, stride=st, padding=pad, activation="relu", threads=threads)
        np.testing.assert_allclose(y, conv_ref(x, w, b, st, pad, True), rtol=2e-4, atol=2e-4)


def test_blocked_conv_uses_brgemm_and_matches_plain():
    kern = pd.ops.conv2d(
        2, 24, 40, 7, 9, 3, 3, stride=1, padding=1, bias=True, layout="nchwc", block=8
    )
    sizes = {}
    fast = pd.compile(kern, threads=2, **sizes)
    plain = pd.compile(kern, threads=1, optimize=False)
    assert micro_statements(fast) and not micro_statements(plain)
    xp = rand(2, 3, 9, 11, 8)
    wp, b = rand(5, 3, 3, 3, 8, 8), rand(5, 8)
    o1, o2 = np.empty((2, 5, 7, 9, 8), np.float32), np.empty((2, 5, 7, 9, 8), np.float32)
    fast(o1, xp, wp, b)
    plain(o2, xp, wp, b)
    np.testing.assert_allclose(o1, o2, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "H, R, stride, pad", [(29, 1, 2, 0), (13, 3, 1, 1), (17, 3, 2, 1), (11, 7, 2, 3)]
)
def test_blocked_conv_grouped_rows_match_plain(H, R, stride, pad):
    """Output rows whose input rows do not continue each other (stride 2, padding) become
    grouped rows of one call; row blocks that do not divide P (15 rows in calls of 7 rows, 13
    in calls of 8) leave an edge call."""
    N, C, K, blk = 2, 24, 40, 8
    kern = pd.ops.conv2d(
        N, C, K, H, H, R, R, stride=stride, padding=pad, bias=True, activation="relu",
        layout="nchwc", block=blk,
    )  # fmt: skip
    P, Q = pd.ops.conv_shape(H, H, R, R, stride, pad)
    fast = pd.compile(kern, threads=2)
    plain = pd.compile(kern, threads=1, optimize=False)
    assert f"in groups of {Q}" in fast.show("loops")
    xp = rand(N, C // blk, H + 2 * pad, H + 2 * pad, blk)
    wp, b = rand(K // blk, C // blk, R, R, blk, blk), rand(K // blk, blk)
    o1, o2 = (np.empty((N, K // blk, P, Q, blk), np.float32) for _ in range(2))
    fast(o1, xp, wp, b)
    plain(o2, xp, wp, b)
    np.testing.assert_allclose(o1, o2, rtol=1e-4, atol=1e-4)


def test_nn_errors():
    with pytest.raises(ValueError, match="channels"):
        pd.nn.conv2d(rand(1, 3, 5, 5), rand(4, 2, 3, 3))
    with pytest.raises(TypeError, match="float32"):
        pd.nn.matmul(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="inner sizes"):
        pd.nn.matmul(rand(2, 3), rand(4, 2))
    with pytest.raises(ValueError, match="activation"):
        pd.ops.matmul(2, 2, 2, activation="gelu")


def test_rows_coalesce_into_one_run_or_groups():
    one = pd.ops.conv2d(1, 32, 32, 7, 7, 1, 1, layout="nchwc", block=32).ir.bind({})
    (c,) = find_all(one)
    assert (c.m, c.m_inner, c.rows_per_m) == ("p", "q", 7)
    assert c.row_groups() == {}  # a 1x1 stride-1 conv: the P*Q pixels are one run
    strided = pd.ops.conv2d(1, 32, 32, 8, 8, 1, 1, stride=2, layout="nchwc", block=32)
    strided = strided.ir.bind({})
    (c2,) = find_all(strided)
    assert (c2.m, c2.m_inner) == ("p", "q")  # rows of 4 pixels, input rows 2 * 8 pixels apart
    assert c2.row_groups() == {"row_group": 4, "lda_group": 2 * 8 * 32, "ldc_group": 4 * 32}
    padded = pd.ops.conv2d(1, 32, 32, 7, 7, 3, 3, padding=1, layout="nchwc", block=32)
    padded = padded.ir.bind({})
    (c3,) = find_all(padded)
    assert c3.row_groups() == {"row_group": 7, "lda_group": 9 * 32, "ldc_group": 7 * 32}
    # two images: the image n could group rows too, the run over the next row p wins
    two = pd.ops.conv2d(2, 32, 32, 7, 7, 1, 1, layout="nchwc", block=32).ir.bind({})
    (c4,) = find_all(two)
    assert (c4.m, c4.m_inner, c4.row_groups()) == ("p", "q", {}) and "n" in c4.outer


@pd.kernel
def gemm_runtime_alpha(
    C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "N"], alpha: pd.f32
):
    for i in range(M):
        for j in range(N):
            for k in range(K):
                C[i, j] += alpha * A[i, k] * B[k, j]


@pytest.mark.parametrize("threads", [1, 2])
def test_runtime_alpha_gemm_becomes_brgemm(threads):
    M, N, K = 23, 70, 31
    A, B, C = rand(M, K), rand(K, N), rand(M, N)
    k = pd.compile(gemm_runtime_alpha, M=M, N=N, K=K, threads=threads)
    assert [s.micro.alpha_arg for s in micro_statements(k)] == ["alpha"] * len(micro_statements(k))
    for alpha in (1.5, -0.25):
        mine = C.copy()
        k(mine, A, B, alpha)
        np.testing.assert_allclose(
            mine, C + alpha * (A.astype(np.float64) @ B), rtol=1e-4, atol=1e-4
        )


def test_brgemm_runtime_alpha_kernel_against_twin():
    from polydl.kernels import BrgemmConfig, compile_brgemm, reference

    cfg = BrgemmConfig(m=7, n=19, k=5, beta=1, form="stride", alpha_arg=True, bias="col")
    kern = compile_brgemm(cfg)
    a, b, c, bias = rand(3 * 7 * 5), rand(3 * 5 * 19), rand(7 * 19), rand(19)
    want = reference(cfg, a, b, c, batch=3, bias=bias, alpha=-0.5)
    kern(a, b, c, batch=3, bias=bias, alpha=-0.5)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)


def test_verifier_checks_brgemm_statements():
    from dataclasses import replace

    from polydl.ir.verify import IRError, verify

    k = pd.compile(pd.ops.matmul(13, 40, 24, bias=True, activation="relu"), threads=1)
    verify(k.kernel)
    s = micro_statements(k)[0]
    bad = replace(s, micro=replace(s.micro, c="nope"))
    broken = replace(k.kernel, statements=tuple(bad if x is s else x for x in k.kernel.statements))
    with pytest.raises(IRError, match="BRGEMM operand 'nope'"):
        verify(broken)


@pd.kernel
def conv_nchw_valid(
    O: pd.f32["N", "K", "P", "Q"], I: pd.f32["N", "C", "H", "W"], Wt: pd.f32["K", "C", "R", "S"]
):
    for n in range(N):
        for k in range(K):
            for p in range(P):
                for q in range(Q):
                    O[n, k, p, q] = 0.0
                    for c in range(C):
                        for r in range(R):
                            for s in range(S):
                                O[n, k, p, q] += I[n, c, p + r, q + s] * Wt[k, c, r, s]


@pytest.mark.parametrize("threads", [1, 2])
def test_hand_written_nchw_conv_becomes_brgemm(threads):
    # B rows (the input) overlap: the microkernel's reduction walks along q + s
    N, C, K, H, W, R, S = 2, 5, 11, 9, 13, 3, 2
    P, Q = H - R + 1, W - S + 1
    x, w = rand(N, C, H, W), rand(K, C, R, S)
    k = pd.compile(conv_nchw_valid, N=N, C=C, K=K, H=H, W=W, R=R, S=S, P=P, Q=Q, threads=threads)
    (mk,) = {s.micro.ldb for s in micro_statements(k)}
    assert mk == 1
    o = np.full((N, K, P, Q), 7.0, np.float32)
    k(o, x, w)
    np.testing.assert_allclose(o, conv_ref(x, w, None, 1, 0, False), rtol=1e-4, atol=1e-4)


def test_brgemm_overlapping_input_rows_against_twin():
    # lda < k and ldb < n: rows of A and B overlap (only C rows must not)
    from polydl.kernels import BrgemmConfig, compile_brgemm, reference

    cfg = BrgemmConfig(m=5, n=19, k=3, lda=2, ldb=1, ldc=21, beta=0, form="offset")
    kern = compile_brgemm(cfg)
    a, b, c = rand(64), rand(64), rand(5 * 21)
    ao, bo = np.array([0, 7, 20], np.int64), np.array([0, 11, 30], np.int64)
    want = reference(cfg, a, b, c, a_offsets=ao, b_offsets=bo)
    kern(a, b, c, a_offsets=ao, b_offsets=bo)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_even_row_blocks_ranked(threads):
    """256 rows: 96-row calls leave a 64-row edge (a nest of its own); 128-row calls split the
    rows evenly over 2 threads. Both are ranked; whichever wins computes the same product."""
    from polydl.optimize.plan import micro_blocks, ranked, row_blocks
    from polydl.pipeline import bind_sizes
    from polydl.target import resolve

    kern = pd.ops.matmul(256, 196, 64)
    bound = bind_sizes(kern.ir, {})
    (c,) = find_all(bound)
    bm0 = micro_blocks(c, 16)[0]
    assert bm0 == 96 and row_blocks(c, bm0, 2) == [96, 128] and row_blocks(c, bm0, 1) == [96, 128]
    assert row_blocks(c, 128, 2) == [128]  # no edge: nothing to add
    plans = ranked(bound, c, target=resolve("icelake-server"), threads=threads, top=20)
    assert {p.bm for _, p in plans} == {96, 128}
    a, b = np.random.rand(256, 64).astype(np.float32), np.random.rand(64, 196).astype(np.float32)
    for rank in range(min(len(plans), 4)):
        out = np.zeros((256, 196), np.float32)
        pd.compile(kern, threads=threads, variant=rank)(out, a, b)
        np.testing.assert_allclose(out, a @ b, rtol=1e-4)


@pytest.mark.parametrize(("cols", "bn"), [(197, 80), (131, 80), (196, 80), (208, 64), (64, 64)])
def test_no_call_of_less_than_a_vector_of_columns(cols, bn):
    """Columns that calls of 64 would leave an edge of less than one vector (197: 5 columns;
    131: 3) take one call fewer, of the narrowest whole vectors that do it (197: 80 + 80 + 37;
    131: 80 + 51); an edge of a vector or more (208: 16) and one whole call keep 64. Every
    variant ranked computes the same product."""
    from polydl.optimize.plan import micro_blocks, ranked
    from polydl.pipeline import bind_sizes
    from polydl.target import resolve

    kern = pd.ops.matmul(37, cols, 29)
    bound = bind_sizes(kern.ir, {})
    (c,) = find_all(bound)
    assert micro_blocks(c, 16)[1] == bn
    plans = ranked(bound, c, target=resolve("znver4"), threads=2, top=4)
    assert {p.bn for _, p in plans} == {bn}
    rng = np.random.default_rng(cols)
    a = rng.standard_normal((37, 29), dtype=np.float32)
    b = rng.standard_normal((29, cols), dtype=np.float32)
    for threads in (1, 2):
        out = np.zeros((37, cols), np.float32)
        pd.compile(kern, threads=threads)(out, a, b)
        np.testing.assert_allclose(out, a @ b, rtol=1e-4, atol=1e-4)


def test_one_row_block_is_split_for_two_threads_when_there_is_work():
    """A filter gradient with 64 output channels: one 64-row block, 3 column tiles, which two
    threads share 2:1. Two 32-row blocks share evenly; the cost model ranks both (tiny
    contractions keep one block: a parallel region would cost more than it shares)."""
    from polydl.optimize.plan import row_blocks
    from polydl.pipeline import bind_sizes

    big = bind_sizes(pd.ops1d.conv1d_wgrad(1, 64, 64, 1002, 1000, 3).ir, {})
    (c,) = find_all(big)
    assert c.extent(c.m) == 64
    assert row_blocks(c, 64, 2) == [64, 32]
    assert row_blocks(c, 64, 1) == [64]
    small = bind_sizes(pd.ops.matmul(64, 49, 32).ir, {})
    (s,) = find_all(small)
    assert row_blocks(s, 64, 2) == [64]
    # at two threads the gradient's rows are split, and the result is unchanged
    k = pd.compile(pd.ops1d.conv1d_wgrad(1, 64, 64, 1002, 1000, 3), threads=2)
    assert k.schedule.contractions[0].bm == 32, k.show("variants")
    rng = np.random.default_rng(5)
    dO, Xt = rng.random((1, 64, 1000), np.float32), rng.random((1, 1002, 64), np.float32)
    D = np.zeros((1, 64, 3, 64), np.float32)
    k(D, dO, Xt)
    want = np.einsum(
        "kq,sqc->ksc", dO[0].astype(np.float64), np.stack([Xt[0, s : s + 1000] for s in range(3)])
    )
    np.testing.assert_allclose(D[0], want, rtol=1e-4)
