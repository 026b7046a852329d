"""The cost model and the variant search: ranking, legality, parallel loops, the table."""

from __future__ import annotations

import dataclasses
import re

import islpy as isl
import pytest
from test_reuse import conv_nchw, gemm, stmt_kernel

from polydl.analysis import deps, reuse
from polydl.errors import DependenceError
from polydl.ir import poly
from polydl.optimize import cost as C
from polydl.optimize import search
from polydl.target import PRESETS

ICE = PRESETS["icelake-server"]
ZEN = PRESETS["znver3"]


CHECK = deps.check_schedule


def legal(kernel, stmt, text, relax=True) -> bool:
    try:
        CHECK(kernel, {stmt: text}, relax_reductions=relax)
    except DependenceError:
        return False
    return True


def stencil(n=24):
    """In place: A[i, j] = A[i-1, j+1] * B[i, j]: distance (1, -1), so i and j do not commute."""
    return stmt_kernel(
        tensors={"A": ("N", "N"), "B": ("N", "N")},
        sizes={"N": n},
        iterators=("i", "j"),
        cond="1 <= i < N and 0 <= j < N - 1",
        target="A[i, j]",
        reads=["A[i - 1, j + 1]", "B[i, j]"],
        op="=",
    )


GEMM_SPACE = dict(
    tileable={"i": [8, 16, 24, 64, 96], "j": [32, 64, 80, 128], "k": [64, 128, 192]},
    micro={"i": 8, "j": 16, "k": 32},
)

# ---------------------------------------------------------------- cost model


def test_l1_tiling_cheaper_than_l2_tiling():
    k = gemm(256, 256, 256)
    points = [("i", 4), ("j", 16), ("k", 4)]
    fits = [("i", 32), ("j", 32), ("k", 32), *points]  # a 32^3 tile: 12K, in L1
    spills = [("i", 128), ("j", 128), ("k", 128), *points]  # 192K: L2
    c_fit = C.cost(k, "S0", fits, target=ICE, threads=1)
    c_spill = C.cost(k, "S0", spills, target=ICE, threads=1)
    assert c_fit.levels[2].cache == "L1" and c_fit.levels[2].working_set == 12 * 1024
    assert c_spill.levels[2].cache == "L2"
    assert c_fit.total < c_spill.total
    # the breakdown adds up, and only levels where the cache changes move data
    for c in (c_fit, c_spill):
        assert sum(lv.cost for lv in c.levels) == pytest.approx(c.total)
        for lv in c.levels:
            assert (lv.bytes > 0) == (lv.source != "")


def test_cost_by_hand():
    """GEMM 64^3 (f32) as ``j/16 i/16 | micro`` (k whole in the call) on a small machine."""
    from polydl.target import Cache, Target

    kib = 1024
    tgt = Target(
        name="toy",
        llvm_cpu="generic",
        isa="generic",
        vector_bits=128,
        vector_registers=16,
        fma=False,
        caches=(
            Cache(level=1, size_bytes=16 * kib, shared=False),
            Cache(level=2, size_bytes=256 * kib, shared=False),
            Cache(level=3, size_bytes=4096 * kib, shared=True),
        ),
        cores=2,
        byte_costs=(1.0, 2.0, 4.0, 10.0),
    )
    k = gemm(64, 64, 64)
    loops = [("j", 16), ("i", 16)]
    # j/16: C 4K + A 16K + B 4K = 24K in L2; i/16: C 1K + A 4K + B 4K = 9K in L1; whole: 48K
    c = C.cost(k, "S0", loops, target=tgt, threads=1)
    assert [(x.loop, x.working_set, x.cache) for x in c.levels] == [
        ("j/16", 24 * kib, "L2"),
        ("i/16", 9 * kib, "L1"),
        ("micro", 9 * kib, "L1"),
    ]
    # into L2 from memory: C and B once (16K each, min with 4 x 4K), A invariant in j: 16K
    # into L1 from L2: C min(4 x 4K, 16 x 1K) = 16K, A min(4 x 16K, 16 x 4K)
    # = 64K, B invariant in i: once per j iteration, 4 x 4K = 16K
    # microkernel: 16 calls x 9K from L1
    assert [x.bytes for x in c.levels] == [48 * kib, 96 * kib, 0]
    assert [x.source for x in c.levels] == ["mem", "L2", ""]
    assert [x.cost for x in c.levels] == [48 * kib * 10, 96 * kib * 2, 16 * 9 * kib]
    assert c.total == 835584
    # j in parallel on 2 cores: each core does 2 of the 4 j blocks
    p = C.cost(k, "S0", loops, target=tgt, threads=2, n_parallel=1)
    assert (p.threads, p.balance) == (2, 1.0)
    assert [x.bytes for x in p.levels] == [32 * kib, 48 * kib, 0]
    assert p.total == 32 * kib * 10 + 48 * kib * 2 + 8 * 9 * kib


def test_cost_monotonic():
    k = gemm(192, 192, 192)
    loops = [("j", 64), ("k", 64), ("i", 8), ("j", 16)]
    base = C.cost(k, "S0", loops, target=ZEN, threads=1).total
    # a bigger problem costs more
    assert C.cost(gemm(384, 192, 192), "S0", loops, target=ZEN, threads=1).total > base
    # bigger caches never cost more; dearer memory never costs less
    big = dataclasses.replace(
        ZEN, caches=tuple(dataclasses.replace(c, size_bytes=4 * c.size_bytes) for c in ZEN.caches)
    )
    assert C.cost(k, "S0", loops, target=big, threads=1).total <= base
    dear = dataclasses.replace(ZEN, byte_costs=(*ZEN.byte_costs[:-1], 100.0))
    assert C.cost(k, "S0", loops, target=dear, threads=1).total > base
    # the whole working set from memory once at least
    whole = sum(f.bytes for f in reuse.nest_footprint(k, "S0"))
    assert base >= whole * ZEN.byte_costs[-1]


def test_parallel_split_and_balance():
    k = gemm(96, 96, 96)
    loops = [("i", 32), ("j", 32), ("k", 32)]  # trips 3, 3, 3
    seq = C.cost(k, "S0", loops, target=ZEN, threads=2)
    one = C.cost(k, "S0", loops, target=ZEN, threads=2, n_parallel=1)
    two = C.cost(k, "S0", loops, target=ZEN, threads=2, n_parallel=2)
    assert (one.threads, one.balance) == (2, 0.75)  # 3 iterations on 2 cores: 2 + 1
    assert (two.threads, two.balance) == (2, 9 / 10)  # 9 on 2 cores: 5 + 4
    assert two.total < one.total < seq.total
    with pytest.raises(ValueError):
        C.cost(k, "S0", loops, target=ZEN, threads=2, n_parallel=5)


def test_call_model_register_tiles():
    """The call's in-core cycles and panel passes follow the microkernel's register tiles."""
    one = C.call_model(7, 32, 32, 144, ICE)  # a 7x7-output conv row: one 7x32 tile
    assert (one.tile, one.row_passes, one.col_passes) == ("7x32", 1, 1)
    assert one.flops == 2 * 7 * 32 * 32 * 144
    assert one.b_panel == 32 * 144 * 32 * 4 and one.a_panel == 7 * 32 * 144 * 4
    # never faster than the FMA ports allow: 2 FMAs of 16 lanes per cycle
    fma_cycles = one.flops / (2 * 2 * 16)
    assert fma_cycles < one.cycles < 1.2 * fma_cycles
    wide = C.call_model(14, 64, 64, 8, ICE)  # 6x64 tiles, rows balanced 5 + 5 + 4
    assert (wide.tile, wide.row_passes, wide.col_passes) == ("6x64", 3, 1)
    # one row per tile: one broadcast and one B vector load per FMA, load bound
    thin = C.call_model(1, 32, 64, 4, ICE)
    assert thin.cycles / thin.flops > 1.5 * one.cycles / one.flops
    # fewer, longer calls amortise the call overhead
    short, long = C.call_model(6, 64, 64, 1, ICE), C.call_model(6, 64, 64, 16, ICE)
    assert long.cycles / long.flops < short.cycles / short.flops


def test_cost_with_call_adds_core_and_restreamed_panels():
    k = gemm(256, 256, 256)
    loops = [("j", 64), ("i", 64), ("k", 256)]  # calls of 64x64, whole k: B panel 64K > L1/2
    call = C.call_model(64, 64, 256, 1, ICE)
    base = C.cost(k, "S0", loops, target=ICE, threads=1)
    a = reuse.analyzer(k, "S0")
    levels = a.levels(loops, ICE, 1)
    c = C.evaluate(levels, a.whole(), ICE, call=call)
    calls = 16
    assert c.core == pytest.approx(calls * call.cycles * 2 * 64)  # 2 loads of 64 bytes a cycle
    assert c.total == pytest.approx(c.core + c.data)
    assert sum(lv.cost for lv in c.levels) == pytest.approx(c.data)
    assert c.levels[-1].cache == "L2"  # the call's block (A 64K + B 64K + C 16K)
    restream = calls * (call.row_passes - 1) * call.b_panel * ICE.byte_costs[1]
    assert call.row_passes > 1
    assert c.data == pytest.approx(base.total + restream)
    # parallel over j on 2 cores: 4 blocks of j, 2 each: half the calls per core
    p = C.evaluate(a.levels(loops, ICE, 2), a.whole(), ICE, n_parallel=1, threads=2, call=call)
    assert p.core == pytest.approx(c.core / 2)
    # 3 blocks over 2 cores: the slowest core runs 2 of them
    k3 = gemm(192, 256, 256)
    a3 = reuse.analyzer(k3, "S0")
    lv3 = a3.levels([("i", 64), ("j", 64)], ICE, 2)
    seq = C.evaluate(lv3, a3.whole(), ICE, call=call)
    par = C.evaluate(lv3, a3.whole(), ICE, n_parallel=1, threads=2, call=call)
    assert par.core == pytest.approx(seq.core * 2 / 3)


# ---------------------------------------------------------------- search


def test_gemm_variants_legal_ranked_and_reduction_moves():
    k = gemm(200, 160, 256)
    vs = search.rank(k, "S0", **GEMM_SPACE, target=ICE, threads=2, top=12, check=CHECK)
    assert len(vs) == 12
    totals = [v.cost.total for v in vs]
    assert totals == sorted(totals)
    for v in vs:
        assert legal(k, "S0", v.schedule)
        assert v.schedule == search.schedule_text(k, "S0", v.loops)
        assert "k" not in v.parallel  # the reduction is never parallel
        assert v.parallel == tuple(x for x, _ in v.loops[: v.n_parallel])
        assert [lv.loop for lv in v.working_sets[:-1]] == list(v.loops)
        # tiles are multiples of the microkernel block, smaller than the extent
        micro = dict(v.micro)
        assert all(b % micro[x] == 0 for x, b in v.tiles)
        assert len({x for x, _ in v.loops}) >= 2

    # the reduction loop is free to move: some kept variant has a k loop outside an i loop
    def k_outside(v):
        its = [x for x, _ in v.loops]
        return its.index("k") < len(its) - 1 - its[::-1].index("i")

    assert any(k_outside(v) for v in vs)
    # the parallel loops carry no dependence, by the dependence analysis itself
    for v in vs:
        assert set(range(v.n_parallel)) <= deps.parallel_dims(k, {"S0": v.schedule})
    assert search.free_iterators(k, "S0") == {"i", "j"}
    # a parallel loop is chosen on 2 cores, none on 1
    assert vs[0].n_parallel >= 1
    assert all(
        v.n_parallel == 0
        for v in search.rank(k, "S0", **GEMM_SPACE, target=ICE, threads=1, top=5, check=CHECK)
    )


def test_ranking_is_deterministic():
    k = gemm(120, 96, 64)
    a = search.rank(k, "S0", **GEMM_SPACE, target=ZEN, threads=2, top=8, check=CHECK)
    reuse.analyzer.cache_clear()
    b = search.rank(k, "S0", **GEMM_SPACE, target=ZEN, threads=2, top=8, check=CHECK)
    assert [(v.loops, v.n_parallel, v.cost.total) for v in a] == [
        (v.loops, v.n_parallel, v.cost.total) for v in b
    ]


def test_stencil_refuses_illegal_orders():
    k = stencil()
    # the checker itself says no to interchanging i and j, and to tiling j outside i
    assert legal(k, "S0", search.schedule_text(k, "S0", [("i", 1), ("j", 1)]))
    assert not legal(k, "S0", search.schedule_text(k, "S0", [("j", 1), ("i", 1)]))
    assert not legal(k, "S0", search.schedule_text(k, "S0", [("j", 8), ("i", 1), ("j", 1)]))
    vs = search.rank(
        k, "S0", tileable={"i": [4, 8], "j": [4, 8]}, target=ZEN, threads=2, top=None, check=CHECK
    )
    assert vs
    for v in vs:
        assert legal(k, "S0", v.schedule)
        its = [x for x, _ in v.loops]
        assert its[0] == "i"  # j outermost is illegal, tiled or not
        assert v.n_parallel == 0  # i carries the dependence
    assert search.free_iterators(k, "S0") == frozenset()
    # every tiling puts a tile loop over the other iterator between i and its point loop, or j
    # first: only the original order survives (i tiles right above i merge into it)
    assert [v.loops for v in vs] == [(("i", 1), ("j", 1))]
    # while a GEMM of the same shape keeps tiled and interchanged nests
    g = search.rank(
        gemm(24, 24, 24),
        "S0",
        tileable={"i": [4, 8], "j": [4, 8]},
        target=ZEN,
        top=None,
        check=CHECK,
    )
    assert len(g) > 4 and any(v.loops[0][0] == "j" for v in g) and any(v.tiles for v in g)


def test_conv_batch1_parallel_over_channels_and_rows():
    k = conv_nchw(1, 64, 64, 30, 30, 3, 3, pad=1)  # P = Q = 30
    vs = search.rank(
        k,
        "S0",
        tileable={"k": [32], "p": [2, 5, 7, 10], "c": [32]},
        micro={"q": 30, "k": 16, "c": 16, "r": 3, "s": 3},
        target=ICE,
        threads=2,
        top=6,
        check=CHECK,
    )
    assert vs
    for v in vs:
        assert legal(k, "S0", v.schedule)
        assert "n" not in {x for x, _ in v.loops}  # batch 1: no loop over n
        assert v.n_parallel >= 1
        assert set(v.parallel) <= {"k", "p"}
        assert "c" not in v.parallel and "r" not in v.parallel
        assert set(range(v.n_parallel)) <= deps.parallel_dims(k, {"S0": v.schedule})
    assert search.free_iterators(k, "S0") == {"n", "k", "p", "q"}


def test_enumeration_is_bounded(monkeypatch):
    """A ResNet-50 layer (res4 3x3, C = K = 256, 14x14) costs a bounded number of nests."""
    calls = {"evaluate": 0, "check": 0}
    real = search.evaluate

    def counting(*a, **kw):
        calls["evaluate"] += 1
        return real(*a, **kw)

    def check(*a, **kw):
        calls["check"] += 1
        return CHECK(*a, **kw)

    monkeypatch.setattr(search, "evaluate", counting)
    k = conv_nchw(1, 256, 256, 14, 14, 3, 3, pad=1)
    vs = search.rank(
        k,
        "S0",
        tileable={"k": [32, 64, 128], "p": [1, 2, 7], "c": [64, 128], "q": [14]},
        micro={"q": 14, "k": 16, "c": 32, "r": 3, "s": 3},
        target=ICE,
        threads=2,
        top=10,
        check=check,
    )
    assert len(vs) == 10
    n_points = 3  # k/16, p, c/32 (q and r, s are covered by the microkernel)
    max_nests = search.MAX_EVALS + 6 * search.INNER_KEEP
    assert calls["evaluate"] <= (n_points + 2) * max_nests
    # checks: stage-1 orders until INNER_KEEP legal ones, then the kept variants (a GEMM-like
    # conv has no illegal order, so nothing is checked twice or in vain)
    assert calls["check"] <= search.INNER_KEEP + 10


def test_schedule_text_shapes():
    k = gemm(16, 16, 16)
    text = search.schedule_text(k, "S0", [("k", 8), ("i", 4), ("j", 1)], prefix=(1,), ndim=10)
    s = dataclasses.replace(k.statement("S0"), schedule=text)
    assert poly.schedule_ndim(k, s) == 10
    assert "floor(k/8)" in text and "floor(i/4)" in text and "[1, floor(k/8)" in text
    rng = poly.schedule(k, s).range()
    assert poly.extent(rng.set_dim_name(isl.dim_type.set, 1, "t"), "t") == (0, 1)
    with pytest.raises(ValueError):
        search.schedule_text(k, "S0", [("k", 8)], ndim=2)


# ---------------------------------------------------------------- the table


def test_format_variants_golden_shape():
    k = conv_nchw(2, 32, 64, 16, 16, 3, 3, stride=2, pad=1)
    vs = search.rank(
        k,
        "S0",
        tileable={"k": [32], "p": [2, 4], "c": [16]},
        micro={"q": 8, "k": 16, "c": 8, "r": 3, "s": 3},
        target=ICE,
        threads=2,
        top=8,
        check=CHECK,
    )
    text = search.format_variants(vs, top=5)
    lines = text.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == [
        "rank",
        "loop order",
        "tiles",
        "parallel",
        "working sets",
        "cost",
        "vs best",
    ]
    assert set(lines[1]) <= {"-", " "}
    rows = lines[2:]
    assert len(rows) == min(5, len(vs))
    costs = []
    for i, row in enumerate(rows):
        cells = re.split(r"\s{2,}", row)
        assert len(cells) == 7, row
        assert cells[0] == str(i + 1)
        assert cells[1].endswith("| micro")
        assert re.fullmatch(r"((L\d|mem):[\d.]+[KMG]?\s?)+", cells[4]), cells[4]
        assert re.fullmatch(r"[\d.]+x", cells[6])
        costs.append(float(cells[5]))
    assert costs == sorted(costs)
    assert rows[0].split()[-1] == "1.00x"
    # shuffled input prints the same table
    assert search.format_variants(list(reversed(vs)), top=5) == text
    assert "no legal variant" in search.format_variants([])


# ---------------------------------------------------------------- several statements


def _two_statement_kernel(first, second, sched0, sched1, tensors, cond0, cond1, its0, its1):
    from test_reuse import load

    from polydl.ir import nodes as N

    ps = "[M, K]"
    s0 = N.Statement(
        name="S0",
        iterators=its0,
        domain=f"{ps} -> {{ S0[{', '.join(its0)}] : {cond0} }}",
        target=load(first[0]),
        op=first[1],
        expr=first[2],
        schedule=f"{ps} -> {{ S0[{', '.join(its0)}] -> [{sched0}] }}",
        line=2,
        source="s0",
    )
    s1 = N.Statement(
        name="S1",
        iterators=its1,
        domain=f"{ps} -> {{ S1[{', '.join(its1)}] : {cond1} }}",
        target=load(second[0]),
        op=second[1],
        expr=second[2],
        schedule=f"{ps} -> {{ S1[{', '.join(its1)}] -> [{sched1}] }}",
        line=3,
        source="s1",
    )
    args = tuple(
        N.TensorArg(name=n, dtype="f32", shape=tuple(N.Var(name=d) for d in shape))
        for n, shape in tensors.items()
    )
    k = N.Kernel(
        name="two", args=args, sizes=("M", "K"), statements=(s0, s1), filename="t.py", line=1
    )
    return k.bind({"M": 24, "K": 40})


def test_init_and_reduction_statements():
    from test_reuse import load

    from polydl.ir import nodes as N

    prod = N.BinOp(op="*", a=load("A[i, k]"), b=load("B[k, j]"))
    k = _two_statement_kernel(
        ("C[i, j]", "=", N.Num(value=0.0)),
        ("C[i, j]", "+=", prod),
        "0, i, 0, j, 0",
        "0, i, 0, j, 1, k, 0",
        {"C": ("M", "M"), "A": ("M", "K"), "B": ("K", "M")},
        "0 <= i < M and 0 <= j < M",
        "0 <= i < M and 0 <= j < M and 0 <= k < K",
        ("i", "j"),
        ("i", "j", "k"),
    )
    vs = search.rank(
        k,
        "S1",
        tileable={"i": [8], "k": [16]},
        micro={"j": 8},
        target=ZEN,
        threads=2,
        top=6,
        check=CHECK,
    )
    assert len(vs) == 6
    for v in vs:
        assert "k" not in v.parallel
        s0 = poly.embed_schedule(k.statement("S0").schedule, (0,), 12)
        s1 = search.schedule_text(k, "S1", v.loops, prefix=(1,), ndim=12)
        CHECK(k, {"S0": s0, "S1": s1})  # raises if the distributed nest were illegal


def test_distribution_that_breaks_a_dependence_is_refused():
    from test_reuse import load

    from polydl.ir import nodes as N

    # for i: B[i] = A[i]; A[i + 1] = B[i] * B[i]: running all of S0 first reads A too early
    k = _two_statement_kernel(
        ("B[i]", "=", load("A[i]")),
        ("A[i + 1]", "=", N.BinOp(op="*", a=load("B[i]"), b=load("B[i]"))),
        "0, i, 0",
        "0, i, 1",
        {"A": ("K",), "B": ("K",)},
        "0 <= i < M",
        "0 <= i < M",
        ("i",),
        ("i",),
    )
    assert search.rank(k, "S0", tileable={"i": [4]}, target=ZEN, check=CHECK) == ()


def test_candidate_tiles():
    assert search.candidate_tiles(16, 16) == [] and search.candidate_tiles(7, 8) == []
    for extent, block, limit in [(56, 1, 6), (512, 64, 6), (50, 8, 4), (1000, 16, 5), (64, 8, 3)]:
        tiles = search.candidate_tiles(extent, block, limit=limit)
        assert tiles == sorted(set(tiles)) and 0 < len(tiles) <= limit
        assert all(t % block == 0 and block < t < extent for t in tiles)
    both = search.candidate_tiles(56, 1)
    assert any(56 % t == 0 for t in both) and any(56 % t for t in both)
    assert search.candidate_tiles(512, 64) == [128, 192, 256]


def test_format_levels_lists_every_level():
    k = gemm(96, 96, 96)
    (v,) = search.rank(k, "S0", **GEMM_SPACE, target=ZEN, threads=1, top=1, check=CHECK)
    lines = search.format_levels(v).splitlines()
    assert lines[0].startswith(v.order)
    assert lines[1].split() == [
        "level",
        "trip",
        "working",
        "set",
        "fits",
        "brings",
        "from",
        "weight",
        "cost",
    ]
    rows = lines[2:]
    assert [r.split()[0] for r in rows] == [lv.label for lv in v.working_sets]
    assert rows[-1].split()[0] == "micro"
    assert sum(float(r.split()[-1]) for r in rows) == pytest.approx(v.cost.total, rel=1e-3)
    # with the microkernel call modelled, the levels add up to the data part
    call = C.call_model(8, 16, 32, 3, ZEN)
    (w,) = search.rank(k, "S0", **GEMM_SPACE, target=ZEN, threads=1, top=1, check=CHECK, call=call)
    text = search.format_levels(w).splitlines()
    assert f"in-core {w.cost.core:.4g} + data {w.cost.data:.4g}" in text[0]
    assert sum(float(r.split()[-1]) for r in text[2:]) == pytest.approx(w.cost.data, rel=1e-3)
    assert w.cost.total == pytest.approx(w.cost.core + w.cost.data)


def test_rank_order_is_the_table_order():
    k = gemm(256, 256, 256)
    vs = search.rank(k, "S0", **GEMM_SPACE, target=ICE, threads=2, top=8, check=CHECK)
    rows = search.format_variants(vs, top=8).splitlines()[2:]
    assert [re.split(r"\s{2,}", r)[1] for r in rows] == [v.order for v in vs]
