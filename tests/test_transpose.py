"""The tile-transpose microkernel (kernels/transpose.py) against its NumPy twin, and the pass that
calls it (transform/transpose.py): the interpreter on the kernel before and after the pass, the
compiled kernels of ops1d's layout transposes against NumPy, on odd and prime extents."""

from __future__ import annotations

import numpy as np
import pytest

import polydl as pd
from polydl import jit, ops, ops1d
from polydl.dsl.types import f32
from polydl.ir import interp
from polydl.ir.verify import verify
from polydl.kernels import FAMILIES
from polydl.kernels.transpose import (
    TransposeConfig,
    compile_transpose,
    generate_transpose,
    reference_transpose,
    tile,
)
from polydl.pipeline import bind_sizes
from polydl.target import resolve
from polydl.transform import transpose as tiles

rng = np.random.default_rng(23)

HOST = [
    name
    for name in ("avx512", "avx2", "generic")
    if FAMILIES[name].required_features <= jit.host_features()
]


def rand(*shape):
    return rng.uniform(-1, 1, size=shape).astype(np.float32)


def rand_bits(*shape):
    """bf16 data as its 16-bit patterns, NaN payloads and signalling ones included: a transpose
    moves bits, it never converts."""
    return rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)


NP_DTYPE = {"f32": np.float32, "bf16": np.uint16}


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("isa", HOST)
@pytest.mark.parametrize(
    "rows, cols", [(32, 32), (16, 16), (8, 8), (1, 1), (3, 16), (16, 5), (7, 13), (29, 17)]
)
def test_microkernel_against_its_twin(isa, rows, cols, dtype):
    t = tile(isa, dtype)
    rows, cols = min(rows, t), min(cols, t)
    for lds, ldd, pf in ((cols, rows, 0), (cols + 7, rows + 11, 0), (cols + 21, rows + 3, 37)):
        cfg = TransposeConfig(
            rows=rows, cols=cols, lds=lds, ldd=ldd, isa=isa, prefetch=pf, dtype=dtype
        )
        k = compile_transpose(cfg)
        n = cfg.src_extent() + pf + 3
        src = rand(n) if dtype == "f32" else rand_bits(n)
        dst = np.full(cfg.dst_extent() + 5, 7, NP_DTYPE[dtype])
        want = reference_transpose(cfg, src, dst.copy())
        assert np.array_equal(k(src, dst), want), (isa, rows, cols, lds, ldd)
        # the reference writes exactly the tile (a mask, not the sentinel: random bits may be 7)
        ones, zeros = np.ones(n, NP_DTYPE[dtype]), np.zeros_like(dst)
        assert np.count_nonzero(reference_transpose(cfg, ones, zeros)) == rows * cols


def test_bf16_tiles_are_twice_as_wide():
    for isa in ("avx512", "avx2"):
        assert tile(isa, "bf16") == 2 * tile(isa)
    text = generate_transpose(
        TransposeConfig(rows=32, cols=32, lds=32, ldd=32, isa="avx512", dtype="bf16")
    ).definition
    assert "<32 x i16>" in text and "float" not in text
    k = compile_transpose(TransposeConfig(rows=4, cols=4, lds=4, ldd=4, dtype="bf16"))
    with pytest.raises(pd.PolyDLError, match="2-byte"):
        k(rand(16), rand(16))


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("isa", [i for i in HOST if i != "generic"])
def test_nontemporal_kernel(isa, dtype):
    t = tile(isa, dtype)
    for cols in (t, 3):
        cfg = TransposeConfig(
            rows=t, cols=cols, lds=t + 13, ldd=3 * t, isa=isa, nontemporal=True, dtype=dtype
        )
        k = compile_transpose(cfg)
        src = rand(cfg.src_extent()) if dtype == "f32" else rand_bits(cfg.src_extent())
        dst = pd.zeros(cfg.dst_extent(), NP_DTYPE[dtype])
        want = reference_transpose(cfg, src, dst.copy())
        assert np.array_equal(k(src, dst), want)
        with pytest.raises(pd.PolyDLError, match="byte boundary"):
            k(src, np.zeros(dst.size + 1, NP_DTYPE[dtype])[1:])
    with pytest.raises(ValueError, match="non-temporal"):
        generate_transpose(
            TransposeConfig(rows=t - 1, cols=t, lds=t, ldd=t, nontemporal=True, dtype=dtype)
        )
    # the shuffles: log2(lanes) stages of lanes two-input shuffles each
    text = generate_transpose(
        TransposeConfig(rows=t, cols=t, lds=t, ldd=t, isa=isa, dtype=dtype)
    ).definition
    assert text.count("shufflevector") == t * (t.bit_length() - 1)


def test_config_checks():
    with pytest.raises(ValueError, match="extents"):
        generate_transpose(TransposeConfig(rows=tile() + 1, cols=2, lds=2, ldd=99))
    with pytest.raises(ValueError, match="lds"):
        generate_transpose(TransposeConfig(rows=2, cols=5, lds=4, ldd=2))


@pytest.fixture(params=[False, True], ids=["cached", "streamed"])
def knobs(request, monkeypatch):
    """The pass with its defaults, or with prefetches and non-temporal stores everywhere."""
    if request.param:
        monkeypatch.setattr(tiles, "PREFETCH_BYTES", 4 * 7)
        monkeypatch.setattr(tiles, "NT_SHARE", 0.0)
        monkeypatch.setattr(tiles, "STREAM_BYTES", 0)
    return request.param


def lowered(kernel_fn):
    k = bind_sizes(kernel_fn.ir, {})
    out, par = tiles.transpose_nests(k, resolve(None))
    verify(out)
    return k, out, par


def same(before, after):
    data = {t.name: rand(*before.shape_of(t.name)) for t in before.tensors}
    want = {k: v.copy() for k, v in data.items()}
    got = {k: v.copy() for k, v in data.items()}
    interp.run(before, want)
    interp.run(after, got)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


CASES = {
    "to_nwc": lambda: ops1d.to_nwc(2, 13, 37, 45, left=4),
    "to_nwc strided": lambda: ops1d.to_nwc(1, 17, 19, 47, step=2, left=5),
    "to_nwc cut": lambda: ops1d.to_nwc(1, 11, 41, 31, left=-5),
    "from_nwc": lambda: ops1d.from_nwc(3, 19, 23),
    "from_nwc 16n": lambda: ops1d.from_nwc(2, 19, 48),
    "taps_nwc": lambda: ops1d.taps_nwc(11, 5, 9),
    "unpack_wgrad": lambda: ops1d.unpack_wgrad(6, 11, 9, groups=2),
    # the blocked weight packs: channels by taps (r, s = t // S, t % S), by input channels (1x1)
    "pack_weights 3x3": lambda: ops.pack_weights(48, 40, 3, 3, block=16),
    "pack_weights 7x7 C=3": lambda: ops.pack_weights(32, 3, 7, 7),
    "pack_weights 1x1": lambda: ops.pack_weights(32, 48, 1, 1, block=16),
    "pack_weights 5x3 odd": lambda: ops.pack_weights(24, 13, 5, 3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pass_against_the_interpreter(case):
    before, after, par = lowered(CASES[case]())
    assert all(s.transpose is not None for s in after.statements)
    assert set(par) == {s.name for s in after.statements}
    same(before, after)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", list(CASES))
def test_compiled_against_numpy(case, threads, knobs):
    kern = CASES[case]()
    ck = pd.compile(kern, threads=threads, tuned=False)
    text = ck.show("loops")
    assert "transpose(" in text
    if knobs and not case.startswith(("taps_nwc", "pack_weights")):  # (too few to prefetch)
        assert ", prefetch=" in text
        # the others: no tile of whole vectors, or rows not vector-aligned
        assert (", nt" in text) == (case == "from_nwc 16n")
    oracle = pd.compile(kern, threads=1, optimize=False)
    shapes = [t.shape for t in ck.kernel.tensors]
    src = rand(*ck.kernel.shape_of(ck.kernel.tensors[1].name))
    for aligned in (True, False):
        n = int(np.prod(ck.kernel.shape_of(ck.kernel.tensors[0].name)))
        base = pd.zeros(n + 1, np.float32)
        dst = (base[:n] if aligned else base[1:]).reshape(
            ck.kernel.shape_of(ck.kernel.tensors[0].name)
        )
        want = np.zeros_like(dst)
        ck(dst, src)
        oracle(want, src)
        np.testing.assert_array_equal(dst, want, err_msg=f"{case} {shapes}")


def test_nest_shapes_the_pass_leaves():
    @pd.kernel
    def reversed_taps(Wf: f32[5, 7], Wt: f32[7, 5]):
        for k in range(7):
            for s in range(5):
                Wf[s, k] = Wt[k, 4 - s]

    @pd.kernel
    def plain_copy(B: f32[5, 7], A: f32[5, 7]):
        for i in range(5):
            for j in range(7):
                B[i, j] = A[i, j]

    @pd.kernel
    def scaled(B: f32[7, 5], A: f32[5, 7]):
        for i in range(5):
            for j in range(7):
                B[j, i] = A[i, j] * 2.0

    @pd.kernel
    def triangle(B: f32[7, 7], A: f32[7, 7]):
        for i in range(7):
            for j in range(i + 1):
                B[j, i] = A[i, j]

    @pd.kernel
    def twice(B: f32[7, 5], A: f32[5, 7]):
        for i in range(5):
            for j in range(7):
                B[j, i] = A[i, j]
                B[j, i] = A[i, j] + 1.0

    @pd.kernel
    def few_taps(Wn: f32[3, 7, 19], Wt: f32[19, 7, 3]):  # tiles 3 wide: left to the vectoriser
        for k in range(19):
            for c in range(7):
                for s in range(3):
                    Wn[s, c, k] = Wt[k, c, s]

    for fn in (reversed_taps, plain_copy, scaled, triangle, twice, few_taps):
        before, after, par = lowered(fn)
        assert after == before and par == {}, fn.ir.name


def test_tiled_source_nest_and_the_switch(monkeypatch):
    @pd.kernel
    def tiled(B: f32[3, 29, 11], A: f32[3, 11, 29]):
        for n in range(3):
            for i0 in range(0, 29, 8):
                for i in range(i0, min(i0 + 8, 29)):
                    for c in range(11):
                        B[n, i, c] = A[n, c, i]

    before, after, _ = lowered(tiled)
    assert {s.iterators for s in after.statements} == {("n", "i", "c")}
    same(before, after)
    monkeypatch.setattr(tiles, "ENABLED", False)
    assert "transpose(" not in pd.compile(tiled, threads=1).show("loops")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "make, ref",
    [
        (  # NCHW -> NCHWc with a zero border: 37 pixels a row (a partial tile), 48 channels
            lambda: ops.pack_input(2, 96, 5, 37, padding=1, block=48, dtype="bf16"),
            lambda x: np.pad(x.reshape(2, 2, 48, 5, 37), ((0, 0),) * 3 + ((1, 1),) * 2).transpose(
                0, 1, 3, 4, 2
            ),
        ),
        (  # a 1x1 filter's weights: output by input channels
            lambda: ops.pack_weights(64, 96, 1, 1, block=32, dtype="bf16"),
            lambda w: w.reshape(2, 32, 3, 32, 1, 1).transpose(0, 2, 4, 5, 3, 1),
        ),
    ],
    ids=["pack_input", "pack_weights 1x1"],
)
def test_bf16_packs_are_exact_transposes(make, ref, threads):
    """bf16 packs become 16-bit tile transposes that move every bit pattern (NaN payloads
    too) where the element-wise copy would go through f32."""
    ck = pd.compile(make(), threads=threads, tuned=False)
    assert "transpose(" in ck.show("loops") and ", bf16" in ck.show("loops")
    dst_shape, src_shape = (ck.kernel.shape_of(t.name) for t in ck.kernel.tensors[:2])
    src = rand_bits(*src_shape)
    dst = np.zeros(dst_shape, np.uint16)
    ck(dst, src)
    np.testing.assert_array_equal(dst, ref(src))
