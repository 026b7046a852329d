"""bfloat16: DSL tensors (float32 arithmetic, stores rounded to nearest even, NaN kept), BRGEMM
kernels with bf16 A/B and f32 C (widened in every family; vdpbf16ps pairs in avx512_bf16, run
where the host has AVX512-BF16, checked by its assembly everywhere), and contractions on bf16
through the compiler, against float64 references of the bf16-rounded inputs."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from kernels import numpy_conv
from test_dsl_util import assert_error_at

import polydl as pd
from polydl import jit
from polydl.kernels import FAMILIES, FORMS, BrgemmConfig, compile_brgemm, emit_asm, reference

rng = np.random.default_rng(41)
HAS_DOT = FAMILIES["avx512_bf16"].required_features <= jit.host_features()
BF16_FAMILIES = [f.name for f in FAMILIES.values() if f.required_features <= jit.host_features()]


def bf(x):
    return pd.to_bf16(x)


def bits(a):
    return np.asarray(a).view(np.uint16)


# ------------------------------------------------------------------ the DSL, plain nests
@pd.kernel
def store(Y: pd.bf16["N"], X: pd.f32["N"]):
    for i in range(N):
        Y[i] = X[i]


@pd.kernel
def axpy(Y: pd.bf16["N"], X: pd.bf16["N"], Z: pd.f32["N"]):
    for i in range(N):
        Y[i] = X[i] * 3.0 + Z[i]
        Y[i] += 0.25


def test_store_rounds_to_nearest_even_and_keeps_nan():
    # 1 + half an ulp (tie, even below), 1 + 3 half-ulps (tie, even above), above a tie,
    # NaN with a payload, +-inf, FLT_MAX (rounds to inf), a denormal, -0
    raw = [
        0x3F808000,
        0x3F818000,
        0x3F80C000,
        0x7FC00001,
        0x7F800000,
        0xFF800000,
        0x7F7FFFFF,
        0x00008001,
        0x80000000,
    ]
    x = np.array(raw, np.uint32).view(np.float32)
    y = np.zeros(len(x), np.uint16)  # the bits as uint16 are taken too
    store(y, x)
    np.testing.assert_array_equal(y, bits(x.astype(ml_dtypes.bfloat16)))
    assert y[0] == 0x3F80 and y[1] == 0x3F82 and y[2] == 0x3F81
    assert (y[3] & 0x7F80) == 0x7F80 and (y[3] & 0x7F) and y[6] == 0x7F80


@pytest.mark.parametrize("n", [1, 17, 1001])
def test_arithmetic_is_float32_and_matches_the_reference_bit_for_bit(n):
    x, z = bf(rng.standard_normal(n)), rng.standard_normal(n).astype(np.float32)
    y, r = bf(np.zeros(n)), bf(np.zeros(n))
    axpy(y, x, z)
    axpy.reference(r, x, z)
    np.testing.assert_array_equal(bits(y), bits(r))
    t = (pd.from_bf16(x) * np.float32(3) + z).astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(bits(y), bits((t + np.float32(0.25)).astype(ml_dtypes.bfloat16)))


def test_wrong_dtype_and_bf16_scalars_are_refused():
    with pytest.raises(TypeError, match="bfloat16"):
        axpy(np.zeros(4, np.float32), bf(np.zeros(4)), np.zeros(4, np.float32))
    with pytest.raises(pd.DSLError) as err:

        @pd.kernel
        def bad(A: pd.f32["N"], s: pd.bf16):  # bf16-scalar
            for i in range(N):
                A[i] = s

    assert_error_at(err.value, __file__, "bf16-scalar", "pd.bf16 is a tensor element type", "`s`")


def test_to_and_from_bf16():
    x = np.array([1.0, 1.00390625, 3.0e38, -0.0, np.nan], np.float32)
    b = pd.to_bf16(x)
    assert b.dtype == ml_dtypes.bfloat16 and b.ctypes.data % 64 == 0
    # 1.00390625 is a tie between 1 and 1.0078125: even (1); 3e38: 0x7F61B1E6 -> 0x7F62
    want = np.array([1.0, 1.0, np.uint32(0x7F620000).view(np.float32), -0.0], np.float32)
    np.testing.assert_array_equal(pd.from_bf16(b)[:4], want)
    assert np.isnan(pd.from_bf16(b)[4])
    np.testing.assert_array_equal(pd.from_bf16(bits(b)), pd.from_bf16(b))


# ------------------------------------------------------------------ BRGEMM kernels
SHAPES = [(1, 1, 1), (7, 37, 5), (14, 32, 64), (28, 16, 9), (13, 19, 2)]


@pytest.mark.parametrize("isa", BF16_FAMILIES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_bf16_kernels_against_their_twin(isa, form, m, n, k):
    """Every family the host runs (avx512_bf16 only where it has AVX512-BF16), odd and even k
    (pairs plus a widened last step), every batch form."""
    cfg = BrgemmConfig(
        m=m, n=n, k=k, ab_dtype="bf16", isa=isa, form=form, beta=1, lda=k + 1, ldb=n + 3
    )
    kern = compile_brgemm(cfg)
    c0 = cfg.normalized()
    batch = 3
    kw: dict = {}
    if form == "stride":
        a, b = (
            bf(rng.standard_normal(batch * c0.stride_a)),
            bf(rng.standard_normal(batch * c0.stride_b)),
        )
        kw["batch"] = batch
    elif form == "offset":
        a, b = (
            bf(rng.standard_normal(batch * c0.a_extent())),
            bf(rng.standard_normal(batch * c0.b_extent())),
        )
        kw["a_offsets"] = np.arange(batch)[::-1] * c0.a_extent()
        kw["b_offsets"] = np.arange(batch) * c0.b_extent()
    else:
        a = [bf(rng.standard_normal(c0.a_extent())) for _ in range(batch)]
        b = [bf(rng.standard_normal(c0.b_extent())) for _ in range(batch)]
    c = rng.standard_normal(c0.c_extent()).astype(np.float32)
    want = reference(cfg, a, b, c, **kw)
    kern(a, b, c, **kw)
    # products of bf16 values are exact in f32: only the f32 accumulation rounds
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=2e-7 * k * batch * 4)


@pytest.mark.parametrize("cpu", ["cooperlake", "sapphirerapids"])
def test_dot_family_assembly(cpu):
    """On every host: the avx512_bf16 kernel multiplies pairs with vdpbf16ps, B's two rows
    interleaved in registers."""
    asm = emit_asm(BrgemmConfig(m=14, n=32, k=64, ab_dtype="bf16", isa="avx512_bf16"), cpu=cpu)
    assert asm.count("vdpbf16ps") >= 14, asm[:2000]  # 14 rows x 2 vectors of 16 columns
    assert "vpermt2w" in asm or "vpunpcklwd" in asm or "vpermw" in asm  # the interleave


@pytest.mark.skipif(not HAS_DOT, reason="host has no AVX512-BF16 (vdpbf16ps)")
def test_dot_family_runs_with_an_epilogue():
    from polydl.kernels.epilogue import ACC, Epilogue, Operand

    epi = Epilogue(
        operands=(Operand(ld=0, col=1, name="b"),),
        expr=("max", ("+", ACC, ("in", 0)), ("num", 0.0)),
    )
    cfg = BrgemmConfig(m=9, n=40, k=33, ab_dtype="bf16", isa="avx512_bf16", beta=0, epilogue=epi)
    kern = compile_brgemm(cfg)
    a, b = bf(rng.standard_normal(9 * 33)), bf(rng.standard_normal(33 * 40))
    bias = rng.standard_normal(40).astype(np.float32)
    c = np.zeros(9 * 40, np.float32)
    want = reference(cfg, a, b, c, batch=1, operands=[bias])
    kern(a, b, c, batch=1, operands=[bias])
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)


def test_f32_only_and_bf16_only_families_refuse_the_other_type():
    with pytest.raises(ValueError, match="bf16 operands only"):
        emit_asm(BrgemmConfig(m=2, n=16, k=2, isa="avx512_bf16"), cpu="cooperlake")


# ------------------------------------------------------------------ through the compiler
def bf16_ref(a, b):
    return pd.from_bf16(a).astype(np.float64) @ pd.from_bf16(b).astype(np.float64)


@pytest.mark.parametrize("M,N,K", [(37, 53, 29), (64, 96, 128), (5, 700, 3)])
@pytest.mark.parametrize("threads", [1, 2])
def test_matmul_bf16(M, N, K, threads):
    a, b = bf(rng.standard_normal((M, K))), bf(rng.standard_normal((K, N)))
    ck = pd.compile(pd.ops.matmul(M, N, K, dtype="bf16"), threads=threads)
    assert all(s.micro.ab_dtype == "bf16" for s in ck.kernel.statements if s.micro)
    c = np.zeros((M, N), np.float32)
    ck(c, a, b)
    np.testing.assert_allclose(c, bf16_ref(a, b), rtol=1e-5, atol=4e-7 * K)
    if HAS_DOT:
        assert "vdpbf16ps" in ck.show("asm")
    out = pd.nn.matmul(a, b)  # bf16 inputs: the bf16 kernel, f32 result
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, c, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layout", ["nchw", "nchwc"])
def test_conv2d_bf16(layout):
    N, C, K, H, W = 1, 16, 32, 9, 11
    x, w = bf(rng.standard_normal((N, C, H, W))), bf(rng.standard_normal((K, C, 3, 3)))
    want = numpy_conv(pd.from_bf16(x), pd.from_bf16(w), 1, 1)
    if layout == "nchw":
        ck = pd.compile(pd.ops.conv2d(N, C, K, H, W, 3, 3, padding=1, dtype="bf16"))
        o = np.zeros((N, K, H, W), np.float32)
        ck(o, x, w)
        np.testing.assert_allclose(o, want, rtol=1e-5, atol=2e-5)
        return
    blk = 16
    cb, kb = pd.ops.channel_block(C, blk), pd.ops.channel_block(K, blk)
    xp = np.pad(pd.from_bf16(x), ((0, 0), (0, 0), (1, 1), (1, 1)))
    xi = xp.reshape(N, C // cb, cb, H + 2, W + 2).transpose(0, 1, 3, 4, 2)
    wi = pd.from_bf16(w).reshape(K // kb, kb, C // cb, cb, 3, 3).transpose(0, 2, 4, 5, 3, 1)
    ck = pd.compile(
        pd.ops.conv2d(N, C, K, H, W, 3, 3, padding=1, layout="nchwc", block=blk, dtype="bf16")
    )
    o = np.zeros((N, K // kb, H, W, kb), np.float32)
    ck(o, bf(np.ascontiguousarray(xi)), bf(np.ascontiguousarray(wi)))
    got = o.transpose(0, 1, 4, 2, 3).reshape(N, K, H, W)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (2, 0)])
def test_nn_conv2d_on_bf16(stride, padding):
    x, w = bf(rng.standard_normal((2, 8, 11, 9))), bf(rng.standard_normal((12, 8, 3, 3)))
    b = rng.standard_normal(12).astype(np.float32)
    y = pd.nn.conv2d(x, w, b, stride=stride, padding=padding, activation="relu")
    want = np.maximum(
        numpy_conv(pd.from_bf16(x), pd.from_bf16(w), stride, padding) + b[None, :, None, None], 0
    )
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=2e-5)


def test_cost_model_in_core_term_per_family():
    """The cost model times a bf16 call by the family its CPU runs: dot pairs on a CPU with
    AVX512-BF16 (fewer cycles than f32), widened (as f32) elsewhere; panels of 2-byte elements."""
    from polydl.optimize.cost import call_model
    from polydl.target import resolve

    dot, plain = resolve("cooperlake"), resolve("skylake-avx512")
    f32 = call_model(64, 64, 64, 8, dot)
    bf = call_model(64, 64, 64, 8, dot, ab_dtype="bf16")
    assert bf.cycles < 0.75 * f32.cycles and bf.b_panel * 2 == f32.b_panel
    widened = call_model(64, 64, 64, 8, plain, ab_dtype="bf16")
    assert widened.cycles == call_model(64, 64, 64, 8, plain).cycles


@pytest.mark.parametrize(
    "N,C,K,H,R,st,pad,blocked",
    [(1, 48, 32, 23, 3, 1, 1, True), (3, 3, 16, 27, 7, 2, 3, True), (1, 24, 40, 5, 3, 1, 1, False)],
)
def test_nn_conv2d_bf16_blocked_and_direct_routes(N, C, K, H, R, st, pad, blocked):
    # filters larger than 1x1 over enough output pixels run on the blocked layout (bf16 packs,
    # VNNI weight panels), the small ones on the direct NCHW kernel: both against float64 of
    # the bf16-rounded operands, bias and ReLU included
    from polydl import nn

    rng = np.random.default_rng(7)
    x = pd.to_bf16(rng.standard_normal((N, C, H, H), dtype=np.float32))
    w = pd.to_bf16(rng.standard_normal((K, C, R, R), dtype=np.float32))
    b = rng.standard_normal(K, dtype=np.float32)
    y = pd.nn.conv2d(x, w, b, stride=st, padding=pad, activation="relu", threads=2)
    P = (H + 2 * pad - R) // st + 1
    xs = np.pad(pd.from_bf16(x).astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ws = pd.from_bf16(w).astype(np.float64)
    want = np.zeros((N, K, P, P))
    for r in range(R):
        for s in range(R):
            patch = xs[:, :, r : r + st * P : st, s : s + st * P : st]
            want += np.einsum("nchw,kc->nkhw", patch, ws[:, :, r, s])
    want = np.maximum(want + b[None, :, None, None], 0)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert (N * P * P >= nn.BF16_BLOCKED_PIXELS) == blocked


@pytest.mark.parametrize("bf16", [True, False])
def test_nn_conv_weights_packed_once(bf16):
    # ConvWeights: a snapshot of the weights, packed once per block; the result is the call's
    # on the plain array, bf16 or f32 (the f32 blocked route too), and changing the caller's
    # array afterwards changes nothing
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 128, 12, 12), dtype=np.float32)
    w = rng.standard_normal((48, 128, 3, 3), dtype=np.float32)
    if bf16:
        x, w = pd.to_bf16(x), pd.to_bf16(w)
    route = {} if bf16 else {"route": "blocked"}
    want = pd.nn.conv2d(x, w, padding=1, threads=2, **route)
    wc = pd.nn.ConvWeights(w)
    w[...] = 0
    for _ in range(2):
        got = pd.nn.conv2d(x, wc, padding=1, threads=2, **route)
        np.testing.assert_array_equal(got, want)
    assert wc.shape == w.shape and "blocked" in repr(wc)
    with pytest.raises(ValueError, match="read-only"):
        wc.array[0, 0, 0, 0] = 1
    with pytest.raises(ValueError, match="4 dimensions"):
        pd.nn.ConvWeights(w[0])


@pd.kernel
def mm_bf16_out(C: pd.bf16["M", "N"], A: pd.bf16["M", "K"], B: pd.bf16["K", "N"], b: pd.f32["N"]):
    for i in range(M):
        for j in range(N):
            C[i, j] = 0.0
            for k in range(K):
                C[i, j] += A[i, k] * B[k, j]
            C[i, j] = max(C[i, j] + b[j], 0.0)


@pd.kernel
def mm_bf16_read_back(
    C: pd.bf16["M", "N"], D: pd.f32["M", "N"], A: pd.bf16["M", "K"], B: pd.bf16["K", "N"]
):
    for i in range(M):
        for j in range(N):
            C[i, j] = 0.0
            for k in range(K):
                C[i, j] += A[i, k] * B[k, j]
    for i in range(M):
        for j in range(N):
            D[i, j] = C[i, j] * 2.0


@pytest.mark.parametrize("M,N,K", [(37, 53, 301), (5, 97, 64), (64, 64, 1031)])
def test_contraction_into_bf16_rounds_once(M, N, K):
    # a contraction into a pd.bf16 C runs on BRGEMM with a bf16 store: the products summed in
    # float32, bias and ReLU on the float32 sum, one rounding; the reference does the same
    from polydl.analysis.contraction import bf16_accumulated
    from polydl.pipeline import bind_sizes

    rng = np.random.default_rng(M + K)
    a = pd.to_bf16(rng.standard_normal((M, K), dtype=np.float32))
    b = pd.to_bf16(rng.standard_normal((K, N), dtype=np.float32))
    bias = rng.standard_normal(N, dtype=np.float32)
    k = pd.compile(mm_bf16_out, M=M, N=N, K=K, threads=2)
    assert bf16_accumulated(bind_sizes(mm_bf16_out.ir, dict(M=M, N=N, K=K))) == {"C"}
    micros = [s.micro for s in k.kernel.statements if s.micro is not None]
    assert micros and all(m.c_dtype == "bf16" and m.ab_dtype == "bf16" for m in micros)
    c = np.zeros((M, N), np.uint16)
    k(c, a, b, bias)
    exact = np.maximum(pd.from_bf16(a).astype(np.float64) @ pd.from_bf16(b) + bias, 0)
    got = pd.from_bf16(c).astype(np.float64)
    # one rounding of an f32 sum: within one bf16 ulp (2^-7 relative) of the exact value, and
    # equal to the exact value rounded except where the f32 sum crossed a rounding boundary
    scale = np.abs(pd.from_bf16(a)).astype(np.float64) @ np.abs(pd.from_bf16(b)) + np.abs(bias)
    assert np.all(np.abs(got - exact) <= 2.0**-8 * np.abs(exact) + K * 2.0**-24 * scale)
    rounded = pd.from_bf16(pd.to_bf16(exact.astype(np.float32)))
    assert np.mean(got == rounded) > 0.95
    ref = np.zeros((M, N), np.uint16)
    mm_bf16_out.reference(ref, a, b, bias)
    ulps = np.abs(ref.astype(np.int32) - c.astype(np.int32))
    assert ulps.max() <= 1 and np.mean(ulps == 0) > 0.95


def test_bf16_c_read_elsewhere_rounds_every_store():
    # C read by another nest: not a bf16 contraction (each store rounds, as before)
    from polydl.analysis.contraction import bf16_accumulated
    from polydl.pipeline import bind_sizes

    M, N, K = 6, 7, 40
    rng = np.random.default_rng(2)
    a = pd.to_bf16(rng.standard_normal((M, K), dtype=np.float32))
    b = pd.to_bf16(rng.standard_normal((K, N), dtype=np.float32))
    k = pd.compile(mm_bf16_read_back, M=M, N=N, K=K, threads=1)
    assert bf16_accumulated(bind_sizes(mm_bf16_read_back.ir, dict(M=M, N=N, K=K))) == set()
    c, d = np.zeros((M, N), np.uint16), np.zeros((M, N), np.float32)
    k(c, d, a, b)
    c2, d2 = np.zeros((M, N), np.uint16), np.zeros((M, N), np.float32)
    mm_bf16_read_back.reference(c2, d2, a, b)
    np.testing.assert_array_equal(c, c2)
    np.testing.assert_array_equal(d, 2 * pd.from_bf16(c))
    # per-store rounding differs from one rounding of the f32 sum somewhere
    once = pd.to_bf16(pd.from_bf16(a) @ pd.from_bf16(b))
    assert (bits(once) != c).any()
