"""pd.tune end to end (polydl/tune/): the runner measures in a worker process and refuses
wrong, crashing and slow candidates; trials go to SQLite as they finish and a second run
resumes; pd.compile uses a matching tuned record (an explicit schedule=/variant= wins, tuned=False
and POLYDL_TUNED=0 turn it off, other compiler versions are ignored); polydl tune; Ray."""

from __future__ import annotations

import csv
import dataclasses
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from kernels import gemm_bias_relu

import polydl as pd
from polydl import cli
from polydl.errors import TuneError
from polydl.tune import database
from polydl.tune.builder import Workload
from polydl.tune.database import Database, Key
from polydl.tune.runner import Bench, Job, LocalRunner, Measure, Measurement
from polydl.tune.tuner import TuneInterrupted, parse_duration

GEMM = dict(M=64, N=48, K=64)
FAST = Measure(warmup=0.0, repeat=2, min_time=0.0, timeout=60.0)


def workload():
    return Workload.of(gemm_bias_relu, GEMM)


class FakeRunner:
    """A runner that measures nothing: times from ``clock(record)``; ``stop_after`` trials
    then Ctrl-C; records it was asked about in ``asked``."""

    parallelism = 1

    def __init__(self, clock, stop_after=None):
        self.clock, self.stop_after, self.asked = clock, stop_after, []

    def start(self, job):
        self.job = job

    def measure(self, records):
        out = []
        for r in records:
            if self.stop_after is not None and len(self.asked) >= self.stop_after:
                raise KeyboardInterrupt
            self.asked.append(r)
            out.append(self.clock(r))
        return out

    def compare(self, records, *, rounds):
        got = [self.clock(r) for r in records]
        return [dataclasses.replace(m, samples=(m.seconds,) * rounds) if m.ok else m for m in got]

    def close(self):
        pass


def by_bk(record):
    """Deterministic 'times': larger reduction blocks are faster."""
    (c,) = record.contractions
    return Measurement(ok=True, seconds=1e-3 / c.bk, samples=(1e-3 / c.bk,))


def test_bench_checks_against_the_reference_and_times():
    bench = Bench(Job(workload=workload(), threads=1, measure=FAST))
    rec = pd.compile(gemm_bias_relu, threads=1, tuned=False, **GEMM).schedule.choices()
    m = bench.measure(rec)
    assert m.ok and m.seconds > 0 and len(m.samples) == 2 and not m.error
    bench.reference["C"] = bench.reference["C"] + 1.0  # a reference the kernel cannot match
    bad = bench.measure(rec)
    assert not bad.ok and bad.seconds is None and "wrong result: C differs" in bad.error
    (c,) = rec.contractions
    wrong = dataclasses.replace(rec, contractions=(dataclasses.replace(c, bk=7),))
    bad = bench.measure(wrong)
    assert not bad.ok and "does not replay" in bad.error and "bk=7" in bad.error
    bench.reference["C"] = bench.reference["C"] - 1.0
    other = dataclasses.replace(rec, contractions=(dataclasses.replace(c, bk=32),))
    a, b, x = bench.compare([rec, wrong, other], rounds=3)  # one sample of each per round
    assert a.ok and x.ok and len(a.samples) == len(x.samples) == 3 and a.seconds > 0
    assert not b.ok and "bk=7" in b.error


def test_a_clearly_slower_trial_stops_after_fewer_samples():
    """Told the fastest time so far (``bar``), a trial whose first samples are all more than
    10% above it stops after 2 of its 7 samples; near or below the bar, or without one, it
    takes all 7."""
    from polydl.tune.runner import EARLY_SAMPLES

    bench = Bench(Job(workload=workload(), threads=1, measure=dataclasses.replace(FAST, repeat=7)))
    rec = pd.compile(gemm_bias_relu, threads=1, tuned=False, **GEMM).schedule.choices()
    full = bench.measure(rec)
    assert full.ok and len(full.samples) == 7
    slow = bench.measure(rec, bar=full.seconds / 1e3)  # 1000x slower than the bar
    assert slow.ok and len(slow.samples) == EARLY_SAMPLES == 2
    assert slow.seconds == float(np.median(slow.samples))
    assert len(bench.measure(rec, bar=full.seconds * 1e3).samples) == 7


def test_a_long_running_kernel_takes_fewer_samples_within_the_time_budget():
    """``Measure.budget``: the samples of a trial take at most that long, at least
    MIN_SAMPLES of them (never more than ``repeat``); a sample is ``min_time`` rounded up to
    whole calls (a 17 ms call: 2 calls of 34 ms). A trial's time is still their median."""
    from polydl.tune.runner import MIN_SAMPLES, samples_within

    m = Measure(repeat=5, min_time=0.02, budget=0.1)
    assert MIN_SAMPLES == 3
    assert samples_within(m, 0.017) == 3  # 0.1 s holds 2 samples of 34 ms: 3 at least
    assert samples_within(dataclasses.replace(m, budget=0.2), 0.017) == 5
    assert samples_within(dataclasses.replace(m, budget=0.14), 0.017) == 4
    assert samples_within(m, 0.03) == 3 and samples_within(m, 1e-5) == 5
    assert samples_within(dataclasses.replace(m, budget=None), 1.0) == 5
    assert samples_within(dataclasses.replace(m, repeat=2), 1.0) == 2
    with pytest.raises(TuneError):
        Measure(budget=-1.0)
    seven = dataclasses.replace(FAST, repeat=7)
    rec = pd.compile(gemm_bias_relu, threads=1, tuned=False, **GEMM).schedule.choices()
    for budget, n in ((0.0, MIN_SAMPLES), (None, 7), (60.0, 7)):
        job = Job(workload=workload(), threads=1, measure=dataclasses.replace(seven, budget=budget))
        bench = Bench(job)
        got = bench.measure(rec)
        assert got.ok and len(got.samples) == n, budget
        assert got.seconds == float(np.median(got.samples))


def test_local_runner_timeout_and_crash_fail_the_trial():
    rec = pd.compile(gemm_bias_relu, threads=1, tuned=False, **GEMM).schedule.choices()
    with LocalRunner() as runner:
        runner.start(Job(workload=workload(), threads=1, measure=Measure(timeout=1e-4)))
        (m,) = runner.measure([rec])
        assert not m.ok and m.error.startswith("timeout") and "worker killed" in m.error
        runner.start(Job(workload=workload(), threads=1, measure=FAST))
        (m,) = runner.measure([rec])  # a fresh worker after the kill
        assert m.ok
        pid = runner.worker_pid
        slow = Job(  # no time budget: a million samples
            workload=workload(),
            threads=1,
            measure=dataclasses.replace(FAST, repeat=10**6, budget=None),
        )
        runner.start(slow)
        runner.measure([])  # nothing to measure: no worker yet
        killer = threading.Thread(target=_kill_worker_soon, args=(runner,))
        killer.start()
        (m,) = runner.measure([rec])
        killer.join()
        assert not m.ok and "died" in m.error and "-9" in m.error
        assert runner.worker_pid != pid


def _kill_worker_soon(runner):
    for _ in range(1200):
        if runner.measuring:
            time.sleep(0.3)  # the worker is busy with a million samples
            os.kill(runner.worker_pid, signal.SIGKILL)
            return
        time.sleep(0.05)


def test_tune_stores_trials_and_pd_compile_uses_the_best(tmp_path):
    db = tmp_path / "t.sqlite"
    r = pd.tune(gemm_bias_relu, trials=4, db=db, threads=1, measure=FAST, confirm=1, **GEMM)
    assert len(r.trials) == 4 and r.new_trials == 4 and r.best is not None
    assert r.trials[0].origin.startswith("untuned pick") and all(t.ok for t in r.trials)
    assert r.seconds > 0 and r.baseline_seconds > 0 and r.flops == 2 * 64 * 48 * 64
    assert r.stopped == "trials" and "4 trials" in r.summary()
    with Database(db) as d:
        key = Key.of(workload(), 1)
        assert len(d.trials(key)) == 4
        assert d.best(key).record == r.best
    k = pd.compile(gemm_bias_relu, threads=1, tuned=str(db), **GEMM)
    assert k.schedule.choices() == r.best
    text = k.show("variants")
    assert text.startswith(f"tuned: tuned record from {db}") and "running the tuned plan" in text
    # an explicit choice wins; tuned=False ranks; other threads or sizes do not match
    untuned = pd.compile(gemm_bias_relu, threads=1, tuned=False, **GEMM)
    assert untuned.tuned is None and "tuned" not in untuned.show("variants").splitlines()[0]
    again = pd.compile(gemm_bias_relu, threads=1, schedule=untuned.schedule, tuned=str(db), **GEMM)
    assert again.tuned is None and again.schedule.choices() == untuned.schedule.choices()
    assert pd.compile(gemm_bias_relu, threads=2, tuned=str(db), **GEMM).tuned is None
    assert pd.compile(gemm_bias_relu, threads=1, tuned=str(db), M=64, N=48, K=32).tuned is None
    x = np.random.default_rng(0).uniform(-1, 1, (64, 64)).astype(np.float32)
    w = np.random.default_rng(1).uniform(-1, 1, (64, 48)).astype(np.float32)
    b = np.zeros(48, np.float32)
    out = np.zeros((64, 48), np.float32)
    k(out, x, w, b)
    np.testing.assert_allclose(out, np.maximum(x @ w, 0), rtol=1e-4, atol=1e-4)


def test_default_database_and_the_switches(tmp_path, monkeypatch):
    """pd.tune and pd.compile meet in the default database ($POLYDL_TUNE_DB, set per test by
    conftest.py); POLYDL_TUNED=0 turns the lookup off; rows of another version are stale."""
    path = Path(os.environ["POLYDL_TUNE_DB"])
    assert database.default_path() == path and not path.exists()
    r = pd.tune(gemm_bias_relu, trials=3, runner=FakeRunner(by_bk), **GEMM)
    assert r.db == str(path) and path.is_file()
    k = pd.compile(gemm_bias_relu, threads=1, **GEMM)
    assert k.tuned and k.schedule.choices() == r.best
    assert r.best.contractions[0].bk == max(c.bk for t in r.trials for c in t.record.contractions)
    monkeypatch.setenv("POLYDL_TUNED", "0")
    assert pd.compile(gemm_bias_relu, threads=1, **GEMM).tuned is None
    monkeypatch.delenv("POLYDL_TUNED")
    monkeypatch.setattr(database, "compiler_version", lambda: "0.0.0/schedule-v0")
    assert pd.compile(gemm_bias_relu, threads=1, **GEMM).tuned is None
    with Database() as d:
        key = Key.of(workload(), 1)
        assert d.trials(key) == [] and d.best(key) is None and d.stale(key) == 3


def test_ctrl_c_keeps_finished_trials_and_resume_continues(tmp_path):
    db = tmp_path / "t.sqlite"
    first = FakeRunner(by_bk, stop_after=3)
    with pytest.raises(TuneInterrupted) as e:
        pd.tune(gemm_bias_relu, trials=6, db=db, runner=first, **GEMM)
    assert isinstance(e.value, KeyboardInterrupt)
    kept = e.value.result
    assert kept.stopped == "interrupted" and len(kept.trials) == 3 and kept.best is not None
    with Database(db) as d:
        assert len(d.trials(Key.of(workload(), 1))) == 3
    assert pd.compile(gemm_bias_relu, threads=1, tuned=str(db), **GEMM).tuned
    second = FakeRunner(by_bk)
    r = pd.tune(gemm_bias_relu, trials=6, db=db, runner=second, resume=True, **GEMM)
    assert len(r.trials) == 6 and r.new_trials == 3 and len(second.asked) == 3
    old = {t.key for t in kept.trials}
    assert not old & {database.record_key(x) for x in second.asked}  # none measured again
    fresh = FakeRunner(by_bk)
    r = pd.tune(gemm_bias_relu, trials=2, db=db, runner=fresh, **GEMM)  # no resume: anew
    assert r.new_trials == 2 and len(r.trials) == 2


def test_failed_trials_are_never_chosen(tmp_path):
    base = pd.compile(gemm_bias_relu, threads=1, tuned=False, **GEMM).schedule.choices()

    def clock(record):
        if record.choices() == base:
            return Measurement(ok=True, seconds=1.0, samples=(1.0,))
        return Measurement(ok=False, seconds=1e-9, error="wrong result: C differs")

    r = pd.tune(
        gemm_bias_relu, trials=5, db=tmp_path / "t.sqlite", runner=FakeRunner(clock), **GEMM
    )
    assert sum(t.ok for t in r.trials) == 1 and r.best == base and r.seconds == 1.0


def test_a_close_call_goes_to_the_untuned_pick(tmp_path):
    """The confirmation: a record replaces the untuned pick only when it is faster in most
    rounds of the comparison, however fast its first measurement was."""
    base = pd.compile(gemm_bias_relu, threads=1, tuned=False, **GEMM).schedule.choices()

    def clock(record):
        s = 1.0 if record.choices() == base else 0.1
        return Measurement(ok=True, seconds=s, samples=(s,))

    class Noisy(FakeRunner):
        def compare(self, records, *, rounds):
            out = []
            for r in records:
                if r.choices() == base:
                    s = (1.0,) * rounds
                else:  # faster in every other round only
                    s = tuple(self.other[i % 2] for i in range(rounds))
                out.append(Measurement(ok=True, seconds=float(np.median(s)), samples=s))
            return out

    runner = Noisy(clock)
    runner.other = (0.8, 1.1)
    r = pd.tune(gemm_bias_relu, trials=3, db=tmp_path / "a.sqlite", runner=runner, **GEMM)
    assert r.best == base and r.seconds == 1.0 and r.speedup == 1.0
    runner.other = (0.8, 0.9)
    r = pd.tune(gemm_bias_relu, trials=3, db=tmp_path / "b.sqlite", runner=runner, **GEMM)
    assert r.best != base and r.baseline_seconds == 1.0 and r.speedup > 1.1


def test_budget_and_durations(tmp_path):
    assert parse_duration("10m") == 600 and parse_duration("1.5h") == 5400
    assert parse_duration(90) == 90 and parse_duration(None) is None
    with pytest.raises(pd.PolyDLError, match="time budget"):
        parse_duration("ten minutes")

    def slow(record):
        time.sleep(0.3)
        return by_bk(record)

    r = pd.tune(
        gemm_bias_relu,
        trials=50,
        time_budget=0.1,
        db=tmp_path / "t.sqlite",
        runner=FakeRunner(slow),
        confirm=0,
        **GEMM,
    )
    assert r.stopped == "budget" and 1 <= len(r.trials) < 50


def test_database_rows_name_their_workload(tmp_path):
    db = tmp_path / "t.sqlite"
    pd.tune(gemm_bias_relu, trials=2, db=db, runner=FakeRunner(by_bk), **GEMM)
    conn = sqlite3.connect(db)
    (kernel, sizes, text) = conn.execute("SELECT kernel, sizes, ir FROM workloads").fetchone()
    (desc,) = conn.execute("SELECT description FROM targets").fetchone()
    conn.close()
    assert kernel == "gemm_bias_relu" and '"M", 64' in sizes and "S1[i, j, k]" in text
    assert '"cpu"' in desc and '"caches"' in desc
    # the same kernel defined elsewhere (another file, other lines) is the same workload
    assert database.canonical_text(workload()) == text and "line" not in text


def test_cli_tune_a_file_and_a_model(tmp_path, capsys):
    src = tmp_path / "k.py"
    src.write_text(
        "import polydl as pd\n\n@pd.kernel\n"
        'def mm(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "N"]):\n'
        "    for i in range(M):\n        for j in range(N):\n            C[i, j] = 0.0\n"
        "            for k in range(K):\n                C[i, j] += A[i, k] * B[k, j]\n"
    )
    db = tmp_path / "t.sqlite"
    args = ["tune", f"{src}:mm", "--sizes", "M=32,N=32,K=64", "--trials", "2", "--db", str(db)]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert f"database {db}" in out and "mm: mm(K=64, M=32, N=32), 1 thread(s): 2 trials" in out
    assert cli.main(["tune", "--model", "resnet50", "--layers", "resnet_17", "--space"]) == 0
    assert "resnet_17: lowering split: S1 (O += I x Wt): bm" in capsys.readouterr().out
    nchw = ["--layers", "resnet_17", "--layout", "nchw", "--space"]
    assert cli.main(["tune", "--model", "resnet50", *nchw]) == 0  # pd.nn.conv2d's rows kernel
    assert "resnet_17: lowering split: S1 (O += Wt x I): bm" in capsys.readouterr().out
    assert cli.main(["tune", "--model", "resnet50", "--layers", "resnet_99", "--space"]) == 2
    assert "--layers ['resnet_99']: not layers of resnet50" in capsys.readouterr().err
    assert cli.main(["tune", "--model", "vgg", "--space"]) == 2  # TuneError: status 2
    assert "known models are resnet50" in capsys.readouterr().err


def test_the_packaged_layer_table_is_the_benchmarks_one():
    from polydl.tune.models import resnet50_layers

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "resnet50_conv.csv"
    with open(bench) as f:
        rows = [
            {k: (v if k == "name" else int(v)) for k, v in r.items()} for r in csv.DictReader(f)
        ]
    assert resnet50_layers() == rows and len(rows) == 20


def test_progress_bar_only_on_a_terminal(tmp_path, capsys):
    pd.tune(gemm_bias_relu, trials=2, db=tmp_path / "t.sqlite", runner=FakeRunner(by_bk), **GEMM)
    assert "trial" not in capsys.readouterr().err  # pytest's stderr is no terminal
    pd.tune(
        gemm_bias_relu, trials=2, db=tmp_path / "u.sqlite", runner=FakeRunner(by_bk),
        progress=True, **GEMM,
    )  # fmt: skip
    assert "trial" in capsys.readouterr().err


def test_ray_runner_measures_like_the_local_one(tmp_path):
    pytest.importorskip("ray")
    from polydl.tune.ray_runner import RayRunner

    with RayRunner(workers=2, init={"num_cpus": 2}) as runner:
        r = pd.tune(
            gemm_bias_relu, trials=4, db=tmp_path / "t.sqlite", runner=runner, measure=FAST,
            confirm=1, **GEMM,
        )  # fmt: skip
        assert runner.parallelism == 2
        assert len(r.trials) == 4 and all(t.ok and t.seconds > 0 for t in r.trials)
        assert r.best is not None and r.baseline_seconds > 0
        runner.start(Job(workload=workload(), threads=1, measure=Measure(timeout=1e-3)))
        (m,) = runner.measure([r.best])
        assert not m.ok and m.error.startswith("timeout")


@pytest.mark.parametrize(
    "x_shape, w_shape, stride, pad, route",
    [
        ((2, 5, 9, 7), (6, 5, 3, 3), 1, 1, "rows"),  # padded rows kernel
        ((1, 3, 17, 19), (16, 3, 3, 3), 2, 1, "direct"),  # strided: the NCHW conv, gathered
    ],
)
def test_tuning_nchw_kernels_reaches_nn_conv2d(x_shape, w_shape, stride, pad, route, monkeypatch):
    """``nn.conv2d_kernels`` (``polydl tune --layout nchw``) names the kernels pd.nn.conv2d
    compiles: a record tuned for one is what a later pd.nn.conv2d call at those shapes runs, and
    its result is still the convolution's."""
    from kernels import conv_ref

    from polydl import nn

    assert nn.conv_route(x_shape, w_shape, stride, pad) == route
    (kern,) = nn.conv2d_kernels(x_shape, w_shape, stride, pad, threads=1)
    untuned = pd.compile(kern, threads=1, tuned=False).schedule.choices()

    def clock(record):  # anything but the untuned pick is faster (by 25% or more), in a fixed order
        t = (
            1.0
            if record.choices() == untuned
            else 0.5 + len(database.record_key(record)) % 97 / 400
        )
        return Measurement(ok=True, seconds=t * 1e-3, samples=(t * 1e-3,))

    r = pd.tune(kern, trials=4, runner=FakeRunner(clock))
    assert r.best is not None and r.best != untuned
    built = []

    def spy(*a, **kw):
        built.append(pd.compile(*a, **kw))
        return built[-1]

    monkeypatch.setattr(nn, "_compile", spy)
    nn._compiled.cache_clear()
    rng = np.random.default_rng(1)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    y = pd.nn.conv2d(x, w, stride=stride, padding=pad, threads=1)
    tuned = [k for k in built if k.tuned]
    assert len(tuned) == 1 and tuned[0].schedule.choices() == r.best
    np.testing.assert_allclose(y, conv_ref(x, w, None, stride, pad, False), rtol=1e-4, atol=1e-4)
    nn._compiled.cache_clear()


def _state(pid: int) -> str:
    """The process state letter from /proc (``T``: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_the_builder_compiles_ahead_and_is_never_left_stopped():
    """With a CPU to spare, the next records are compiled to object code in a builder process
    while the current one is timed (stopped while samples are taken, continued after); the
    worker loads that code (checked against the reference like any build); a dead builder
    only costs the worker its own build."""
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: no builder")
    base = pd.compile(gemm_bias_relu, threads=1, tuned=False, **GEMM).schedule.choices()
    (c,) = base.contractions
    other = dataclasses.replace(base, contractions=(dataclasses.replace(c, bk=32),))
    wrong = dataclasses.replace(base, contractions=(dataclasses.replace(c, bk=7),))
    with LocalRunner(build_ahead=True) as runner:
        runner.start(Job(workload=workload(), threads=1, measure=FAST))
        assert runner.ahead == 2
        runner.prefetch([base, other, wrong])
        pid = runner._builder.proc.pid
        while runner._queued:  # all three built there (none taken back by the worker)
            assert runner._take(60.0) is None
        a, b, x = runner.measure([base, other, wrong])
        assert a.ok and b.ok and a.prebuilt and b.prebuilt
        assert not x.ok and "does not replay" in x.error and "bk=7" in x.error
        assert _state(pid) != "T"
        os.kill(pid, signal.SIGKILL)
        runner._builder.proc.wait()
        (m,) = runner.measure([other])  # a fresh builder
        assert m.ok and runner._builder.proc.pid != pid
    with LocalRunner(build_ahead=False) as runner:
        runner.start(Job(workload=workload(), threads=1, measure=FAST))
        (m,) = runner.measure([base])
        assert m.ok and not m.prebuilt and runner._builder is None and runner.ahead == 0


def test_object_code_compiled_elsewhere_computes_like_the_jit():
    """jit.emit_object (what the builder process runs) then CompiledKernel.load(obj): the
    same results as the JIT build, at odd sizes."""
    from polydl import jit

    sizes = dict(M=37, N=29, K=53)
    k = pd.compile(gemm_bias_relu, threads=1, tuned=False, **sizes)
    other = pd.compile(gemm_bias_relu, threads=1, tuned=False, **sizes)
    assert other.llvm_ir == k.llvm_ir
    other.load(jit.emit_object(other.llvm_ir, target=other.cpu))
    rng = np.random.default_rng(5)
    a = rng.standard_normal((37, 53)).astype(np.float32)
    b = rng.standard_normal((53, 29)).astype(np.float32)
    bias = rng.standard_normal(29).astype(np.float32)
    want, got = np.zeros((37, 29), np.float32), np.zeros((37, 29), np.float32)
    k(want, a, b, bias)
    other(got, a, b, bias)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(want, np.maximum(a @ b + bias, 0), rtol=1e-4, atol=1e-4)


def test_the_untuned_pick_is_the_fallback():
    """A record replaces the untuned pick only when confirmed faster than it by more than
    MIN_GAIN (1% faster in every round is a tie); without a confirmation (Ctrl-C) likewise
    by the trials' times."""
    from polydl.tune.space import KernelSpace
    from polydl.tune.tuner import MIN_GAIN, choose

    space = KernelSpace(workload(), threads=1)
    base = space.baseline
    (c,) = base.contractions
    other = dataclasses.replace(base, contractions=(dataclasses.replace(c, bk=32),))
    for gain, wins in ((0.01, False), (0.05, True)):

        def clock(record, gain=gain):
            s = 1.0 if record.choices() == base.choices() else 1.0 - gain
            return Measurement(ok=True, seconds=s, samples=(s,))

        trials = [
            database.Trial(record=r, status="ok", seconds=clock(r).seconds, origin="x")
            for r in (base, other)
        ]
        for confirm in (3, 0):
            best, seconds, base_s = choose(space, FakeRunner(clock), trials, confirm=confirm)
            assert base_s == 1.0, (gain, confirm)
            if wins:
                assert gain > MIN_GAIN and best.choices() == other.choices()
                assert seconds == 1.0 - gain
            else:
                assert gain < MIN_GAIN and best.choices() == base.choices() and seconds == 1.0


def test_the_next_trials_are_proposed_while_one_is_measured(tmp_path):
    """With a runner taking hints (LocalRunner), pd.tune proposes and names the next trials
    while the current one is measured (``meanwhile``), so most trials were named before their
    own measurement began (not the ones after the last point of a sweep group: the next group
    waits for its time), every one named was measured, and each trial is told the fastest
    time so far (``bar``)."""

    class Hinted(FakeRunner):
        ahead, hints = 2, True

        def __init__(self, clock):
            super().__init__(clock)
            self.fetched, self.early, self.bars, self.seen = [], 0, [], []

        def prefetch(self, records):
            self.fetched += [r.to_json() for r in records if r.to_json() not in self.fetched]

        def measure(self, records, *, bar=None, meanwhile=None):
            self.early += sum(r.to_json() in self.fetched for r in records)
            self.bars.append(bar)
            got = super().measure(records)
            if meanwhile is not None:
                meanwhile()
            self.seen += [m.seconds for m in got]
            return got

    runner = Hinted(by_bk)
    r = pd.tune(gemm_bias_relu, trials=12, db=tmp_path / "t.sqlite", runner=runner, **GEMM)
    asked = [x.to_json() for x in runner.asked]
    assert len(r.trials) == 12 and len(set(asked)) == 12
    assert set(runner.fetched) <= set(asked)
    assert runner.early >= 4  # 0 if nothing were named ahead (this prefetches only then)
    assert runner.bars[0] is None
    assert runner.bars[1:] == [min(runner.seen[:i]) for i in range(1, 12)]


def test_the_next_trial_is_built_while_this_one_is_measured(tmp_path):
    """pd.tune names the next proposals to the runner (prefetch) before measuring the current
    ones, and measures exactly what it prefetched: no trial is lost or measured twice."""

    class Ahead(FakeRunner):
        ahead = 2

        def __init__(self, clock):
            super().__init__(clock)
            self.fetched, self.early = [], 0

        def prefetch(self, records):
            self.fetched += [r.to_json() for r in records if r.to_json() not in self.fetched]

        def measure(self, records):
            self.early += sum(r.to_json() in self.fetched for r in records)
            return super().measure(records)

    runner = Ahead(by_bk)
    r = pd.tune(gemm_bias_relu, trials=12, db=tmp_path / "t.sqlite", runner=runner, **GEMM)
    asked = [x.to_json() for x in runner.asked]
    assert len(r.trials) == 12 and len(set(asked)) == 12
    assert set(asked) == set(runner.fetched)  # nothing built ahead that was not measured
    assert runner.early == 12  # every trial was named to the builder before its measurement
