"""``pd.compile``: a DSL kernel and its sizes in, a :class:`CompiledKernel` out."""

from __future__ import annotations

from typing import Any

from .codegen.compiled import CompiledKernel
from .errors import PolyDLError


def compile(
    kern: Any,
    *,
    threads: int | None = None,
    target: str | None = None,
    optimize: bool = True,
    variant: int = 0,
    schedule: Any = None,
    fuse: bool = True,
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
    a contraction still fold into its calls).
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
    return compile_kernel(
        ir,
        sizes,
        threads=threads,
        target=target,
        optimize=optimize,
        variant=variant,
        schedule=record,
        fuse=fuse,
    )
