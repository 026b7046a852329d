"""Aligned arrays (polydl.memory): alignment, contents, and the buffers pd.nn hands out."""

import numpy as np
import pytest

import polydl as pd
from polydl import memory


@pytest.mark.parametrize("shape", [(1,), (3, 5), (7, 11, 13), 17, (2, 0, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("align", [16, 64, 4096])
def test_empty_and_zeros_are_aligned(shape, dtype, align):
    for make in (pd.empty, pd.zeros):
        a = make(shape, dtype, align=align)
        want = (shape,) if isinstance(shape, int) else shape
        assert a.shape == want and a.dtype == dtype and a.flags.c_contiguous
        assert a.size == 0 or a.ctypes.data % align == 0
    assert not pd.zeros(shape, dtype, align=align).any()


def test_aligned_keeps_an_aligned_array_and_copies_a_misaligned_one():
    a = pd.empty((6, 10))
    a[...] = np.arange(60).reshape(6, 10)
    assert pd.aligned(a) is a
    raw = pd.empty(61)
    off = raw[1:].reshape(6, 10)  # 4 bytes past a 64-byte boundary
    off[...] = a
    assert not memory.is_aligned(off)
    b = pd.aligned(off)
    assert b is not off and memory.is_aligned(b) and np.array_equal(b, a)
    t = pd.aligned(a.T)  # not C-contiguous: copied
    assert t.flags.c_contiguous and memory.is_aligned(t) and np.array_equal(t, a.T)


@pytest.mark.parametrize("align", [0, 3, 48])
def test_align_must_be_a_power_of_two(align):
    with pytest.raises(ValueError, match="power of two"):
        pd.empty(4, align=align)


def test_nn_outputs_and_packed_weights_are_aligned():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 5, 9, 7), dtype=np.float32)
    w = rng.standard_normal((6, 5, 3, 3), dtype=np.float32)
    for route in ("rows", "blocked", "direct"):
        y = pd.nn.conv2d(x, w, padding=1, route=route)
        assert memory.is_aligned(y), route
    assert memory.is_aligned(pd.nn.pack_weights(w))
    a = rng.standard_normal((5, 7), dtype=np.float32)
    assert memory.is_aligned(pd.nn.matmul(a, a.T.copy()))
