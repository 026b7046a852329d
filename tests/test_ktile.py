"""Reduction tiling: one BRGEMM call covers ``kc`` of k and a loop over k steps the origin.

Every ranked variant (some split k, some do not) is compiled and run against the kernel's
reference on GEMMs with odd and prime extents, with and without a folded zero init, with a
bias+ReLU epilogue, a batched matmul, a batch-reduce iterator and a k range not starting at 0.
Explicit plans check the first/middle/last k pieces: ``beta=0`` only on the first tile when the
init is folded, the epilogue only on the last.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from kernels import bmm, gemm_bias_relu

import polydl as pd
from polydl.analysis.contraction import find_all
from polydl.optimize import plan as plans
from polydl.transform.brgemm import BlockPlan, lower

rng = np.random.default_rng(5)


@pytest.fixture(autouse=True)
def _planner_default_split(monkeypatch):
    """The host with the planner's default whole-k limit (``plan.KC_WHOLE_MAX``), whatever this
    CPU's ``kc_whole_max``: the variants of these GEMMs must include ones that split k."""
    from dataclasses import replace

    from polydl import target

    monkeypatch.setattr(target, "_host", replace(target.host(), kc_whole_max=None))


def rand(*shape):
    return rng.uniform(-1, 1, size=shape).astype(np.float32)


def all_variants(kern, threads: int, **sizes):
    first = pd.compile(kern, threads=threads, **sizes)
    ranks = [ln for ln in first.show("variants").splitlines() if re.match(r"^\d+\s", ln)]
    assert ranks, first.show("variants")
    return [first] + [
        pd.compile(kern, threads=threads, variant=r, **sizes) for r in range(1, len(ranks))
    ]


def splits_k(compiled, k: str = "k") -> bool:
    """Whether the lowered kernel has micro statements that iterate over ``k``."""
    return any(s.micro is not None and k in s.iterators for s in compiled.kernel.statements)


@pd.kernel
def gemm_init(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "N"]):
    for i in range(M):
        for j in range(N):
            C[i, j] = 0.0
            for k in range(K):
                C[i, j] += A[i, k] * B[k, j]


@pd.kernel
def gemm_acc(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "N"]):
    for i in range(M):
        for k in range(K):
            for j in range(N):
                C[i, j] += A[i, k] * B[k, j]


@pd.kernel
def gemm_from(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "N"]):
    for i in range(M):
        for j in range(N):
            C[i, j] = 0.0
            for k in range(3, K):
                C[i, j] += A[i, k] * B[k, j]


@pd.kernel
def batch_reduce(C: pd.f32["M", "N"], A: pd.f32["R", "M", "K"], B: pd.f32["R", "K", "N"]):
    for i in range(M):
        for j in range(N):
            C[i, j] = 0.0
            for r in range(R):
                for k in range(K):
                    C[i, j] += A[r, i, k] * B[r, k, j]


def check_all(kern, args, threads, *, preset: float = 3.0, **sizes):
    """Run every ranked variant; return how many split k."""
    out = args[0]
    out[...] = preset
    want = out.copy()
    kern.reference(want, *args[1:])
    n_split = 0
    for k in all_variants(kern, threads, **sizes):
        assert any(s.micro for s in k.kernel.statements)
        got = np.full_like(want, preset)
        k(got, *args[1:])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-4, err_msg=k.show("loops"))
        n_split += splits_k(k)
    return n_split


@pytest.mark.parametrize(
    "M,N,K,threads", [(13, 129, 1024, 1), (13, 129, 1024, 2), (37, 70, 600, 1), (37, 70, 300, 2)]
)
def test_gemm_bias_relu_every_variant(M, N, K, threads):
    args = (np.empty((M, N), np.float32), rand(M, K), rand(K, N), rand(N))
    n_split = check_all(gemm_bias_relu, args, threads, M=M, N=N, K=K)
    if K >= 512:
        assert n_split >= 1


@pytest.mark.parametrize("kern", [gemm_init, gemm_acc], ids=["init", "accumulate"])
@pytest.mark.parametrize("M,N,K,threads", [(13, 129, 1024, 2), (37, 70, 600, 1)])
def test_gemm_every_variant(kern, M, N, K, threads):
    args = (np.empty((M, N), np.float32), rand(M, K), rand(K, N))
    assert check_all(kern, args, threads, M=M, N=N, K=K) >= 1


def test_k_range_not_from_zero():
    M, N, K = 11, 45, 771  # k in [3, 771): 768 = 12 blocks of 64
    args = (np.empty((M, N), np.float32), rand(M, K), rand(K, N))
    assert check_all(gemm_from, args, 1, M=M, N=N, K=K) >= 1


def test_batched_matmul_every_variant():
    Bt, M, N, K = 3, 13, 40, 512
    args = (np.empty((Bt, M, N), np.float32), rand(Bt, M, K), rand(Bt, K, N))
    assert check_all(bmm, args, 2, Bt=Bt, M=M, N=N, K=K) >= 1


def test_batch_reduce_every_variant():
    R, M, N, K = 3, 9, 33, 512
    args = (np.empty((M, N), np.float32), rand(R, M, K), rand(R, K, N))
    assert check_all(batch_reduce, args, 1, R=R, M=M, N=N, K=K) >= 1


# ------------------------------------------------------------ explicit plans: the k pieces


def _lowered(kern, loops, bm, bn, bk, **sizes):
    bound = kern.ir.bind(sizes)
    (c,) = find_all(bound)
    plan = BlockPlan(bm=bm, bn=bn, bk=bk, loops=loops)
    return c, lower(bound, c, plan)


@pytest.mark.parametrize("n_tiles", [1, 2, 4])
def test_k_pieces_beta_and_epilogue(n_tiles):
    K = 512
    kc = K // n_tiles
    loops = (("j", 32), ("k", kc), ("i", 16))
    c, low = _lowered(gemm_bias_relu, loops, 16, 32, 64, M=40, N=70, K=K)
    micros = [s for s in low.statements if s.micro is not None]
    assert micros and all("k" in s.iterators for s in micros)
    assert all(s.micro.k * len(s.micro.a_offsets) == kc for s in micros)
    firsts = [s for s in micros if s.micro.beta == 0]
    lasts = [s for s in micros if s.micro.epilogue is not None]
    # full and edge blocks: m 40 = 2 x 16 + 8 rows, n 70 = 2 x 32 + 6 columns; per k piece
    per_k = 4
    assert len(micros) == per_k * min(n_tiles, 3)
    assert len(firsts) == per_k and len(lasts) == per_k
    for s in lasts:
        assert s.micro.epilogue.expr == ("max", ("+", ("acc",), ("in", 0)), ("num", 0.0))
        assert [t for t, _ in s.micro.operands] == ["b"] and s.micro.epilogue.operands[0].col == 1
    for s in micros:
        if s not in lasts:
            assert s.micro.epilogue is None and not s.micro.operands
    if n_tiles > 1:
        assert not set(map(id, firsts)) & set(map(id, lasts))


def test_k_tiled_plan_runs_and_k_loop_is_not_parallel():
    M, N, K = 40, 70, 512
    A, B, b = rand(M, K), rand(K, N), rand(N)
    want = np.zeros((M, N), np.float32)
    gemm_bias_relu.reference(want, A, B, b)
    for threads in (1, 2):
        k = pd.compile(gemm_bias_relu, M=M, N=N, K=K, threads=threads)
        got = np.full((M, N), 7.0, np.float32)
        k(got, A, B, b)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-4)
    # no ranked variant runs a loop over k in parallel (lower_contractions marks the first
    # n_parallel loops of the plan)
    from polydl.target import resolve

    bound = gemm_bias_relu.ir.bind({"M": 64, "N": 256, "K": 1024})
    (c,) = find_all(bound)
    choices = plans.ranked(bound, c, target=resolve(None), threads=2, top=30)
    assert any(c.k in p.order for _, p in choices)
    assert any(v.n_parallel for v, _ in choices)
    for var, plan in choices:
        assert c.k not in var.parallel
        assert all(v != c.k for v, _ in plan.loops[: var.n_parallel])


def test_k_tiles_candidates():
    bound = gemm_init.ir.bind({"M": 8, "N": 8, "K": 1024})
    (c,) = find_all(bound)
    kcs = plans.k_tiles(c, 64)
    assert kcs and all(1024 % x == 0 and x % 64 == 0 and x < 1024 for x in kcs)
    small = find_all(gemm_init.ir.bind({"M": 8, "N": 8, "K": 256}))[0]
    assert plans.k_tiles(small, 64) == [256]
    prime = find_all(gemm_init.ir.bind({"M": 8, "N": 8, "K": 1031}))[0]
    assert plans.k_tiles(prime, 1) == [1031]  # nothing to split on: the whole extent


def test_k_tiles_follow_the_targets_whole_k_limit():
    """A target's ``kc_whole_max`` (Zen 4's host: 1024) keeps a reduction up to it whole in one
    call; past it the split is the default's; the presets keep the planner's 256. The kernel
    planned so still matches its reference."""
    from dataclasses import replace

    from polydl.target import PRESETS, host

    zen = replace(PRESETS["icelake-server"], kc_whole_max=1024)
    c768 = find_all(gemm_init.ir.bind({"M": 8, "N": 8, "K": 768}))[0]
    c2048 = find_all(gemm_init.ir.bind({"M": 8, "N": 8, "K": 2048}))[0]
    assert plans.k_tiles(c768, 64, zen) == [768]
    assert plans.k_tiles(c768, 64, PRESETS["icelake-server"]) == plans.k_tiles(c768, 64) == [256]
    assert plans.k_tiles(c2048, 64, zen) == plans.k_tiles(c2048, 64) == [256]
    assert PRESETS["icelake-server"].kc_whole_max is None
    M, N, K = 37, 70, 600
    C, A, B = rand(M, N), rand(M, K), rand(K, N)
    whole = pd.compile(
        gemm_init, threads=2, target=replace(host(), kc_whole_max=1024), M=M, N=N, K=K
    )
    split = pd.compile(gemm_init, threads=2, M=M, N=N, K=K)
    assert not splits_k(whole) and splits_k(split)
    want = C.copy()
    gemm_init.reference(want, A, B)
    for k in (whole, split):
        got = C.copy()
        k(got, A, B)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------ a loop over a batch iterator (conv's cb)


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_batch_iterator_loop_matches_reference(chunk, monkeypatch):
    """A blocked conv whose calls cover ``chunk`` of the 6 input-channel blocks (a loop over cb
    steps the origin): the first chunk has beta = 0 (folded init), the last the bias + ReLU."""
    N, C, K, H, blk = 2, 48, 16, 7, 8
    kern = pd.ops.conv2d(
        N, C, K, H, H, 3, 3, padding=1, bias=True, activation="relu", layout="nchwc", block=blk
    )
    bound = kern.ir.bind({})
    (c,) = find_all(bound)
    assert "cb" in c.batch and c.extent("cb") == 6
    loops = (("kb", 1), ("cb", chunk), ("n", 1), (c.m, c.extent(c.m)), (c.n, blk))
    plan = BlockPlan(bm=c.extent(c.m), bn=blk, bk=blk, loops=loops)
    low = lower(bound, c, plan)
    micros = [s.micro for s in low.statements if s.micro is not None]
    assert {len(m.a_offsets) for m in micros} == {chunk * 9}
    assert (
        sum(m.beta == 0 for m in micros) == 1 and sum(m.epilogue is not None for m in micros) == 1
    )
    # compile exactly this plan: no ranking, the plan as the default (one thread: a default
    # plan's loops are all taken as parallel, which the loop over cb is not)
    monkeypatch.setattr(plans, "ranked", lambda *a, **k: [])
    monkeypatch.setattr(plans, "default_plan", lambda *a, **k: plan)
    run = pd.compile(kern, threads=1)
    assert splits_k(run, "cb")
    xp = rand(N, C // blk, H + 2, H + 2, blk)
    wp, b = rand(K // blk, C // blk, 3, 3, blk, blk), rand(K // blk, blk)
    want = np.zeros((N, K // blk, H, H, blk), np.float32)
    kern.reference(want, xp, wp, b)
    got = np.full_like(want, 5.0)
    run(got, xp, wp, b)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-4)


@pytest.mark.skipif(
    __import__("polydl.target").target.host().isa != "avx512",
    reason="the premise is AVX-512's 64-column calls: with narrower calls the panel fits",
)
@pytest.mark.parametrize("threads", [1, 2])
def test_conv_every_variant_with_batch_loops(threads):
    """256 input channels in blocks of 64: the whole B panel (4 x 9 blocks of 64 x 64) is over
    the budget, so some ranked variants loop over cb; all of them match the reference."""
    N, C, K, H, blk = 1, 256, 64, 5, 64
    kern = pd.ops.conv2d(
        N, C, K, H, H, 3, 3, padding=1, bias=True, activation="relu", layout="nchwc", block=blk
    )
    xp = rand(N, C // blk, H + 2, H + 2, blk)
    wp, b = rand(K // blk, C // blk, 3, 3, blk, blk), rand(K // blk, blk)
    args = (np.empty((N, K // blk, H, H, blk), np.float32), xp, wp, b)
    assert check_all(kern, args, threads) == 0  # no variant splits k (cv) itself
    loops_over_cb = [k for k in all_variants(kern, threads) if splits_k(k, "cb")]
    assert loops_over_cb


def test_batch_tiles_candidates():
    """Only a B panel over the budget is split, into the largest divisor that fits and keeps
    enough reduction per call; the rows of a padded NCHW conv (k = S = 3) are never split."""
    big = pd.ops.conv2d(1, 512, 512, 7, 7, 3, 3, padding=1, layout="nchwc", block=64)
    (c,) = find_all(big.ir.bind({}))
    ((kc, v, d),) = plans.batch_tiles(c, 64, 64, 320 * 1024)
    assert (kc, v, d) == (64, "cb", 2)  # 2 blocks x 9 x 64 x 64 floats = 288 KiB
    ((_, _, d1),) = plans.batch_tiles(c, 64, 64, 160 * 1024)
    assert d1 == 1
    assert plans.batch_tiles(c, 64, 64, 128 * 1024) == []  # not even one block of 144 KiB fits
    # Zen 3 (AVX2, 16-channel blocks, 512 KiB L2): 8 of the 32 blocks, 72 KiB, per call
    avx2 = pd.ops.conv2d(1, 512, 512, 7, 7, 3, 3, padding=1, layout="nchwc", block=16)
    (c2,) = find_all(avx2.ir.bind({}))
    assert plans.batch_tiles(c2, 16, 16, 128 * 1024) == [(16, "cb", 8)]
    from polydl.target import PRESETS

    assert plans.panel_budget(PRESETS["icelake-server"]) == 320 * 1024
    assert plans.panel_budget(PRESETS["znver3"]) == 128 * 1024
    small = pd.ops.conv2d(1, 64, 64, 7, 7, 3, 3, padding=1, layout="nchwc", block=64)
    assert plans.batch_tiles(find_all(small.ir.bind({}))[0], 64, 64) == []
    rows = pd.nn.conv2d_rows(1, 512, 64, 9, 9, 3, 3)
    (r,) = find_all(rows.ir.bind({}))
    for kc, v, d in plans.batch_tiles(r, 1, 64):
        assert kc * d * 3 >= plans.MIN_CALL_REDUCTION
