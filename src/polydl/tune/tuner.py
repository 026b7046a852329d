"""The tuning loop: space, strategy, cost model, runner and database tied together.

``pd.tune(kernel, trials=64, time_budget=None, db=None, threads=1, **sizes)``:

1. the workload's space (:mod:`.space`), seeded by the cost model's ranking, searched by the
   strategy (:mod:`.strategy`) with the cost model's residual refitted after every batch
   (:mod:`.model`);
2. each batch of proposals is built and measured by the runner (:mod:`.runner`, or
   :mod:`.ray_runner`): a worker process, pinned, checked against the reference; with a
   runner that builds ahead (``runner.ahead``, ``runner.prefetch``) the next proposals are
   made before this batch's times are in and named to it, so that they are compiled while
   this batch is timed; with :class:`~.runner.LocalRunner` (``runner.hints``) they are
   proposed while the worker measures (``measure(meanwhile=...)``, the tuner's own work
   pinned to the builder's CPU), and each trial is told the fastest time so far
   (``measure(bar=...)``: a clearly slower trial takes fewer samples); its worker and
   builder start before the space is made, and set up meanwhile;
3. every finished trial goes to the database at once (:mod:`.database`), so Ctrl-C keeps it;
   with ``resume=True`` the trials already there for this workload, machine and compiler
   version count toward ``trials`` and are not measured again;
4. the end: the fastest few measured records and the untuned pick are timed against each other,
   one sample of each per round, for 15 rounds (a confirmation: the first pass's fastest of
   many noisy medians is biased low); a record replaces the untuned pick only if it was faster
   in at least 70% of the rounds and by more than 2% in the median, the lowest median ratio
   among those winning (:func:`choose`: the untuned pick is always measured there and is the
   fallback). That is the tuned record, stored as the key's best: ``pd.compile`` uses it from
   then on.

Ctrl-C stops the search, stores the fastest finished trial as the best (no confirmation; the
untuned pick unless that trial was more than 2% faster than the untuned pick's) and
raises :class:`TuneInterrupted` (a ``KeyboardInterrupt``) carrying the result.
"""

from __future__ import annotations

import functools
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import TuneError
from ..schedule import Schedule
from .builder import Workload
from .database import Database, Key, Trial, record_key
from .model import CostModel
from .runner import Job, LocalRunner, Measure
from .space import KernelSpace, Point
from .strategy import Evolution

CONFIRM_ROUNDS = 15  # rounds of the confirmation (one sample of each record per round)
CONFIRM_RECORDS = 5  # the fastest records timed against the untuned pick (pd.tune's confirm)
WIN_SHARE = 0.7  # share of the rounds a record must win to replace the untuned pick
MIN_GAIN = 0.02  # and how much faster than it its median must be (a tie keeps the untuned pick)


@dataclass(frozen=True, kw_only=True)
class TuneResult:
    """What ``pd.tune`` found: the best record, its time, and every trial behind it."""

    workload: str  # "conv2d", "gemm(M=64, N=64, K=64)"
    key: str  # the workload's hash in the database
    threads: int
    best: Schedule | None  # the tuned record (None: no trial succeeded)
    seconds: float | None  # its confirmed median time per call
    baseline: Schedule  # the untuned pick (what pd.compile ran before)
    baseline_seconds: float | None  # its time, measured alongside ``seconds``
    trials: tuple[Trial, ...]  # this workload's trials in the order measured (resumed first)
    new_trials: int  # of which measured by this run
    flops: float  # floating-point operations of one call (2 per multiply-add of contractions)
    db: str
    wall: float  # seconds this run took
    stopped: str  # "trials", "budget", "exhausted" (no unmeasured legal point) or "interrupted"

    @property
    def speedup(self) -> float | None:
        """The untuned pick's time over the tuned record's (>= 1: tuning paid off)."""
        if self.seconds is None or self.baseline_seconds is None:
            return None
        return self.baseline_seconds / self.seconds

    @property
    def gflops(self) -> float | None:
        return None if self.seconds is None else self.flops / self.seconds / 1e9

    def best_after(self, n: int) -> Trial | None:
        """The fastest successful trial among the first ``n`` (None: none succeeded)."""
        ok = [t for t in self.trials[:n] if t.ok]
        return min(ok, key=lambda t: t.seconds) if ok else None

    def summary(self) -> str:
        fails = sum(not t.ok for t in self.trials)
        head = (
            f"{self.workload}, {self.threads} thread(s): {len(self.trials)} trials"
            f" ({self.new_trials} new, {fails} failed), stopped by {self.stopped}"
            f" after {self.wall:.1f} s"
        )
        if self.seconds is None:
            return head + "; no trial succeeded"
        line = f"{head}; best {self.seconds * 1e3:.4g} ms/call"
        if self.flops:
            line += f" ({self.gflops:.1f} GFLOPS)"
        if self.speedup is not None:
            line += f", {self.speedup:.3f}x the untuned pick"
        return line + f"; database {self.db}"


class TuneInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``pd.tune``: the finished trials are stored; ``.result`` has them."""

    def __init__(self, result: TuneResult) -> None:
        super().__init__(f"tuning interrupted: {len(result.trials)} trials kept")
        self.result = result


def parse_duration(value) -> float | None:
    """Seconds of ``value``: a number, or text like ``"90s"``, ``"10m"``, ``"1.5h"``."""
    if value is None:
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smh]?)\s*", str(value))
        if not m:
            raise TuneError(f"time budget {value!r}: expected seconds or e.g. 90s, 10m, 1h")
        seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    if seconds <= 0:
        raise TuneError(f"time budget {value!r} must be positive")
    return seconds


def contraction_flops(space: KernelSpace, lowering: str) -> float:
    """2 x the multiply-adds of the contractions of one lowering."""
    return float(sum(2 * s.work for s in space.spaces[lowering]))


def tune(
    kern,
    *,
    trials: int = 64,
    time_budget=None,
    db=None,
    threads: int = 1,
    resume: bool = False,
    runner=None,
    measure: Measure | None = None,
    seed: int = 0,
    top_k: int = 5,
    confirm: int = CONFIRM_RECORDS,
    progress: bool | None = None,
    **sizes: int,
) -> TuneResult:
    """Tune ``kern`` (a ``@pd.kernel`` function) at ``sizes`` for this machine (docs/API.md).

    ``trials``: measurements in all (with ``resume``, those already in the database count);
    ``time_budget``: seconds or ``"10m"``, the search stops when it is spent; ``db``: the
    database file (default: ``$POLYDL_TUNE_DB`` or the user cache directory); ``threads``: the
    thread count the kernel is tuned and measured for; ``runner``: a runner object
    (``LocalRunner()`` by default, ``polydl.tune.ray_runner.RayRunner(...)`` for a cluster);
    ``measure``: the measurement protocol (:class:`~polydl.tune.runner.Measure`); ``seed``: of
    the search; ``top_k``: the cost model's variants measured first; ``confirm``: how many of
    the fastest records are re-measured against the untuned pick at the end (0: none);
    ``progress``: a tqdm bar (None: only on a terminal).
    """
    if trials < 1:
        raise TuneError(f"pd.tune: trials must be at least 1, got {trials}")
    budget = parse_duration(time_budget)
    t0 = time.perf_counter()
    workload = Workload.of(kern, sizes)
    own_runner = runner is None
    runner = LocalRunner() if own_runner else runner
    job = Job(workload=workload, threads=threads, measure=measure or Measure())
    local = isinstance(runner, LocalRunner)
    if local:  # the worker and the builder set up while the space is made
        runner.start(job, spawn=True)
    try:
        space = KernelSpace(workload, threads=threads)
        model = CostModel(space)
        strategy = Evolution(space, model, seed=seed, top_k=top_k)
        base_point = space.point(space.baseline)
        key = Key.of(workload, threads)
        database = Database(db)
    except BaseException:
        if own_runner:
            runner.close()
        raise
    history: dict[Point, Trial] = {}
    done: list[Trial] = []
    try:
        database.register(key, workload)
        if resume:
            for t in database.trials(key):
                try:
                    p = space.point(t.record)
                except TuneError:  # written by another space (a later polydl): not a point
                    continue
                history.setdefault(p, t)
                done.append(t)
        resumed = len(done)
        session = database.start_session(key)
        if not local:
            runner.start(job)
        model.fit([(p, t.seconds) for p, t in history.items() if t.ok])
        stopped = _search(
            space, model, strategy, runner, database, key, session, history, done,
            trials=trials, budget=budget, t0=t0, progress=progress, base_point=base_point,
        )  # fmt: skip
        flops = contraction_flops(space, space.baseline.lowering)
        try:
            best, seconds, base_s = choose(
                space, runner, done, confirm=confirm if stopped != "interrupted" else 0
            )
        except KeyboardInterrupt:  # during the confirmation: the fastest trial, unconfirmed
            stopped = "interrupted"
            best, seconds, base_s = choose(space, runner, done, confirm=0)
        if best is not None:
            database.set_best(
                key, best, seconds=seconds, baseline=base_s, trials=len(done), session=session
            )
        database.finish_session(session, stopped)
    finally:
        if own_runner:
            runner.close()
        database.close()
    result = TuneResult(
        workload=workload.describe(),
        key=key.workload,
        threads=threads,
        best=best,
        seconds=seconds,
        baseline=space.baseline,
        baseline_seconds=base_s,
        trials=tuple(done),
        new_trials=len(done) - resumed,
        flops=flops,
        db=str(database.path),
        wall=time.perf_counter() - t0,
        stopped=stopped,
    )
    if stopped == "interrupted":
        raise TuneInterrupted(result)
    return result


def _search(
    space, model, strategy, runner, database, key, session, history, done, *,
    trials, budget, t0, progress, base_point,
) -> str:  # fmt: skip
    """Propose, measure, store until ``trials`` are done; what stopped it."""
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(
        total=trials, initial=min(len(done), trials), desc=space.workload.describe()[:40],
        unit="trial", disable=not show, leave=False,
    )  # fmt: skip
    stopped, start = "trials", len(done)
    ahead = getattr(runner, "ahead", 0)  # proposals built while the current batch is timed
    hints = getattr(runner, "hints", False)  # measure(bar=, meanwhile=): LocalRunner
    queue: list = []  # proposed, named to the runner, not yet measured

    def records(props) -> list[Schedule]:
        return [space.baseline if p.point == base_point else space.record(p.point) for p in props]

    def refill(k: int, measuring=()) -> None:
        """Propose until ``k`` are queued (the points being measured count as pending)."""
        nonlocal queue
        if len(queue) < k:
            pending = frozenset(p.point for p in [*measuring, *queue])
            queue += strategy.propose(k - len(queue), history, pending)

    def name_ahead(k: int, measuring) -> None:
        refill(k, measuring)
        runner.prefetch(records(queue))

    try:
        while len(done) < trials:
            # the budget counts from the call (the space's setup too); one trial runs anyway
            if budget is not None and len(done) > start and time.perf_counter() - t0 >= budget:
                return "budget"
            n = min(runner.parallelism, trials - len(done))
            later = min(ahead, trials - len(done) - n)  # beyond the first n: named ahead
            refill(n if hints else n + later)
            if not queue:
                return "exhausted"
            props, queue = queue[:n], queue[n:]
            batch = records(props)

            if hints:  # the next ones proposed and named while this batch is timed
                ok = [t.seconds for t in done if t.ok]
                meanwhile = functools.partial(name_ahead, later, props) if later else None
                got = runner.measure(batch, bar=min(ok) if ok else None, meanwhile=meanwhile)
            else:
                if ahead:
                    runner.prefetch(batch + records(queue))
                got = runner.measure(batch)
            for prop, record, m in zip(props, batch, got, strict=True):
                trial = Trial(
                    record=record,
                    status="ok" if m.ok else "failed",
                    seconds=m.seconds,
                    samples=m.samples,
                    error=m.error,
                    origin=prop.origin,
                    predicted=prop.predicted,
                    build_seconds=m.build_seconds,
                    wall=m.wall,
                    session=session,
                )
                database.add(key, trial)
                history[prop.point] = trial
                done.append(trial)
                bar.update(1)
            model.fit([(p, t.seconds) for p, t in history.items() if t.ok])
            ok = [t.seconds for t in done if t.ok]
            if ok:
                bar.set_postfix_str(f"best {min(ok) * 1e3:.4g} ms")
    except KeyboardInterrupt:
        stopped = "interrupted"
    finally:
        bar.close()
    return stopped


def choose(
    space: KernelSpace, runner, done: Sequence[Trial], *, confirm: int
) -> tuple[Schedule | None, float | None, float | None]:
    """(record, seconds, the untuned pick's seconds): what ``pd.tune`` returns after the
    trials ``done``. The untuned pick is the fallback: another record replaces it only when
    measured faster than it by more than :data:`MIN_GAIN`.

    With ``confirm``: the ``confirm`` fastest records and the untuned pick timed against each
    other (``runner.compare``: one sample of each per round, :data:`CONFIRM_ROUNDS` rounds, in
    one worker); a record replaces the untuned pick only when it was faster in at least
    :data:`WIN_SHARE` of the rounds and its median ratio to the untuned pick's time is below
    ``1 - MIN_GAIN``; of those, the lowest median ratio wins. Without (Ctrl-C): the fastest
    trial, if its time is below ``1 - MIN_GAIN`` of the untuned pick's trial (or the untuned
    pick was not measured). Only when the untuned pick fails is the fastest other record
    returned whatever its time."""
    ok = sorted((t for t in done if t.ok), key=lambda t: t.seconds)
    if not ok:
        return None, None, None
    base_key = record_key(space.baseline)
    base = next((t.seconds for t in ok if t.key == base_key), None)
    if confirm <= 0:
        if base is None or ok[0].seconds < (1.0 - MIN_GAIN) * base:
            return ok[0].record.choices(), ok[0].seconds, base
        return space.baseline, base, base
    picks: dict[str, Schedule] = {base_key: space.baseline}
    for t in ok:
        if len(picks) <= confirm:
            picks.setdefault(t.key, t.record.choices())
    keys = list(picks)
    got = dict(
        zip(keys, runner.compare([picks[k] for k in keys], rounds=CONFIRM_ROUNDS), strict=True)
    )
    if not got[base_key].ok:  # the untuned pick failed now: the fastest confirmed record
        fine = [k for k in keys if got[k].ok]
        if not fine:
            return ok[0].record.choices(), ok[0].seconds, base
        k = min(fine, key=lambda k: got[k].seconds)
        return picks[k], got[k].seconds, None
    base_t = np.array(got[base_key].samples)
    best, best_ratio = base_key, 1.0 - MIN_GAIN
    for k in keys:
        if k == base_key or not got[k].ok:
            continue
        ratios = np.array(got[k].samples) / base_t
        ratio = float(np.median(ratios))
        if np.mean(ratios < 1.0) >= WIN_SHARE and ratio < best_ratio:
            best, best_ratio = k, ratio
    return picks[best], got[best].seconds, got[base_key].seconds
