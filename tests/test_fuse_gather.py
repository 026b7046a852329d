"""Gathered copies made where their calls read them (transform/fuse_gather.py): strided and
padded NCHW convolutions on odd and prime sizes, one image and several, one and two threads,
compiled with the copy placed (a small-cache host, so that the copy spills its caches whole)
against float64 NumPy and against the kernel compiled for the real host; ``show("loops")``
shows the copy nests under the image loop or the loop over blocks of output rows, together
with the calls; a copy a core's own cache holds stays whole. Also gather.py's zeros, left out
when the copy writes every point of its box."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from kernels import conv_ref

import polydl as pd
from polydl.pipeline import bind_sizes
from polydl.target import resolve
from polydl.transform.gather import gather_operands

rng = np.random.default_rng(11)


def small_caches():
    """The host with caches of 1 KiB, 64 KiB and 1 MiB: a test-sized copy (a few hundred KiB)
    spills them whole, one or a few rows of it fit the L2 (per thread at two threads too)."""
    h = resolve(None)
    sizes = (1024, 65536, 1 << 20)
    return dataclasses.replace(
        h,
        caches=tuple(
            dataclasses.replace(c, size_bytes=b) for c, b in zip(h.caches, sizes, strict=True)
        ),
    )


def rand(*shape):
    return rng.uniform(-1, 1, size=shape).astype(np.float32)


def blocks(loops: str) -> list[set[str]]:
    """The statements of each top-level loop (or statement) of a ``show("loops")`` text."""
    out: list[set[str]] = []
    for line in loops.splitlines():
        if not line or line.startswith(("//", "#pragma", "}", " ", "{")):
            m = re.match(r"\s+(S\w+)\(", line)
            if m and out:
                out[-1].add(m.group(1))
            continue
        out.append(set())
        m = re.match(r"(S\w+)\(", line)
        if m:
            out[-1].add(m.group(1))
    return out


def reference(x, w, stride, pad, P, Q):
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    return conv_ref(xp, w, None, 1, 0, False)[:, :, ::stride, ::stride][:, :, :P, :Q]


CASES = [
    # N, C, K, H, W, R, S, stride, padding: prime rows and channels; 16 or 32 columns, so that
    # a block of rows holds whole calls of the ranked width (fuse_gather.plan keeps it)
    (1, 3, 13, 37, 127, 7, 7, 2, 3),  # ResNet-50's first layer: 19 x 64 pixels
    (3, 3, 11, 29, 63, 7, 7, 2, 3),  # several images
    (2, 5, 17, 37, 31, 3, 3, 2, 1),
    (1, 7, 13, 31, 46, 5, 5, 3, 2),  # stride larger than the filter's half
    (1, 29, 9, 51, 127, 1, 1, 2, 0),  # a strided 1x1's subsample (no guard, no zeros)
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", CASES)
def test_placed_copy_matches_numpy(case, threads):
    N, C, K, H, W, R, S, stride, pad = case
    P, Q = pd.ops.conv_shape(H, W, R, S, stride, pad)
    kern = pd.ops.conv2d(N, C, K, H, W, R, S, stride=stride, padding=pad)
    small = pd.compile(kern, threads=threads, target=small_caches())
    host = pd.compile(kern, threads=threads)
    x, w = rand(N, C, H, W), rand(K, C, R, S)
    want = reference(x, w, stride, pad, P, Q)
    for k in (small, host):
        o = np.full((N, K, P, Q), 7.0, np.float32)  # the calls must overwrite it
        k(o, x, w)
        np.testing.assert_allclose(o, want, rtol=1e-4, atol=1e-4)
    # the small caches: the copy (larger than them) is made under the calls' shared loop (at two
    # threads the cost model may keep it whole: three images do not share out evenly, and a
    # partial block of pixels cannot be placed in a parallel loop over one image's blocks)
    loops = small.show("loops")
    if threads > 1 and not small.kernel.temps[0].per_thread:
        return
    tops = blocks(loops)
    together = [b for b in tops if "S1_g" in b]
    assert len(together) == 1 and any(s.startswith("S1_mk") for s in together[0]), loops
    assert small.kernel.temps[0].per_thread


@pytest.mark.parametrize("N,threads", [(3, 1), (4, 2)])
def test_copy_under_the_image_loop(N, threads):
    """Several images, each image's copy fitting where the batch's does not: the copies come
    under the image loop, one image (or a block of it) of scratch per thread."""
    C, K, H, W = 3, 11, 29, 127
    k = pd.compile(
        pd.ops.conv2d(N, C, K, H, W, 7, 7, stride=2, padding=3),
        threads=threads,
        target=small_caches(),
    )
    loops = k.show("loops")
    first = loops.splitlines()[2 if threads > 1 else 1]
    assert first.startswith(f"for (int c1 = 0; c1 <= {N - 1}; c1++)"), loops
    (temp,) = k.kernel.temps
    assert temp.shape[0].value == 1 and temp.per_thread
    assert [b for b in blocks(loops) if "S1_z" in b] == [b for b in blocks(loops) if "S1_mk0" in b]


def test_copy_by_blocks_of_rows_at_batch_1():
    """One image: the loop shared by the copy and the calls steps over blocks of output rows;
    the scratch holds one block (fewer rows than the image), per thread."""
    N, C, K, H, W = 1, 3, 13, 37, 127
    P, Q = pd.ops.conv_shape(H, W, 7, 7, 2, 3)
    for threads in (1, 2):
        k = pd.compile(
            pd.ops.conv2d(N, C, K, H, W, 7, 7, stride=2, padding=3),
            threads=threads,
            target=small_caches(),
        )
        (temp,) = k.kernel.temps
        rows = temp.shape[-2].value
        assert rows < P and temp.shape[-1].value == Q and temp.per_thread
        loops = k.show("loops")
        assert f"% {rows})" in str(k.kernel.statement("S1_g").target), loops
        head = loops.splitlines()[1:3]
        assert any(h.startswith("for (int c1 = 0; c1 <=") for h in head), loops
        if threads > 1:
            assert loops.splitlines()[1] == "#pragma omp parallel for", loops


def test_copy_a_private_cache_holds_stays_whole():
    """On the real host a small strided conv's copy fits a core's L2: nothing is placed."""
    k = pd.compile(pd.ops.conv2d(1, 16, 32, 15, 15, 3, 3, stride=2, padding=1), threads=1)
    tops = blocks(k.show("loops"))
    assert not any("S1_g" in b and any(s.startswith("S1_mk") for s in b) for b in tops)
    assert not k.kernel.temps[0].per_thread


def test_zeros_only_under_a_guard():
    unguarded = gather_operands(bind_sizes(pd.ops.conv2d(1, 4, 8, 9, 11, 1, 1, stride=2).ir, {}))
    padded = gather_operands(
        bind_sizes(pd.ops.conv2d(1, 4, 8, 9, 11, 3, 3, stride=2, padding=1).ir, {})
    )
    assert [s.name for s in unguarded.statements if s.target.tensor == "I_g0"] == ["S1_g"]
    assert [s.name for s in padded.statements if s.target.tensor == "I_g0"] == ["S1_z", "S1_g"]
