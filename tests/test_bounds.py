"""The bounds proof: padded conv passes, every out-of-box access is named with a real witness."""

from __future__ import annotations

import pytest
from test_dsl_util import line_of, witness

import polydl as pd
from polydl.analysis.bounds import check_bounds, format_index, format_load
from polydl.ir.nodes import Int, IntOp, Load, Var

HERE = __file__
STRIDE, PAD = 2, 1


@pd.kernel
def shift(B: pd.f32["M", "K"], A: pd.f32["M", "K"]):
    for i in range(M):
        for k in range(K):
            B[i, k] = A[i + 1, k]  # b-shift


def test_out_of_bounds_read_named_with_witness():
    with pytest.raises(pd.BoundsError) as ei:
        check_bounds(shift.ir.bind({"M": 4, "K": 3}))
    msg = str(ei.value)
    assert msg.startswith(f"{HERE}:{line_of(HERE, 'b-shift')}:")
    assert "`A[i + 1, k]`" in msg and "tensor `A`" in msg and "(4, 3)" in msg
    assert "B[i, k] = A[i + 1, k]" in msg
    w = witness(msg)
    assert set(w) == {"i", "k"} and w["i"] == 3 and 0 <= w["k"] < 3
    assert f"reads A[4, {w['k']}]" in msg


@pd.kernel
def conv(O: pd.f32["K", "P", "Q"], I: pd.f32["C", "H", "W"], Wt: pd.f32["K", "C", "R", "S"]):
    for k in range(K):
        for p in range(P):
            for q in range(Q):
                for c in range(C):
                    for r in range(R):
                        for s in range(S):
                            if 0 <= STRIDE * p + r - PAD < H and 0 <= STRIDE * q + s - PAD < W:
                                O[k, p, q] += (
                                    I[c, STRIDE * p + r - PAD, STRIDE * q + s - PAD]
                                    * Wt[k, c, r, s]
                                )


@pd.kernel
def conv_unguarded(
    O: pd.f32["K", "P", "Q"], I: pd.f32["C", "H", "W"], Wt: pd.f32["K", "C", "R", "S"]
):
    for k in range(K):
        for p in range(P):
            for q in range(Q):
                for c in range(C):
                    for r in range(R):
                        for s in range(S):
                            O[k, p, q] += I[c, p + r - PAD, q + s] * Wt[k, c, r, s]  # b-conv


def test_conv_with_padding_guards_is_proved_in_bounds():
    sizes = {"K": 4, "C": 3, "H": 9, "W": 8, "R": 3, "S": 3}
    p = (9 + 2 * PAD - 3) // STRIDE + 1
    q = (8 + 2 * PAD - 3) // STRIDE + 1
    check_bounds(conv.ir.bind({**sizes, "P": p, "Q": q}))
    # larger outputs read more padding: the guards keep I's accesses inside
    check_bounds(conv.ir.bind({**sizes, "P": p + 3, "Q": q + 3}))


def test_conv_without_guard_fails_with_witness_at_border():
    sizes = {"K": 2, "C": 1, "H": 5, "W": 5, "R": 3, "S": 3, "P": 3, "Q": 3}
    with pytest.raises(pd.BoundsError) as ei:
        check_bounds(conv_unguarded.ir.bind(sizes))
    msg = str(ei.value)
    assert msg.startswith(f"{HERE}:{line_of(HERE, 'b-conv')}:")
    assert "`I[c, p + r - 1, q + s]`" in msg and "(1, 5, 5)" in msg
    w = witness(msg)
    assert w["p"] + w["r"] - PAD < 0  # the witness really reads above the top row


@pd.kernel
def tri_write(A: pd.f32["N", "N"]):
    for i in range(N):
        for j in range(i + 2):
            A[i, j] = 0.0  # b-write


def test_out_of_bounds_write_named():
    with pytest.raises(pd.BoundsError) as ei:
        check_bounds(tri_write.ir.bind({"N": 4}))
    msg = str(ei.value)
    assert msg.startswith(f"{HERE}:{line_of(HERE, 'b-write')}:")
    assert "writes A[3, 4]" in msg and "i=3, j=4" in msg


@pd.kernel
def strided(y: pd.f32["N"], x: pd.f32["M"]):
    for i in range(0, N, 2):
        y[i] = x[i // 2] + x[(i + 1) % 2]


def test_quasi_affine_and_stepped_accesses():
    check_bounds(strided.ir.bind({"N": 9, "M": 5}))
    with pytest.raises(pd.BoundsError, match=r"`x\[i // 2\]`.*i=8"):
        check_bounds(strided.ir.bind({"N": 9, "M": 4}))


def test_access_formatting():
    i, n = Var(name="i"), Var(name="N")
    e = IntOp(op="-", a=IntOp(op="+", a=i, b=Int(value=1)), b=IntOp(op="-", a=n, b=i))
    assert format_index(e) == "i + 1 - (N - i)"
    d = IntOp(op="//", a=IntOp(op="*", a=Int(value=3), b=i), b=Int(value=4))
    assert format_load(Load(tensor="A", index=(d, i))) == "A[3 * i // 4, i]"
