"""The runner: measures candidates in a worker process, checked against the reference.

A trial is measured by :class:`Bench` (the same code in a local worker and in a Ray actor):

1. build: ``pd.compile(workload, schedule=record)`` (:mod:`polydl.tune.builder`), then the JIT
   (or only the link of the object code a builder process compiled for it, see below); a
   record that does not replay (``ScheduleError``) or does not compile fails the trial;
2. check: one call on fresh copies of the inputs (uniform in [-1, 1), seeded), every tensor
   the kernel writes compared with what the ``optimize=False`` build computed from the same
   inputs: ``max |out - ref| <= rtol * max |ref|``; a wrong, non-finite or crashing result fails
   the trial, and a failed trial is never chosen;
3. warm-up: calls for ``warmup`` seconds (at least one);
4. timing: ``repeat`` samples, each as many calls as take ``min_time`` seconds, timed with
   ``perf_counter``; the trial's time is the median sample (per call). When ``repeat``
   samples would take longer than ``budget`` seconds (a kernel whose calls are longer than
   ``min_time``: one sample is then one call or two), fewer, at least :data:`MIN_SAMPLES`
   (:func:`samples_within`), so a long-running kernel is not timed for longer than a short
   one; still their median. Given ``bar`` (the
   fastest trial's time so far), a trial stops after :data:`EARLY_SAMPLES` samples when
   every one of them is more than :data:`SLOWER` above it: clearly slower, it cannot be
   chosen, and its time is the median of those samples.

:meth:`Bench.compare` times several records against each other (the tuner's confirmation,
the benchmark): built, checked and warmed up like trials, then one sample of each per round,
the order rotating, for a number of rounds.

:class:`LocalRunner` runs a :class:`Bench` in a worker process of its own (``python -m
polydl.tune._worker``: no re-import of the user's script), pinned to ``threads`` CPUs
(``os.sched_setaffinity``, ``OMP_PROC_BIND``), ignoring Ctrl-C (the tuner stops it). The parent
waits at most ``timeout`` seconds per trial: past that the worker is killed and the trial
fails as timed out; a worker that dies (a segfault in generated code) fails its trial with the
exit code and the tail of its stderr. Either way the next trial gets a fresh worker. With a
CPU to spare, a builder process (:func:`serve_builds`) compiles the records the tuner names
ahead (:meth:`LocalRunner.prefetch`) to object code while the worker times the current one;
the worker stops it (SIGSTOP) while it takes samples (:meth:`Bench.quiet`).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import math
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from ..errors import TuneError
from ..schedule import Schedule, ScheduleError
from .builder import Workload, build, reference

EARLY_SAMPLES = 2  # samples before a clearly slower trial stops (Bench.measure's bar)
SLOWER = 0.10  # clearly slower: every sample more than this above the fastest trial's time
MIN_SAMPLES = 3  # a trial's samples within its time budget, at least (Measure.budget)


@dataclass(frozen=True, kw_only=True)
class Measure:
    """How a trial is measured."""

    warmup: float = 0.05  # seconds of calls before timing (at least one call)
    repeat: int = 5  # timed samples; the trial's time is their median
    min_time: float = 0.02  # seconds per sample (calls looped until this long)
    budget: float | None = 0.1  # seconds of a trial's samples, at most (MIN_SAMPLES at least)
    timeout: float = 60.0  # seconds per trial (build, JIT, check, warm-up, samples)
    rtol: float = 1e-3  # max |out - ref| <= rtol * max |ref| for every written tensor
    seed: int = 0  # of the inputs

    def __post_init__(self) -> None:
        if (
            self.repeat < 1
            or self.timeout <= 0
            or self.min_time < 0
            or self.warmup < 0
            or (self.budget is not None and self.budget < 0)
        ):
            raise TuneError(f"measure settings out of range: {self}")


@dataclass(frozen=True, kw_only=True)
class Job:
    """What a worker measures for: the workload, its thread count, the protocol, the CPUs."""

    workload: Workload
    threads: int
    measure: Measure = Measure()
    cpus: tuple[int, ...] | None = None  # pinned to these (None: the affinity inherited)


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """The outcome of one trial: ``ok`` with the median ``seconds`` per call, or failed with
    ``error`` saying what failed (build, check, crash, timeout)."""

    ok: bool
    seconds: float | None = None
    samples: tuple[float, ...] = ()
    error: str = ""
    build_seconds: float = 0.0
    wall: float = 0.0
    prebuilt: bool = False  # the code came from the builder process (LocalRunner.build_ahead)


def samples_within(measure: Measure, once: float) -> int:
    """How many samples a trial takes whose call lasts ``once`` seconds: ``measure.repeat``,
    or as many as fit ``measure.budget`` (each ``min_time`` rounded up to whole calls), at
    least :data:`MIN_SAMPLES` (and never more than ``repeat``)."""
    if measure.budget is None:
        return measure.repeat
    sample = max(1, math.ceil(measure.min_time / max(once, 1e-12))) * once
    fit = int(measure.budget // sample) if sample > 0 else measure.repeat
    return min(measure.repeat, max(MIN_SAMPLES, fit))


def failed(error: str, *, build_seconds: float = 0.0, wall: float = 0.0) -> Measurement:
    return Measurement(ok=False, error=error, build_seconds=build_seconds, wall=wall)


def default_cpus(threads: int, index: int = 0) -> tuple[int, ...] | None:
    """The CPUs worker ``index`` is pinned to: ``threads`` of this process's CPUs, counted from
    the last one (None when there are not enough for it)."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    hi = len(allowed) - index * threads
    if hi - threads < 0:
        return None
    return tuple(allowed[hi - threads : hi])


def pin(cpus: tuple[int, ...] | None) -> None:
    """Pin this process (and the threads it starts) to ``cpus``."""
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))


@contextlib.contextmanager
def _pinned(cpus: tuple[int, ...] | None):
    """The calling thread pinned to ``cpus`` for the block (its affinity restored after)."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def compare(got: dict[str, np.ndarray], want: dict[str, np.ndarray], rtol: float) -> str | None:
    """Why ``got`` is not ``want`` (None: every tensor within ``rtol`` of its largest value)."""
    for name, ref in want.items():
        out = got[name]
        if not np.all(np.isfinite(out)):
            return f"wrong result: {name} has non-finite values (the reference has none)"
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        err = float(np.max(np.abs(out - ref))) if ref.size else 0.0
        if err > rtol * scale + 1e-30:
            return (
                f"wrong result: {name} differs from the optimize=False reference by {err:.3g}"
                f" (max |{name}| {scale:.3g}, tolerance {rtol * scale:.3g})"
            )
    return None


class Bench:
    """A workload's inputs and reference outputs, and the measurement of one record."""

    def __init__(self, job: Job) -> None:
        from ..memory import aligned

        self.job = job
        try:
            ref = reference(job.workload)
        except Exception as e:
            raise TuneError(
                f"{job.workload.describe()}: the optimize=False reference does not compile: {e}"
            ) from e
        k = ref.kernel
        self.args = k.args
        self.free = {s: k.size_values[s] for s in k.free_sizes}
        rng = np.random.default_rng(job.measure.seed)
        self.inputs: dict[str, object] = {}
        for a in k.args:
            if hasattr(a, "shape"):
                dt = np.float32 if a.dtype == "f32" else np.float64
                x = rng.uniform(-1.0, 1.0, size=k.shape_of(a.name)).astype(dt)
                self.inputs[a.name] = aligned(x)
            else:
                self.inputs[a.name] = float(rng.uniform(0.5, 1.5))
        written = {s.target.tensor for s in k.statements}
        self.written = [a.name for a in k.args if a.name in written]
        arrays = self.fresh()
        ref(*self._call_args(arrays), **self.free)
        self.reference = {n: np.array(arrays[n]) for n in self.written}
        self._built: collections.OrderedDict[str, object] = collections.OrderedDict()
        self.pause: tuple[int, ...] = ()  # processes to stop while timing (see quiet())

    def fresh(self) -> dict[str, object]:
        """Copies of the inputs (64-byte aligned), scalars as they are."""
        from ..memory import aligned

        return {
            n: aligned(np.array(v)) if isinstance(v, np.ndarray) else v
            for n, v in self.inputs.items()
        }

    def _call_args(self, arrays: dict[str, object]) -> list[object]:
        return [arrays[a.name] for a in self.args]

    def _build(self, record: Schedule, obj: tuple | None = None):
        """The record compiled and loaded; ``obj``: the builder's ``(object file, hash of the
        LLVM IR, seconds)`` for it (used when this build's IR has that hash)."""
        key = record.to_json(indent=None)
        got = self._built.get(key)
        if got is None:
            ck = build(self.job.workload, record, threads=self.job.threads)
            code = None
            if obj is not None and hashlib.sha1(ck.llvm_ir.encode()).hexdigest() == obj[1]:
                code = Path(obj[0]).read_bytes()
            ck.load(code)
            self._built[key] = got = (ck, code is not None)
            while len(self._built) > 64:  # the last ones: the confirmation measures again
                self._built.popitem(last=False)
        return got

    def _ready(self, record: Schedule, obj: tuple | None = None):
        """(call, build seconds, seconds of one call, whether the builder's code was used) of
        ``record`` built, checked and warmed up, or the failed :class:`Measurement` of
        whichever step failed."""
        m = self.job.measure
        t0 = time.perf_counter()
        try:
            ck, prebuilt = self._build(record, obj)
        except ScheduleError as e:
            return failed(f"record does not replay: {e}", wall=time.perf_counter() - t0)
        except Exception as e:
            return failed(f"build failed: {type(e).__name__}: {e}", wall=time.perf_counter() - t0)
        built = time.perf_counter() - t0 + (obj[2] if obj is not None else 0.0)
        arrays = self.fresh()
        args = self._call_args(arrays)
        try:
            ck(*args, **self.free)
        except Exception as e:
            return failed(f"call failed: {type(e).__name__}: {e}", build_seconds=built)
        why = compare({n: arrays[n] for n in self.written}, self.reference, m.rtol)
        if why:
            return failed(why, build_seconds=built, wall=time.perf_counter() - t0)

        def call() -> None:
            ck(*args, **self.free)

        calls, w0 = 0, time.perf_counter()
        while calls == 0 or time.perf_counter() - w0 < m.warmup:
            call()
            calls += 1
        return call, built, max((time.perf_counter() - w0) / calls, 1e-9), prebuilt

    @contextlib.contextmanager
    def quiet(self):
        """While samples are timed: the builder process (``self.pause``: its pid, or none) is
        stopped, so that a trial is timed as it would be without it (it shares the last-level
        cache and the memory bandwidth), and continued after."""
        pids, self.pause = self.pause, ()
        stopped = []
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        try:
            yield
        finally:
            for pid in stopped:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGCONT)

    def _sample(self, call, once: float) -> float:
        """Seconds per call over as many calls as take ``min_time``."""
        inner = max(1, math.ceil(self.job.measure.min_time / once))
        s0 = time.perf_counter()
        for _ in range(inner):
            call()
        return (time.perf_counter() - s0) / inner

    def measure(
        self, record: Schedule, obj: tuple | None = None, bar: float | None = None
    ) -> Measurement:
        """One trial: build (or load the builder's ``obj``), check, warm up, then ``repeat``
        samples (fewer for a long-running kernel, ``Measure.budget``, or when clearly slower
        than ``bar``, see the module docstring)."""
        t0 = time.perf_counter()
        ready = self._ready(record, obj)
        if isinstance(ready, Measurement):
            return ready
        call, built, once, prebuilt = ready
        samples: list[float] = []
        repeat = samples_within(self.job.measure, once)
        with self.quiet():
            while len(samples) < repeat:
                samples.append(self._sample(call, once))
                if bar and len(samples) >= EARLY_SAMPLES and min(samples) > (1 + SLOWER) * bar:
                    break
        return Measurement(
            ok=True,
            seconds=float(np.median(samples)),
            samples=tuple(samples),
            build_seconds=built,
            wall=time.perf_counter() - t0,
            prebuilt=prebuilt,
        )

    def compare(self, records: Sequence[Schedule], rounds: int) -> list[Measurement]:
        """Records timed against each other: ``rounds`` rounds of one sample each, the order
        rotating, so that a change of the machine's load falls on every record alike; sample
        ``i`` of every record is from round ``i``."""
        t0 = time.perf_counter()
        out: list[Measurement | None] = [None] * len(records)
        ready = {}
        for i, r in enumerate(records):
            got = self._ready(r)
            if isinstance(got, Measurement):
                out[i] = got
            else:
                ready[i] = got
        samples: dict[int, list[float]] = {i: [] for i in ready}
        keys = list(ready)
        with self.quiet():
            for rnd in range(rounds):
                for i in keys[rnd % max(1, len(keys)) :] + keys[: rnd % max(1, len(keys))]:
                    call, _, once, _ = ready[i]
                    samples[i].append(self._sample(call, once))
        for i, (_, built, _, _) in ready.items():
            out[i] = Measurement(
                ok=True,
                seconds=float(np.median(samples[i])),
                samples=tuple(samples[i]),
                build_seconds=built,
                wall=time.perf_counter() - t0,
            )
        return [m for m in out if m is not None]


class _Process:
    """One worker process (``python -m polydl.tune._worker``) and the pipes to it: started with
    a role (``"measure"``: a :class:`Bench`; ``"build"``: :func:`serve_builds`) and a job."""

    def __init__(self, role: str, job: Job, *, wait: bool = True) -> None:
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # the directory holding polydl/
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        env.setdefault("OMP_PROC_BIND", "true")
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "polydl.tune._worker", str(to_r), str(from_w)],
            pass_fds=(to_r, from_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.err,
            env=env,
        )
        os.close(to_r)
        os.close(from_w)
        self.send = Connection(to_w, readable=False)
        self.recv = Connection(from_r, writable=False)
        self.put((role, job))
        self.job, self.started = job, False
        if wait:
            self.ready()

    def ready(self) -> None:
        """Wait for the worker's setup (once; TuneError when it failed)."""
        if self.started:
            return
        kind, payload = self.reply(max(120.0, self.job.measure.timeout))
        if kind != "ready":
            self.close()
            raise TuneError(f"{self.job.workload.describe()}: the worker did not start: {payload}")
        self.started = True

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def put(self, message) -> None:
        self.send.send_bytes(pickle.dumps(message))

    def reply(self, timeout: float) -> tuple[str, object]:
        """The worker's next message, ("timeout", ...) or ("died", ...)."""
        try:
            if not self.recv.poll(timeout):
                return "timeout", f"no result within {timeout:g} s"
            return pickle.loads(self.recv.recv_bytes())
        except (EOFError, OSError):
            rc = self.proc.wait(timeout=10)
            return "died", f"the worker process died (exit code {rc}){self._stderr_tail()}"

    def _stderr_tail(self) -> str:
        self.err.seek(0)
        lines = self.err.read().decode(errors="replace").strip().splitlines()
        return (": " + " | ".join(lines[-3:])) if lines else ""

    def close(self) -> None:
        """Stop the worker (killed if it does not stop)."""
        try:
            if self.proc.poll() is None:
                self.put(("stop", None))
                self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for c in (self.send, self.recv):
            c.close()
        self.err.close()


class LocalRunner:
    """Trials in a local worker process, one at a time (see the module docstring).

    ``cpus``: the CPUs to pin the worker to (None: :func:`default_cpus`); ``recycle``: a fresh
    worker after this many trials (JIT modules accumulate in a process); ``build_ahead``: a
    builder process, on the CPUs the measuring worker does not use, compiles the records
    named by :meth:`prefetch` to object code while the current trial is timed, so that a
    trial's build (pd.compile, LLVM O3 and code generation: most of a trial's time) is off
    the critical path; it is stopped while samples are timed. When the worker would wait for
    a build the builder has started, it builds the next record the builder has not started
    itself meanwhile (so both CPUs build). None: when this process has CPUs besides the
    measuring worker's. A record whose build fails in the builder is built by the measuring
    worker (which then says why it fails)."""

    parallelism = 1
    hints = True  # measure() takes bar= and meanwhile= (polydl.tune.tuner)

    def __init__(
        self,
        *,
        cpus: tuple[int, ...] | None = None,
        recycle: int = 100,
        build_ahead: bool | None = None,
    ) -> None:
        self.cpus, self.recycle, self.build_ahead = cpus, recycle, build_ahead
        self.job: Job | None = None
        self._worker: _Process | None = None
        self._builder: _Process | None = None
        self._built: dict[str, tuple | None] = {}  # record text -> what the builder sent
        self._queued: list[str] = []  # sent to the builder, not yet answered, in order
        self._started: set[str] = set()  # of those, the ones it is building
        self._dir: tempfile.TemporaryDirectory | None = None
        self._count = 0
        self.measuring = False  # a trial is in the worker's hands right now

    @property
    def ahead(self) -> int:
        """How many records beyond the current batch the tuner should :meth:`prefetch`."""
        return 2 if self._build_cpus() is not None else 0

    def start(self, job: Job, *, spawn: bool = False) -> None:
        """Measure for ``job`` from now on (the worker starts at the first trial; with
        ``spawn``, the worker and the builder start now, set up while the caller goes on)."""
        if job.cpus is None:
            job = replace(job, cpus=self.cpus or default_cpus(job.threads))
        self.close()
        self.job = job
        if spawn:
            self._worker = _Process("measure", job, wait=False)
            self._spawn_builder()

    def _spawn_builder(self) -> None:
        cpus = self._build_cpus()
        if cpus is not None:
            self._dir = tempfile.TemporaryDirectory(prefix="polydl-tune-")
            self._builder = _Process("build", replace(self.job, cpus=cpus), wait=False)
            self._builder.put(("dir", (self._dir.name, 0)))

    @property
    def worker_pid(self) -> int | None:
        w = self._worker
        return w.proc.pid if w is not None and w.alive else None

    def _builder_pids(self) -> tuple[int, ...]:
        b = self._builder
        return (b.proc.pid,) if b is not None and b.alive else ()

    def _build_cpus(self) -> tuple[int, ...] | None:
        """The CPUs of the builder: this process's CPUs the measuring worker is not pinned to
        (None: no builder)."""
        if self.job is None or self.build_ahead is False or not hasattr(os, "sched_getaffinity"):
            return None
        measured = set(self.job.cpus or ())
        rest = tuple(c for c in sorted(os.sched_getaffinity(0)) if c not in measured)
        return rest if rest and measured else None

    def prefetch(self, records: Sequence[Schedule]) -> None:
        """Start building ``records`` (in the builder, when there is one): they are measured
        next."""
        assert self.job is not None, "LocalRunner.start(job) first"
        if self._builder is None or not self._builder.alive:
            self._close_builder()
            self._spawn_builder()
            if self._builder is None:
                return
        self._builder.ready()
        for r in records:
            text = r.to_json(indent=None)
            if text not in self._built and text not in self._queued:
                self._queued.append(text)
                self._builder.put(("build", text))

    def _take(self, timeout: float) -> str | None:
        """Handle the builder's next message, waiting at most ``timeout`` (0: only one that is
        there); the error text when it timed out or died (the builder is then closed)."""
        if timeout == 0 and not self._builder.recv.poll(0):
            return None
        kind, payload = self._builder.reply(timeout)
        if kind == "started":
            self._started.add(payload)
        elif kind == "result":
            text, built = payload
            if text in self._queued:  # else taken back after it had started
                self._queued.remove(text)
            self._started.discard(text)
            self._built[text] = built
        else:
            self._close_builder()
            return f"timeout: the build took over {timeout:g} s" if kind == "timeout" else kind
        return None

    def _object(self, text: str) -> tuple | str | None:
        """The builder's (object file, IR hash, seconds) for ``text``; None: the measuring
        worker builds it; a string: the trial failed (the build timed out)."""
        while self._builder is not None and self._builder.recv.poll(0):
            self._take(0)
        if self._builder is None:
            return None
        if text in self._queued and text not in self._started:  # taken back: built there
            self._queued.remove(text)
            self._builder.put(("skip", text))
            return None
        if text in self._queued:  # meanwhile the worker builds the next one not started
            later = [t for t in self._queued if t != text and t not in self._started]
            if later:
                self._queued.remove(later[0])
                self._builder.put(("skip", later[0]))
                self._ask(("build", later[0]), self.job.measure.timeout)
        while self._builder is not None and text in self._queued:
            why = self._take(self.job.measure.timeout)
            if why is not None:
                return why if why.startswith("timeout") else None
        return self._built.pop(text, None)

    def _ask(self, message: tuple, timeout: float, meanwhile=None):
        """Send one request to the worker (started or restarted as needed); its result, or
        the error text of a timeout (worker killed) or of the worker's death. ``meanwhile``:
        called once the request is sent, pinned to the builder's CPUs (so that it does not
        run on the measuring worker's), before the reply is awaited."""
        w = self._worker
        if w is None or not w.alive or self._count >= self.recycle:
            self._close_worker()
            assert self.job is not None, "LocalRunner.start(job) first"
            self._worker = _Process("measure", self.job)
            self._count = 0
        self._worker.ready()
        self._worker.put(message)
        self._count += 1
        self.measuring = True
        try:
            if meanwhile is not None:
                try:
                    with _pinned(self._build_cpus()):
                        meanwhile()
                except BaseException:  # the request is unanswered: this worker is done
                    self._close_worker()
                    raise
            kind, payload = self._worker.reply(timeout)
        finally:
            self.measuring = False
        if kind == "result":
            return payload
        self._close_worker()
        for pid in self._builder_pids():  # the worker may have died while they were stopped
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        return f"timeout: {payload} (worker killed)" if kind == "timeout" else str(payload)

    def measure(
        self, records: Sequence[Schedule], *, bar: float | None = None, meanwhile=None
    ) -> list[Measurement]:
        """Measure ``records`` one after the other, a trial each (each built by the builder
        while the one before is timed). ``bar``: the fastest time so far (a clearly slower
        trial takes fewer samples, :meth:`Bench.measure`); ``meanwhile``: called once, while
        the first record is measured (the tuner proposes and names the next ones then)."""
        out = []
        if records:
            self.prefetch(records)
        for record in records:
            t0 = time.perf_counter()
            text = record.to_json(indent=None)
            obj = self._object(text) if self._builder is not None else None
            if isinstance(obj, str):
                out.append(failed(f"{obj} (build worker killed)", wall=time.perf_counter() - t0))
                continue
            got = self._ask(
                ("measure", (text, obj, self._builder_pids(), bar)),
                self.job.measure.timeout,
                meanwhile,
            )
            meanwhile = None
            if obj is not None and obj[0] is not None:
                Path(obj[0]).unlink(missing_ok=True)
            out.append(
                got if isinstance(got, Measurement) else failed(got, wall=time.perf_counter() - t0)
            )
        return out

    def compare(self, records: Sequence[Schedule], *, rounds: int) -> list[Measurement]:
        """Time ``records`` against each other in one worker (:meth:`Bench.compare`)."""
        texts = [r.to_json(indent=None) for r in records]
        timeout = self.job.measure.timeout * max(1, len(texts))
        got = self._ask(("compare", (texts, rounds, self._builder_pids())), timeout)
        return got if isinstance(got, list) else [failed(got) for _ in texts]

    def _close_worker(self) -> None:
        if self._worker is not None:
            self._worker.close()
        self._worker = None

    def _close_builder(self) -> None:
        if self._builder is not None:
            if self._builder.alive:  # stopped by a measurement that did not finish
                with contextlib.suppress(OSError):
                    os.kill(self._builder.proc.pid, signal.SIGCONT)
            self._builder.close()
        if self._dir is not None:
            self._dir.cleanup()
        self._builder = self._dir = None
        self._built.clear()
        self._queued.clear()
        self._started.clear()

    def close(self) -> None:
        """Stop the workers (killed if they do not stop)."""
        self._close_worker()
        self._close_builder()

    def __enter__(self) -> LocalRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve_builds(recv: Connection, send: Connection, job: Job) -> None:
    """The builder's loop: records in, object files out (``(path, IR hash, seconds)``, or
    ``None`` where the build failed: the measuring worker then builds it and reports why),
    in the order asked, each announced ("started") before it is built; a record the parent
    took back ("skip", the measuring worker builds it) before that is not built. A record
    whose LLVM IR was built before reuses that object code."""
    from .. import jit

    send.send_bytes(pickle.dumps(("ready", os.getpid())))
    folder, tag, done, count = None, 0, {}, 0
    pending: collections.deque[str] = collections.deque()
    skip: set[str] = set()
    while True:
        if not pending or recv.poll(0):
            try:
                kind, payload = pickle.loads(recv.recv_bytes())
            except EOFError:
                return
            if kind == "stop":
                return
            if kind == "dir":
                folder, tag = Path(payload[0]), payload[1]
            elif kind == "skip":
                skip.add(payload)
            else:
                pending.append(payload)
            continue
        text = pending.popleft()
        if text in skip:
            skip.discard(text)
            continue
        send.send_bytes(pickle.dumps(("started", text)))
        t0 = time.perf_counter()
        built = None
        try:
            ck = build(job.workload, Schedule.from_json(text), threads=job.threads)
            digest = hashlib.sha1(ck.llvm_ir.encode()).hexdigest()
            if digest not in done:
                done[digest] = jit.emit_object(ck.llvm_ir, target=ck.cpu, name=ck.kernel.name)
            count += 1
            path = folder / f"{tag}-{count}-{digest[:12]}.o"
            path.write_bytes(done[digest])
            built = (str(path), digest, time.perf_counter() - t0)
        except Exception:  # the measuring worker builds it again and says why it fails
            built = None
        send.send_bytes(pickle.dumps(("result", (text, built))))


def serve(read_fd: int, write_fd: int) -> None:
    """The worker's loop (``python -m polydl.tune._worker``): a role and a Job, then requests:
    records to measure or compare (role "measure"), or to build (role "build")."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the tuner's to handle
    recv = Connection(read_fd, writable=False)
    send = Connection(write_fd, readable=False)
    role, job = pickle.loads(recv.recv_bytes())
    pin(job.cpus)
    if role == "build":
        serve_builds(recv, send, job)
        return
    try:
        bench = Bench(job)
    except Exception as e:
        send.send_bytes(pickle.dumps(("setup-failed", f"{type(e).__name__}: {e}")))
        return
    send.send_bytes(pickle.dumps(("ready", os.getpid())))
    while True:
        try:
            kind, payload = pickle.loads(recv.recv_bytes())
        except EOFError:
            return
        if kind == "stop":
            return
        if kind == "compare":
            texts, rounds, bench.pause = payload
            result = bench.compare([Schedule.from_json(t) for t in texts], rounds)
        elif kind == "build":  # built now, measured next (a failure is reported then)
            with contextlib.suppress(Exception):
                bench._build(Schedule.from_json(payload))
            result = None
        else:
            text, obj, bench.pause, bar = payload
            result = bench.measure(Schedule.from_json(text), obj, bar)
        send.send_bytes(pickle.dumps(("result", result)))
