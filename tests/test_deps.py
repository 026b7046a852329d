"""Dependences: reductions, legality of permutations/reversals, parallel schedule dimensions."""

from __future__ import annotations

import pytest
from test_dsl_util import line_of

import polydl as pd
from polydl.analysis.deps import (
    check_schedule,
    dependences,
    parallel_dims,
    reduction_tensor,
)
from polydl.errors import DependenceError

HERE = __file__
T = 4  # time steps of the stencil (a constant of the kernels)


@pd.kernel
def gemm(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "N"]):
    for i in range(M):
        for j in range(N):
            C[i, j] = 0.0  # d-init
            for k in range(K):
                C[i, j] += A[i, k] * B[k, j]  # d-red
            C[i, j] = max(C[i, j], 0.0)  # d-epi


G = gemm.ir.bind({"M": 3, "N": 4, "K": 5})
P = "[M, N, K] -> "


def test_reductions_recognised():
    s0, s1, s2 = G.statements
    assert reduction_tensor(s1) == "C"
    assert reduction_tensor(s0) is None
    assert reduction_tensor(s2) == "C"  # C = max(C, e) with e not reading C


def test_gemm_dependences_and_reduction_flags():
    d = dependences(G)
    raw = {(x.source, x.sink): x for x in d.raw}
    assert set(raw) == {("S0", "S1"), ("S1", "S1"), ("S1", "S2")}
    assert raw[("S1", "S1")].reduction and not raw[("S0", "S1")].reduction
    # exact dataflow: the init feeds only k = 0
    assert "k = 0" in raw[("S0", "S1")].relation_text
    assert all(x.tensor == "C" for x in d.all)
    assert {x.kind for x in d.all} == {"RAW", "WAR", "WAW"}


def test_gemm_parallel_dims_i_j_not_k():
    dims = parallel_dims(G)
    # schedule [p0, i, p1, j, p2, k, p3]: i and j are parallel, the reduction loop k is not
    assert 1 in dims and 3 in dims and 5 not in dims


def test_k_outer_permutation_legal_and_reversal_needs_relaxation():
    only = gemm.ir.bind({"M": 3, "N": 4, "K": 5})
    # the reduction statement alone: permute k outermost
    perm = {"S1": P + "{ S1[i, j, k] -> [0, i, 0, j, 1, k, 0] }"}
    check_schedule(only, perm)
    rev = {"S1": P + "{ S1[i, j, k] -> [0, i, 0, j, 1, -k, 0] }"}
    check_schedule(only, rev)  # legal: a reassociated reduction
    with pytest.raises(DependenceError) as ei:
        check_schedule(only, rev, relax_reductions=False)
    msg = str(ei.value)
    assert "reduction" in msg and "tensor `C`" in msg


@pd.kernel
def acc(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "N"]):
    for i in range(M):
        for j in range(N):
            for k in range(K):
                C[i, j] += A[i, k] * B[k, j]


def test_pure_reduction_k_outer():
    a = acc.ir.bind({"M": 3, "N": 4, "K": 5})
    kouter = {"S0": P + "{ S0[i, j, k] -> [0, k, 0, i, 0, j, 0] }"}
    check_schedule(a, kouter)
    check_schedule(a, kouter, relax_reductions=False)  # also strictly legal (fully permutable)
    assert parallel_dims(a) == frozenset({0, 1, 2, 3, 4, 6})
    assert parallel_dims(a, kouter) == frozenset({0, 2, 3, 4, 5, 6})


def test_relaxed_reduction_still_ordered_after_init_and_before_epilogue():
    late_init = {"S0": P + "{ S0[i, j] -> [0, i, 0, j, 3, 0, 0] }"}
    with pytest.raises(DependenceError) as ei:
        check_schedule(G, late_init)
    msg = str(ei.value)
    assert f"{HERE}:{line_of(HERE, 'd-init')}:" in msg
    assert "C[i, j] = 0.0" in msg and "tensor `C`" in msg
    early_epi = {"S2": P + "{ S2[i, j] -> [0, i, 0, j, 0, 0, 1] }"}
    with pytest.raises(DependenceError) as ei:
        check_schedule(G, early_epi)
    msg = str(ei.value)
    assert msg.startswith(f"{HERE}:{line_of(HERE, 'd-red')}:") or msg.startswith(
        f"{HERE}:{line_of(HERE, 'd-epi')}:"
    )
    assert "C[i, j] = max(C[i, j], 0.0)" in msg


@pd.kernel
def jacobi(A: pd.f32["N"], B: pd.f32["N"]):
    for t in range(T):
        for i in range(1, N - 1):
            B[i] = (A[i - 1] + A[i] + A[i + 1]) / 3  # d-stencil
        for i in range(1, N - 1):
            A[i] = B[i]  # d-copy


def test_stencil_time_loop_not_parallel():
    j = jacobi.ir.bind({"N": 10})
    dims = parallel_dims(j)
    assert 1 not in dims  # t
    assert 3 in dims  # i (both inner loops)


@pd.kernel
def recur(x: pd.f32["N"]):
    for i in range(1, N):
        x[i] = x[i - 1] * 0.5 + 1.0  # d-recur


def test_reversal_violating_raw_is_refused_with_named_pair():
    r = recur.ir.bind({"N": 6})
    assert 1 not in parallel_dims(r)
    with pytest.raises(DependenceError) as ei:
        check_schedule(r, {"S0": "[N] -> { S0[i] -> [0, -i, 0] }"})
    msg = str(ei.value)
    line = line_of(HERE, "d-recur")
    assert msg.startswith(f"{HERE}:{line}:")
    assert "RAW" in msg and "tensor `x`" in msg and "x[i] = x[i - 1] * 0.5 + 1.0" in msg
    # a real witness: the sink reads what the source wrote, one iteration later
    import re

    (a, b) = [int(v) for v in re.findall(r"at i=(\d+)", msg)]
    assert b == a + 1


def test_time_reversal_of_stencil_refused():
    j = jacobi.ir.bind({"N": 6})
    rev = {
        "S0": "[N] -> { S0[t, i] -> [0, -t, 0, i, 0] }",
        "S1": "[N] -> { S1[t, i] -> [0, -t, 1, i, 0] }",
    }
    with pytest.raises(DependenceError, match="tensor `[AB]`"):
        check_schedule(j, rev)
    check_schedule(j, {"S0": "[N] -> { S0[t, i] -> [0, t, 0, -i, 0] }"})  # i reversal is fine


def test_unknown_statement_in_schedule():
    with pytest.raises(KeyError):
        check_schedule(G, {"S9": "{ S9[] -> [0, 0, 0, 0, 0, 0, 0] }"})
