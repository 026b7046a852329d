"""The whole compiler in one function: read :func:`compile_kernel` top to bottom.

DSL kernel (``ir.Kernel``, parsed by ``dsl/parse.py``)
  -> bind sizes -> verify -> prove bounds -> dependences -> schedule -> loop tree
  -> LLVM IR (templates) -> machine code (llvmlite) -> :class:`CompiledKernel`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

from .codegen import jit
from .codegen.compiled import CompiledKernel
from .codegen.llvm import emit_module
from .errors import DSLError, where
from .ir import poly
from .ir.nodes import Kernel

# isl contexts are not thread-safe: one compilation at a time walks isl.
_isl_lock = threading.RLock()


def default_threads() -> int:
    """Every core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def bind_sizes(kernel: Kernel, sizes: Mapping[str, int]) -> Kernel:
    """The kernel with every size parameter bound to a positive int (DSLError otherwise)."""
    here = where(kernel.filename, kernel.line)
    unknown = sorted(set(sizes) - set(kernel.sizes))
    if unknown:
        raise DSLError(
            f"{here} kernel {kernel.name!r} has no size parameter {', '.join(map(repr, unknown))};"
            f" its sizes are {list(kernel.sizes)}"
        )
    missing = [s for s in kernel.sizes if s not in sizes]
    if missing:
        raise DSLError(
            f"{here} kernel {kernel.name!r}: size parameter {', '.join(map(repr, missing))} is not "
            f"bound; pass it to pd.compile, e.g. {missing[0]}=64"
        )
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise DSLError(
                f"{here} kernel {kernel.name!r}: size {name}={value!r} must be a positive int"
            )
    return kernel.bind(sizes)


def compile_kernel(
    kernel: Kernel,
    sizes: Mapping[str, int],
    *,
    threads: int | None = None,
    target: str | None = None,
    optimize: bool = True,
) -> CompiledKernel:
    """Compile a parsed DSL kernel for the given sizes, thread count and target CPU.

    ``optimize=False`` keeps the plain schedule of the source (the oracle path).
    """
    from .analysis.bounds import check_bounds
    from .analysis.deps import parallel_dims

    threads = default_threads() if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads}")
    cpu, _features = jit.resolve_cpu(target)
    with _isl_lock:
        # 1. Every size parameter bound to a positive int.
        bound = bind_sizes(kernel, sizes)
        # 2. Every access provably inside its tensor (BoundsError with a witness otherwise).
        check_bounds(bound)
        # 3. Loops that carry no dependence (reductions included) may run in parallel.
        threaded = threads > 1 and jit.gomp_available()
        dims = parallel_dims(bound) if threaded else frozenset()
        # 4. Contractions become BRGEMM calls on blocks (their loops around are all parallel).
        isa = brgemm_isa(cpu)
        lowered = lower_contractions(bound, isa) if optimize else bound
        parallel = (
            {
                s.name: (frozenset(range(poly.schedule_ndim(lowered, s))) if s.micro else dims)
                for s in lowered.statements
            }
            if threaded
            else {}
        )
        # 5. The schedule as a loop tree, from isl's AST generator.
        sched = poly.union(poly.schedule(lowered, s) for s in lowered.statements)
        tree = poly.ast(sched, poly.context(lowered), parallel)
    # 6. LLVM IR through the templates; JIT happens on first call (or asm on demand).
    ir = emit_module(lowered, tree, parallel=threaded, cpu=cpu, isa=isa, threads=threads)
    return CompiledKernel(kernel=lowered, tree=tree, llvm_ir=ir, cpu=cpu, threads=threads)


def brgemm_isa(cpu: str) -> str:
    """The BRGEMM family for code compiled for ``cpu`` (the host's best one for the host)."""
    from .kernels import select_isa

    feats = jit.host_features() if cpu == jit.host_cpu() else jit.cpu_features(cpu)
    return select_isa(feats).name


def lower_contractions(kernel: Kernel, isa: str) -> Kernel:
    """Every foldable contraction of ``kernel`` computed by BRGEMM calls."""
    from .analysis.contraction import find_all
    from .kernels import FAMILIES
    from .optimize.plan import default_plan
    from .transform.brgemm import foldable, lower

    lanes = FAMILIES[isa].vector_width
    for c in find_all(kernel):
        if not foldable(kernel, c):
            continue
        plan = default_plan(c, lanes)
        if plan is not None:
            kernel = lower(kernel, c, plan)
    return kernel
