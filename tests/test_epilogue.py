"""General epilogues: elementwise statements after a contraction fold into the BRGEMM store.

Three levels: the microkernel's vector math against NumPy/SciPy over wide ranges (and NaN/inf);
a kernel configured with an epilogue against its NumPy twin (operands per row, per column, like
C, grouped rows); DSL kernels whose statements after the reduction (in its nest or in nests of
their own) fold, compiled against ``optimize=False`` and NumPy on odd sizes, with the folding
itself checked on the lowered kernel. Random chains (hypothesis) close it.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernels import define
from scipy.special import erf

import polydl as pd
from polydl.errors import PolyDLError
from polydl.kernels import BrgemmConfig, compile_brgemm, reference
from polydl.kernels.epilogue import ACC, Epilogue, Operand

rng = np.random.default_rng(5)


def rand(*shape, lo=-1.0, hi=1.0):
    return rng.uniform(lo, hi, size=shape).astype(np.float32)


# ------------------------------------------------------------------ the microkernel's math
def identity_call(epi: Epilogue, values: np.ndarray) -> np.ndarray:
    """Run ``epi`` on ``values`` through a kernel whose products are zero (acc = C, beta=1)."""
    m, n = values.shape
    cfg = BrgemmConfig(m=m, n=n, k=1, epilogue=epi)
    kern = compile_brgemm(cfg)
    c = values.astype(np.float32).reshape(-1).copy()
    kern(np.zeros(m, np.float32), np.zeros(n, np.float32), c, batch=1)
    return c.reshape(m, n)


FUNCS = {
    "exp": (np.exp, -90.0, 89.0),
    "tanh": (np.tanh, -12.0, 12.0),
    "sigmoid": (lambda x: 1 / (1 + np.exp(-x)), -30.0, 30.0),
    "erf": (erf, -5.0, 5.0),
    "sqrt": (np.sqrt, 0.0, 1e4),
}


@pytest.mark.parametrize("fn", sorted(FUNCS))
def test_vector_math_accuracy(fn):
    """A few float32 ulps relative, or 2e-7 absolute near zero crossings, over the range."""
    want, lo, hi = FUNCS[fn]
    x = np.concatenate([np.linspace(lo, hi, 6000), rng.uniform(-0.1, 0.1, 1000)])
    x = np.clip(x, lo, hi).astype(np.float32).reshape(100, 70)
    got = identity_call(Epilogue(expr=(fn, ACC)), x)
    ref = want(x.astype(np.float64))
    with np.errstate(over="ignore"):
        overflow = np.isinf(ref.astype(np.float32))  # past FLT_MAX: inf in float32
    scale = np.maximum(np.abs(ref), 1e-30)
    close = np.abs(got - ref) <= np.maximum(4e-6 * scale, 2e-7 if fn != "exp" else 0)
    bad = np.where(overflow, got != np.inf, ~close)
    assert not bad.any(), (fn, x[bad][:5], got[bad][:5], ref[bad][:5])


def test_exp_special_values():
    x = np.array([[np.nan, np.inf, -np.inf, 100.0, -100.0, 0.0, 88.7, -87.0]], np.float32)
    got = identity_call(Epilogue(expr=("exp", ACC)), x)[0]
    assert np.isnan(got[0]) and got[1] == np.inf and got[3] == np.inf
    assert 0 <= got[2] < 1e-37 and 0 <= got[4] < 1e-37 and got[5] == 1.0
    np.testing.assert_allclose(got[6:], np.exp(x[0, 6:].astype(np.float64)), rtol=4e-6)
    t = identity_call(Epilogue(expr=("tanh", ACC)), x)[0]
    assert np.isnan(t[0]) and t[1] == 1.0 and t[2] == -1.0 and t[5] == 0.0
    e = identity_call(Epilogue(expr=("erf", ACC)), x)[0]  # |x| past the rational form's 4
    assert np.isnan(e[0]) and e[1] == 1.0 and e[2] == -1.0 and e[3] == 1.0 and e[4] == -1.0
    assert e[5] == 0.0 and e[6] == 1.0 and e[7] == -1.0


# ------------------------------------------------------------------ configured kernels
SHAPES = [(1, 1, 1), (7, 37, 5), (13, 19, 11), (28, 64, 3)]


@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("beta", [0, 1])
def test_operands_per_row_column_and_like_c(m, n, k, beta):
    """scale per column, shift per row, a residual like C (its own leading dimension)."""
    ldr = n + 3
    epi = Epilogue(
        operands=(
            Operand(ld=0, col=1, name="scale"),
            Operand(ld=1, col=0, name="shift"),
            Operand(ld=ldr, col=1, name="res"),
        ),
        expr=("max", ("+", ("+", ("*", ACC, ("in", 0)), ("in", 1)), ("in", 2)), ("num", 0.0)),
    )
    cfg = BrgemmConfig(m=m, n=n, k=k, ldc=n + 2, beta=beta, epilogue=epi)
    kern = compile_brgemm(cfg)
    a, b = rand(m * k), rand(k * n)
    c = rand(m * (n + 2))
    scale, shift, res = rand(n), rand(m), rand(m * ldr)
    want = reference(cfg, a, b, c, batch=1, operands=[scale, shift, res])
    # the contract by hand: acc = A @ B (+ C), then the expression per element
    acc = a.reshape(m, k).astype(np.float64) @ b.reshape(k, n)
    if beta:
        acc += c.reshape(m, n + 2)[:, :n]
    hand = np.maximum(acc * scale + shift[:, None] + res.reshape(m, ldr)[:, :n], 0)
    np.testing.assert_allclose(want.reshape(m, n + 2)[:, :n], hand, rtol=1e-6, atol=1e-6)
    kern(a, b, c, batch=1, operands=[scale, shift, res])
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)


def test_grouped_rows_operand():
    """Rows in groups (a conv's output rows): the residual's rows follow their own groups."""
    m, n, k, g = 10, 16, 4, 4  # rows 0..3, 4..7, 8..9
    ldc, ldc_g, ldr, ldr_g = 16, 80, 20, 100
    epi = Epilogue(
        operands=(Operand(ld=ldr, col=1, ld_group=ldr_g, name="res"),), expr=("+", ACC, ("in", 0))
    )
    cfg = BrgemmConfig(
        m=m,
        n=n,
        k=k,
        lda=k,
        ldc=ldc,
        beta=0,
        row_group=g,
        lda_group=g * k,
        ldc_group=ldc_g,
        epilogue=epi,
    )
    kern = compile_brgemm(cfg)
    a, b = rand(m * k), rand(k * n)
    c = np.zeros(cfg.c_extent(), np.float32)
    res = rand(cfg.operand_extents()[0])
    kern(a, b, c, batch=1, operands=[res])
    prod = a.reshape(m, k).astype(np.float64) @ b.reshape(k, n)
    for i in range(m):
        row_c = (i // g) * ldc_g + (i % g) * ldc
        row_r = (i // g) * ldr_g + (i % g) * ldr
        np.testing.assert_allclose(
            c[row_c : row_c + n], prod[i] + res[row_r : row_r + n], rtol=1e-5, atol=1e-5
        )


def test_full_operands_prefetched_as_a_tile_starts():
    """A residual (one value per element) is prefetched, a tile's lines of it as the tile
    starts, once per line of the tile; a per-column scale is not; the values stay exact."""
    from polydl.kernels import generate

    m, n, k, ldr = 7, 37, 5, 41
    res = Operand(ld=ldr, col=1, name="res")
    scale = Operand(ld=0, col=1, name="scale")
    expr = ("+", ("*", ACC, ("in", 0)), ("in", 1))
    cfg = BrgemmConfig(m=m, n=n, k=k, beta=0, epilogue=Epilogue(operands=(scale, res), expr=expr))
    text = generate(cfg).definition
    starts = text.index("store <16 x float> zeroinitializer")
    prefetches = [i for i in range(len(text)) if text.startswith("call void @llvm.prefetch", i)]
    tiles = text.count("; tile group")
    assert prefetches and all(i < text.index("call void @llvm.masked.store") for i in prefetches)
    assert prefetches[0] < starts and len(prefetches) >= tiles
    only_scale = BrgemmConfig(
        m=m, n=n, k=k, beta=0, epilogue=Epilogue(operands=(scale,), expr=("*", ACC, ("in", 0)))
    )
    assert "llvm.prefetch" not in generate(only_scale).definition
    kern = compile_brgemm(cfg)
    a, b, c = rand(m * k), rand(k * n), np.zeros(cfg.c_extent(), np.float32)
    operands = [rand(n), rand(m * ldr)]
    want = reference(cfg, a, b, c, batch=1, operands=operands)
    kern(a, b, c, batch=1, operands=operands)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spread", [True, False])
@pytest.mark.parametrize(
    "m, n, k, group", [(7, 37, 5, None), (13, 50, 41, None), (10, 33, 29, 4), (3, 17, 1, None)]
)
def test_full_operand_prefetch_spread_over_k(monkeypatch, spread, m, n, k, group):
    """The residual's prefetches spread over the k loop (one line a step, the lines the loop
    does not reach at the tile start) or all at the tile start: the same values, odd sizes,
    grouped rows, a k shorter than the tile's lines."""
    from polydl.kernels import generate, generator, registry

    monkeypatch.setattr(generator, "PREFETCH_SPREAD", spread)
    monkeypatch.setattr(registry, "_cache", {})
    ldc, ldr = n + 3, n + 5
    res = Operand(ld=ldr, col=1, ld_group=None if group is None else 7 * ldr, name="res")
    epi = Epilogue(operands=(res,), expr=("max", ("+", ACC, ("in", 0)), ("num", 0.0)))
    grouped = {} if group is None else {"row_group": group, "lda_group": group * k}
    cfg = BrgemmConfig(
        m=m,
        n=n,
        k=k,
        lda=k,
        ldc=ldc,
        beta=0,
        epilogue=epi,
        **grouped,
        **({} if group is None else {"ldc_group": 7 * ldc}),
    )
    text = generate(cfg).definition
    body = text[text.index("g0.k.b:") : text.index("g0.k.x:")]
    assert ("llvm.prefetch" in body) == (spread and ".kb = mul" in body and k > 1)
    kern = compile_brgemm(cfg)
    a, b = rand(m * k), rand(k * n)
    c = np.zeros(cfg.c_extent(), np.float32)
    operands = [rand(cfg.operand_extents()[0])]
    want = reference(cfg, a, b, c.copy(), batch=1, operands=operands)
    kern(a, b, c, batch=1, operands=operands)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)


def test_operand_checks():
    epi = Epilogue(operands=(Operand(ld=0, col=1, name="s"),), expr=("*", ACC, ("in", 0)))
    kern = compile_brgemm(BrgemmConfig(m=2, n=8, k=1, epilogue=epi))
    a, b, c = np.zeros(2, np.float32), np.zeros(8, np.float32), np.zeros(16, np.float32)
    with pytest.raises(PolyDLError, match=r"reads 1 operand\(s\) \['s'\], got 0"):
        kern(a, b, c, batch=1)
    with pytest.raises(PolyDLError, match="s holds 4 elements, the call reads 8"):
        kern(a, b, c, batch=1, operands=[np.zeros(4, np.float32)])
    with pytest.raises(PolyDLError, match="not an epilogue expression"):
        Epilogue(expr=("in", 0))
    with pytest.raises(PolyDLError, match="epilogue or the bias/relu shorthands"):
        BrgemmConfig(m=1, n=1, k=1, relu=True, epilogue=epi)


# ------------------------------------------------------------------ DSL kernels
def micros(ck):
    return [s.micro for s in ck.kernel.statements if s.micro is not None]


def plain(ck):
    return [s for s in ck.kernel.statements if s.micro is None]


@pd.kernel
def gemm_bn_res_relu(
    C: pd.f32["M", "N"],
    A: pd.f32["M", "K"],
    B: pd.f32["K", "N"],
    s: pd.f32["N"],
    t: pd.f32["N"],
    R: pd.f32["M", "N"],
):
    for i in range(M):
        for j in range(N):
            C[i, j] = 0.0
        for k in range(K):
            for j in range(N):
                C[i, j] += A[i, k] * B[k, j]
        for j in range(N):
            C[i, j] = C[i, j] * s[j] + t[j]
            C[i, j] += R[i, j]
            C[i, j] = max(C[i, j], 0.0)


@pd.kernel
def gemm_gelu_nests(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "N"], b: pd.f32["N"]):
    for i in range(M):
        for j in range(N):
            C[i, j] = 0.0
    for i in range(M):
        for k in range(K):
            for j in range(N):
                C[i, j] += A[i, k] * B[k, j]
    for i in range(M):
        for j in range(N):
            C[i, j] += b[j]
    for i in range(M):
        for j in range(N):
            C[i, j] = 0.5 * C[i, j] * (1.0 + pd.erf(C[i, j] * 0.7071067811865476))


@pd.kernel
def gemm_tanh_gelu_rowscale(
    C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "N"], r: pd.f32["M"]
):
    for i in range(M):
        for j in range(N):
            C[i, j] = 0.0
        for k in range(K):
            for j in range(N):
                C[i, j] += A[i, k] * B[k, j]
        for j in range(N):
            C[i, j] *= r[i]
            C[i, j] = (
                0.5
                * C[i, j]
                * (
                    1.0
                    + pd.tanh(
                        0.7978845608028654 * (C[i, j] + 0.044715 * C[i, j] * C[i, j] * C[i, j])
                    )
                )
            )


def gelu_erf(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


@pytest.mark.parametrize("M,N,K", [(7, 37, 13), (31, 65, 17), (64, 48, 33)])
@pytest.mark.parametrize("threads", [1, 2])
def test_gemm_bn_residual_relu_folds(M, N, K, threads):
    a, b, s, t, r = rand(M, K), rand(K, N), rand(N), rand(N), rand(M, N)
    ck = pd.compile(gemm_bn_res_relu, M=M, N=N, K=K, threads=threads)
    assert not plain(ck), ck.show("loops")  # init, BN, residual and ReLU all in the calls
    last = [m for m in micros(ck) if m.epilogue is not None]
    assert last and {t for m in last for t, _ in m.operands} == {"s", "t", "R"}
    c = np.full((M, N), 3.0, np.float32)
    ck(c, a, b, s, t, r)
    want = np.maximum((a.astype(np.float64) @ b) * s + t + r, 0)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)
    ref = np.full((M, N), 3.0, np.float32)
    pd.compile(gemm_bn_res_relu, M=M, N=N, K=K, optimize=False)(ref, a, b, s, t, r)
    np.testing.assert_allclose(c, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("M,N,K", [(5, 23, 7), (33, 70, 19)])
def test_epilogue_nests_of_their_own_fold(M, N, K):
    """Bias and GELU written as nests of their own fold into the calls too."""
    a, b, bias = rand(M, K), rand(K, N), rand(N)
    ck = pd.compile(gemm_gelu_nests, M=M, N=N, K=K)
    assert not plain(ck), ck.show("loops")
    assert "erf" in ck.show("loops")
    c = np.zeros((M, N), np.float32)
    ck(c, a, b, bias)
    np.testing.assert_allclose(c, gelu_erf(a.astype(np.float64) @ b + bias), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("M,N,K", [(11, 29, 5), (40, 64, 24)])
def test_row_operand_and_tanh_gelu(M, N, K):
    a, b, r = rand(M, K), rand(K, N), rand(M, lo=0.5, hi=2.0)
    ck = pd.compile(gemm_tanh_gelu_rowscale, M=M, N=N, K=K)
    assert not plain(ck)
    c = np.zeros((M, N), np.float32)
    ck(c, a, b, r)
    want = gelu_tanh((a.astype(np.float64) @ b) * r[:, None])
    np.testing.assert_allclose(c, want, rtol=2e-5, atol=2e-6)


@pd.kernel
def conv1x1_bn_add_relu(
    O: pd.f32["N", "K", "P", "Q"],
    I: pd.f32["N", "C", "P", "Q"],
    W: pd.f32["K", "C"],
    s: pd.f32["K"],
    t: pd.f32["K"],
    R: pd.f32["N", "K", "P", "Q"],
):
    for n in range(N):
        for k in range(K):
            for p in range(P):
                for q in range(Q):
                    O[n, k, p, q] = 0.0
            for c in range(C):
                for p in range(P):
                    for q in range(Q):
                        O[n, k, p, q] += W[k, c] * I[n, c, p, q]
            for p in range(P):
                for q in range(Q):
                    O[n, k, p, q] = max(O[n, k, p, q] * s[k] + t[k] + R[n, k, p, q], 0.0)


@pytest.mark.parametrize("N,C,K,P,Q", [(1, 13, 17, 5, 7), (2, 8, 33, 7, 7)])
def test_nchw_conv_bn_residual_relu(N, C, K, P, Q):
    """A 1x1 NCHW conv: rows are output channels (scale/shift per row), columns the coalesced
    pixels (the residual like O)."""
    x, w, s, t, r = rand(N, C, P, Q), rand(K, C), rand(K), rand(K), rand(N, K, P, Q)
    ck = pd.compile(conv1x1_bn_add_relu, N=N, C=C, K=K, P=P, Q=Q)
    assert not plain(ck), ck.show("loops")
    o = np.zeros((N, K, P, Q), np.float32)
    ck(o, x, w, s, t, r)
    conv = np.einsum("kc,ncpq->nkpq", w.astype(np.float64), x)
    want = np.maximum(conv * s[None, :, None, None] + t[None, :, None, None] + r, 0)
    np.testing.assert_allclose(o, want, rtol=1e-5, atol=1e-5)


@pd.kernel
def gemm_then_shift(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "N"]):
    for i in range(M):
        for j in range(N):
            C[i, j] = 0.0
        for k in range(K):
            for j in range(N):
                C[i, j] += A[i, k] * B[k, j]
    for i in range(M):
        for j in range(1, N):
            C[i, j] = C[i, j] + C[i, j - 1]


def test_not_elementwise_is_not_folded():
    """A statement reading a neighbour element stays a nest of its own, after the calls."""
    M, N, K = 9, 21, 6
    a, b = rand(M, K), rand(K, N)
    ck = pd.compile(gemm_then_shift, M=M, N=N, K=K)
    assert micros(ck) and all(m.epilogue is None for m in micros(ck))
    assert len(plain(ck)) == 1
    c = np.zeros((M, N), np.float32)
    ck(c, a, b)
    want = np.zeros((M, N), np.float32)
    gemm_then_shift.reference(want, a, b)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ random chains
UNARY = {
    "relu": ("max({x}, 0.0)", lambda x: np.maximum(x, 0)),
    "tanh": ("pd.tanh({x})", np.tanh),
    "sigmoid": ("pd.sigmoid({x})", lambda x: 1 / (1 + np.exp(-x))),
    "neg": ("-{x}", np.negative),
    "clamp": ("min(max({x}, -0.5), 0.5)", lambda x: np.clip(x, -0.5, 0.5)),
    "leaky": ("max({x}, 0.1 * {x})", lambda x: np.maximum(x, 0.1 * x)),
    "silu": ("{x} * pd.sigmoid({x})", lambda x: x / (1 + np.exp(-x))),
    "scale": ("{x} * s[j]", None),
    "shift": ("{x} + t[i]", None),
    "res": ("{x} - R[i, j]", None),
}


def chain_kernel(ops: list[str]):
    """A GEMM followed by one nest per op, each ``C[i, j] = op(C[i, j])``; built in the DSL
    with static ``if``s on a closure tuple, so every chain is a real kernel."""
    src = ["def chain(C: pd.f32['M', 'N'], A: pd.f32['M', 'K'], B: pd.f32['K', 'N'],"]
    src += ["          s: pd.f32['N'], t: pd.f32['M'], R: pd.f32['M', 'N']):"]
    src += ["    for i in range(M):", "        for j in range(N):", "            C[i, j] = 0.0"]
    src += ["        for k in range(K):", "            for j in range(N):"]
    src += ["                C[i, j] += A[i, k] * B[k, j]"]
    for op in ops:
        src += ["    for i in range(M):", "        for j in range(N):"]
        src += ["            C[i, j] = " + UNARY[op][0].format(x="C[i, j]")]
    return pd.kernel(define("\n".join(src), "chain", "test_epilogue.chain"))


def apply_chain(ops, x, s, t, r):
    for op in ops:
        fn = UNARY[op][1]
        if op == "scale":
            x = x * s
        elif op == "shift":
            x = x + t[:, None]
        elif op == "res":
            x = x - r
        else:
            x = fn(x)
    return x


@settings(
    max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    ops=st.lists(st.sampled_from(sorted(UNARY)), min_size=1, max_size=4),
    M=st.integers(1, 20),
    N=st.integers(1, 40),
)
def test_random_chains_fused_vs_unfused(ops, M, N):
    K = 7
    k = chain_kernel(ops)
    a, b, s, t, r = rand(M, K), rand(K, N), rand(N), rand(M), rand(M, N)
    fused = pd.compile(k, M=M, N=N, K=K)
    assert not plain(fused), fused.show("loops")
    c = np.zeros((M, N), np.float32)
    fused(c, a, b, s, t, r)
    ref = np.zeros((M, N), np.float32)
    pd.compile(k, M=M, N=N, K=K, optimize=False)(ref, a, b, s, t, r)
    np.testing.assert_allclose(c, ref, rtol=3e-5, atol=3e-6)
    want = apply_chain(ops, a.astype(np.float64) @ b, s, t, r)
    np.testing.assert_allclose(c, want, rtol=3e-5, atol=3e-6)
