"""bf16 weights stored in VNNI-2 pairs (``ops.pack_weights(vnni=True)``, ``ops.conv2d(vnni=True)``):
the pack's exact layout, the contraction analysis reading ``k // 2``, ``k % 2`` as a B in pairs
(no pair copy in the kernel), and the results against a float64 reference of the bf16-rounded
inputs (odd and prime extents; run where the host has AVX512-BF16, compiled everywhere)."""

from __future__ import annotations

import numpy as np
import pytest

import polydl as pd
from polydl import jit
from polydl.analysis.contraction import find_all
from polydl.errors import TargetError
from polydl.ir import interp
from polydl.ir import loops as L
from polydl.kernels import FAMILIES
from polydl.pipeline import bind_sizes

rng = np.random.default_rng(29)
HAS_DOT = FAMILIES["avx512_bf16"].required_features <= jit.host_features()
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="the host has no AVX512-BF16 (vdpbf16ps)")


def bits(shape) -> np.ndarray:
    """Random bf16 bits, NaN payloads and infinities among them (a pack moves bits)."""
    out = pd.to_bf16(rng.standard_normal(shape, dtype=np.float32)).view(np.uint16).copy()
    flat = out.reshape(-1)
    flat[:: max(1, flat.size // 7)] = 0x7FC3
    flat[1 :: max(1, flat.size // 5)] = 0xFF80
    return out


@pytest.mark.parametrize("K,C,R,S,block", [(10, 6, 3, 2, 6), (64, 96, 3, 3, 32), (7, 2, 1, 5, 2)])
def test_pack_weights_vnni_exact_layout(K, C, R, S, block):
    w = bits((K, C, R, S))
    cb, kb = pd.ops.channel_block(C, block), pd.ops.channel_block(K, block)
    wp = np.zeros((K // kb, C // cb, R, S, cb // 2, kb, 2), np.uint16)
    pd.compile(pd.ops.pack_weights(K, C, R, S, block=block, dtype="bf16", vnni=True))(wp, w)
    want = np.empty_like(wp)
    for k in range(K):
        for c in range(C):
            want[k // kb, c // cb, :, :, (c % cb) // 2, k % kb, c % 2] = w[k, c]
    np.testing.assert_array_equal(wp, want)


def test_vnni_needs_bf16_and_an_even_channel_block():
    with pytest.raises(ValueError, match="input-channel block 5"):
        pd.ops.pack_weights(8, 5, 3, 3, block=8, dtype="bf16", vnni=True)
    with pytest.raises(ValueError, match="dtype='f32'"):
        pd.ops.conv2d(1, 8, 8, 5, 5, 3, 3, layout="nchwc", block=8, vnni=True)


@pd.kernel
def mm_pairs(C: pd.f32["M", "N"], A: pd.bf16["M", "K"], B: pd.bf16["K2", "N", 2]):
    for i in range(M):
        for j in range(N):
            C[i, j] = 0.0
            for k in range(K):
                C[i, j] += A[i, k] * B[k // 2, j, k % 2]


def pairs_of(b: np.ndarray) -> np.ndarray:
    """A ``K x N`` bf16 array as ``[ceil(K/2)][N][2]`` (an odd K's last row beside zeros)."""
    K, N = b.shape
    out = np.zeros((-(-K // 2), N, 2), np.uint16)
    for k in range(K):
        out[k // 2, :, k % 2] = b.view(np.uint16)[k]
    return out.view(b.dtype)


@pytest.mark.parametrize(
    "M,N,K,paired", [(37, 53, 30, True), (5, 96, 64, True), (19, 23, 13, False)]
)
def test_matmul_on_b_in_pairs(M, N, K, paired):
    # an even reduction over whole pairs is a contraction on a B in pairs (the call reads it in
    # place, no pair copy); an odd one is not (its last pair is half outside k): plain loops
    sizes = dict(M=M, N=N, K=K, K2=-(-K // 2))
    found = find_all(bind_sizes(mm_pairs.ir, sizes))
    assert bool(found and found[0].b_vnni) == paired
    a = pd.to_bf16(rng.standard_normal((M, K), dtype=np.float32))
    b = pd.to_bf16(rng.standard_normal((K, N), dtype=np.float32))
    ck = pd.compile(mm_pairs, threads=2, target="cooperlake", **sizes)
    text = ck.show("loops")
    copies = [n for n in L.walk(ck.tree) if isinstance(n, L.Copy)]
    assert ("brgemm(" in text) == paired and not copies, text
    assert ("(VNNI-2)" in text) == paired, text
    want = pd.from_bf16(a).astype(np.float64) @ pd.from_bf16(b).astype(np.float64)
    bp = pairs_of(b)
    c = np.full((M, N), np.nan, np.float32)
    interp.run(ck.kernel, {"C": c, "A": a, "B": bp}, tree=ck.tree)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=4e-7 * K)
    if HAS_DOT:
        c[...] = np.nan
        ck(c, a, bp)
        np.testing.assert_allclose(c, want, rtol=1e-5, atol=4e-7 * K)


def reference_conv(x, w, b, pad):
    """float64 convolution (stride 1) of the bf16-rounded operands, bias and ReLU."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    xs = np.pad(pd.from_bf16(x).astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ws = pd.from_bf16(w).astype(np.float64)
    P, Q = H + 2 * pad - R + 1, W + 2 * pad - S + 1
    out = np.zeros((N, K, P, Q))
    for r in range(R):
        for s in range(S):
            out += np.einsum("nchw,kc->nkhw", xs[:, :, r : r + P, s : s + Q], ws[:, :, r, s])
    return np.maximum(out + b[None, :, None, None], 0)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "N,C,K,H,W,R,S,block", [(2, 6, 10, 7, 5, 3, 2, 6), (1, 64, 24, 9, 11, 3, 3, 32)]
)
def test_conv2d_on_weights_in_pairs(threads, N, C, K, H, W, R, S, block):
    # the blocked bf16 convolution on VNNI-2 weights: its calls read them in place (no pair
    # copies), the result against float64 of the bf16-rounded operands
    pad = 1
    x = pd.to_bf16(rng.standard_normal((N, C, H, W), dtype=np.float32))
    w = pd.to_bf16(rng.standard_normal((K, C, R, S), dtype=np.float32))
    b = rng.standard_normal(K, dtype=np.float32)
    cb, kb = pd.ops.channel_block(C, block), pd.ops.channel_block(K, block)
    P, Q = H + 2 * pad - R + 1, W + 2 * pad - S + 1
    opts = dict(padding=pad, block=block, dtype="bf16")
    conv = pd.ops.conv2d(
        N, C, K, H, W, R, S, layout="nchwc", bias=True, activation="relu", vnni=True, **opts
    )
    ck = pd.compile(conv, threads=threads, target="cooperlake")
    assert not [n for n in L.walk(ck.tree) if isinstance(n, L.Copy)], ck.show("loops")
    assert "(VNNI-2)" in ck.show("loops")
    if not HAS_DOT:
        return
    xp = np.zeros((N, C // cb, H + 2 * pad, W + 2 * pad, cb), np.uint16)
    pd.compile(pd.ops.pack_input(N, C, H, W, **opts))(xp, x)
    wp = np.zeros((K // kb, C // cb, R, S, cb // 2, kb, 2), np.uint16)
    pd.compile(pd.ops.pack_weights(K, C, R, S, block=block, dtype="bf16", vnni=True))(wp, w)
    op = np.full((N, K // kb, P, Q, kb), np.nan, np.float32)
    pd.compile(conv, threads=threads)(op, xp, wp, b.reshape(K // kb, kb))
    got = op.transpose(0, 1, 4, 2, 3).reshape(N, K, P, Q)
    want = reference_conv(x, w, b, pad)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * C * R * S * np.abs(want).max())


def test_weights_in_pairs_need_a_pair_family():
    conv = pd.ops.conv2d(
        1, 8, 8, 6, 6, 3, 3, padding=1, layout="nchwc", block=8, dtype="bf16", vnni=True
    )
    with pytest.raises(TargetError, match="VNNI-2 pairs"):
        pd.compile(conv, target="skylake-avx512")


@needs_dot
def test_nn_conv2d_packs_weights_in_pairs_once():
    # on a pair family the bf16 blocked route packs the weights in pairs (ConvWeights keeps that
    # form) and its result is the per-call route's, against float64
    x = pd.to_bf16(rng.standard_normal((1, 128, 12, 12), dtype=np.float32))
    w = pd.to_bf16(rng.standard_normal((40, 128, 3, 3), dtype=np.float32))
    b = rng.standard_normal(40, dtype=np.float32)
    wc = pd.nn.ConvWeights(w)
    got = pd.nn.conv2d(x, wc, b, padding=1, activation="relu", threads=2)
    assert "'bf16', True)" in repr(wc), repr(wc)
    np.testing.assert_array_equal(
        got, pd.nn.conv2d(x, w, b, padding=1, activation="relu", threads=2)
    )
    want = reference_conv(x, w, b, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * 128 * 9 * np.abs(want).max())


def test_cost_model_prices_pairs_read_in_place():
    # a B that holds its pairs costs the calls no copy: the pair call's in-core cycles alone
    from polydl.optimize import cost
    from polydl.target import resolve

    zen = resolve("znver4")
    copied = cost.call_model(98, 64, 64, 9, zen, ab_dtype="bf16", b_vnni=True)
    in_place = cost.call_model(98, 64, 64, 9, zen, ab_dtype="bf16", b_vnni=True, b_copied=False)
    plain = cost.call_model(98, 64, 64, 9, zen, ab_dtype="bf16", b_vnni=False)
    assert in_place.cycles == copied.cycles - cost.vnni_copy_cycles(64 * 9 * 64, zen)
    assert in_place.cycles < plain.cycles
