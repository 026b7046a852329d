"""BRGEMM ISA families, blocking, generated assembly, in-module calls, registry and templates."""

from __future__ import annotations

import ctypes
import itertools
import re

import jinja2
import numpy as np
import pytest

from polydl import jit
from polydl.errors import TargetError
from polydl.kernels import (
    FAMILIES,
    BrgemmConfig,
    cache_info,
    compile_brgemm,
    emit_asm,
    generate,
    isa_for_cpu,
    merge_declarations,
    plan,
    reference,
    select_isa,
    spec,
)
from polydl.kernels.generator import environment

HAS_AVX512 = "avx512f" in jit.host_features()
HAS_AVX2 = {"avx2", "fma"} <= jit.host_features()


def test_selection_rule():
    assert select_isa(frozenset()).name == "generic"
    assert select_isa(frozenset({"sse4.2", "avx"})).name == "generic"
    assert select_isa(frozenset({"avx", "avx2", "fma"})).name == "avx2"
    assert select_isa(frozenset({"avx", "avx2", "fma", "avx512f"})).name == "avx512"
    best = max(
        (
            f
            for f in FAMILIES.values()
            if f.required_features <= jit.host_features() and "f32" in f.dtypes
        ),
        key=lambda f: f.priority,
    )
    assert select_isa() is best
    assert spec(BrgemmConfig(m=2, n=2, k=2)).config.isa == best.name
    assert isa_for_cpu("skylake-avx512").name == "avx512"
    assert isa_for_cpu("znver3").name == "avx2"
    assert isa_for_cpu("some-unknown-cpu").name == "generic"
    assert isa_for_cpu(None) is best
    # bf16 operands: the dot-product family where the features have AVX512-BF16, else widened
    feats = frozenset({"avx", "avx2", "fma", "avx512f"})
    assert select_isa(feats, "bf16").name == "avx512"
    assert select_isa(feats | {"avx512bf16"}, "bf16").name == "avx512_bf16"
    assert select_isa(feats | {"avx512bf16"}).name == "avx512"


@pytest.mark.parametrize(
    "isa,n,mr,width,nv",
    [("avx2", 16, 6, 8, 2), ("avx2", 64, 6, 8, 2), ("avx2", 8, 12, 8, 1),
     ("avx512", 64, 6, 16, 4), ("avx512", 32, 12, 16, 2), ("avx512", 16, 12, 8, 2),
     ("generic", 16, 6, 4, 2)],
)  # fmt: skip
def test_register_blocking(isa, n, mr, width, nv):
    b = plan(BrgemmConfig(m=64, n=n, k=8), FAMILIES[isa])
    assert (b.mr, b.vector_width, b.nv) == (mr, width, nv)
    fam = FAMILIES[isa]
    # accumulators (all sets) + B vectors + one broadcast fit the register file
    for g in b.groups:
        assert g.mr * g.nv * g.ksets + g.nv + 1 <= fam.registers


@pytest.mark.parametrize("isa", sorted(FAMILIES))
@pytest.mark.parametrize("m,n", [(1, 1), (5, 7), (13, 37), (64, 64), (29, 100)])
def test_tile_groups_cover_block_once(isa, m, n):
    b = plan(BrgemmConfig(m=m, n=n, k=3), FAMILIES[isa])
    hits = np.zeros((m, n), int)
    for g in b.groups:
        assert len(g.lanes) == g.nv and g.unroll % g.ksets == 0
        for it, jt in itertools.product(range(g.i_count), range(g.j_count)):
            i0, j0 = g.i_start + it * g.mr, g.j_start + jt * g.j_step
            for c, lanes in enumerate(g.lanes):
                hits[i0 : i0 + g.mr, j0 + c * b.vector_width : j0 + c * b.vector_width + lanes] += 1
    assert (hits == 1).all()


def _fma_lines(asm: str, reg: str) -> list[str]:
    return [ln for ln in asm.splitlines() if re.search(rf"vfmadd\w*ps\b.*%{reg}\d+", ln)]


def test_avx512_asm_uses_zmm_fmas():
    """Compiled for skylake-avx512 whatever the host: zmm FMAs, k-masks for edge columns."""
    asm = emit_asm(BrgemmConfig(m=28, n=64, k=32, isa="avx512"), cpu="skylake-avx512")
    assert len(_fma_lines(asm, "zmm")) >= 28
    edge = emit_asm(BrgemmConfig(m=5, n=40, k=8, isa="avx512"), cpu="skylake-avx512")
    assert _fma_lines(edge, "zmm")
    assert re.search(r"vmovups\s+%zmm\d+, [^\n]*\{%k\d\}", edge), "no masked zmm store"


def test_avx2_asm_uses_ymm_fmas_only():
    asm = emit_asm(BrgemmConfig(m=6, n=16, k=32, isa="avx2"), cpu="haswell")
    assert len(_fma_lines(asm, "ymm")) >= 12
    assert "zmm" not in asm
    assert not re.search(r"\bcall", asm), "the kernel calls out"
    edge = emit_asm(BrgemmConfig(m=7, n=13, k=5, isa="avx2"), cpu="haswell")
    assert "vmaskmovps" in edge


def test_generic_family_compiles_for_generic_cpu_and_runs():
    kernel = compile_brgemm(BrgemmConfig(m=5, n=9, k=3, isa="generic"), target="generic")
    assert kernel.module.cpu == "generic"
    rng = np.random.default_rng(0)
    a = rng.standard_normal(2 * 15).astype(np.float32)
    b = rng.standard_normal(2 * 27).astype(np.float32)
    c = rng.standard_normal(45).astype(np.float32)
    expect = reference(kernel.spec.config, a, b, c, batch=2)
    np.testing.assert_allclose(kernel(a, b, c, batch=2), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(
    not HAS_AVX512, reason="host lacks avx512f: AVX-512 kernels are asm-tested only"
)
def test_avx512_runs_on_avx512_host():
    cfg = BrgemmConfig(m=31, n=45, k=19, lda=21, ldc=50, bias="col", relu=True, isa="avx512")
    kernel = compile_brgemm(cfg)
    assert kernel.spec.family.name == "avx512"
    rng = np.random.default_rng(3)
    a = rng.standard_normal(4 * 31 * 21).astype(np.float32)
    b = rng.standard_normal(4 * 19 * 45).astype(np.float32)
    c = rng.standard_normal(30 * 50 + 45).astype(np.float32)
    bias = rng.standard_normal(45).astype(np.float32)
    expect = reference(cfg, a, b, c, batch=4, bias=bias)
    np.testing.assert_allclose(kernel(a, b, c, batch=4, bias=bias), expect, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(HAS_AVX512, reason="host has avx512f")
def test_avx512_refused_without_avx512():
    with pytest.raises(TargetError):
        compile_brgemm(BrgemmConfig(m=4, n=32, k=4, isa="avx512"))


def test_in_module_direct_calls():
    """The optimiser's use: paste two kernels into one module, call both from a generated function."""
    fam = select_isa().name
    k1 = generate(
        BrgemmConfig(m=6, n=16, k=8, beta=0, isa=fam), name="mk_first", linkage="internal"
    )
    k2 = generate(
        BrgemmConfig(m=6, n=16, k=8, form="address", relu=True, bias="row", isa=fam),
        name="mk_second",
        linkage="internal",
    )
    decls = merge_declarations(k1, k2)
    # same ISA: shared intrinsics declared once (fma, masked load and store; maxnum of the ReLU)
    assert len(decls) == len(set(decls)) == 4
    assert "void mk_second(const float *const *A" in k2.signature
    caller = """
define void @outer(ptr %A, ptr %B, ptr %C, ptr %Ap, ptr %Bp, ptr %bias) {
  call void @mk_first(ptr %A, ptr %B, ptr %C, i64 2)
  call void @mk_second(ptr %Ap, ptr %Bp, ptr %C, i64 2, ptr %bias)
  ret void
}
"""
    ir = "\n".join(decls) + "\n" + k1.definition + "\n" + k2.definition + caller
    mod = jit.build(ir, name="paste_test")
    outer = mod.cfunc("outer", None, *[ctypes.c_void_p] * 6)
    rng = np.random.default_rng(5)
    a = rng.standard_normal(2 * 48).astype(np.float32)
    b = rng.standard_normal(2 * 128).astype(np.float32)
    c = np.full(96, 7.0, np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    pa = np.array([a.ctypes.data + 48 * 4, a.ctypes.data], np.uintp)
    pb = np.array([b.ctypes.data, b.ctypes.data + 128 * 4], np.uintp)
    first = reference(k1.config, a, b, c, batch=2)
    expect = reference(k2.config, [a[48:], a[:48]], [b[:128], b[128:]], first, bias=bias)
    outer(
        a.ctypes.data,
        b.ctypes.data,
        c.ctypes.data,
        pa.ctypes.data,
        pb.ctypes.data,
        bias.ctypes.data,
    )
    np.testing.assert_allclose(c, expect, rtol=1e-5, atol=1e-5)


def test_definition_is_self_contained_text():
    k = generate(
        BrgemmConfig(m=3, n=5, k=2, isa="avx2"), name="only_me", attributes="nounwind noinline"
    )
    assert k.definition.lstrip().startswith(";") or k.definition.lstrip().startswith("define")
    assert "define void @only_me(" in k.definition and "noinline" in k.definition
    assert "declare" not in k.definition and "attributes #" not in k.definition
    assert not re.search(r"^!", k.definition, re.M), "module-level metadata would clash"
    with pytest.raises(ValueError):
        generate(BrgemmConfig(m=1, n=1, k=1), name="bad name")


def test_cache_and_compile_time():
    cfg = BrgemmConfig(m=3, n=3, k=3, beta=0)
    k1 = compile_brgemm(cfg)
    assert compile_brgemm(BrgemmConfig(m=3, n=3, k=3, beta=0, lda=3, ldb=3, ldc=3)) is k1
    assert compile_brgemm(BrgemmConfig(m=3, n=3, k=3, beta=1)) is not k1
    assert k1.compile_seconds > 0
    assert any(sym == k1.symbol for sym, _cpu, _s in cache_info())


def test_templates_are_strict_and_packaged():
    env = environment()
    for fam in FAMILIES.values():
        assert env.get_template(fam.template) is not None
    with pytest.raises(jinja2.UndefinedError):
        env.get_template("avx2/brgemm.ll.j2").render(name="x")
    with pytest.raises(jinja2.TemplateNotFound):
        env.get_template("avx2/no_such.ll.j2")


@pytest.mark.skipif(not (HAS_AVX2 and HAS_AVX512), reason="needs an AVX-512 host")
def test_forced_avx2_on_avx512_host_compiles_for_haswell():
    kernel = compile_brgemm(BrgemmConfig(m=6, n=16, k=4, isa="avx2"))
    assert kernel.module.cpu == "haswell"
    assert "zmm" not in kernel.module.asm()
