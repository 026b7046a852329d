"""The builder: a schedule record in, a compiled kernel out (``pd.compile(schedule=record)``).

A :class:`Workload` is what the tuner tunes: a kernel's IR and its size bindings. It is plain,
picklable data (the IR keeps isl texts), so that a worker process or a Ray actor receives it
whole and builds there; ``pd.compile`` takes it like a ``@pd.kernel`` function (it reads
``.ir``). Every build is a replay: the record's plans exactly, each checked for legality
against the kernel's dependences (``ScheduleError`` otherwise), nothing ranked, no tuned
record looked up (a trial measures the record it names, not what the database holds).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..codegen.compiled import CompiledKernel
from ..errors import TuneError
from ..ir.nodes import Kernel
from ..schedule import Schedule


@dataclass(frozen=True, kw_only=True)
class Workload:
    """A kernel's IR and the sizes it is tuned for (``pd.compile`` accepts it as a kernel)."""

    ir: Kernel
    sizes: tuple[tuple[str, int], ...] = ()

    @classmethod
    def of(cls, kern, sizes: Mapping[str, int]) -> Workload:
        """The workload of a ``@pd.kernel`` function (or anything with ``.ir``) and sizes."""
        ir = getattr(kern, "ir", None)
        if not isinstance(ir, Kernel):
            raise TuneError(f"pd.tune expects a @pd.kernel function, got {type(kern).__name__}")
        return cls(ir=ir, sizes=tuple(sorted((str(k), int(v)) for k, v in sizes.items())))

    @property
    def name(self) -> str:
        return self.ir.name

    @property
    def size_map(self) -> dict[str, int]:
        return dict(self.sizes)

    def describe(self) -> str:
        """``conv2d`` or ``gemm(M=64, N=64, K=64)``."""
        if not self.sizes:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.sizes)})"


def untuned(workload: Workload, *, threads: int) -> CompiledKernel:
    """What ``pd.compile`` gives without a tuned record: the cost model's pick."""
    from ..api import compile as pd_compile

    return pd_compile(workload, threads=threads, tuned=False, **workload.size_map)


def build(workload: Workload, record: Schedule, *, threads: int) -> CompiledKernel:
    """The kernel compiled exactly as ``record`` says (``ScheduleError`` when it does not fit
    or breaks a dependence). Not yet JIT-compiled: ``.load()`` does that."""
    from ..api import compile as pd_compile

    return pd_compile(workload, threads=threads, schedule=record, **workload.size_map)


def reference(workload: Workload) -> CompiledKernel:
    """The oracle every trial is checked against: the plain schedule of the source
    (``optimize=False``), one thread."""
    from ..api import compile as pd_compile

    return pd_compile(workload, threads=1, optimize=False, **workload.size_map)
