"""The one-pass VNNI-2 weight pack (``kernels/pack_vnni.py``) against the DSL pack
``ops.pack_weights(vnni=True)`` and an element-by-element NumPy twin: bit-exact on odd and
prime extents (partial tiles of rows and of words), NaN payloads and infinities, 1 and 2
threads, misaligned sources; and the convolution that uses it."""

from __future__ import annotations

import numpy as np
import pytest

import polydl as pd
from polydl import jit, memory
from polydl.errors import PolyDLError
from polydl.kernels import pack_vnni as pv

rng = np.random.default_rng(41)
VECTORS = pv.pack_vnni(4, 2, 1, 1, 2, 4) is not None
needs_vectors = pytest.mark.skipif(not VECTORS, reason="the host's family has no vectors")


def bits(shape) -> np.ndarray:
    out = pd.to_bf16(rng.standard_normal(shape, dtype=np.float32)).view(np.uint16).copy()
    flat = out.reshape(-1)
    flat[:: max(1, flat.size // 7)] = 0x7FC3
    flat[1 :: max(1, flat.size // 5)] = 0xFF80
    return memory.aligned(out)


def twin(w: np.ndarray, cb: int, kb: int) -> np.ndarray:
    K, C, R, S = w.shape
    want = np.empty((K // kb, C // cb, R, S, cb // 2, kb, 2), w.dtype)
    for k in range(K):
        for c in range(C):
            want[k // kb, c // cb, :, :, (c % cb) // 2, k % kb, c % 2] = w[k, c]
    return want


CASES = [
    # K, C, R, S, cb, kb, threads: full and partial row groups, words per row not a multiple
    # of the lanes, 1x1 and rectangular filters, several items per block (BUFFER_BYTES)
    (64, 64, 3, 3, 64, 64, 1),
    (64, 64, 3, 3, 64, 64, 2),
    (37, 34, 3, 3, 34, 37, 2),
    (40, 6, 5, 3, 6, 20, 1),
    (7, 10, 1, 1, 2, 7, 1),
    (100, 64, 7, 7, 32, 50, 2),
    (33, 18, 2, 1, 18, 11, 2),
    (96, 128, 5, 5, 64, 96, 1),
]


@needs_vectors
@pytest.mark.parametrize("K,C,R,S,cb,kb,threads", CASES)
def test_pack_vnni_matches_the_twin_and_the_dsl_pack(K, C, R, S, cb, kb, threads):
    w = bits((K, C, R, S))
    pack = pv.pack_vnni(K, C, R, S, cb, kb, threads)
    wp = np.full(pack.config.shape, 0x1234, np.uint16)
    pack(wp, w)
    np.testing.assert_array_equal(wp, twin(w, cb, kb))
    if C // cb == 1 or K // kb == 1:  # the DSL pack takes one block limit for both
        block = max(cb, kb)
        if pd.ops.channel_block(C, block) == cb and pd.ops.channel_block(K, block) == kb:
            dsl = np.zeros_like(wp)
            pd.compile(pd.ops.pack_weights(K, C, R, S, block=block, dtype="bf16", vnni=True))(
                dsl, w
            )
            np.testing.assert_array_equal(wp, dsl)


@needs_vectors
def test_pack_vnni_copies_a_misaligned_source_and_checks_shapes():
    K, C, R, S = 16, 32, 3, 3
    base = bits((K * C * R * S + 1,))
    w = base[1:].reshape(K, C, R, S)  # 2 bytes past a 4-byte boundary
    assert w.ctypes.data % 4
    pack = pv.pack_vnni(K, C, R, S, 32, 16, 1)
    wp = memory.zeros(pack.config.shape, np.uint16)
    pack(wp, w)
    np.testing.assert_array_equal(wp, twin(w, 32, 16))
    with pytest.raises(PolyDLError, match="shape"):
        pack(wp.reshape(-1), w)
    with pytest.raises(PolyDLError, match="2-byte"):
        pack(wp, w.astype(np.float32))


def test_pack_vnni_config_checks():
    with pytest.raises(ValueError, match="cb must be even"):
        pv.VnniPackConfig(K=8, C=6, R=3, S=3, cb=3, kb=8).check()


@pytest.mark.skipif(not {"avx512bf16"} <= jit.host_features(), reason="the host has no AVX512-BF16")
@pytest.mark.parametrize("threads", [1, 2])
def test_conv2d_bf16_blocked_with_the_one_pass_pack(threads):
    # 3x3, 66 channels (blocks of 66 / 33 pairs): the bf16 blocked route packs per call and
    # with ConvWeights; both against the float64 product of the bf16-rounded inputs
    x = pd.to_bf16(rng.standard_normal((1, 66, 9, 11), dtype=np.float32))
    w = pd.to_bf16(rng.standard_normal((70, 66, 3, 3), dtype=np.float32))
    import torch
    import torch.nn.functional as F

    want = F.conv2d(
        torch.from_numpy(pd.from_bf16(x).astype(np.float64)),
        torch.from_numpy(pd.from_bf16(w).astype(np.float64)),
        padding=1,
    ).numpy()
    for weights in (w, pd.nn.ConvWeights(w)):
        got = pd.nn.conv2d(x, weights, padding=1, threads=threads)
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err < 1e-5, err
