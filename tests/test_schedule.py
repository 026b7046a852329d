"""Schedule records (polydl/schedule.py): the optimiser's choices as frozen, JSON-serialisable
data that pd.compile(kernel, schedule=record) replays exactly; show("variants") from records;
records that do not fit a kernel are refused with the contraction named."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from kernels import gemm_bias_relu

import polydl as pd
from polydl.schedule import ContractionSchedule, Prediction, Schedule, ScheduleError

rng = np.random.default_rng(3)


def rand(*shape):
    return rng.uniform(-1, 1, size=shape).astype(np.float32)


KERNELS = [
    ("gemm", lambda: (gemm_bias_relu, dict(M=131, N=97, K=67))),
    ("blocked conv", lambda: (pd.ops.conv2d(1, 32, 32, 9, 9, 3, 3, layout="nchwc"), {})),
    ("split NCHW conv", lambda: (pd.ops.conv2d(1, 16, 16, 28, 28, 3, 3, padding=1), {})),
    ("im2col NCHW conv", lambda: (pd.ops.conv2d(1, 128, 64, 7, 7, 3, 3, padding=1), {})),
    ("strided NCHW conv", lambda: (pd.ops.conv2d(1, 16, 32, 9, 9, 1, 1, stride=2), {})),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", [n for n, _ in KERNELS])
def test_replay_is_exact(name, threads):
    kern, sizes = dict(KERNELS)[name]()
    k = pd.compile(kern, threads=threads, **sizes)
    rec = k.schedule
    assert rec is not None and rec.contractions
    text = k.show("schedule")
    again = Schedule.from_json(text)
    assert again == rec.choices()
    for record in (rec, again, text):
        k2 = pd.compile(kern, threads=threads, schedule=record, **sizes)
        assert k2.llvm_ir == k.llvm_ir and k2.tree == k.tree
        assert k2.schedule.choices() == rec.choices()


def test_lowering_recorded():
    split = pd.compile(pd.ops.conv2d(1, 16, 16, 28, 28, 3, 3, padding=1), threads=1)
    gather = pd.compile(pd.ops.conv2d(1, 128, 64, 7, 7, 3, 3, padding=1), threads=1)
    assert split.schedule.lowering == "split" and gather.schedule.lowering == "gather"
    assert "I_g0" in gather.show("loops") and "I_g0" not in split.show("loops")


def test_json_round_trip_with_predictions():
    k = pd.compile(gemm_bias_relu, threads=2, M=131, N=97, K=67)
    rec = k.schedule
    assert rec.alternatives and all(c.predicted for _, alts in rec.alternatives for c in alts)
    assert Schedule.from_json(rec.to_json()) == rec
    ranks = [c.predicted.rank for c in dict(rec.alternatives)["S1"]]
    assert ranks == list(range(1, len(ranks) + 1))


def test_replaying_a_ranked_alternative_equals_variant():
    sizes = dict(M=131, N=97, K=67)
    k = pd.compile(gemm_bias_relu, threads=2, **sizes)
    alts = dict(k.schedule.alternatives)["S1"]
    assert len(alts) >= 2
    for r in (1, len(alts) - 1):
        rec = dataclasses.replace(k.schedule, contractions=(alts[r],), alternatives=())
        by_record = pd.compile(gemm_bias_relu, threads=2, schedule=rec, **sizes)
        by_rank = pd.compile(gemm_bias_relu, threads=2, variant=r, **sizes)
        assert by_record.llvm_ir == by_rank.llvm_ir
        a, b, bias = rand(131, 67), rand(67, 97), rand(97)
        out = np.zeros((131, 97), np.float32)
        by_record(out, a, b, bias)
        np.testing.assert_allclose(out, np.maximum(a @ b + bias, 0), rtol=1e-4, atol=1e-4)


def test_hand_written_record():
    """A record written by hand (another order, a tile) compiles to what it says."""
    sizes = dict(M=64, N=64, K=64)
    rec = Schedule(
        kernel="gemm_bias_relu",
        sizes=tuple(sorted(sizes.items())),
        target="znver3",
        threads=1,
        contractions=(
            ContractionSchedule(
                stmt="S1",
                bm=16,
                bn=32,
                bk=64,
                loops=(("j", 32), ("i", 32), ("i", 16)),
                n_parallel=0,
            ),
        ),
    )
    k = pd.compile(gemm_bias_relu, threads=1, schedule=rec, **sizes)
    assert "brgemm(m=16, n=32" in k.show("loops")
    (c,) = k.schedule.contractions
    assert c.loops == rec.contractions[0].loops and c.tiles == (("i", 32),)
    a, b, bias = rand(64, 64), rand(64, 64), rand(64)
    out = np.zeros((64, 64), np.float32)
    k(out, a, b, bias)
    np.testing.assert_allclose(out, np.maximum(a @ b + bias, 0), rtol=1e-4, atol=1e-4)


def test_records_that_do_not_fit_are_refused():
    sizes = dict(M=64, N=64, K=64)
    good = pd.compile(gemm_bias_relu, threads=1, **sizes).schedule.choices()
    (c,) = good.contractions
    bad = [
        (dataclasses.replace(c, stmt="S7"), "no entry for contraction S1"),
        (dataclasses.replace(c, loops=(("q", 1), *c.loops)), "not iterators of S1"),
        (dataclasses.replace(c, bk=7), "bk=7"),
    ]
    for entry, needle in bad:
        with pytest.raises(ScheduleError, match=needle):
            pd.compile(
                gemm_bias_relu, schedule=dataclasses.replace(good, contractions=(entry,)), **sizes
            )
    with pytest.raises(ScheduleError, match="gather"):
        pd.compile(gemm_bias_relu, schedule=dataclasses.replace(good, lowering="gather"), **sizes)
    with pytest.raises(ScheduleError, match="positive"):
        ContractionSchedule(stmt="S1", bm=0, bn=1, bk=1, loops=(("i", 1),), n_parallel=0)
    with pytest.raises(ScheduleError, match="version"):
        Schedule.from_json(good.to_json().replace('"version": 1', '"version": 99'))
    with pytest.raises(ValueError, match="variant"):
        pd.compile(gemm_bias_relu, schedule=good, variant=1, **sizes)


def test_show_variants_from_records():
    k = pd.compile(gemm_bias_relu, threads=2, M=131, N=97, K=67)
    text = k.show("variants")
    assert text.startswith("lowering: split")
    assert "contraction S1 (C += A x B), running rank 1" in text
    best = dict(k.schedule.alternatives)["S1"][0]
    assert best.order in text and isinstance(best.predicted, Prediction)


def test_pack_off_is_replayed():
    """A record's pack=False leaves B where it is (no copy into scratch), computes the same,
    and survives JSON; records without the field (pack on) print as before."""
    kern = pd.ops.matmul(256, 512, 512)
    k = pd.compile(kern, threads=1)
    assert "copy(" in k.show("loops") and '"pack"' not in k.show("schedule")
    rec = k.schedule.choices()
    off = dataclasses.replace(
        rec, contractions=tuple(dataclasses.replace(c, pack=False) for c in rec.contractions)
    )
    assert Schedule.from_json(off.to_json()) == off and '"pack": false' in off.to_json()
    k2 = pd.compile(kern, threads=1, schedule=off.to_json())
    assert "copy(" not in k2.show("loops") and k2.schedule.choices() == off
    assert "(B not packed)" in k2.show("variants")
    a, b = rand(256, 512), rand(512, 512)
    out, out2 = np.zeros((256, 512), np.float32), np.zeros((256, 512), np.float32)
    k(out, a, b)
    k2(out2, a, b)
    np.testing.assert_allclose(out2, out, rtol=1e-5, atol=1e-4)
