"""``pd.compile``: a DSL kernel and its sizes in, a :class:`CompiledKernel` out."""

from __future__ import annotations

import os
from typing import Any

from .codegen.compiled import CompiledKernel
from .errors import PolyDLError
from .schedule import ScheduleError


def compile(
    kern: Any,
    *,
    threads: int | None = None,
    target: str | None = None,
    optimize: bool = True,
    variant: int = 0,
    schedule: Any = None,
    fuse: bool | str = True,
    tuned: bool | str | os.PathLike | None = None,
    **sizes: int,
) -> CompiledKernel:  # noqa: A001
    """Compile ``kern`` (a ``@pd.kernel`` function) for the given size bindings.

    ``threads=None`` uses every core this process may use; ``target=None`` the host CPU, or a
    named LLVM CPU (``"skylake-avx512"``, ``"znver3"``, ...): ``show("asm")`` works for any
    target, running needs a host that supports it (``pd.TargetError`` otherwise).
    ``optimize=False`` keeps the plain schedule of the source: the oracle of the optimiser.
    ``variant=r`` runs the variant the cost model ranked ``r`` (0 = its pick; see
    ``show("variants")``) instead of the best one. ``schedule`` replays a record of the
    optimiser's choices (a :class:`polydl.schedule.Schedule`, its JSON text or a JSON file's
    path; ``CompiledKernel.schedule``, ``show("schedule")``): each contraction's plan exactly as
    recorded, checked for legality, nothing ranked. ``fuse=False`` leaves consecutive nests
    unfused (``show("fusion")`` says what fusion would decide; the elementwise statements after
    a contraction still fold into its calls). It also turns off conv -> conv fusion: two
    contractions where the second multiplies the first's output (a conv feeding a conv), which
    with fusion on run image by image under their batch loop, the intermediate in a per-thread
    scratch buffer of one image, when the cost model predicts that cheaper
    (``transform/fuse_contractions.py``; ``fuse="always"``: wherever legal, for cost-model
    studies; a replayed or tuned schedule fuses no such pair).

    ``tuned``: whether a record ``pd.tune`` chose for this kernel, sizes, thread count, machine
    and compiler version is used when one is in the tuning database (``show("variants")`` then
    says so). ``None`` (default): yes, unless the environment variable ``POLYDL_TUNED=0``;
    ``False``: never; a path: that database file instead of the default one. An explicit
    ``schedule=``, ``variant=``, ``target=``, ``optimize=False`` or ``fuse=False`` wins.
    """
    from .pipeline import compile_kernel

    ir = getattr(kern, "ir", None)
    if ir is None:
        raise PolyDLError(f"pd.compile expects a @pd.kernel function, got {type(kern).__name__}")
    record = None
    if schedule is not None:
        from .schedule import as_schedule

        if not optimize or variant:
            raise ValueError(
                "pd.compile: schedule= replays a record; it takes no optimize=False or variant="
            )
        record = as_schedule(schedule)
    args = dict(threads=threads, target=target, optimize=optimize, variant=variant, fuse=fuse)
    note = None
    if record is None and optimize and not variant and fuse and target in (None, "host", "native"):
        found = _tuned_record(kern, sizes, threads, tuned)
        if found is not None:
            try:
                ck = compile_kernel(ir, sizes, schedule=found.record, **args)
            except ScheduleError as e:
                note = f"tuned record from {found.path} does not replay ({e}); ranked instead"
            else:
                ck.tuned = found.describe()
                return ck
    ck = compile_kernel(ir, sizes, schedule=record, **args)
    ck.tuned = note
    return ck


def _tuned_record(kern: Any, sizes: dict, threads: int | None, tuned):
    """The tuning database's record for this compilation (polydl/tune/database.py), or None."""
    if tuned is False or (tuned is None and os.environ.get("POLYDL_TUNED", "1") in _OFF):
        return None
    from .pipeline import default_threads
    from .tune.builder import Workload
    from .tune.database import lookup

    path = None if tuned in (None, True) else tuned
    n = default_threads() if threads is None else int(threads)
    return lookup(Workload.of(kern, sizes), threads=n, path=path)


_OFF = ("0", "false", "no", "off")
