"""The runner on a Ray cluster: the same interface and the same measurement as ``LocalRunner``.

Each worker is a Ray actor holding a :class:`~polydl.tune.runner.Bench` (the workload's inputs
and its ``optimize=False`` reference, computed once per actor), reserving ``threads`` CPUs and
pinned to as many of its node's CPUs. A batch of records is spread over the actors, one trial
per actor at a time; builds and measurements both happen in the actors. A trial that takes
longer than the timeout gets its actor killed (and replaced) and fails as timed out; an actor
that dies (a crash in generated code) fails its trial and is replaced. Results are
:class:`~polydl.tune.runner.Measurement` objects, as from the local runner.

Ray is an optional extra: ``pip install "polydl[ray]"``. ``RayRunner(address)`` joins a running
cluster (``"auto"``, ``"ray://host:10001"``); without an address it starts a local Ray (what
the tests do) and stops it on :meth:`RayRunner.close`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from ..errors import TuneError
from ..schedule import Schedule
from .runner import Job, Measurement, failed

_ACTOR = None


def _ray():
    try:
        import ray
    except ImportError:
        raise TuneError(
            'the Ray runner needs Ray: pip install "polydl[ray]" (or pip install ray)'
        ) from None
    return ray


def _actor_class():
    """The actor class, defined once Ray is imported (Ray is optional)."""
    global _ACTOR
    if _ACTOR is None:
        ray = _ray()

        class TrialActor:
            def __init__(self, job: Job, index: int) -> None:
                from .runner import Bench, default_cpus, pin

                per_node = max(1, (os.cpu_count() or 1) // job.threads)
                pin(job.cpus or default_cpus(job.threads, index % per_node))
                self.bench = Bench(job)

            def measure(self, record: str) -> Measurement:
                return self.bench.measure(Schedule.from_json(record))

            def compare(self, records: list[str], rounds: int) -> list[Measurement]:
                return self.bench.compare([Schedule.from_json(r) for r in records], rounds)

        _ACTOR = ray.remote(TrialActor)
    return _ACTOR


class RayRunner:
    """Trials on Ray actors (see the module docstring). ``workers``: how many actors (default:
    the cluster's CPUs over the thread count); ``init``: keyword arguments of ``ray.init``
    when this runner starts Ray."""

    def __init__(
        self, address: str | None = None, *, workers: int | None = None, init: dict | None = None
    ) -> None:
        ray = _ray()
        self._owns = not ray.is_initialized()
        if self._owns:
            opts = {"include_dashboard": False, "log_to_driver": False, **(init or {})}
            try:
                ray.init(address=address, **opts)
            except Exception as e:
                raise TuneError(f"cannot start or join Ray at {address or 'local'}: {e}") from e
        self.address = address
        self.workers = workers
        self.job: Job | None = None
        self._actors: list = []

    @property
    def parallelism(self) -> int:
        return max(1, len(self._actors))

    def start(self, job: Job) -> None:
        ray = _ray()
        self._kill_all()
        self.job = job
        cpus = ray.cluster_resources().get("CPU", 1)
        n = self.workers or max(1, int(cpus // job.threads))
        self._actors = [self._new(i) for i in range(n)]

    def _new(self, index: int):
        actor = _actor_class().options(num_cpus=self.job.threads)
        return actor.remote(self.job, index)

    def measure(self, records: Sequence[Schedule]) -> list[Measurement]:
        """Measure ``records`` spread over the actors, a trial each."""
        ray = _ray()
        if not self._actors:
            raise TuneError("RayRunner.start(job) first")
        texts = [r.to_json(indent=None) for r in records]
        out: list[Measurement | None] = [None] * len(texts)
        queue = list(range(len(texts)))
        running: dict = {}  # object ref -> (record index, actor index, start)
        free = list(range(len(self._actors)))
        while queue or running:
            while queue and free:
                i, a = queue.pop(0), free.pop(0)
                running[self._actors[a].measure.remote(texts[i])] = (i, a, time.monotonic())
            deadline = min(t for _, _, t in running.values()) + self.job.measure.timeout
            done, _ = ray.wait(
                list(running), num_returns=1, timeout=max(0.0, deadline - time.monotonic())
            )
            now = time.monotonic()
            for ref in list(running):
                i, a, t0 = running[ref]
                if ref in done:
                    del running[ref]
                    try:
                        out[i] = ray.get(ref)
                    except Exception as e:  # the actor died (a crash in generated code)
                        out[i] = failed(f"the ray worker died: {type(e).__name__}: {e}")
                        self._replace(a)
                    free.append(a)
                elif now - t0 >= self.job.measure.timeout:
                    del running[ref]
                    out[i] = failed(
                        f"timeout: no result within {self.job.measure.timeout:g} s "
                        "(ray worker killed)",
                        wall=now - t0,
                    )
                    self._replace(a)
                    free.append(a)
        return [m for m in out if m is not None]

    def compare(self, records: Sequence[Schedule], *, rounds: int) -> list[Measurement]:
        """Time ``records`` against each other on one actor (``Bench.compare``)."""
        ray = _ray()
        if not self._actors:
            raise TuneError("RayRunner.start(job) first")
        texts = [r.to_json(indent=None) for r in records]
        ref = self._actors[0].compare.remote(texts, rounds)
        try:
            return ray.get(ref, timeout=self.job.measure.timeout * max(1, len(texts)))
        except Exception as e:
            self._replace(0)
            return [failed(f"ray worker: {type(e).__name__}: {e}") for _ in texts]

    def _replace(self, a: int) -> None:
        ray = _ray()
        try:
            ray.kill(self._actors[a])
        except Exception:
            pass
        self._actors[a] = self._new(a)

    def _kill_all(self) -> None:
        if not self._actors:
            return
        ray = _ray()
        for actor in self._actors:
            try:
                ray.kill(actor)
            except Exception:
                pass
        self._actors = []

    def close(self) -> None:
        self._kill_all()
        if self._owns:
            ray = _ray()
            if ray.is_initialized():
                ray.shutdown()
            self._owns = False

    def __enter__(self) -> RayRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
