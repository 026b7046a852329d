"""bf16 B in VNNI-2 pairs of rows (``BrgemmConfig(b_vnni=True)``, ``transform/pack.py``'s pair
copies) and the bf16 store of C (``c_dtype="bf16"``): kernels against their NumPy twin (run
where the host has AVX512-BF16, assembly everywhere), the twin against the plain layout, the
compiler's copies (odd and prime k: the last row beside zeros) against a float64 reference of
the bf16-rounded inputs and through the interpreter."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import polydl as pd
from polydl import jit
from polydl.ir import interp
from polydl.ir import loops as L
from polydl.kernels import FAMILIES, FORMS, BrgemmConfig, compile_brgemm, emit_asm, reference
from polydl.kernels.reference import round_bf16
from polydl.optimize import cost
from polydl.target import resolve

rng = np.random.default_rng(43)
HAS_DOT = FAMILIES["avx512_bf16"].required_features <= jit.host_features()
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="the host has no AVX512-BF16 (vdpbf16ps)")
NAN16 = 0x7FC1  # a bf16 NaN with a payload


def vnni(b: np.ndarray, ldb: int) -> np.ndarray:
    """A ``k x n`` float array as VNNI-2 pair rows of ``ldb`` columns; pads hold NaN bits."""
    k, n = b.shape
    out = np.full(-(-k // 2) * 2 * ldb, NAN16, np.uint16)
    bits = pd.to_bf16(b).view(np.uint16)
    for p in range(k):
        out[(p // 2) * 2 * ldb + p % 2 : (p // 2) * 2 * ldb + 2 * n : 2] = bits[p]
    return out


def blocks(cfg: BrgemmConfig, batch: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``batch`` random ``k x n`` B blocks and their VNNI-2 copy, ``b_rows * ldb`` apart."""
    c = cfg.normalized()
    sb = c.b_rows * c.ldb
    bs = [rng.standard_normal((c.k, c.n)) for _ in range(batch)]
    flat = np.full(batch * sb, NAN16, np.uint16)
    for t, b in enumerate(bs):
        v = vnni(b, c.ldb)
        flat[t * sb : t * sb + v.size] = v
    return bs, flat


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (7, 37, 5), (14, 32, 64), (23, 17, 31), (5, 80, 2)])
def test_vnni_twin_is_the_plain_twin(m, n, k):
    """The twin reads VNNI-2 B as the k x n blocks it stands for (the pads, NaN here, unread)."""
    cfg = BrgemmConfig(m=m, n=n, k=k, ab_dtype="bf16", b_vnni=True, ldb=n + 2, beta=1)
    plain = BrgemmConfig(m=m, n=n, k=k, ab_dtype="bf16", beta=1)
    c0, batch = cfg.normalized(), 3
    a = pd.to_bf16(rng.standard_normal(batch * c0.stride_a))
    bs, bv = blocks(cfg, batch)
    bp = pd.to_bf16(np.concatenate([b.reshape(-1) for b in bs]))
    c = rng.standard_normal(c0.c_extent()).astype(np.float32)
    np.testing.assert_array_equal(
        reference(cfg, a, bv, c, batch=batch), reference(plain, a, bp, c, batch=batch)
    )


def test_vnni_needs_bf16_and_a_pair_family():
    with pytest.raises(pd.PolyDLError, match="b_vnni"):
        BrgemmConfig(m=4, n=4, k=4, b_vnni=True)
    with pytest.raises(pd.PolyDLError, match="ldb >= n"):
        BrgemmConfig(m=4, n=8, k=4, ab_dtype="bf16", b_vnni=True, ldb=4)
    with pytest.raises(ValueError, match="VNNI-2"):
        emit_asm(BrgemmConfig(m=4, n=4, k=4, ab_dtype="bf16", b_vnni=True, isa="avx512"))


@needs_dot
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    "m,n,k", [(1, 1, 1), (7, 37, 5), (14, 64, 64), (23, 17, 31), (13, 19, 2), (6, 97, 3)]
)
def test_vnni_kernels_against_their_twin(form, m, n, k):
    """avx512_bf16 with VNNI-2 B: pairs loaded as they are, an odd k's last row with A's
    element zero-extended and B's pad (NaN here) masked off; every batch form."""
    cfg = BrgemmConfig(
        m=m,
        n=n,
        k=k,
        ab_dtype="bf16",
        b_vnni=True,
        isa="avx512_bf16",
        form=form,
        lda=k + 1,
        ldb=n + 3,
        beta=1,
        bias="col",
        relu=True,
    )
    kern, c0, batch = compile_brgemm(cfg), cfg.normalized(), 3
    sa, sb = m * c0.lda, c0.b_rows * c0.ldb
    kw: dict = {"bias": rng.standard_normal(n).astype(np.float32)}
    a = pd.to_bf16(rng.standard_normal(batch * sa))
    a_nan = a.view(np.uint16).copy()
    a_nan[-1] = NAN16  # past the last A row's k elements (lda = k + 1): never read as a factor
    _, b = blocks(cfg, batch)
    if form == "stride":
        kw["batch"] = batch
        args = (a_nan, b)
    elif form == "offset":
        kw["a_offsets"] = np.arange(batch)[::-1] * sa
        kw["b_offsets"] = np.arange(batch) * sb
        args = (a_nan, b)
    else:
        args = (
            [a_nan[t * sa : (t + 1) * sa] for t in range(batch)],
            [b[t * sb : (t + 1) * sb] for t in range(batch)],
        )
    c = rng.standard_normal(c0.c_extent()).astype(np.float32)
    want = reference(cfg, *args, c, **kw)
    kern(*args, c, **kw)
    assert not np.isnan(c).any()
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=2e-7 * k * batch * 4)


@pytest.mark.parametrize("cpu", ["cooperlake", "znver4"])
def test_vnni_kernel_assembly_loads_pairs_without_interleaving(cpu):
    asm = emit_asm(
        BrgemmConfig(m=12, n=64, k=63, ab_dtype="bf16", b_vnni=True, isa="avx512_bf16"), cpu=cpu
    )
    assert asm.count("vdpbf16ps") >= 24, asm[:2000]
    assert not any(op in asm for op in ("vpermt2w", "vpunpcklwd", "vpermw")), asm[:4000]


# ------------------------------------------------------------------ the bf16 store of C
@pytest.mark.parametrize(
    "isa", [f.name for f in FAMILIES.values() if f.required_features <= jit.host_features()]
)
@pytest.mark.parametrize("m,n,k,beta", [(1, 1, 1, 1), (7, 37, 5, 0), (13, 17, 31, 1), (5, 9, 2, 1)])
def test_bf16_store_of_c(isa, m, n, k, beta):
    """C declared bf16: beta=1 reads it widened, the epilogue's result rounds to nearest even;
    every family the host runs, f32 and bf16 A/B, edge columns of one lane included."""
    ab = "bf16" if "f32" not in FAMILIES[isa].dtypes or k % 2 == 0 else "f32"
    cfg = BrgemmConfig(
        m=m, n=n, k=k, ab_dtype=ab, c_dtype="bf16", isa=isa, beta=beta, ldc=n + 1, bias="row"
    )
    kern, c0 = compile_brgemm(cfg), cfg.normalized()
    src = rng.standard_normal(c0.stride_a), rng.standard_normal(c0.stride_b)
    a, b = (pd.to_bf16(x) if ab == "bf16" else x.astype(np.float32) for x in src)
    c = pd.to_bf16(rng.standard_normal(c0.c_extent() + 1))  # one more: nothing past C changes
    bias = rng.standard_normal(m).astype(np.float32)
    want = reference(cfg, a, b, c, batch=1, bias=bias)
    kern(a, b, c, batch=1, bias=bias)
    assert c.dtype == ml_dtypes.bfloat16
    got, exp = c.view(np.uint16), want.view(np.uint16)
    # the twin sums in float64, the kernel in f32: a rounding boundary may fall between them
    close = np.abs(pd.from_bf16(c) - pd.from_bf16(want)) <= 2**-7 * np.abs(pd.from_bf16(want))
    assert close.all() and (got == exp).mean() > 0.9
    assert got[-1] == exp[-1]


def test_round_bf16_ties_to_even_and_nan():
    x = np.array(
        [0x3F808000, 0x3F818000, 0x3F80C000, 0x7FC00001, 0x7F800000, 0x7F7FFFFF], np.uint32
    )
    got = round_bf16(x.view(np.float32))
    np.testing.assert_array_equal(got, [0x3F80, 0x3F82, 0x3F81, 0x7FC0, 0x7F80, 0x7F80])
    want = x.view(np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)
    np.testing.assert_array_equal(got[[0, 1, 2, 4, 5]], want[[0, 1, 2, 4, 5]])


# ------------------------------------------------------------------ the compiler's pair copies
def pair_copies(ck) -> list[L.Copy]:
    return [n for n in L.walk(ck.tree) if isinstance(n, L.Copy) and n.kind != "rows"]


@pytest.mark.parametrize("M,N,K", [(37, 53, 29), (64, 96, 129), (97, 67, 101), (5, 70, 3)])
@pytest.mark.parametrize("threads", [1, 2])
def test_matmul_packs_b_in_pairs(M, N, K, threads):
    """On a CPU with vdpbf16ps the bf16 GEMM's B is copied into VNNI-2 pairs (show("loops")
    says so), odd k's last row beside zeros; the result against float64."""
    a, b = pd.to_bf16(rng.standard_normal((M, K))), pd.to_bf16(rng.standard_normal((K, N)))
    ck = pd.compile(pd.ops.matmul(M, N, K, dtype="bf16"), threads=threads, target="cooperlake")
    text = ck.show("loops")
    assert pair_copies(ck) and "VNNI-2" in text and "copy_pairs" in text, text
    calls = [n for n in L.walk(ck.tree) if isinstance(n, L.Call) and n.packed_vnni]
    assert calls, text
    if not HAS_DOT:
        return
    c = np.full((M, N), np.nan, np.float32)
    ck(c, a, b)
    want = pd.from_bf16(a).astype(np.float64) @ pd.from_bf16(b).astype(np.float64)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=4e-7 * K)


def test_pair_copies_through_the_interpreter():
    """The loop tree with its pair copies, walked by the interpreter (twins for the calls)."""
    M, N, K = 19, 23, 13
    ck = pd.compile(pd.ops.matmul(M, N, K, dtype="bf16"), threads=1, target="cooperlake")
    assert any(n.kind == "last" for n in pair_copies(ck)), ck.show("loops")
    a, b = pd.to_bf16(rng.standard_normal((M, K))), pd.to_bf16(rng.standard_normal((K, N)))
    c = np.full((M, N), np.nan, np.float32)
    interp.run(ck.kernel, {"C": c, "A": a, "B": b}, tree=ck.tree)
    want = pd.from_bf16(a).astype(np.float64) @ pd.from_bf16(b).astype(np.float64)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)


def test_cost_model_prices_the_pairs():
    """On a pair family the VNNI-2 call is cheaper in-core (no interleave) and pays for its copy
    on a tall call; on a widening family there is nothing to pair."""
    zen = resolve("znver4")
    plain = cost.call_model(128, 64, 64, 4, zen, ab_dtype="bf16", b_vnni=False)
    packed = cost.call_model(128, 64, 64, 4, zen, ab_dtype="bf16", b_vnni=True)
    copy = cost.vnni_copy_cycles(64 * 64 * 4, zen)
    assert packed.cycles - copy < plain.cycles
    assert cost.vnni_pays(128, 64, 64, 4, zen)
    assert not cost.vnni_pays(128, 64, 64, 4, resolve("skylake-avx512"))
