"""The amx_bf16 family (kernels/amx.py): its code checked by its assembly on every host
(target sapphirerapids: tileloadd, tdpbf16ps, tilestored, the ldtilecfg LLVM inserts), run
against the NumPy twin only where the host has AMX; ISA selection; the tile-state request."""

from __future__ import annotations

import numpy as np
import pytest
from test_bf16_vnni import blocks

import polydl as pd
from polydl import jit
from polydl.kernels import FAMILIES, BrgemmConfig, amx, compile_brgemm, emit_asm, reference
from polydl.kernels.isa import bf16_family

HAS_AMX = FAMILIES["amx_bf16"].required_features <= jit.host_features()
needs_amx = pytest.mark.skipif(not HAS_AMX, reason="the host has no AMX (amx-tile, amx-bf16)")
SHAPES = [(1, 1, 1), (16, 16, 32), (37, 45, 71), (64, 64, 64), (5, 17, 2), (33, 31, 97)]
rng = np.random.default_rng(47)


def config(m, n, k, **kw) -> BrgemmConfig:
    return BrgemmConfig(m=m, n=n, k=k, ab_dtype="bf16", b_vnni=True, isa="amx_bf16", **kw)


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_amx_assembly(m, n, k):
    """Tiles loaded, multiplied and stored; one ldtilecfg per tile group (a function each);
    no call inside a group (a call would spill the tiles and configure them again)."""
    cfg = config(m, n, k, beta=1, bias="col", relu=True)
    asm = emit_asm(cfg, cpu="sapphirerapids")
    groups = len(amx.groups(cfg.normalized()))
    for op in ("tileloadd", "tdpbf16ps", "tilestored", "tilezero", "tilerelease"):
        assert op in asm, (op, asm[:3000])
    assert asm.count("ldtilecfg") == groups, asm[:3000]
    assert "vdpbf16ps" not in asm


def test_amx_c_tiles_stay_in_registers_across_the_batch():
    """A 32 x 32 block of 64 k: the inner loop loads 2 A + 2 B tiles per 4 tdpbf16ps and stores
    no tile (the C tiles live across the loop)."""
    asm = emit_asm(config(32, 32, 256, beta=0), cpu="sapphirerapids")
    body = asm[asm.index("tdpbf16ps") - 400 : asm.rindex("tdpbf16ps")]
    assert body.count("tilestored") == 0, body
    assert asm.count("tdpbf16ps") >= 4 and asm.count("tilestored") == 4


def test_amx_takes_vnni_b_and_one_row_stride():
    with pytest.raises(ValueError, match="VNNI-2"):
        emit_asm(BrgemmConfig(m=4, n=4, k=4, ab_dtype="bf16", isa="amx_bf16"))
    cfg = config(8, 16, 8, row_group=2, lda_group=40, ldc_group=64)
    with pytest.raises(ValueError, match="row groups"):
        emit_asm(cfg)


def test_selection_by_target_features():
    assert bf16_family("sapphirerapids", "avx512").name == "amx_bf16"
    assert bf16_family("cooperlake", "avx512").name == "avx512_bf16"
    grouped = config(8, 16, 8, row_group=2, lda_group=40, ldc_group=64)
    assert bf16_family("sapphirerapids", "avx512", grouped).name == "avx512_bf16"
    plain = BrgemmConfig(m=8, n=16, k=8, ab_dtype="bf16")
    assert bf16_family("sapphirerapids", "avx512", plain).name == "avx512_bf16"
    assert bf16_family("haswell", "avx2").name == "avx2"


@pytest.mark.parametrize("M,N,K", [(37, 53, 29), (97, 67, 101)])
def test_matmul_for_sapphirerapids_runs_on_tiles(M, N, K):
    ck = pd.compile(pd.ops.matmul(M, N, K, dtype="bf16"), threads=2, target="sapphirerapids")
    asm = ck.show("asm")
    assert "tdpbf16ps" in asm and "ldtilecfg" in asm and "VNNI-2" in ck.show("loops")
    if not HAS_AMX:
        return
    a, b = pd.to_bf16(rng.standard_normal((M, K))), pd.to_bf16(rng.standard_normal((K, N)))
    c = np.full((M, N), np.nan, np.float32)
    ck(c, a, b)
    want = pd.from_bf16(a).astype(np.float64) @ pd.from_bf16(b).astype(np.float64)
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=4e-7 * K)


@needs_amx
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("c_dtype", ["f32", "bf16"])
def test_amx_kernels_against_their_twin(m, n, k, c_dtype):
    cfg = config(m, n, k, beta=1, bias="col", relu=True, lda=k + 1, ldb=n + 2, c_dtype=c_dtype)
    kern, c0, batch = compile_brgemm(cfg), cfg.normalized(), 3
    a = pd.to_bf16(rng.standard_normal(batch * m * c0.lda))
    _, b = blocks(cfg, batch)
    c = rng.standard_normal(c0.c_extent()).astype(np.float32)
    c = pd.to_bf16(c) if c_dtype == "bf16" else c
    bias = rng.standard_normal(n).astype(np.float32)
    want = reference(cfg, a, b, c, batch=batch, bias=bias)
    kern(a, b, c, batch=batch, bias=bias)
    got, exp = (pd.from_bf16(x) for x in (c, want)) if c_dtype == "bf16" else (c, want)
    tol = 2**-7 if c_dtype == "bf16" else 1e-5
    np.testing.assert_allclose(got, exp, rtol=tol, atol=tol + 2e-7 * k * batch * 4)


def test_refused_tile_state_is_a_target_error(monkeypatch):
    class Libc:
        def syscall(self, *args):
            self.args = [a.value for a in args]
            return -1

    libc = Libc()
    monkeypatch.setattr(amx, "_granted", False)
    monkeypatch.setattr(amx.ctypes, "CDLL", lambda *a, **kw: libc)
    with pytest.raises(pd.TargetError, match="ARCH_REQ_XCOMP_PERM"):
        amx.request_permission()
    assert libc.args == [158, 0x1023, 18]
    assert amx._granted is False
