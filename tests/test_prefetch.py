"""Software prefetch of the next call's B block (transform/prefetch.py): which calls get it, at
what distance, what the microkernel emits, and that results do not change."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from kernels import conv_ref

import polydl as pd
from polydl import nn
from polydl.ir import loops as L
from polydl.transform.prefetch import prefetch_operands


def calls(tree):
    for n in tree:
        if isinstance(n, L.For):
            yield from calls(n.body)
        elif isinstance(n, L.If):
            yield from calls(n.then)
            yield from calls(n.orelse)
        elif isinstance(n, L.Call):
            yield n


def test_distance_is_the_step_of_the_loop_that_moves_b():
    # a 1x1 conv on whole rows, batch 5: each call reads 64 channel rows 3136 floats apart (wide)
    # once; the next call's block is one image on (C * H * W elements)
    N, C, K, H = 5, 64, 64, 56
    k = pd.compile(nn.conv2d_rows(N, C, K, H, H, 1, 1), threads=1)
    dists = {c.prefetch_b for c in calls(k.tree) if k.kernel.statement(c.stmt).micro}
    assert dists and all(d in (C * H * H, 64) for d in dists), k.show("loops")
    assert "[prefetch B +" in k.show("loops")
    asm = k.show("asm")
    assert "prefetcht0" in asm
    # the pass is pure and idempotent on its own output
    again = prefetch_operands(k.kernel, k.tree)
    assert again == k.tree


def test_dense_and_packed_operands_are_not_prefetched():
    # a GEMM's B is packed (or dense): nothing to prefetch
    k = pd.compile(pd.ops.matmul(256, 256, 256), threads=1)
    assert all(c.prefetch_b == 0 for c in calls(k.tree)), k.show("loops")
    assert "prefetcht0" not in k.show("asm")
    # a 14x14 image's channel rows are 784 bytes apart: the hardware follows them
    k = pd.compile(nn.conv2d_rows(2, 32, 48, 14, 14, 1, 1), threads=1)
    assert all(c.prefetch_b == 0 for c in calls(k.tree))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("N,C,K,H", [(3, 37, 29, 31), (2, 17, 64, 41)])
def test_prefetching_kernels_compute_the_same(N, C, K, H, threads):
    # wide rows (31*31*4 = 3844 bytes, 41*41*4 = 6724) and odd channel counts: the record's
    # prefetch 1 (the next call, the default), 2 (the call after) and 0 (none) against the
    # float64 reference
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, C, H * H), dtype=np.float32)
    w = rng.standard_normal((K, C, 1, 1), dtype=np.float32)
    want = conv_ref(x.reshape(N, C, H, H), w, None, 1, 0, False).reshape(N, K, H * H)
    kern = nn.conv2d_rows(N, C, K, H, H, 1, 1)
    base = pd.compile(kern, threads=threads, tuned=False)
    rec = base.schedule.choices()
    outs, dists = [], []
    for ahead in (1, 2, 0):
        r = replace(rec, contractions=tuple(replace(c, prefetch=ahead) for c in rec.contractions))
        k = pd.compile(kern, threads=threads, schedule=r)
        d = {c.prefetch_b for c in calls(k.tree) if k.kernel.statement(c.stmt).micro}
        dists.append(d)
        assert ("[prefetch B" in k.show("loops")) == (ahead > 0), k.show("loops")
        if ahead == 1:
            assert k.llvm_ir == base.llvm_ir  # the default is what the record says
        o = np.full((N, K, H * H), 7.0, np.float32)
        k(o, x, w)
        outs.append(o)
    assert {2 * x for x in dists[0]} == dists[1] and dists[2] == {0}
    np.testing.assert_allclose(outs[0], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


def test_the_microkernel_prefetches_each_b_line_at_the_distance():
    from polydl.kernels import BrgemmConfig, generate

    text = generate(
        BrgemmConfig(m=6, n=32, k=4, ldb=5000, prefetch_b=5000, isa="avx512")
    ).definition
    b_loads = [ln for ln in text.splitlines() if ".bv" in ln and "masked.load" in ln]
    prefetches = [ln for ln in text.splitlines() if "call void @llvm.prefetch.p0(" in ln]
    # one prefetch per B vector read (one cache line each), 5000 elements on
    assert b_loads and len(prefetches) == len(b_loads)
    assert sum("i64 5000" in ln for ln in text.splitlines() if ".pf" in ln) == len(b_loads)
    plain = generate(BrgemmConfig(m=6, n=32, k=4, ldb=5000, isa="avx512")).definition
    assert "prefetch" not in plain
    with pytest.raises(pd.PolyDLError):
        BrgemmConfig(m=6, n=32, k=4, prefetch_b=1.5)


def test_batch_blocks_far_apart_are_prefetched():
    # a 1-D convolution on NCW: each call's B rows are the taps, 8 elements apart (dilation 8),
    # but its batch elements are the input channels, a whole signal apart; the next call reads
    # the next 64 positions of each
    L, S, d = 4000 + 8 * 2, 3, 8
    k = pd.compile(pd.ops1d.conv1d(1, 16, 32, L, S, dilation=d), threads=1)
    dists = {c.prefetch_b for c in calls(k.tree) if k.kernel.statement(c.stmt).micro}
    assert 0 < max(dists) <= 64, k.show("loops")
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 16, L), dtype=np.float32)
    w = rng.standard_normal((32, 16, S), dtype=np.float32)
    o = np.zeros((1, 32, 4000), np.float32)
    k(o, x, w)
    want = sum(
        np.einsum("kc,cq->kq", w[:, :, s].astype(np.float64), x[0, :, d * s : d * s + 4000])
        for s in range(S)
    )
    np.testing.assert_allclose(o[0], want, rtol=1e-4, atol=1e-4)
