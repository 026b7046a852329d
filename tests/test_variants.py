"""Every variant the enumerator keeps computes what the reference computes; show("variants").

Legality is never assumed: each ranked variant (rank 0 .. last) is compiled with ``variant=r``
and run against ``kernel.reference`` on small GEMM and convolution shapes with odd and prime
extents, stride 2, padding, 1x1 and 7x7 filters.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from kernels import gemm_bias_relu

import polydl as pd

rng = np.random.default_rng(11)


def rand(*shape):
    return rng.uniform(-1, 1, size=shape).astype(np.float32)


def all_variants(kern, threads: int, **sizes):
    """Every ranked variant of ``kern`` compiled, rank order."""
    first = pd.compile(kern, threads=threads, **sizes)
    table = first.show("variants")
    ranks = [ln for ln in table.splitlines() if re.match(r"^\d+\s", ln)]
    assert ranks, table
    return [first] + [
        pd.compile(kern, threads=threads, variant=r, **sizes) for r in range(1, len(ranks))
    ]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("M,N,K", [(37, 41, 13), (131, 67, 7)])
def test_every_gemm_variant_matches_reference(M, N, K, threads):
    A, B, b = rand(M, K), rand(K, N), rand(N)
    want = np.full((M, N), 3.0, np.float32)
    gemm_bias_relu.reference(want, A, B, b)
    for k in all_variants(gemm_bias_relu, threads, M=M, N=N, K=K):
        assert any(s.micro for s in k.kernel.statements)
        got = np.full((M, N), 3.0, np.float32)
        k(got, A, B, b)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=k.show("loops"))


CONVS = [
    # N, C, K, H, W, R, S, stride, pad
    (1, 8, 16, 11, 13, 3, 3, 2, 1),
    (2, 16, 8, 7, 7, 1, 1, 1, 0),
    (1, 3, 16, 17, 17, 7, 7, 2, 3),
    (1, 24, 40, 5, 9, 3, 3, 1, 1),
]


@pytest.mark.parametrize("shape", CONVS, ids=lambda s: "x".join(map(str, s)))
def test_every_conv_variant_matches_reference(shape):
    N, C, K, H, W, R, S, st, pad = shape
    kern = pd.ops.conv2d(
        N,
        C,
        K,
        H,
        W,
        R,
        S,
        stride=st,
        padding=pad,
        bias=True,
        activation="relu",
        layout="nchwc",
        block=8,
    )
    cb, kb = pd.ops.channel_block(C, 8), pd.ops.channel_block(K, 8)
    P, Q = pd.ops.conv_shape(H, W, R, S, st, pad)
    xp = rand(N, C // cb, H + 2 * pad, W + 2 * pad, cb)
    wp, b = rand(K // kb, C // cb, R, S, cb, kb), rand(K // kb, kb)
    want = np.zeros((N, K // kb, P, Q, kb), np.float32)
    kern.reference(want, xp, wp, b)
    for k in all_variants(kern, 2):
        got = np.zeros_like(want)
        k(got, xp, wp, b)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=k.show("loops"))


def test_show_variants_shape():
    k = pd.compile(pd.ops.conv2d(1, 64, 256, 14, 14, 3, 3, padding=1, layout="nchwc"), threads=2)
    text = k.show("variants")
    lines = text.splitlines()
    assert lines[0].startswith("lowering: split")
    assert lines[2].startswith("contraction S1 (O += I x Wt), running rank 1")
    header = lines[3].split()
    assert header[:3] == ["rank", "loop", "order"]
    for col in ("tiles", "parallel", "working", "cost"):
        assert col in lines[3]
    rows = [ln for ln in lines if re.match(r"^\d+\s", ln)]
    assert [int(r.split()[0]) for r in rows] == list(range(1, len(rows) + 1))
    costs = [float(r.split()[-2]) for r in rows]
    assert costs == sorted(costs) and len(rows) >= 2
    assert all(r.rstrip().endswith("x") for r in rows)
    assert "| micro" in rows[0]
