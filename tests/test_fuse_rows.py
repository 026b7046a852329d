"""Conv -> conv fusion block by block of output rows at batch 1 (transform/fuse_rows.py):
fused against unfused and NumPy on odd sizes (odd H/W and channel counts, stride 1), NCHW and
the blocked layout, one and two threads; the 1x1 -> 3x3 direction refused with the dependence
the shared row loop would reverse (its halo); a group of compile_model's kernels holding a
3x3 -> 1x1 pair."""

from __future__ import annotations

import numpy as np
import pytest
from test_fuse_contractions import chain, conv_ref, per_thread, r, small_caches, verdicts

import polydl as pd
from polydl.transform.fuse_rows import candidates, row_of


@pytest.mark.parametrize(
    "C,K1,K2,H,W,threads,first",
    [
        (5, 7, 9, 9, 11, 1, (3, 1)),  # 3x3 -> 1x1
        (3, 6, 5, 13, 7, 2, (3, 1)),
        (7, 5, 3, 11, 5, 1, (1, 0)),  # 1x1 -> 1x1
        (5, 9, 7, 7, 13, 2, (1, 0)),
    ],
)
def test_fused_block_by_block_of_rows(C, K1, K2, H, W, threads, first):
    g, ref = chain(1, C, K1, K2, H, W, first=first, second=(1, 0))
    f = g.compile(threads=threads, target=small_caches(), fuse="always")
    (line,) = verdicts(f)
    assert ": fused at depth 1: rows:" in line, line
    rows = int(line.split("a block of ")[1].split(" ")[0])
    assert 1 <= rows <= H // 2
    # the intermediate holds one block of rows, one copy per thread
    assert per_thread(f) == ["t0_conv2d"]
    assert f.kernel.kernel.shape_of("t0_conv2d") == (1, K1, rows, W)
    x = r(1, C, H, W)
    got = f(x)
    np.testing.assert_allclose(got, ref(x), rtol=2e-4, atol=2e-4)
    u = g.compile(threads=threads, target=small_caches(), fuse=False)
    np.testing.assert_allclose(u(x), got, rtol=1e-5, atol=1e-5)


def test_the_cost_model_fuses_where_a_cache_level_is_saved():
    """The small-cache target: the 9-row intermediate lives in L3 between the nests, a block
    of rows in a smaller cache: fused without forcing, the block the cost model's choice."""
    g, ref = chain(1, 5, 7, 9, 9, 11, first=(3, 1), second=(1, 0))
    f = g.compile(threads=1, target=small_caches())
    (line,) = verdicts(f)
    assert ": fused at depth 1: rows:" in line and "between the nests (L3)" in line
    assert "fused (L1" in line or "fused (L2" in line
    x = r(1, 5, 9, 11)
    np.testing.assert_allclose(f(x), ref(x), rtol=2e-4, atol=2e-4)


def test_no_cache_level_saved_stays_unfused():
    """On the host a few-KiB intermediate fits a core's L1 whole: nothing to gain, said so
    (no block costed)."""
    g, ref = chain(1, 8, 8, 8, 7, 7, first=(1, 0), second=(1, 0))
    f = g.compile(threads=1)
    (line,) = verdicts(f)
    assert ": unprofitable at depth 1: rows:" in line and "fits a core's own cache whole" in line
    assert not per_thread(f)
    x = r(1, 8, 7, 7)
    np.testing.assert_allclose(f(x), ref(x), rtol=2e-4, atol=2e-4)


def test_conv1x1_then_conv3x3_is_refused_for_its_halo():
    """Rows p of a 3x3 consumer read the producer's rows p - 1 .. p + 1: one row per block
    would read a row of the next block before it is written (a RAW dependence reversed)."""
    g, ref = chain(1, 5, 7, 9, 9, 11)
    f = g.compile(threads=1, target=small_caches(), fuse="always")
    (line,) = verdicts(f)
    assert ": illegal at depth 1:" in line and "RAW dependence" in line and "t0_conv2d" in line
    assert "halo" in line
    x = r(1, 5, 9, 11)
    np.testing.assert_allclose(f(x), ref(x), rtol=2e-4, atol=2e-4)


def test_one_verdict_per_pair():
    g, _ = chain(1, 5, 7, 9, 9, 11, first=(3, 1), second=(1, 0))
    f = g.compile(threads=1, target=small_caches())
    lines = [ln for ln in f.show("fusion").splitlines() if "|" in ln]
    assert len(lines) == 1, lines


def test_row_block_candidates():
    assert candidates(56, 1)[:4] == [1, 2, 3, 4] and max(candidates(56, 1)) <= 28
    assert 28 in candidates(56, 2) and all(-(-7 // b) >= 2 for b in candidates(7, 2))
    assert candidates(1, 1) == []


def test_row_of():
    g, _ = chain(1, 3, 4, 5, 5, 5, first=(3, 1), second=(1, 0))
    from polydl.graph.lower import fold_batch_norms, lower

    nodes, same = fold_batch_norms(list(g.nodes), g.outputs)
    k, _ = lower(g.name, nodes, g.inputs, g.outputs, g.filename, g.line, same)
    assert all(row_of(s) == ("p", 1) for s in k.statements)


@pytest.mark.parametrize("threads", [1, 2])
def test_blocked_layout_pair_in_one_group(threads):
    """compile_model's kernels on the blocked layout: the 3x3 conv, its ReLU and the 1x1 conv
    after it are one kernel, fused by rows where a cache level is saved (forced here: odd test
    sizes fit the host's caches); against NumPy and the unfused graph."""
    N, C, M, K, H = 1, 5, 7, 9, 11
    w1, b1, w2 = r(M, C, 3, 3, scale=0.3), r(M), r(K, M, 1, 1, scale=0.3)
    g = pd.graph.Graph("pair")
    x = g.input("x", (N, C, H, H))
    g.output(g.conv2d(g.relu(g.conv2d(x, w1, b1, padding=1)), w2))
    f = g.compile(threads=threads, layout="blocked", kernels="contraction", fuse="always")
    assert ["conv2d", "relu", "conv2d"] in f.part_ops
    assert ": fused at depth 1: rows:" in f.show("fusion")
    xa = r(N, C, H, H)
    want = conv_ref(np.maximum(conv_ref(xa, w1, b1, 1), 0), w2)
    np.testing.assert_allclose(f(xa), want, rtol=2e-4, atol=2e-4)
    u = g.compile(threads=threads, layout="blocked", kernels="contraction", fuse=False)
    np.testing.assert_allclose(u(xa), f(xa), rtol=1e-5, atol=1e-5)


def gemm_pair(C, M, K, P, Q, flip=False):
    """Two 1x1 convs of one image written in the DSL, the intermediate ``T`` an argument;
    ``flip``: the consumer reads row ``P - 1 - p`` (a row loop shared would reverse that)."""

    @pd.kernel
    def pair(
        O: pd.f32[1, K, P, Q],
        T: pd.f32[1, M, P, Q],
        X: pd.f32[1, C, P, Q],
        W1: pd.f32[M, C],
        W2: pd.f32[K, M],
    ):
        for n in range(1):
            for m in range(M):
                for p in range(P):
                    for q in range(Q):
                        T[n, m, p, q] = 0.0
                    for c in range(C):
                        for q in range(Q):
                            T[n, m, p, q] += W1[m, c] * X[n, c, p, q]
        for n in range(1):
            for k in range(K):
                for p in range(P):
                    for q in range(Q):
                        O[n, k, p, q] = 0.0
                    for m in range(M):
                        for q in range(Q):
                            if flip:
                                O[n, k, p, q] += W2[k, m] * T[n, m, P - 1 - p, q]
                            else:
                                O[n, k, p, q] += W2[k, m] * T[n, m, p, q]

    return pair


@pytest.mark.parametrize("flip", [False, True])
def test_dsl_pair_by_rows_and_a_reversed_dependence_refused(flip):
    C, M, K, P, Q = 5, 7, 3, 9, 13
    k = gemm_pair(C, M, K, P, Q, flip)
    f = pd.compile(k, threads=1, target=small_caches(), fuse="always")
    (line,) = [ln for ln in f.show("fusion").splitlines() if "depth 1" in ln]
    if flip:
        assert ": illegal at depth 1:" in line and "RAW dependence" in line and "`T`" in line
    else:
        assert ": fused at depth 1: rows:" in line and "in place" in line
    X, W1, W2 = r(1, C, P, Q), r(M, C), r(K, M)
    t = np.einsum("mc,ncpq->nmpq", W1.astype(np.float64), X)
    want = np.einsum("km,nmpq->nkpq", W2.astype(np.float64), t[:, :, ::-1] if flip else t)
    O, T = np.zeros((1, K, P, Q), np.float32), np.zeros((1, M, P, Q), np.float32)
    f(O, T, X, W1, W2)
    np.testing.assert_allclose(O, want, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(T, t, rtol=2e-4, atol=2e-4)  # the argument written whole
