"""The IR verifier accepts parsed kernels and names each broken invariant."""

from __future__ import annotations

from dataclasses import replace

import pytest

import polydl as pd
from polydl.ir.nodes import BinOp, IntOp, Load, Num, Var
from polydl.ir.verify import IRError, verify


@pd.kernel
def k2(C: pd.f32["M", "N"], A: pd.f32["M", "N"], s: pd.f32):
    for i in range(M):
        for j in range(N):
            C[i, j] = 0.0
            C[i, j] += s * A[i, j]
    C[0, 0] = 1.0


K = k2.ir


def broken(stmt_index: int, **changes):
    stmts = list(K.statements)
    stmts[stmt_index] = replace(stmts[stmt_index], **changes)
    return replace(K, statements=tuple(stmts))


def test_parsed_and_bound_kernels_verify():
    verify(K)
    verify(K.bind({"M": 2, "N": 3}))


@pytest.mark.parametrize(
    "kernel, needle",
    [
        (broken(1, name="S0"), "duplicate statement name 'S0'"),
        (broken(0, iterators=("j", "i")), "domain tuple"),
        (broken(0, domain="[M, N] -> { S0[i, j] : 0 <= i < M and"), "is not an isl set"),
        (broken(0, schedule="[M, N] -> { S0[i, j] -> [0, i, 0, j] }"), "output dimensions"),
        (broken(0, schedule="[M, N] -> { S7[i, j] -> [0, i, 0, j, 0] }"), "schedule input"),
        (broken(0, domain="[M, Q] -> { S0[i, j] : 0 <= i < Q }"), "parameters"),
        (broken(1, op="%="), "statement op '%='"),
        (broken(1, target=Load(tensor="C", index=(Var(name="i"),))), "rank 2"),
        (broken(1, target=Load(tensor="D", index=(Var(name="i"),))), "no argument 'D'"),
        (broken(1, target=Load(tensor="s", index=(Var(name="i"),))), "scalar argument 's'"),
        (
            broken(2, target=Load(tensor="C", index=(Var(name="i"), Var(name="j")))),
            "'i', not an iterator of S2",
        ),
        (broken(0, expr=BinOp(op="**", a=Num(value=1.0), b=Num(value=2.0))), "binary op '**'"),
        (
            broken(
                0,
                target=Load(
                    tensor="C",
                    index=(IntOp(op="//", a=Var(name="i"), b=Var(name="j")), Var(name="j")),
                ),
            ),
            "not a positive int constant",
        ),
    ],
)
def test_broken_invariants_are_named(kernel, needle):
    with pytest.raises(IRError) as ei:
        verify(kernel)
    assert needle in str(ei.value)
    assert isinstance(ei.value, AssertionError) and isinstance(ei.value, pd.PolyDLError)


def test_bad_bindings():
    with pytest.raises(IRError, match="positive"):
        verify(replace(K, bindings=(("M", 0), ("N", 3))))
    with pytest.raises(IRError, match="exactly the sizes"):
        verify(replace(K, bindings=(("M", 2),)))
