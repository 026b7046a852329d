"""The tuning database: every trial and the best record per workload, in SQLite.

Where: ``POLYDL_TUNE_DB`` (a file path) when set, else ``tune.sqlite`` in
``platformdirs.user_cache_dir("polydl")`` (``~/.cache/polydl/tune.sqlite`` on Linux);
``pd.tune(db=...)`` / ``polydl tune --db`` name another file.

What a row is keyed by (:class:`Key`):

* the workload: a hash of the kernel's canonical IR text (arguments, sizes, every statement's
  domain, schedule, access and expression, without file names or line numbers) and its size
  bindings, so that the same kernel defined in another file or session matches;
* the thread count;
* the target fingerprint: a hash of the host's LLVM CPU name, its CPU features and its cache
  hierarchy (levels, sizes, sharing), so that a record tuned on one machine is not used on
  another;
* the compiler version (``polydl.__version__`` and the schedule-record version): rows of
  another version are *stale*, never returned (a record only replays legally on the compiler
  that wrote it, and its time was measured with that compiler's code).

Tables: ``trials`` (every finished trial: the record as JSON, ok or failed, median seconds and
samples, the error, where the candidate came from, the session), ``sessions`` (one per tuning
run) and ``best`` (the record the tuner chose per key, with its confirmed time and the
untuned pick's). Each trial is committed as it finishes, so an interrupted run keeps it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from ..schedule import SCHEDULE_VERSION, Schedule
from .builder import Workload

ENV_PATH = "POLYDL_TUNE_DB"
FILE_NAME = "tune.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS workloads (
    key TEXT PRIMARY KEY, kernel TEXT NOT NULL, sizes TEXT NOT NULL, ir TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS targets (key TEXT PRIMARY KEY, description TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY, workload TEXT NOT NULL, target TEXT NOT NULL, version TEXT NOT NULL,
    threads INTEGER NOT NULL, started REAL NOT NULL, finished REAL, stopped TEXT);
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY, session INTEGER NOT NULL, workload TEXT NOT NULL,
    target TEXT NOT NULL, version TEXT NOT NULL, threads INTEGER NOT NULL,
    record TEXT NOT NULL, status TEXT NOT NULL, seconds REAL, samples TEXT NOT NULL,
    error TEXT NOT NULL, origin TEXT NOT NULL, predicted REAL, build REAL NOT NULL,
    wall REAL NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS trials_key ON trials (workload, target, version, threads);
CREATE TABLE IF NOT EXISTS best (
    workload TEXT NOT NULL, target TEXT NOT NULL, version TEXT NOT NULL, threads INTEGER NOT NULL,
    record TEXT NOT NULL, seconds REAL NOT NULL, baseline REAL, trials INTEGER NOT NULL,
    session INTEGER NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (workload, target, version, threads));
"""


def default_path() -> Path:
    """``$POLYDL_TUNE_DB``, else ``tune.sqlite`` in the user cache directory of polydl."""
    env = os.environ.get(ENV_PATH, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("polydl")) / FILE_NAME


def compiler_version() -> str:
    """The version rows are written with; rows of any other are stale."""
    from .. import __version__

    return f"{__version__}/schedule-v{SCHEDULE_VERSION}"


def canonical_text(workload: Workload) -> str:
    """The kernel's IR as text, without source positions, and its sizes: what a workload is."""
    k = workload.ir
    lines = [f"kernel {k.name}", f"sizes {list(k.sizes)} = {list(workload.sizes)}"]
    lines += [f"bindings {list(k.bindings)}"] if k.bindings else []
    for a in k.args:
        shape = getattr(a, "shape", None)
        dims = "" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"
        lines.append(f"arg {a.name}: {a.dtype}{dims}")
    for s in k.statements:
        lines.append(
            f"{s.name}[{', '.join(s.iterators)}]: {s.domain} | {s.schedule} | "
            f"{s.target} {s.op} {s.expr}"
        )
    return "\n".join(lines)


def _hash(text: str, n: int = 24) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


@functools.cache
def fingerprint() -> tuple[str, str]:
    """(hash, description) of this machine as the tuner sees it: the host's LLVM CPU, its
    features and caches (``POLYDL_HOST`` changes the CPU and features, like everywhere)."""
    from .. import jit
    from ..target import host

    h = host()
    desc = json.dumps(
        {
            "cpu": h.llvm_cpu,
            "isa": h.isa,
            "features": sorted(jit.host_features()),
            "caches": [[c.level, c.size_bytes, c.shared, c.line_bytes] for c in h.caches],
        },
        sort_keys=True,
    )
    return _hash(desc, 16), desc


@dataclass(frozen=True, kw_only=True)
class Key:
    """What a trial or a tuned record belongs to (module docstring)."""

    workload: str
    target: str
    version: str
    threads: int

    @classmethod
    def of(cls, workload: Workload, threads: int) -> Key:
        return cls(
            workload=_hash(canonical_text(workload)),
            target=fingerprint()[0],
            version=compiler_version(),
            threads=int(threads),
        )

    def where(self) -> tuple[str, tuple]:
        return (
            "workload = ? AND target = ? AND version = ? AND threads = ?",
            (self.workload, self.target, self.version, self.threads),
        )


@dataclass(frozen=True, kw_only=True)
class Trial:
    """One measured candidate: ``status`` "ok" (output checked, ``seconds`` the median of the
    timed samples, per call) or "failed" (``error`` says why; never chosen)."""

    record: Schedule
    status: str
    seconds: float | None = None
    samples: tuple[float, ...] = ()
    error: str = ""
    origin: str = ""  # where the candidate came from: "cost model rank 2", "mutation", ...
    predicted: float | None = None  # the model's estimate (seconds) when it was proposed
    build_seconds: float = 0.0
    wall: float = 0.0  # the whole trial: build, JIT, check, warm-up, samples
    session: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def key(self) -> str:
        """The record as canonical JSON: two trials of one key measured the same code."""
        return record_key(self.record)


def record_key(record: Schedule) -> str:
    return record.choices().to_json(indent=None)


@dataclass(frozen=True, kw_only=True)
class Tuned:
    """The tuned record of a key, as ``pd.compile`` finds it."""

    record: Schedule
    seconds: float  # its confirmed median time per call
    baseline: float | None  # the untuned pick's, measured in the same confirmation
    trials: int  # trials measured for the key
    path: str  # the database file
    updated: float  # time.time() when it was chosen

    def describe(self) -> str:
        speed = f", {self.baseline / self.seconds:.2f}x the untuned pick" if self.baseline else ""
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.updated))
        return (
            f"tuned record from {self.path} ({self.trials} trials, {self.seconds * 1e3:.4g} ms"
            f"{speed}, chosen {when}); pd.compile(tuned=False) ranks instead"
        )


class Database:
    """One SQLite file of trials and tuned records (created with its directory on open)."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=30.0)
        self.conn.executescript(_SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ writing

    def register(self, key: Key, workload: Workload) -> None:
        """Keep the workload's text and the target's description beside their hashes."""
        with self.conn:
            self.conn.execute(
                "INSERT OR IGNORE INTO workloads VALUES (?, ?, ?, ?)",
                (key.workload, workload.name, json.dumps(workload.sizes), canonical_text(workload)),
            )
            self.conn.execute(
                "INSERT OR IGNORE INTO targets VALUES (?, ?)", (key.target, fingerprint()[1])
            )

    def start_session(self, key: Key) -> int:
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO sessions (workload, target, version, threads, started)"
                " VALUES (?, ?, ?, ?, ?)",
                (key.workload, key.target, key.version, key.threads, time.time()),
            )
        return int(cur.lastrowid)

    def finish_session(self, session: int, stopped: str) -> None:
        with self.conn:
            self.conn.execute(
                "UPDATE sessions SET finished = ?, stopped = ? WHERE id = ?",
                (time.time(), stopped, session),
            )

    def add(self, key: Key, trial: Trial) -> None:
        """Store one finished trial (committed at once)."""
        with self.conn:
            self.conn.execute(
                "INSERT INTO trials (session, workload, target, version, threads, record,"
                " status, seconds, samples, error, origin, predicted, build, wall, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    trial.session,
                    key.workload,
                    key.target,
                    key.version,
                    key.threads,
                    record_key(trial.record),
                    trial.status,
                    trial.seconds,
                    json.dumps(list(trial.samples)),
                    trial.error,
                    trial.origin,
                    trial.predicted,
                    trial.build_seconds,
                    trial.wall,
                    time.time(),
                ),
            )

    def set_best(
        self,
        key: Key,
        record: Schedule,
        *,
        seconds: float,
        baseline: float | None,
        trials: int,
        session: int,
    ) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO best VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.workload,
                    key.target,
                    key.version,
                    key.threads,
                    record_key(record),
                    seconds,
                    baseline,
                    trials,
                    session,
                    time.time(),
                ),
            )

    # ------------------------------------------------------------ reading

    def trials(self, key: Key) -> list[Trial]:
        """Every trial of ``key`` (this version and target), in the order measured."""
        where, args = key.where()
        rows = self.conn.execute(
            "SELECT record, status, seconds, samples, error, origin, predicted, build, wall,"
            f" session FROM trials WHERE {where} ORDER BY id",
            args,
        ).fetchall()
        return [
            Trial(
                record=Schedule.from_json(r[0]),
                status=r[1],
                seconds=r[2],
                samples=tuple(json.loads(r[3])),
                error=r[4],
                origin=r[5],
                predicted=r[6],
                build_seconds=r[7],
                wall=r[8],
                session=r[9],
            )
            for r in rows
        ]

    def best(self, key: Key) -> Tuned | None:
        where, args = key.where()
        row = self.conn.execute(
            f"SELECT record, seconds, baseline, trials, updated FROM best WHERE {where}", args
        ).fetchone()
        return _tuned(row, self.path)

    def stale(self, key: Key) -> int:
        """Trials of this workload, threads and target written by another compiler version
        (ignored)."""
        row = self.conn.execute(
            "SELECT COUNT(*) FROM trials WHERE workload = ? AND target = ? AND threads = ?"
            " AND version != ?",
            (key.workload, key.target, key.threads, key.version),
        ).fetchone()
        return int(row[0])


def lookup(workload: Workload, *, threads: int, path=None) -> Tuned | None:
    """The tuned record for ``workload`` at ``threads`` on this machine and compiler version,
    or None (no database file, no row, or only stale ones). Read-only: never creates the
    file."""
    p = Path(path).expanduser() if path is not None else default_path()
    if not p.is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return None
    try:
        where, args = Key.of(workload, threads).where()
        row = conn.execute(
            f"SELECT record, seconds, baseline, trials, updated FROM best WHERE {where}", args
        ).fetchone()
    except sqlite3.Error:  # not a tuning database, or one being created right now
        return None
    finally:
        conn.close()
    return _tuned(row, p)


def _tuned(row, path) -> Tuned | None:
    """A ``best`` row (record, seconds, baseline, trials, updated) as a :class:`Tuned`."""
    if row is None:
        return None
    return Tuned(
        record=Schedule.from_json(row[0]),
        seconds=row[1],
        baseline=row[2],
        trials=row[3],
        path=str(path),
        updated=row[4],
    )
