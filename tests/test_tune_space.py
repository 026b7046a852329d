"""The tuner's space, cost model and strategy (polydl/tune/space.py, model.py, strategy.py):
every point the space offers is a record pd.compile replays and computes correctly; the seeds
are the cost model's ranking, the untuned pick first; the residual learns what the analytic
model misses; proposals are legal and never repeat a measured or pending point."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
from kernels import gemm_bias_relu

import polydl as pd
from polydl.errors import TuneError
from polydl.tune.builder import Workload
from polydl.tune.database import Trial
from polydl.tune.model import CostModel
from polydl.tune.space import KernelSpace
from polydl.tune.strategy import Evolution

GEMM = dict(M=96, N=80, K=128)
rng = np.random.default_rng(5)


def gemm_space(threads=1):
    return KernelSpace(Workload.of(gemm_bias_relu, GEMM), threads=threads)


def conv_space(threads=1):
    kern = pd.ops.conv2d(1, 32, 32, 8, 8, 3, 3, padding=1, layout="nchwc", block=16)
    return kern, KernelSpace(Workload.of(kern, {}), threads=threads)


def run_gemm(k):
    a = rng.uniform(-1, 1, (96, 128)).astype(np.float32)
    b = rng.uniform(-1, 1, (128, 80)).astype(np.float32)
    bias = rng.uniform(-1, 1, 80).astype(np.float32)
    out = np.zeros((96, 80), np.float32)
    k(out, a, b, bias)
    np.testing.assert_allclose(out, np.maximum(a @ b + bias, 0), rtol=1e-4, atol=1e-4)


def test_seeds_are_the_ranking_with_the_untuned_pick_first():
    space = gemm_space()
    untuned = pd.compile(gemm_bias_relu, threads=1, tuned=False, **GEMM).schedule
    seeds = space.seeds(5)
    assert seeds[0][1].startswith("untuned pick")
    assert space.record(seeds[0][0]).contractions == untuned.choices().contractions
    ranked = [c.choice() for c in dict(untuned.alternatives)["S1"]]
    for (p, origin), want in zip(seeds[1:], ranked[1:], strict=False):
        assert origin.startswith("cost model rank")
        assert space.record(p).contractions == (want,)
    assert len({p for p, _ in seeds}) == len(seeds)


def test_ranges_come_from_the_contraction():
    space = gemm_space(threads=2)
    (cs,) = space.spaces["split"]
    lanes = space.target.lanes()
    assert all(b % lanes == 0 or b == 80 for b in cs.bn_range) and max(cs.bn_range) <= 80
    assert all(128 % bk == 0 for bk in cs.bk_range)
    assert all(1 <= bm <= 96 for bm in cs.bm_range) and 96 in cs.bm_range
    assert cs.free == {"i", "j"}  # k carries the reduction: never parallel
    assert not cs.packable  # rows of B 320 bytes apart: nothing to pack
    kc = [r for r in cs.reduce_range(32) if r]
    assert kc == [("k", 32), ("k", 64)]


@pytest.mark.parametrize("threads", [1, 2])
def test_every_point_replays_exactly_and_computes_right(threads):
    space = gemm_space(threads)
    r = random.Random(threads)
    points = [space.random(r) for _ in range(40)]
    legal = [p for p in points if space.problem(p) is None]
    assert len(legal) >= 10
    for p in legal[:4]:
        rec = space.record(p)
        k = pd.compile(gemm_bias_relu, threads=threads, schedule=rec, **GEMM)
        assert k.schedule.choices().contractions == rec.contractions
        assert space.point(k.schedule) == p  # the record of a point is that point
        run_gemm(k)


def test_conv_mutations_stay_legal_and_correct():
    kern, space = conv_space()
    r = random.Random(0)
    p = space.seeds(1)[0][0]
    seen = []
    for _ in range(60):
        q = space.mutate(p, r)
        if space.problem(q) is None:
            p = q
            seen.append(q)
    assert len(set(seen)) > 10  # the mutations move
    x = pd.aligned(rng.uniform(-1, 1, (1, 2, 10, 10, 16)).astype(np.float32))
    w = pd.aligned(rng.uniform(-1, 1, (2, 2, 3, 3, 16, 16)).astype(np.float32))
    ref = np.zeros((1, 2, 8, 8, 16), np.float32)
    pd.compile(kern, threads=1, optimize=False)(ref, x, w)
    for q in seen[-3:]:
        out = np.zeros_like(ref)
        pd.compile(kern, threads=1, schedule=space.record(q))(out, x, w)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_points_outside_the_space_are_refused():
    space = gemm_space()
    rec = space.baseline
    (c,) = rec.contractions
    two_tiles = dataclasses.replace(c, loops=(("i", 48), ("i", 24), *c.loops))
    with pytest.raises(TuneError, match="outside the tuning space"):
        space.point(dataclasses.replace(rec, contractions=(two_tiles,)))
    with pytest.raises(TuneError, match="lowering"):
        space.point(dataclasses.replace(rec, lowering="gather"))
    p = space.point(rec)
    (kn,) = p.knobs
    bad = dataclasses.replace(p, knobs=(dataclasses.replace(kn, bk=7),))
    assert "outside the ranges" in space.problem(bad)
    bad = dataclasses.replace(p, knobs=(dataclasses.replace(kn, n_parallel=1),))
    assert "n_parallel" in space.problem(bad)  # one thread: nothing runs in parallel


def test_a_kernel_without_contraction_is_refused():
    @pd.kernel
    def scale(Y: pd.f32["N"], X: pd.f32["N"]):
        for i in range(N):
            Y[i] = 2.0 * X[i]

    with pytest.raises(TuneError, match="no contraction"):
        KernelSpace(Workload.of(scale, dict(N=64)), threads=1)


def test_residual_learns_what_the_analytic_model_misses():
    """Times made of the analytic cost times what it does not model (edge blocks of rows and of
    columns 1.5x slower each, a bowl over bk): fitted on some points, the model predicts held-out points much
    better than the analytic cost alone (with the best constant scale)."""
    space = gemm_space()
    model = CostModel(space)
    r = random.Random(1)
    # first-seen order (a set's order follows the process's string hashes: the split would
    # change from run to run)
    drawn = (space.random(r) for _ in range(200))
    pts = [p for p in dict.fromkeys(drawn) if space.problem(p) is None]

    def truth(p):
        (kn,) = p.knobs
        edge = (1.5 if 96 % kn.bm else 1.0) * (1.5 if 80 % kn.bn else 1.0)
        return model.analytic(p) * 1e-9 * edge * (1 + 0.1 * (np.log2(kn.bk) - 5) ** 2)

    train, test = pts[:40], pts[40:]
    assert len(test) >= 40
    model.fit([(p, truth(p)) for p in train])
    want = np.log([truth(p) for p in test])
    learned = np.abs(model.predict(test) - want).mean()
    plain = np.log([model.analytic(p) for p in test]) - want
    assert learned < 0.5 * np.abs(plain - plain.mean()).mean()


def test_proposals_are_seeds_then_new_legal_points():
    space = gemm_space()
    model = CostModel(space)
    strategy = Evolution(space, model, seed=3, top_k=3, sweep=False)
    first = strategy.propose(2, {})
    assert [p.origin for p in first][0].startswith("untuned pick")
    history = {
        p.point: Trial(record=space.record(p.point), status="ok", seconds=1e-3 * (i + 1))
        for i, p in enumerate(first)
    }
    pending = frozenset(p.point for p in strategy.propose(1, history))
    nxt = strategy.propose(6, history, pending)
    assert len(nxt) == 6
    for p in nxt:
        assert p.point not in history and p.point not in pending
        assert space.problem(p.point) is None
    assert len({p.point for p in nxt}) == 6


def test_the_sweep_offers_wider_even_calls_and_they_run():
    """196 pixel columns (a 1x1 conv over 14x14) in calls of 64 take 4 calls, the last of 4
    columns: the untuned pick already takes one call fewer (80: 80 + 80 + 36,
    ``plan.micro_blocks``), the sweep offers the narrowest block taking 2 (112: 112 + 84), and
    a record with either computes the same convolution."""
    from kernels import conv_ref

    from polydl import nn

    kern = nn.conv2d_rows(2, 24, 40, 14, 14, 1, 1)
    space = KernelSpace(Workload.of(kern, {}), threads=1)
    (base,) = space.spaces[space.lowerings[0]]
    seed = space.seeds(1)[0][0]
    (kn,) = seed.knobs
    assert kn.bn == 80 and base.wider_columns(kn) == [112]
    assert base.wider_columns(dataclasses.replace(kn, bn=64)) == [112, 80]
    swept = [p for p, why in space.sweep_group("columns", seed) if why.startswith("columns")]
    assert [p.knobs[0].bn for p in swept] == [112, 32]  # fewer calls, then half as wide
    swept.append(seed)
    x = rng.standard_normal((2, 24, 14, 14)).astype(np.float32)
    w = rng.standard_normal((40, 24, 1, 1)).astype(np.float32)
    for p in swept:
        k = pd.compile(kern, threads=1, schedule=space.record(p))
        out = np.zeros((2, 40, 196), np.float32)
        k(out, x.reshape(2, 24, 196), w)
        ref = conv_ref(x, w, None, 1, 0, False).reshape(2, 40, 196)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_the_sweep_tries_a_mid_size_one_vector_tile_and_the_k_unrolls_4_and_1():
    """The register-tile group: the widest tiles of the two largest vector counts, the widest
    one-vector tile and one of about half its rows (the rule's own tile never); the unroll
    group 4 then 1; every point legal, changing only its group's knob, and a record with the
    mid-size tile (rows not dividing the call's) computes the GEMM."""
    from polydl.tune.space import SWEEP_UNROLLS, TILE_ROWS

    space = gemm_space()
    (cs,) = space.spaces[space.lowerings[0]]
    seed = space.seeds(1)[0][0]
    tiles = space.sweep_group("tile", seed)
    got = [p.knobs[0].register_tile for p, _ in tiles]
    one = [t for t in got if t[1] == 1]
    assert len(one) == 2 and len(got) == len(set(got))
    widest = max(r for r, v in cs.regtile_range[1:] if v == 1)
    assert one[0] == (widest, 1)
    mid = min((r for r in TILE_ROWS if r < widest), key=lambda r: (abs(r - widest // 2), r))
    assert one[1] == (mid, 1) and cs.mid_tile((widest, 1)) == (mid, 1)
    assert cs.mid_tile(None) is None and cs.mid_tile((min(TILE_ROWS), 1)) is None
    assert cs.rule_tile(seed.knobs[0]) not in got
    assert all(_changed(p, seed) == {"register_tile"} for p, _ in tiles)
    unrolls = space.sweep_group("unroll", seed)
    assert [p.knobs[0].k_unroll for p, _ in unrolls] == list(SWEEP_UNROLLS)
    assert all(space.problem(p) is None for p, _ in [*tiles, *unrolls])
    (p,) = [p for p, _ in tiles if p.knobs[0].register_tile == (mid, 1)]
    assert GEMM["M"] % mid != 0
    run_gemm(pd.compile(gemm_bias_relu, threads=1, schedule=space.record(p), **GEMM))


def _changed(a, b) -> set[str]:
    """The knobs ``a`` and ``b`` (points of one contraction) differ in."""
    (ka,), (kb,) = a.knobs, b.knobs
    return {f.name for f in dataclasses.fields(ka) if getattr(ka, f.name) != getattr(kb, f.name)}


def _measured(space, history, props, times):
    for p, t in zip(props, times, strict=True):
        history[p.point] = Trial(record=space.record(p.point), status="ok", seconds=t)


def test_after_the_seeds_the_sweep_measures_one_group_of_knobs_of_the_fastest():
    space = gemm_space()
    strategy = Evolution(space, CostModel(space), seed=1, top_k=3)
    seeds = strategy.propose(len(strategy.seeds), {})
    assert [p.point for p in seeds] == [p for p, _ in strategy.seeds]
    # the last seed is the fastest: the first group (non-temporal stores) is around it, and
    # only that group: the next one waits for its times
    history: dict = {}
    _measured(space, history, seeds, [1e-3 / (i + 1) for i in range(len(seeds))])
    best = seeds[-1].point
    group = strategy.propose(8, history)
    want = space.sweep_group("stores", best)
    assert [p.point for p in group] == [p for p, _ in want] and group
    assert all(p.origin.startswith("sweep: ") for p in group)
    assert all(_changed(p.point, best) == {"nontemporal"} for p in group)
    assert strategy.propose(3, history, frozenset(p.point for p in group)) == []


def test_the_sweep_waits_for_a_seed_still_being_measured():
    """Proposed ahead (the last seed pending, not yet timed), the strategy offers nothing
    rather than breed before it knows which seed is fastest; once that seed's time is in,
    the sweep is around the fastest seed, which may be that last one."""
    space = KernelSpace(Workload.of(gemm_bias_relu, dict(M=192, N=160, K=256)), threads=1)
    strategy = Evolution(space, CostModel(space), seed=1, top_k=3)
    seeds = [p.point for p in strategy.propose(len(strategy.seeds), {})]
    assert len(seeds) == 3
    history = {
        p: Trial(record=space.record(p), status="ok", seconds=1e-3 / (i + 1))
        for i, p in enumerate(seeds[:-1])
    }
    assert strategy.propose(2, history, frozenset(seeds[-1:])) == []
    history[seeds[-1]] = Trial(record=space.record(seeds[-1]), status="ok", seconds=1e-6)
    sweep = strategy.propose(4, history)
    assert sweep and all(p.origin.startswith("sweep: ") for p in sweep)
    assert [p.point for p in sweep] == [p for p, _ in space.sweep_group("stores", seeds[-1])]


def test_the_sweep_adopts_a_faster_value_and_measures_the_next_groups_on_top_of_it(monkeypatch):
    """A coordinate descent: the whole reduction per call with non-temporal stores measured
    faster than the seed, so every later group is around that point (it keeps both changes);
    a group whose values all measured slower leaves the incumbent as it was; the point it
    ends on replays and computes the GEMM. The host keeps the planner's default whole-k limit
    (a Zen 4 host's own would keep K = 1024 whole, and the seed would not split it)."""
    from polydl import target

    monkeypatch.setattr(target, "_host", dataclasses.replace(target.host(), kc_whole_max=None))
    sizes = dict(M=64, N=48, K=1024)
    space = KernelSpace(Workload.of(gemm_bias_relu, sizes), threads=1)
    strategy = Evolution(space, CostModel(space), seed=1, top_k=1)
    (seed,) = strategy.propose(4, {})
    assert seed.point.knobs[0].reduce is not None  # a loop over k splits the reduction
    history: dict = {}
    _measured(space, history, [seed], [1e-3])
    stores = strategy.propose(8, history)
    assert [p.origin for p in stores] == [
        "sweep: the whole reduction per call, non-temporal stores",
        "sweep: the whole reduction per call",
    ]
    _measured(space, history, stores, [0.9e-3, 0.95e-3])
    incumbent = stores[0].point
    assert incumbent.knobs[0].reduce is None and incumbent.knobs[0].nontemporal
    groups = []
    while True:
        got = strategy.propose(8, history)
        if not got or not got[0].origin.startswith("sweep: "):
            break
        groups.append(got)
        for p in got:  # one group's knobs changed on top of the incumbent, nothing else
            assert _changed(p.point, incumbent) and not _changed(p.point, incumbent) & {
                "reduce",
                "nontemporal",
            }, p.origin
            assert space.problem(p.point) is None
        _measured(space, history, got, [1.2e-3] * len(got))  # all slower: no adoption
        assert strategy.incumbent == incumbent
    assert len(groups) >= 4  # columns, register tile, k unroll, reduction block (at least)
    k = pd.compile(gemm_bias_relu, threads=1, schedule=space.record(incumbent), **sizes)
    rng = np.random.default_rng(1)
    a, bb = rng.standard_normal((64, 1024), np.float32), rng.standard_normal((1024, 48), np.float32)
    bias, c = rng.standard_normal(48, np.float32), np.zeros((64, 48), np.float32)
    k(c, a, bb, bias)
    np.testing.assert_allclose(c, np.maximum(a @ bb + bias, 0), rtol=1e-4, atol=1e-3)
