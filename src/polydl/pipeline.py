"""The whole compiler in one function: read :func:`compile_kernel` top to bottom.

DSL kernel (``ir.Kernel``, parsed by ``dsl/parse.py``)
  -> bind sizes -> verify -> prove bounds -> dependences -> schedule -> loop tree
  -> LLVM IR (templates) -> machine code (llvmlite) -> :class:`CompiledKernel`.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping
from dataclasses import replace

from .codegen import jit
from .codegen.compiled import CompiledKernel
from .codegen.llvm import emit_module
from .errors import DSLError, where
from .ir import poly
from .ir.nodes import Kernel
from .transform.gather import copy_cost, gather_operands
from .transform.pack import pack_operands

# isl contexts are not thread-safe: one compilation at a time walks isl.
_isl_lock = threading.RLock()

# A contraction doing less than 1/SMALL_CONTRACTION of the largest one's work is not ranked.
SMALL_CONTRACTION = 16

# Check the IR with ir/verify.py between passes (the test suite turns this on; conftest.py).
VERIFY = os.environ.get("POLYDL_VERIFY", "") not in ("", "0")


def _checked(kernel: Kernel) -> Kernel:
    if VERIFY:
        from .ir.verify import verify

        verify(kernel)
    return kernel


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
    target=None,
    optimize: bool = True,
    variant: int = 0,
) -> CompiledKernel:
    """Compile a parsed DSL kernel for the given sizes, thread count and target CPU.

    ``optimize=False`` keeps the plain schedule of the source (the oracle path); ``variant``
    takes the variant of that rank instead of the cost model's best (0).
    """
    from .analysis.bounds import check_bounds
    from .analysis.deps import parallel_dims

    threads = default_threads() if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads}")
    from .optimize.target import resolve

    tgt = resolve(target)
    cpu = tgt.llvm_cpu
    with _isl_lock:
        # 1. Every size parameter bound to a positive int.
        bound = _checked(bind_sizes(kernel, sizes))
        # 2. Every access provably inside its tensor (BoundsError with a witness otherwise).
        check_bounds(bound)
        # 3. Contraction operands strided along the output's contiguous dimension (a strided
        #    NCHW conv's input) are gathered once into dense scratch (transform/gather.py).
        candidates = [bound]
        if optimize:
            bound = candidates[0] = _checked(gather_operands(bound))
            # a guarded contraction's operand may be gathered too (its im2col), instead of
            # splitting its guards away: both are lowered, the cost model keeps one
            wide = _checked(gather_operands(bound, guarded=True))
            if wide is not bound:
                candidates.append(wide)
        # 4. Contractions become BRGEMM calls on blocks; the cost model ranks the loops around
        #    them (order, tiles, parallel loops) for the target's caches and cores.
        isa = brgemm_isa(cpu)
        if optimize:
            bound, (lowered, micro_par, variants) = _cheapest(
                candidates, isa, target=tgt, threads=threads, variant=variant
            )
        else:
            lowered, micro_par, variants = bound, {}, []
        _checked(lowered)
        # 5. Loops that carry no dependence (reductions included) may run in parallel.
        threaded = threads > 1 and jit.gomp_available()
        dims = parallel_dims(bound) if threaded else frozenset()
        parallel = (
            {s.name: micro_par.get(s.name, dims) for s in lowered.statements} if threaded else {}
        )
        # 6. The schedule as a loop tree, from isl's AST generator.
        sched = poly.union(poly.schedule(lowered, s) for s in lowered.statements)
        tree = poly.ast(sched, poly.context(lowered), parallel)
        # 7. Widely strided B blocks that later calls read again are copied into dense scratch
        #    buffers once (transform/pack.py), at most an L2's worth.
        if optimize:
            tree = pack_operands(lowered, tree, max_bytes=_scratch_bytes(tgt))
    # 8. LLVM IR through the templates; JIT happens on first call (or asm on demand).
    ir = emit_module(lowered, tree, parallel=threaded, cpu=cpu, isa=isa, threads=threads)
    return CompiledKernel(
        kernel=lowered, tree=tree, llvm_ir=ir, cpu=cpu, threads=threads, variants=variants
    )


def _cheapest(candidates: list[Kernel], isa: str, *, target, threads: int, variant: int):
    """(kernel, lowering) of the candidate whose lowered contractions plus gather copies the
    cost model predicts cheapest; with one candidate, its lowering (small cells unranked)."""
    if len(candidates) == 1:
        out = lower_contractions(
            candidates[0], isa, target=target, threads=threads, variant=variant
        )
        return candidates[0], out[:3]
    best = None
    for k in candidates:
        try:
            *out, cost = lower_contractions(
                k, isa, target=target, threads=threads, variant=variant, rank_all=True
            )
        except ValueError:  # fewer ranked variants than ``variant`` on this candidate
            continue
        cost += copy_cost(k, candidates[0], target) + _plain_cost(out[0], target)
        if best is None or cost < best[0]:
            best = (cost, k, out)
    if best is None:
        raise ValueError(f"variant={variant}: no candidate lowering has that many variants")
    cost, k, (lowered, par, texts) = best
    gathered = [t.name for t in k.temps if t not in candidates[0].temps]
    note = (
        f"gathers {', '.join(gathered)} (instead of splitting guards)" if gathered else "no gather"
    )
    texts = [
        f"lowering: {note}, predicted cost {cost:.4g} (the cheapest of {len(candidates)})",
        *texts,
    ]
    return k, (lowered, par, texts)


# cycles of one instance of a statement left on the plain (scalar) path
PLAIN_CYCLES = 2.0


def _plain_cost(lowered: Kernel, target) -> float:
    """Cost-model units of the statements no BRGEMM call took (a guarded remainder nest),
    copies of gathered operands aside: their bounding boxes' instances at PLAIN_CYCLES each, in
    the L1 bytes a core loads per cycle (the unit of optimize/cost.py)."""
    from .optimize.cost import LOAD_PORTS

    temps = {t.name for t in lowered.temps}
    per_cycle = LOAD_PORTS * target.vector_bits // 8
    return sum(
        poly.box_size(poly.domain(lowered, s)) * PLAIN_CYCLES * per_cycle
        for s in lowered.statements
        if s.micro is None and s.target.tensor not in temps
    )


def _scratch_bytes(tgt) -> int:
    """Scratch that packing may use per buffer: the target's L2 (its largest private cache), or
    one core's share of a shared cache up to 8 MiB (the copy then streams from there, densely)."""
    private = [c.size_bytes for c in tgt.caches if not c.shared]
    shared = [c.size_bytes // tgt.cores for c in tgt.caches if c.shared]
    return max([*private, min(max(shared, default=0), 8 << 20)], default=256 * 1024)


def brgemm_isa(cpu: str) -> str:
    """The BRGEMM family for code compiled for ``cpu`` (the host's best one for the host)."""
    from .kernels import select_isa

    feats = jit.host_features() if cpu == jit.host_cpu() else jit.cpu_features(cpu)
    return select_isa(feats).name


def lower_contractions(
    kernel: Kernel,
    isa: str,
    *,
    target=None,
    threads: int = 1,
    rank: bool = True,
    variant: int = 0,
    rank_all: bool = False,
) -> tuple[Kernel, dict[str, frozenset[int]], list[str], float]:
    """Every foldable contraction of ``kernel`` computed by BRGEMM calls.

    Returns the new kernel, the parallel schedule dimensions of each new statement, the text
    of the ranked variants of each contraction (what ``show("variants")`` prints) and the sum of
    the chosen variants' predicted costs (``rank_all``: small contractions ranked too, so that
    the sum covers every call).
    ``variant`` picks the variant of that rank instead of the best one (cost-model studies and
    tuning); ranks past the last legal variant are refused.
    """
    from .analysis.contraction import find_all
    from .kernels import FAMILIES
    from .optimize.plan import default_plan, ranked
    from .optimize.search import format_variants
    from .transform.brgemm import foldable, lower
    from .transform.coalesce import coalesce_columns
    from .transform.split import split_guards

    # Guarded contractions (a padded conv written by hand): index-set splitting gives their
    # guard-free cells nests of their own, which find_all then takes (transform/split.py).
    kernel = _checked(split_guards(kernel))
    # Columns that continue in the next row (a 1x1 stride-1 NCHW conv: p and q are one run of
    # P*Q pixels) become one iterator, so that a call covers more than one row (coalesce.py).
    kernel = _checked(coalesce_columns(kernel))
    lanes = FAMILIES[isa].vector_width
    parallel: dict[str, frozenset[int]] = {}
    texts: list[str] = []
    total = 0.0
    found = [c for c in find_all(kernel) if foldable(kernel, c)]
    work = {c.stmt: math.prod(hi - lo + 1 for _, (lo, hi) in c.extents) for c in found}
    for c in found:
        top = max(10, variant + 1)
        # the small cells of a split nest (a border row of a padded conv) take the default plan:
        # ranking them costs more compile time than their run time could give back
        small = not rank_all and work[c.stmt] * SMALL_CONTRACTION < max(work.values())
        # ranked on its own nest (foldable: the folded statements, in place between the others)
        nest = [s for s in kernel.statements if s.name in (c.init, c.stmt, c.epilogue)]
        nest_k = replace(kernel, statements=tuple(nest))
        choices = (
            ranked(nest_k, c, target=target, threads=threads, top=top) if rank and not small else []
        )
        if variant >= max(1, len(choices)) and not small:
            raise ValueError(f"variant={variant}: {c.stmt} has {len(choices)} ranked variants")
        if choices:
            chosen, plan = choices[min(variant, len(choices) - 1)]
            texts.append(
                f"contraction {c.stmt} ({c.c} += {c.a} x {c.b}), running rank {variant + 1}:\n"
                + format_variants([v for v, _ in choices], top=len(choices))
            )
            n_par = chosen.n_parallel
            total += chosen.cost.total
        else:
            plan = default_plan(c, lanes)
            n_par = len(plan.loops) if plan else 0
        if plan is None:
            continue
        before = {s.name for s in kernel.statements}
        kernel = _checked(lower(kernel, c, plan))
        for s in kernel.statements:
            if s.name not in before:
                parallel[s.name] = frozenset(range(1, 1 + n_par))
    return kernel, parallel, texts, total
