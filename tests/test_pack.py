"""transform/pack.py: B blocks copied into dense scratch buffers, against NumPy and the
unpacked code (differential), with the conditions that refuse a copy."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
from kernels import bmm, gemm_bias_relu

import polydl as pd
from polydl.ir import loops as L
from polydl.ir.nodes import Int, IntOp, Var
from polydl.transform.pack import max_trips, pack_operands

rng = np.random.default_rng(5)


def rand(*shape):
    return rng.uniform(-1, 1, size=shape).astype(np.float32)


@pytest.fixture(autouse=True)
def _pack_any_stride(monkeypatch, request):
    """The tests here check the copies on small odd shapes, whose B rows are closer than
    pack.WIDE_ROW_BYTES: pack every strided B (except where a test checks the threshold)."""
    if "threshold" not in request.node.name:
        monkeypatch.setattr("polydl.transform.pack.WIDE_ROW_BYTES", 0)


def test_threshold_packs_only_widely_strided_rows():
    from polydl.transform.pack import WIDE_ROW_BYTES

    assert WIDE_ROW_BYTES == 2048
    narrow = pd.compile(gemm_bias_relu, threads=1, M=200, N=500, K=300)  # rows 2000 B apart
    wide = pd.compile(gemm_bias_relu, threads=1, M=200, N=520, K=300)  # rows 2080 B apart
    assert copies(narrow) == 0 and copies(wide) > 0


def copies(k) -> int:
    return sum(isinstance(n, L.Copy) for n in L.walk(k.tree))


def packed_calls(k) -> int:
    return sum(isinstance(n, L.Call) and n.packed_b is not None for n in L.walk(k.tree))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("M,N,K", [(211, 157, 301), (397, 263, 67), (300, 131, 13)])
def test_packed_gemm_matches_numpy(M, N, K, threads):
    A, B, b = rand(M, K), rand(K, N), rand(N)
    k = pd.compile(gemm_bias_relu, threads=threads, M=M, N=N, K=K)
    assert copies(k) and packed_calls(k), k.show("loops")
    got = np.full((M, N), 7.0, np.float32)
    k(got, A, B, b)
    want = np.maximum(A.astype(np.float64) @ B + b, 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_every_variant_with_packing_matches_reference():
    M, N, K = 263, 149, 37
    A, B, b = rand(M, K), rand(K, N), rand(N)
    want = np.zeros((M, N), np.float32)
    gemm_bias_relu.reference(want, A, B, b)
    first = pd.compile(gemm_bias_relu, threads=2, M=M, N=N, K=K)
    n = len([ln for ln in first.show("variants").splitlines() if re.match(r"^\d+\s", ln)])
    packed = 0
    for r in range(n):
        k = pd.compile(gemm_bias_relu, threads=2, variant=r, M=M, N=N, K=K)
        packed += copies(k) > 0
        got = np.zeros((M, N), np.float32)
        k(got, A, B, b)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=k.show("loops"))
    assert packed, "no variant packed B"


def test_batched_matmul_packs_per_batch():
    Bt, M, N, K = 3, 211, 131, 29
    A, B = rand(Bt, M, K), rand(Bt, K, N)
    k = pd.compile(bmm, threads=1, Bt=Bt, M=M, N=N, K=K)
    assert copies(k), k.show("loops")
    got = np.zeros((Bt, M, N), np.float32)
    k(got, A, B)
    np.testing.assert_allclose(got, np.einsum("bik,bkj->bij", A, B), rtol=1e-4, atol=1e-4)


def test_no_scratch_same_result_as_packed():
    """max_bytes=0 leaves the tree alone; both trees compute the same thing."""
    M, N, K = 211, 157, 301
    k = pd.compile(gemm_bias_relu, threads=1, M=M, N=N, K=K)
    assert copies(k)
    from polydl.codegen.compiled import CompiledKernel
    from polydl.codegen.llvm import emit_module

    base = tuple(n for n in k.tree)
    assert pack_operands(k.kernel, _unpacked(base), max_bytes=0) == _unpacked(base)
    tree = _unpacked(base)
    ir = emit_module(k.kernel, tree, parallel=False, cpu=k.cpu)
    plain = CompiledKernel(kernel=k.kernel, tree=tree, llvm_ir=ir, cpu=k.cpu, threads=1)
    A, B, b = rand(M, K), rand(K, N), rand(N)
    got, want = np.zeros((M, N), np.float32), np.zeros((M, N), np.float32)
    k(got, A, B, b)
    plain(want, A, B, b)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the pass is pure: packing the unpacked tree again gives the compiled tree
    again = pack_operands(k.kernel, tree, max_bytes=1 << 30)
    assert sum(isinstance(n, L.Copy) for n in L.walk(again)) == copies(k)
    assert tree == _unpacked(base)


def _unpacked(nodes):
    """The loop tree without copies and buffers, calls reading B in place."""
    out = []
    for n in nodes:
        if isinstance(n, L.Buffer):
            continue
        if isinstance(n, L.For):
            if any(isinstance(x, L.Copy) for x in L.walk((n,))) and not any(
                isinstance(x, L.Call) for x in L.walk((n,))
            ):
                continue  # a copy nest
            out.append(replace(n, body=_unpacked(n.body)))
        elif isinstance(n, L.If):
            out.append(L.If(cond=n.cond, then=_unpacked(n.then), orelse=_unpacked(n.orelse)))
        elif isinstance(n, L.Call):
            out.append(L.Call(stmt=n.stmt, args=n.args))
        else:
            out.append(n)
    return tuple(out)


@pd.kernel
def scaled_then_gemm(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "N"]):
    for k in range(K):
        for j in range(N):
            B[k, j] = B[k, j] * 2.0
    for i in range(M):
        for j in range(N):
            C[i, j] = 0.0
            for k in range(K):
                C[i, j] += A[i, k] * B[k, j]


def test_operand_written_in_the_kernel_is_not_packed():
    M, N, K = 211, 157, 101
    A, B = rand(M, K), rand(K, N)
    k = pd.compile(scaled_then_gemm, threads=1, M=M, N=N, K=K)
    assert any(s.micro for s in k.kernel.statements)
    assert not copies(k), k.show("loops")
    got, B2 = np.zeros((M, N), np.float32), B.copy()
    k(got, A, B2)
    np.testing.assert_allclose(got, A @ (2 * B), rtol=1e-4, atol=1e-4)


def test_max_trips():
    c1, c4 = Var(name="c1"), Var(name="c4")
    # for c4 = 512*c1; c4 <= min(960, 512*c1 + 511); c4 += 64: at most 8 trips
    lo = IntOp(op="*", a=Int(value=512), b=c1)
    hi = IntOp(op="min", a=Int(value=960), b=IntOp(op="+", a=lo, b=Int(value=511)))
    f = L.For(var="c4", dim=4, init=lo, cond=L.Cmp(op="<=", a=c4, b=hi), step=64, body=())
    assert max_trips(f, {}) == 8
    g = L.For(
        var="c4",
        dim=4,
        init=Int(value=3),
        cond=L.Cmp(op="<", a=c4, b=Var(name="N")),
        step=2,
        body=(),
    )
    assert max_trips(g, {"N": 10}) == 4
    h = L.For(var="c4", dim=4, init=c1, cond=L.Cmp(op="<", a=c4, b=Int(value=9)), step=1, body=())
    assert max_trips(h, {}) is None  # depends on c1 without a constant difference
