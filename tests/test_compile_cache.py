"""Compile-time shortcuts give what the plain isl formulations give.

``ir/poly/``: schedule dimensions that every statement fixes to one constant are dropped before
``compute_flow`` and the legality check (and, at the end of a schedule, before the AST generator);
extents are two integer optima when the sizes are bound; ``order_violations`` first asks for
emptiness in schedule space; placed and piecewise schedules are not parsed back from their text.
``optimize/search.py``: a lone reduction is legal in any order without computing dependences.
``codegen``: microkernel text rendered once per configuration, optimised IR printed on demand.
"""

from __future__ import annotations

from collections.abc import Mapping

import islpy as isl
import numpy as np
import pytest

import polydl as pd
from polydl import jit
from polydl.analysis import deps
from polydl.codegen import llvm
from polydl.ir import poly
from polydl.optimize import search
from polydl.pipeline import bind_sizes

_OUT = isl.dim_type.out


def _old_extent(s: isl.Set, dim: str):
    if s.is_empty():
        return None
    i = poly.names(s).index(dim)
    lo, hi = s.dim_min(i), s.dim_max(i)
    return poly._pw_aff_const(lo, "min", dim), poly._pw_aff_const(hi, "max", dim)


def _old_ast(sched, ctx, parallel=frozenset()):
    if isinstance(parallel, Mapping):
        allowed = lambda stmt, d: d in parallel.get(stmt, ())  # noqa: E731
    else:
        allowed = lambda stmt, d: d in parallel  # noqa: E731
    return poly._nodes(isl.AstBuild.from_context(ctx).node_from_schedule_map(sched), allowed)


def _old_flow(sink, must, may, sched):
    info = isl.UnionAccessInfo.from_sink(sink).set_must_source(must).set_may_source(may)
    res = info.set_schedule_map(sched).compute_flow()
    return res.get_must_dependence(), res.get_may_dependence()


def _old_violations(dep, src, snk):
    ge = isl.Map.lex_ge(src.get_space().range()).align_params(src.get_space())
    return dep.intersect(src.apply_range(ge).apply_range(snk.reverse()))


def test_squeeze_drops_common_constants_only():
    ms = [
        isl.Map("{ A[i] -> [0, i, 0, 0, 7] }"),
        isl.Map("{ B[i, j] -> [0, i, 1, j, 7] }"),
    ]
    out, kept = poly.squeeze(ms)
    assert kept == [1, 2, 3]
    assert out[1].is_equal(isl.Map("{ B[i, j] -> [i, 1, j] }"))
    tail, kept = poly.squeeze(ms, tail=True)
    assert kept == [0, 1, 2, 3, 4]  # one trailing constant: kept (AST separation)
    padded = [isl.Map("{ A[i] -> [1, i, 0, 0, 0] }"), isl.Map("{ B[i] -> [2, i, 0, 0, 0] }")]
    tail, kept = poly.squeeze(padded, tail=True)
    assert kept == [0, 1, 2]
    assert tail[0].is_equal(isl.Map("{ A[i] -> [1, i, 0] }"))
    mixed = [isl.Map("{ A[i] -> [0, i] }"), isl.Map("{ B[i] -> [0, i, 0] }")]
    assert poly.squeeze(mixed)[0] == mixed  # different depths: as given


def test_extent_matches_piecewise_bounds():
    texts = [
        "[N] -> { S[i, j] : N = 9 and 0 <= i < N and 0 <= j <= i }",
        "[N] -> { S[i, j] : N = 5 and 0 <= i < N and (j = 2 or j = 7 + i) }",
        "[N] -> { S[i, j] : N = 6 and 0 <= i < N and exists (e: i = 2e) and j = 3 }",
        "[N] -> { S[i, j] : N = 5 and i > 10 and i < 3 and j = 0 }",  # empty
        "{ S[i, j] : -3 <= i <= 4 and i <= j <= 2i + 1 }",
    ]
    for text in texts:
        s = isl.Set(text)
        for d in ("i", "j"):
            assert poly.extent(s, d) == _old_extent(s, d), (text, d)
    m = isl.Map("[N] -> { S[i, j] -> T[i + j] : N = 4 }")
    pts = isl.Set("[N] -> { S[i, j] : N = 4 and 0 <= i < N and 0 <= j < 3 }")
    assert poly.range_extent(m, pts) == (0, 5)


SCHEDULES = [
    # padded like lowered statements; a disjunctive domain that isl separates at the last
    # constant dimension (dropping that one would change the AST's form, not its meaning)
    "[L, N] -> { S0[i, j] -> [0, i, 0, j, 0, 0, 0] : L = 13 and N = 5 and 0 <= i <= 4 "
    "and j <= 4 and (((i + j) mod 2 = 0 and i >= 2 and j >= -2 + i) or "
    "((j) mod 2 = 0 and i <= 1 and j >= 0)) }",
    "[N] -> { A[i] -> [1, i, 0, 0, 0, 0] : N = 7 and 0 <= i < N; "
    "B[i, j] -> [2, i, j, 1, 0, 0] : N = 7 and 0 <= i < N and 0 <= j <= i; "
    "C[i] -> [2, i, 0, 0, 0, 0] : N = 7 and 0 <= i < 3 }",
]


@pytest.mark.parametrize("text", SCHEDULES)
def test_ast_without_padding_is_the_same_tree(text):
    sched = isl.UnionMap(text)
    ctx = sched.params()
    for parallel in (frozenset(), frozenset({1}), {"B": frozenset({1, 2})}):
        assert poly.ast(sched, ctx, parallel) == _old_ast(sched, ctx, parallel)


def _guarded_conv():
    kern = pd.ops.conv2d(1, 3, 4, 6, 7, 3, 3, padding=1, bias=True, activation="relu").ir
    return bind_sizes(kern, {})


def test_flow_and_violations_match_isl():
    kernel = _guarded_conv()
    sched = poly.union(poly.schedule(kernel, s) for s in kernel.statements)
    writes = poly.union(poly.access_map(kernel, s, s.target) for s in kernel.statements)
    reads = poly.union(
        poly.access_map(kernel, s, ld)
        for s in kernel.statements
        for ld in s.reads
        if ld.tensor == "O"
    )
    empty = poly.union([])
    for args in ((reads, empty, writes), (writes, empty, reads), (reads, writes, empty)):
        new, old = poly.flow(*args, sched), _old_flow(*args, sched)
        assert new[0].is_equal(old[0]) and new[1].is_equal(old[1])
    by_name = {s.name: poly.schedule(kernel, s) for s in kernel.statements}
    reverse = {
        s.name: poly.schedule_from_text(kernel, s, s.schedule.replace("-> [0,", "-> [1,"))
        for s in kernel.statements
    }
    reverse["S0"] = poly.schedule_from_text(
        kernel, kernel.statements[0], kernel.statements[0].schedule.replace("-> [0,", "-> [2,")
    )
    found = 0
    for dep, rel in deps._dependences(kernel, memory=True):
        for scheds in (by_name, reverse):
            a, b = scheds[dep.source], scheds[dep.sink]
            new, old = poly.order_violations(rel, a, b), _old_violations(rel, a, b)
            assert new.is_equal(old)
            found += not new.is_empty()
    assert found  # the init moved after the reduction breaks some dependence


def test_placed_and_piecewise_schedules():
    text = "[N] -> { S[i, j] -> [0, i, 0, j, 1] }"
    placed = poly.placed_schedule(text, "T", 4)
    assert isl.Map(placed).is_equal(isl.Map("[N] -> { T[i, j] -> [4, i, 0, j, 1] }"))
    dom = isl.Set("[N] -> { T[i, j] : N = 3 and 0 <= i < N and 0 <= j < 2 }")
    other = isl.Set("[N] -> { T[i, j] : N = 3 and 0 <= i < N and j = 5 }")
    second = poly.placed_schedule(text, "T", 6)
    piece = poly.piecewise_schedule([(dom, placed), (other, second)])
    expect = isl.Map(placed).intersect_domain(dom).union(isl.Map(second).intersect_domain(other))
    assert isl.Map(piece).is_equal(expect)


@pd.kernel
def _gemm(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "N"]):  # noqa: F821
    for i in range(M):  # noqa: F821
        for j in range(N):  # noqa: F821
            for k in range(K):  # noqa: F821
                C[i, j] += A[i, k] * B[k, j]


@pd.kernel
def _prefix_sum(A: pd.f32["N"]):  # noqa: F821
    for i in range(1, N):  # noqa: F821
        A[i] += A[i - 1] * 2.0


def test_lone_reduction_is_legal_without_dependences(monkeypatch):
    kernel = _gemm.ir.bind({"M": 8, "N": 6, "K": 4})
    calls = []
    monkeypatch.setattr(deps, "_dependences", lambda *a, **k: calls.append(a) or ())
    text = search.schedule_text(kernel, "S0", [("k", 1), ("j", 1), ("i", 1)])
    assert search._legal(deps.check_schedule, kernel, "S0", text, True)
    assert not calls
    # not a reduction (it reads what it writes elsewhere): the check runs
    monkeypatch.undo()
    carried = _prefix_sum.ir.bind({"N": 6})
    assert not search._only_reduction(carried)
    text = search.schedule_text(carried, "S0", [("i", 1)], reverse=(0,))
    assert not search._legal(deps.check_schedule, carried, "S0", text, True)


def test_microkernel_text_rendered_once():
    kern = pd.ops.matmul(64, 64, 64)
    llvm._micro_ir.cache_clear()
    first = pd.compile(kern, threads=1)
    misses = llvm._micro_ir.cache_info().misses
    assert misses >= 1
    second = pd.compile(kern, threads=1)
    assert llvm._micro_ir.cache_info().misses == misses
    assert first.llvm_ir == second.llvm_ir
    c = np.zeros((64, 64), np.float32)
    a = np.ones((64, 64), np.float32)
    second(c, a, a)
    assert np.allclose(c, 64.0)


def test_optimized_ir_on_demand():
    ir = "define i32 @f(i32 %x) {\n  %y = add i32 %x, 1\n  ret i32 %y\n}\n"
    mod = jit.build(ir)
    assert mod._opt is None
    assert "define i32 @f" in mod.optimized_ir
    assert mod.optimized_ir == jit.optimized_ir(ir, cpu=mod.cpu, features=mod.features)
