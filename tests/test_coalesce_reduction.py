"""Coalescing of a contraction's reduction (transform/coalesce_reduction.py): a gathered im2col
reduces over ``c, r, s`` as one run, so one call reduces over all of them; checked against
float64 NumPy, against the untransformed kernel on the plain schedule, and on cases the pass
must leave alone."""

from __future__ import annotations

import re

import numpy as np
import pytest
from kernels import check_strided_conv

import polydl as pd
from polydl.analysis.contraction import find_all
from polydl.ir.verify import verify
from polydl.pipeline import bind_sizes, compile_kernel, contractions_of
from polydl.transform.coalesce_reduction import coalesce_reduction
from polydl.transform.gather import gather_operands

rng = np.random.default_rng(11)


def rand(*shape):
    return rng.uniform(-1, 1, size=shape).astype(np.float32)


def calls(loops: str) -> list[tuple[int, int]]:
    """(k, batch) of every BRGEMM call in a ``show("loops")`` text."""
    return [(int(k), int(b)) for k, b in re.findall(r"brgemm\([^;]*k=(\d+), batch=(\d+)", loops)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "case",
    [
        # N, C, K, H, W, R, S, stride, padding
        (1, 3, 16, 23, 23, 7, 7, 2, 3),  # the first ResNet layer, small: 147 = 3*7*7
        (2, 5, 19, 13, 11, 3, 5, 2, 1),  # 75: blocks of k dividing it
        (1, 7, 13, 17, 19, 3, 3, (2, 3), (1, 2)),
        (1, 11, 23, 9, 7, 2, 1, 3, 0),  # unguarded: no zeros in the copy
    ],
)
def test_gathered_convs_reduce_in_one_run(case, threads):
    N, C, K, H, W, R, S, stride, pad = case
    k = check_strided_conv(case, threads, fill=5.0)
    found = calls(k.show("loops"))
    assert found and "I_g0" in k.show("loops")
    # one run of C*R*S: every call's k is its largest block of at most 64 (optimize/plan.py's
    # MAX_BK; unjoined, k would be S, or R*S, with a batch over c, r)
    crs = C * R * S
    bk = max(d for d in range(1, 65) if crs % d == 0)
    assert all((kk, batch) == (bk, crs // bk) for kk, batch in found), found


def test_pass_against_the_untransformed_kernel():
    kern = pd.ops.conv2d(2, 5, 17, 11, 13, 3, 5, stride=2, padding=(1, 2))
    gathered = gather_operands(bind_sizes(kern.ir, {}))
    before = find_all(gathered)
    out, found = coalesce_reduction(gathered, before)
    verify(out)
    (c,) = [c for c in found if c.stmt == "S1"]
    assert c.batch == () and c.extent(c.k) == 5 * 3 * 5
    (old,) = [c for c in before if c.stmt == "S1"]
    assert len(old.batch) == 2
    x, w = rand(2, 5, 11, 13), rand(17, 5, 3, 5)
    outs = []
    for ir in (gathered, out):  # both on the plain schedule: the pass alone
        o = np.zeros((2, 17, 6, 7), np.float32)
        compile_kernel(ir, {}, optimize=False, threads=1)(o, x, w)
        outs.append(o)
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-5)


def test_left_alone():
    # a blocked 3x3 conv: s and the channels of a block are one run, r is not (the pass joins
    # a reduction only whole), so its calls keep their batch over channel blocks and r
    blocked = bind_sizes(
        pd.ops.conv2d(1, 32, 16, 9, 9, 3, 3, padding=1, layout="nchwc", block=16).ir, {}
    )
    kern, found = contractions_of(blocked)
    assert any(len(c.batch) >= 2 for c in found)
    assert coalesce_reduction(kern, found)[0] is kern
    # one reduction iterator (a GEMM; a 1x1 conv's c): nothing to join
    gemm = bind_sizes(pd.ops.matmul(37, 29, 41).ir, {})
    assert coalesce_reduction(gemm, find_all(gemm))[0] is gemm
