"""The microkernel's knobs in schedule records (register tile, k unroll, prefetch, non-temporal
stores): carried from the record to the BRGEMM configuration, replayed exactly (JSON round trip,
the same LLVM IR), refused where they do not fit with errors that say why, and computing the
same as the reference for every value on odd sizes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from kernels import conv_ref, gemm_bias_relu
from test_brgemm import RUNNABLE, check

import polydl as pd
from polydl import jit, nn
from polydl.errors import PolyDLError
from polydl.kernels import FAMILIES, BrgemmConfig, compile_brgemm, generate, plan
from polydl.kernels.generator import nontemporal_align
from polydl.kernels.isa import K_UNROLLS, tile_problem
from polydl.schedule import Schedule, ScheduleError
from polydl.target import resolve
from polydl.tune.builder import Workload
from polydl.tune.space import KernelSpace

HOST = resolve(None).family
X86 = [f for f in RUNNABLE if f in ("avx512", "avx2")]
rng = np.random.default_rng(11)


def record_with(kern, threads=1, **knobs) -> Schedule:
    """The untuned record of ``kern`` with ``knobs`` set on every contraction."""
    rec = pd.compile(kern, threads=threads, tuned=False).schedule.choices()
    return replace(rec, contractions=tuple(replace(c, **knobs) for c in rec.contractions))


def gemm(m, n, k):
    return pd.ops.matmul(m, n, k)


def run_matmul(k, m, n, kk, *, aligned=True):
    a = rng.standard_normal((m, kk), dtype=np.float32)
    b = rng.standard_normal((kk, n), dtype=np.float32)
    if aligned:
        c = pd.empty((m, n))
    else:  # 4 bytes past a 64-byte boundary
        c = pd.empty((m * n + 16,)).reshape(-1)[1 : 1 + m * n].reshape(m, n)
    c[:] = np.nan  # beta = 0: whatever C held is overwritten
    k(c, a, b)
    np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- the microkernel level


def test_register_tile_overrides_the_rule_within_the_registers():
    fam = FAMILIES[HOST.name]
    cfg = BrgemmConfig(m=29, n=4 * fam.vector_width + 3, k=7, isa=fam.name)
    default = plan(cfg, fam)
    tiles = [(r, v) for v in range(1, 7) for r in range(1, 31) if not tile_problem(fam, r, v)]
    assert (default.mr, default.nv) in tiles  # the rule's tile is one of the legal ones
    for r, v in [(2, 1), (3, 3), tiles[-1]]:
        b = plan(replace(cfg, register_tile=(r, v)), fam)
        nv = min(v, -(-cfg.n // b.vector_width))  # no more vectors than n needs
        assert (b.mr, b.nv) == (min(r * v // nv, cfg.m), nv)
        cells = [
            (g.i_start + ti * g.mr + row, g.j_start + tj * g.j_step + c * b.vector_width + lane)
            for g in b.groups
            for ti in range(g.i_count)
            for tj in range(g.j_count)
            for row in range(g.mr)
            for c, lanes in enumerate(g.lanes)
            for lane in range(lanes)
        ]
        # every element of the block in exactly one tile
        assert sorted(cells) == [(i, j) for i in range(cfg.m) for j in range(cfg.n)]


def test_an_illegal_register_tile_is_refused_with_the_register_count():
    fam = FAMILIES[HOST.name]
    rows = fam.registers  # rows x 2 vectors cannot fit
    why = tile_problem(fam, rows, 2)
    assert why and f"{rows} rows x 2 vectors" in why and str(fam.registers) in why
    cfg = BrgemmConfig(m=64, n=64, k=8, isa=fam.name, register_tile=(rows, 2))
    with pytest.raises(PolyDLError, match="vector registers"):
        generate(cfg)
    with pytest.raises(PolyDLError, match="register_tile"):
        BrgemmConfig(m=6, n=16, k=4, register_tile=(0, 2))
    with pytest.raises(PolyDLError, match="k_unroll"):
        BrgemmConfig(m=6, n=16, k=4, k_unroll=0)
    with pytest.raises(PolyDLError, match="beta=0"):
        BrgemmConfig(m=6, n=16, k=4, beta=1, nontemporal=True)


@pytest.mark.parametrize("isa", RUNNABLE)
def test_every_register_tile_computes_right(isa):
    # odd shapes: edge rows, a remainder column vector, several tile groups; every legal tile
    fam = FAMILIES[isa]
    tiles = [(r, v) for v in range(1, 7) for r in (1, 2, 3, 5, 7, 9, 14, 30)]
    tiles = [t for t in tiles if tile_problem(fam, *t) is None]
    assert len(tiles) > 8
    for i, t in enumerate(tiles):
        for m, n, k in [(13, 3 * fam.vector_width + 5, 7), (31, fam.vector_width - 3, 4)]:
            check(BrgemmConfig(m=m, n=n, k=k, isa=isa, register_tile=t, form="offset"), 3, i)


@pytest.mark.parametrize("isa", RUNNABLE)
@pytest.mark.parametrize("unroll", K_UNROLLS)
def test_every_k_unroll_computes_right(isa, unroll):
    for k in (1, 3, 11, 17):
        cfg = BrgemmConfig(m=9, n=37, k=k, isa=isa, k_unroll=unroll, beta=0, bias="col")
        check(cfg, 2, k)
    text = generate(BrgemmConfig(m=6, n=64, k=64, isa=isa, k_unroll=unroll)).definition
    assert f"k unrolled by {unroll}" in text


@pytest.mark.parametrize("isa", X86)
def test_nontemporal_stores_only_whole_aligned_vectors(isa):
    fam = FAMILIES[isa]
    v = fam.vector_width
    cfg = BrgemmConfig(m=7, n=2 * v + 3, k=5, ldc=3 * v, beta=0, isa=isa, nontemporal=True)
    assert nontemporal_align(cfg) == 4 * v
    text = generate(cfg).definition
    nt = [ln for ln in text.splitlines() if "!nontemporal" in ln]
    masked = [ln for ln in text.splitlines() if "masked.store" in ln]
    # the whole vectors of every row stored non-temporally, the partial one masked, then sfence
    assert nt and all(f"align {4 * v}" in ln for ln in nt)
    assert masked and "call void @llvm.x86.sse.sfence()" in text
    # rows not whole vectors apart, a bf16 C, a generic family: no non-temporal store at all
    assert nontemporal_align(replace(cfg, ldc=2 * v + 3)) == 0
    assert nontemporal_align(replace(cfg, isa="generic")) == 0
    assert "!nontemporal" not in generate(replace(cfg, ldc=2 * v + 3)).definition
    assert "nontemporal" not in generate(replace(cfg, nontemporal=False)).definition


@pytest.mark.parametrize("isa", X86)
def test_nontemporal_kernels_compute_right_and_refuse_unaligned_c(isa):
    v = FAMILIES[isa].vector_width
    for m, n, ldc, epi in [(7, 2 * v + 3, 3 * v, {}), (13, v, v, dict(relu=True, bias="row"))]:
        cfg = BrgemmConfig(m=m, n=n, k=9, ldc=ldc, beta=0, isa=isa, nontemporal=True, **epi)
        kern = compile_brgemm(cfg)
        r = np.random.default_rng(m)
        a = r.standard_normal(m * 9 * 2).astype(np.float32)
        b = r.standard_normal(9 * n * 2).astype(np.float32)
        c = pd.empty(cfg.c_extent())
        c[:] = np.nan
        kw = {"batch": 2}
        if epi:
            kw["bias"] = r.standard_normal(m).astype(np.float32)
        from polydl.kernels import reference

        want = reference(cfg, a, b, np.zeros_like(c), **kw)
        kern(a, b, c, **kw)
        rows = np.concatenate([np.arange(i * ldc, i * ldc + n) for i in range(m)])
        np.testing.assert_allclose(c[rows], want[rows], rtol=1e-5, atol=1e-4)
        with pytest.raises(PolyDLError, match="byte boundary"):
            kern(a, b, pd.empty(cfg.c_extent() + 1)[1:], **kw)


# ---------------------------------------------------------------- records and replay


KNOBS = [
    dict(register_tile=(4, 2)),
    dict(register_tile=(14, 2)),
    dict(register_tile=(3, 1)),
    dict(k_unroll=1),
    dict(k_unroll=8),
    dict(nontemporal=True),
    dict(prefetch=0),
    dict(register_tile=(5, 3), k_unroll=4, nontemporal=True),
]


@pytest.mark.parametrize("knobs", KNOBS, ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
@pytest.mark.parametrize("threads", [1, 2])
def test_knobs_replay_exactly_and_compute_right(knobs, threads):
    m, n, k = 67, 96, 37  # n whole vectors (non-temporal stores apply), m and k odd
    kern = gemm(m, n, k)
    rec = record_with(kern, threads, **knobs)
    # JSON round trip: equal records, the same LLVM IR, the same record back from the kernel
    again = Schedule.from_json(rec.to_json())
    assert again == rec
    got = pd.compile(kern, threads=threads, schedule=rec)
    assert pd.compile(kern, threads=threads, schedule=again).llvm_ir == got.llvm_ir
    assert got.schedule.choices().contractions == rec.contractions
    default = pd.compile(kern, threads=threads, tuned=False)
    if "prefetch" not in knobs:  # nothing to prefetch in a GEMM: the IR stays the default
        assert got.llvm_ir != default.llvm_ir
    if knobs.get("nontemporal"):
        assert "!nontemporal" in got.llvm_ir and "vmovntps" in got.show("asm")
    assert "(microkernel: " in got.show("variants")  # every knob here is not its default
    run_matmul(got, m, n, k)
    run_matmul(got, m, n, k, aligned=False)  # non-temporal kernel skipped at run time


def test_defaults_leave_the_record_json_and_ir_as_before():
    kern = gemm(64, 64, 64)
    base = pd.compile(kern, threads=1, tuned=False)
    rec = base.schedule.choices()
    text = rec.to_json()
    for name in ("register_tile", "k_unroll", "prefetch", "nontemporal"):
        assert name not in text  # defaults are left out: old records read the same
    assert pd.compile(kern, threads=1, schedule=rec).llvm_ir == base.llvm_ir
    assert "!nontemporal" not in base.llvm_ir


def test_records_with_knobs_that_do_not_fit_are_refused():
    kern = gemm(64, 64, 256)
    regs = HOST.registers
    with pytest.raises(ScheduleError, match=rf"contraction S1 .*{regs} rows x 2 vectors.*{regs}"):
        pd.compile(kern, threads=1, schedule=record_with(kern, register_tile=(regs, 2)))
    # non-temporal stores with a reduction split over calls: C is read back by the next call
    rec = record_with(kern)
    (c,) = rec.contractions
    split = replace(c, loops=(*[lp for lp in c.loops if lp[0] != "k"], ("k", 64)), nontemporal=True)
    with pytest.raises(ScheduleError, match="whole reduction in one call"):
        pd.compile(kern, threads=1, schedule=replace(rec, contractions=(split,)))

    # a contraction that accumulates into C (no zero init): beta = 1, never non-temporal
    @pd.kernel
    def acc(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "N"]):
        for i in range(M):
            for k in range(K):
                for j in range(N):
                    C[i, j] += A[i, k] * B[k, j]

    sizes = dict(M=32, N=32, K=32)
    rec = pd.compile(acc, threads=1, tuned=False, **sizes).schedule.choices()
    bad = replace(rec, contractions=(replace(rec.contractions[0], nontemporal=True),))
    with pytest.raises(ScheduleError, match="beta = 0"):
        pd.compile(acc, threads=1, schedule=bad, **sizes)
    with pytest.raises(ScheduleError, match="prefetch=3"):
        replace(rec.contractions[0], prefetch=3)
    with pytest.raises(ScheduleError, match="malformed"):
        Schedule.from_json(
            rec.to_json().replace('"n_parallel"', '"register_tile": [1], "n_parallel"')
        )


@pytest.mark.parametrize("threads", [1, 2])
def test_conv_with_bias_relu_and_every_knob(threads):
    # an NCHW 1x1 conv on wide rows (prefetch applies), odd channels, bias and ReLU folded
    N, C, K, H = 2, 19, 48, 29
    kern = nn.conv2d_rows(N, C, K, H, H, 1, 1)
    x = rng.standard_normal((N, C, H * H), dtype=np.float32)
    w = rng.standard_normal((K, C, 1, 1), dtype=np.float32)
    want = conv_ref(x.reshape(N, C, H, H), w, None, 1, 0, False).reshape(N, K, H * H)
    for knobs in [dict(register_tile=(7, 2), k_unroll=2, prefetch=2), dict(nontemporal=True)]:
        k = pd.compile(kern, threads=threads, schedule=record_with(kern, threads, **knobs))
        o = np.full((N, K, H * H), 7.0, np.float32)
        k(o, x, w)
        np.testing.assert_allclose(o, want, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- the space


def test_the_space_offers_the_knobs_with_legal_ranges():
    space = KernelSpace(Workload.of(gemm_bias_relu, dict(M=96, N=80, K=128)), threads=1)
    (cs,) = space.spaces["split"]
    assert cs.regtile_range[0] is None and len(cs.regtile_range) > 10
    assert all(tile_problem(HOST, *t) is None for t in cs.regtile_range[1:])
    assert cs.unroll_range == (None, *K_UNROLLS)
    assert cs.prefetch_range == (1,)  # B rows 320 bytes apart: nothing to prefetch
    assert cs.nt_range == (False, True)  # zeroed C, 80 columns: 5 whole vectors apart
    seed = space.seeds(1)[0][0].knobs[0]
    assert (seed.register_tile, seed.k_unroll, seed.prefetch, seed.nontemporal) == (
        None,
        None,
        1,
        False,
    )  # the cost model's pick: the defaults
    assert "register tile rule|" in space.describe() and "non-temporal stores off|on" in (
        space.describe()
    )
    import random

    r = random.Random(4)
    p, moved = space.seeds(1)[0][0], set()
    for _ in range(200):
        q = space.mutate(p, r)
        if space.problem(q) is None:
            kn = q.knobs[0]
            moved |= {n for n in ("register_tile", "k_unroll", "nontemporal") if getattr(kn, n)}
            assert not kn.nontemporal or kn.reduce is None
            p = q
    assert moved == {"register_tile", "k_unroll", "nontemporal"}
    bad = replace(p, knobs=(replace(p.knobs[0], register_tile=(HOST.registers, 2)),))
    assert "not offered" in space.problem(bad)


@pytest.mark.skipif("avx512f" not in jit.host_features(), reason="AVX-512 register file")
def test_avx512_register_tiles_are_the_ones_that_fit_32_registers():
    assert tile_problem(FAMILIES["avx512"], 6, 4) is None  # 24 + 4 + 1
    assert tile_problem(FAMILIES["avx512"], 7, 4) is not None  # 28 + 4 + 1 = 33
    assert tile_problem(FAMILIES["avx512"], 30, 1) is None
    assert tile_problem(FAMILIES["avx2"], 6, 2) is None  # 12 + 2 + 1 + mask
    assert tile_problem(FAMILIES["avx2"], 7, 2) is not None
