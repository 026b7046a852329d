"""BRGEMM kernels against their NumPy twins: every batch form and epilogue, edge shapes, beta 0/1,
batch 1..17, unaligned leading dimensions. Kernels run only for ISA families the host supports."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polydl import jit
from polydl.errors import PolyDLError
from polydl.kernels import FAMILIES, FORMS, BrgemmConfig, compile_brgemm, reference

# Families that can run here: the host's best, every lesser x86 family it implies, and generic.
RUNNABLE = [
    f.name
    for f in FAMILIES.values()
    if f.required_features <= jit.host_features() and "f32" in f.dtypes
]


def make_call(cfg: BrgemmConfig, batch: int, rng: np.random.Generator, *, poison: bool = True):
    """Random operands for one call: (a, b, c, kwargs). Padding of A (columns k..lda) and gaps
    between blocks hold NaN, so a kernel that reads outside its blocks poisons C."""
    n = cfg.normalized()
    fill = np.nan if poison else 0.0

    a_rows = np.array([n.a_row(i) for i in range(n.m)])  # grouped rows too

    def blocks(count, rows, cols, stride):
        size = max((count - 1) * stride + int(rows.max()) + cols, 1)
        flat = np.full(size + 5, fill, np.float32)
        for i in range(count):
            idx = i * stride + rows[:, None] + np.arange(cols)[None, :]
            flat[idx] = rng.standard_normal((len(rows), cols))
        return flat

    b_rows = np.arange(n.k) * n.ldb
    kw: dict = {}
    if n.form == "stride":
        a = blocks(batch, a_rows, n.k, n.stride_a)
        b = blocks(batch, b_rows, n.n, n.stride_b)
        kw["batch"] = batch
    elif n.form == "offset":
        sa, sb = n.a_extent() + 3, n.k * n.ldb + 5
        a = blocks(batch, a_rows, n.k, sa)
        b = blocks(batch, b_rows, n.n, sb)
        perm = rng.permutation(batch)  # blocks visited out of order
        kw["a_offsets"] = (perm * sa).astype(np.int64)
        kw["b_offsets"] = (rng.permutation(batch) * sb).astype(np.int64)
    else:
        a = [blocks(1, a_rows, n.k, 0) for _ in range(batch)]
        b = [blocks(1, b_rows, n.n, 0) for _ in range(batch)]
    c = rng.standard_normal(n.c_extent() + 7).astype(np.float32)
    if n.epilogue is not None:
        kw["operands"] = [rng.standard_normal(x).astype(np.float32) for x in n.operand_extents()]
    return a, b, c, kw


def check(cfg: BrgemmConfig, batch: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    kernel = compile_brgemm(cfg)
    a, b, c, kw = make_call(cfg, batch, rng)
    expect = reference(cfg, a, b, c, **kw)
    kernel(a, b, c, **kw)
    tol = 2e-6 * cfg.k * max(batch, 1) + 1e-5
    np.testing.assert_allclose(c, expect, rtol=1e-5, atol=tol, err_msg=kernel.spec.describe())


# m, n, k: 1, primes, non-multiples of every blocking, exact tiles, several tile groups
SHAPES = [
    (1, 1, 1),
    (6, 16, 64),
    (7, 19, 5),
    (13, 37, 11),
    (29, 33, 3),
    (2, 8, 17),
    (15, 31, 2),
    (28, 64, 8),
]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_forms_host_isa(form, m, n, k):
    """The default (host) family, dense leading dimensions, beta=1, batch 3."""
    check(BrgemmConfig(m=m, n=n, k=k, form=form), batch=3)


EPILOGUES = [
    dict(beta=0),
    dict(beta=1, alpha=-0.75),
    dict(beta=0, bias="row"),
    dict(beta=1, bias="col"),
    dict(beta=0, relu=True),
    dict(beta=1, alpha=2.5, bias="col", relu=True),
    dict(beta=0, alpha=0.5, bias="row", relu=True),
]


@pytest.mark.parametrize("isa", RUNNABLE)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("epi", EPILOGUES, ids=lambda e: "-".join(f"{k}{v}" for k, v in e.items()))
def test_epilogues_unaligned(isa, form, epi):
    """Each epilogue, each form, each runnable family, on an edge shape with unaligned lds."""
    cfg = BrgemmConfig(m=11, n=21, k=7, lda=10, ldb=23, ldc=25, form=form, isa=isa, **epi)
    check(cfg, batch=5, seed=len(str(epi)))


@pytest.mark.parametrize("isa", RUNNABLE)
@pytest.mark.parametrize("batch", [0, 1, 2, 17])
def test_batch_counts(isa, batch):
    """batch 0 leaves beta*C (+ epilogue); 1 and 17 sum every pair."""
    cfg = BrgemmConfig(m=9, n=24, k=13, lda=15, ldc=27, bias="col", relu=True, isa=isa)
    check(cfg, batch=batch)


@pytest.mark.parametrize("isa", RUNNABLE)
def test_stride_form_custom_strides(isa):
    """Strides larger than a block (blocks with gaps) and B blocks that overlap (stride < size)."""
    cfg = BrgemmConfig(m=5, n=12, k=9, stride_a=5 * 9 + 4, stride_b=30, isa=isa)
    check(cfg, batch=4)


# tails of at most 8 lanes after 16-lane vectors: 49 = 3 x 16 + 1 (a 7x7 plane), 40 = 2 x 16 + 8,
# 72 = 4 x 16 + 8 (a 5-vector tile absorbing the remainder), 196 = 12 x 16 + 4; several k sets
# (m = 1) and grouped rows
NARROW = [
    dict(m=13, n=49, k=11),
    dict(m=1, n=40, k=9),
    dict(m=29, n=72, k=3, ldc=75),
    dict(m=5, n=196, k=7, lda=9, ldb=199),
    dict(m=7, n=33, k=5, row_group=3, lda=6, lda_group=23, ldc=34, ldc_group=110),
]


@pytest.mark.skipif("avx512" not in RUNNABLE, reason="host has no avx512f")
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shape", NARROW, ids=lambda s: f"{s['m']}x{s['n']}x{s['k']}")
@pytest.mark.parametrize(
    "epi", EPILOGUES[1::2], ids=lambda e: "-".join(f"{k}{v}" for k, v in e.items())
)
def test_narrow_tail(form, shape, epi):
    """A last column of at most half a vector's lanes accumulates in half-width vectors (the
    kernel's IR has ymm FMAs, and none with the switch off) and still matches the reference."""
    from polydl.kernels import generate, generator

    cfg = BrgemmConfig(form=form, isa="avx512", **shape, **epi)
    assert "@llvm.fma.v8f32" in generate(cfg).definition
    old, generator.NARROW_TAIL = generator.NARROW_TAIL, False
    try:
        assert "v8f32" not in generate(cfg).definition
    finally:
        generator.NARROW_TAIL = old
    check(cfg, batch=3, seed=shape["n"])


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    m=st.integers(1, 40),
    n=st.integers(1, 70),
    k=st.integers(1, 40),
    pads=st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)),
    batch=st.integers(1, 17),
    beta=st.sampled_from([0, 1]),
    form=st.sampled_from(FORMS),
    bias=st.sampled_from([None, "row", "col"]),
    relu=st.booleans(),
    isa=st.sampled_from(RUNNABLE),
)
def test_random_configs(m, n, k, pads, batch, beta, form, bias, relu, isa):
    cfg = BrgemmConfig(
        m=m,
        n=n,
        k=k,
        lda=k + pads[0],
        ldb=n + pads[1],
        ldc=n + pads[2],
        beta=beta,
        form=form,
        bias=bias,
        relu=relu,
        isa=isa,
    )
    check(cfg, batch=batch, seed=m * 1000 + n)


def test_c_padding_untouched():
    """Elements of C between rows (columns n..ldc) and after the block keep their values."""
    cfg = BrgemmConfig(m=7, n=10, k=4, ldc=13, beta=0)
    rng = np.random.default_rng(1)
    a, b, c, kw = make_call(cfg, 2, rng)
    before = c.copy()
    compile_brgemm(cfg)(a, b, c, **kw)
    mask = np.ones(c.size, bool)
    mask[(np.arange(7)[:, None] * 13 + np.arange(10)[None, :]).ravel()] = False
    np.testing.assert_array_equal(c[mask], before[mask])
    assert not np.array_equal(c[~mask], before[~mask])


def test_call_checks_buffers():
    kernel = compile_brgemm(BrgemmConfig(m=4, n=8, k=4, bias="row"))
    a = np.zeros(16, np.float32)
    b = np.zeros(32, np.float32)
    c = np.zeros(32, np.float32)
    bias = np.zeros(4, np.float32)
    kernel(a, b, c, batch=1, bias=bias)
    with pytest.raises(PolyDLError, match="A holds"):
        kernel(a, b, c, batch=2, bias=bias)
    with pytest.raises(PolyDLError, match=r"reads 1 operand\(s\) \[.bias.\], got 0"):
        kernel(a, b, c, batch=1)
    with pytest.raises(PolyDLError, match="float32"):
        kernel(a.astype(np.float64), b, c, batch=1, bias=bias)
    with pytest.raises(PolyDLError, match="C holds"):
        kernel(a, b, c[:31], batch=1, bias=bias)


# grouped rows (a conv's output rows of Q pixels, input rows strided or padded): m, group,
# lda, lda_group, and the gap between C's groups (None: C's rows one run); groups that do not
# divide m, one-row groups, register tiles across groups
GROUPED = [
    (49, 7, 64, 2 * 14 * 64, None),  # 7x7 output of a stride-2 1x1 conv (C groups continue)
    (21, 7, 16, 9 * 16, 11),  # padded rows, C groups with gaps
    (13, 4, 7, 40, None),  # groups do not divide m: the last group has one row
    (10, 1, 8, 19, 1),  # one-row groups
    (30, 14, 3, 100, None),
]


@pytest.mark.parametrize("isa", RUNNABLE)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("m, group, lda, lda_group, gap", GROUPED)
@pytest.mark.parametrize("n", [16, 37, 64])
def test_grouped_rows(isa, form, m, group, lda, lda_group, gap, n):
    ldc = n + 3 if gap else n
    ldc_group = None if gap is None else (group - 1) * ldc + n + gap
    cfg = BrgemmConfig(
        m=m, n=n, k=min(lda, 9), lda=lda, ldc=ldc, row_group=group, lda_group=lda_group,
        ldc_group=ldc_group, form=form, beta=m % 2, bias="row" if n == 37 else None,
        relu=n == 64, isa=isa,
    )  # fmt: skip
    assert cfg.grouped
    check(cfg, batch=3, seed=m + n)
    # C between the groups (and between rows) keeps its values: the check's reference copies C
    # whole and writes only the block's elements, so any stray store shows there


def test_grouped_rows_normalize_to_a_run():
    """Groups that continue each other are the plain form (one kernel, one cache key)."""
    plain = BrgemmConfig(m=12, n=16, k=4, lda=5, ldc=16)
    run = BrgemmConfig(m=12, n=16, k=4, lda=5, ldc=16, row_group=4, lda_group=20, ldc_group=64)
    assert run.normalized() == plain.normalized() and not run.grouped
    whole = BrgemmConfig(m=12, n=16, k=4, row_group=12, lda_group=999)
    assert whole.normalized() == BrgemmConfig(m=12, n=16, k=4).normalized()
    g = BrgemmConfig(m=12, n=16, k=4, lda=5, row_group=4, lda_group=30)
    assert [g.a_row(i) for i in (0, 3, 4, 11)] == [0, 15, 30, 75]
    assert [g.c_row(i) for i in (0, 4, 11)] == [0, 64, 176]  # C a run: ldc_group = 4 * 16
    assert g.a_extent() == 75 + 4 and g.c_extent() == 176 + 16


@pytest.mark.parametrize(
    "bad",
    [dict(m=0, n=1, k=1), dict(m=1, n=1, k=2, lda=0), dict(m=1, n=4, k=1, ldc=3),
     dict(m=1, n=1, k=1, beta=2), dict(m=1, n=1, k=1, form="csr"), dict(m=1, n=1, k=1, bias="x"),
     dict(m=8, n=4, k=1, row_group=0), dict(m=8, n=4, k=1, lda_group=8),
     dict(m=8, n=4, k=1, row_group=4, ldc_group=15)],  # C groups overlap
)  # fmt: skip
def test_bad_configs_rejected(bad):
    with pytest.raises(PolyDLError):
        BrgemmConfig(**bad)
