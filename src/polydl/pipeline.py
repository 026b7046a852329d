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
from dataclasses import dataclass, replace

from . import jit
from .codegen.compiled import CompiledKernel
from .codegen.llvm import emit_module
from .errors import DSLError, where
from .ir import poly
from .ir.nodes import Kernel
from .schedule import ContractionSchedule, Prediction, Schedule, ScheduleError
from .transform.brgemm import BlockPlan, foldable, lower
from .transform.coalesce import coalesce_columns
from .transform.coalesce_reduction import coalesce_reduction
from .transform.fuse import fuse_nests
from .transform.fuse_contractions import batch_first, members, score
from .transform.fuse_contractions import contract as contract_tensor
from .transform.fuse_contractions import nest as share_batch_loop
from .transform.fuse_contractions import offer as offer_contractions
from .transform.fuse_contractions import private as private_tensor
from .transform.fuse_contractions import verdicts as merge_verdicts
from .transform.fuse_gather import moved as gathers_moved
from .transform.fuse_gather import place as place_gather
from .transform.fuse_rows import compact as compact_rows
from .transform.fuse_rows import plan as plan_rows
from .transform.gather import copy_cost, gather_operands
from .transform.pack import pack_operands
from .transform.prefetch import prefetch_operands
from .transform.split import split_guards
from .transform.threads import assign_threads
from .transform.transpose import transpose_nests

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
    schedule: Schedule | None = None,
    fuse: bool | str = True,
) -> CompiledKernel:
    """Compile a parsed DSL kernel for the given sizes, thread count and target CPU.

    ``optimize=False`` keeps the plain schedule of the source (the oracle path); ``variant``
    takes the variant of that rank instead of the cost model's best (0); ``schedule`` replays
    a record (:mod:`polydl.schedule`) instead of ranking; ``fuse=False`` keeps the nests apart,
    ``fuse="always"`` fuses conv -> conv pairs wherever legal (cost-model studies).
    """
    from .analysis.deps import parallel_dims

    threads = default_threads() if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads}")
    from .target import resolve

    tgt = resolve(target)
    cpu = tgt.llvm_cpu
    with _isl_lock:
        # 1.-4. sizes bound, bounds proved, nests fused, strided operands gathered: the kernels
        #       whose contractions step 5 lowers (one, or a guarded contraction's two ways)
        candidates, fusion, groups = _front(
            kernel, sizes, tgt, threads=threads, optimize=optimize, fuse=fuse
        )
        bound = candidates[0]
        # 5. Contractions become BRGEMM calls on blocks; the cost model ranks the loops around
        #    them (order, tiles, parallel loops) for the target's caches and cores.
        isa = tgt.isa  # the BRGEMM family: the target's (kernels/isa.select_isa on its features)
        record = None
        if optimize:
            bound, low = _cheapest(
                candidates,
                isa,
                target=tgt,
                threads=threads,
                variant=variant,
                replay=schedule,
                groups=groups,
            )
            lowered, micro_par = low.kernel, low.parallel
            # one verdict per pair: this pass's final one for conv -> conv pairs
            fusion = merge_verdicts(fusion, low.fusion)
            record = Schedule(
                kernel=kernel.name,
                sizes=tuple(sorted(bound.size_values.items())),
                target=cpu,
                threads=threads,
                lowering="gather" if bound is not candidates[0] else "split",
                contractions=low.chosen,
                alternatives=low.alternatives,
            )
        else:
            lowered, micro_par = bound, {}
        # 5b. Copy nests that transpose a 2-D slice (out[.., j, i] = in[.., i, j], borders and
        #     offsets as an NCW -> NWC pack has them) become calls of the tile-transpose
        #     microkernel, register tiles of the ISA's vector width (transform/transpose.py).
        if optimize:
            lowered, tiles_par = transpose_nests(lowered, tgt)
            micro_par = {**micro_par, **tiles_par}
        _checked(lowered)
        # 6. Loops that carry no dependence (reductions included) may run in parallel.
        threaded = threads > 1 and jit.gomp_available()
        dims = parallel_dims(bound) if threaded else frozenset()
        parallel = (
            {s.name: micro_par.get(s.name, dims) for s in lowered.statements} if threaded else {}
        )
        # 7. The schedule as a loop tree, from isl's AST generator.
        sched = poly.union(poly.schedule(lowered, s) for s in lowered.statements)
        tree = poly.ast(sched, poly.context(lowered), parallel)
        # 8. Widely strided B blocks that later calls read again are copied into dense scratch
        #    buffers once (transform/pack.py), at most an L2's worth; bf16 B blocks into VNNI-2
        #    pairs where the target's bf16 kernels multiply pairs and the cost model says so.
        if optimize:
            tree = pack_operands(
                lowered, tree, max_bytes=tgt.scratch_bytes(), skip=low.unpacked, target=tgt
            )
            # 8b. Widely strided B blocks that nothing packs (read once) are prefetched by the
            #     call before, at the distance the loop nest steps B by (transform/prefetch.py;
            #     how many calls ahead, or not at all, is the schedule record's ``prefetch``).
            tree = prefetch_operands(lowered, tree)
        # 9. Which parallel loops run as parallel regions, collapsed where that balances the
        #    threads better (transform/threads.py): every threading decision after the schedule.
        if threaded:
            tree = assign_threads(tree, threads=threads, sizes=lowered.size_values)
    # 10. LLVM IR through the templates; JIT happens on first call (or asm on demand).
    ir = emit_module(lowered, tree, parallel=threaded, cpu=cpu, isa=isa, threads=threads)
    return CompiledKernel(
        kernel=lowered,
        tree=tree,
        llvm_ir=ir,
        cpu=cpu,
        threads=threads,
        schedule=record,
        fusion=fusion,
    )


def _front(
    kernel: Kernel,
    sizes: Mapping[str, int],
    tgt,
    *,
    threads: int,
    optimize: bool,
    fuse: bool | str,
) -> tuple[list[Kernel], tuple, tuple]:
    """Steps 1-4 of :func:`compile_kernel` (under the isl lock): the candidate kernels whose
    contractions are lowered (the split one first, then a guarded contraction's gathered one),
    the fusion decisions, and the legal conv -> conv groups step 5 scores."""
    from .analysis.bounds import check_bounds

    # 1. Every size parameter bound to a positive int.
    bound = _checked(bind_sizes(kernel, sizes))
    # 2. Every access provably inside its tensor (BoundsError with a witness otherwise).
    check_bounds(bound)
    # 3. Consecutive nests fused where isl proves it legal and the working-set model says
    #    their shared data then stays in a smaller cache (transform/fuse.py); the nests of
    #    contractions and of what folds into their calls are the optimiser's (step 5).
    fusion: tuple = ()
    groups: tuple = ()
    if optimize and fuse:
        bound, fusion = fuse_nests(bound, tgt, threads=threads, reserved=_reserved(bound))
        # 3b. Consecutive contraction nests, the second multiplying the first's output (a conv
        #     feeding a conv): legal pairs offered to step 5, which scores them with the ranked
        #     costs and shares their batch loop (transform/fuse_contractions.py).
        groups, refused = offer_contractions(bound, tgt, threads=threads)
        if fuse == "always":
            groups = tuple(replace(g, forced=True) for g in groups)
        fusion = merge_verdicts(fusion, refused)
    # 4. Contraction operands strided along the output's contiguous dimension (a strided
    #    NCHW conv's input) are gathered once into dense scratch (transform/gather.py).
    candidates = [bound]
    if optimize:
        bound = candidates[0] = _checked(gather_operands(bound))
        # a guarded contraction's operand may be gathered too (its im2col), instead of
        # splitting its guards away: both are lowered, the cost model keeps one
        wide = _checked(gather_operands(bound, guarded=True))
        if wide is not bound:
            candidates.append(wide)
    return candidates, fusion, groups


def _reserved(kernel: Kernel) -> frozenset[str]:
    """Statements whose nests loop fusion leaves alone: every contraction (recognised, or a
    product of two tensors accumulated, like a guarded conv) and what folds into its calls."""
    from .analysis.contraction import factors, find_all
    from .ir.nodes import Load

    names = {n for c in find_all(kernel) for n in c.folded}
    products = {
        s.target.tensor
        for s in kernel.statements
        if s.op == "+=" and sum(isinstance(f, Load) for f in factors(s.expr)) >= 2
    }
    # (a guarded contraction is found only once split: what writes its tensor may fold)
    names |= {s.name for s in kernel.statements if s.target.tensor in products}
    return frozenset(names)


def _cheapest(
    candidates: list[Kernel],
    isa: str,
    *,
    target,
    threads: int,
    variant: int,
    replay: Schedule | None = None,
    groups: tuple = (),
) -> tuple[Kernel, Lowering]:
    """(kernel, lowering) of the candidate whose lowered contractions plus gather copies the
    cost model predicts cheapest; with one candidate, its lowering (small cells unranked);
    with ``replay``, the candidate the record names, lowered as it says."""
    if replay is not None:
        k = candidates[-1] if replay.lowering == "gather" else candidates[0]
        if replay.lowering == "gather" and len(candidates) == 1:
            raise ScheduleError(
                f"schedule of {replay.kernel}: lowering 'gather', but no guarded contraction of "
                "this kernel can gather its operand"
            )
        return k, lower_contractions(k, isa, target=target, threads=threads, replay=replay)
    if len(candidates) == 1:
        k = candidates[0]
        low = lower_contractions(
            k, isa, target=target, threads=threads, variant=variant, groups=groups
        )
        return k, low
    best = None
    for k in candidates:
        try:
            low = lower_contractions(
                k,
                isa,
                target=target,
                threads=threads,
                variant=variant,
                rank_all=True,
                groups=groups,
            )
        except ValueError:  # fewer ranked variants than ``variant`` on this candidate
            continue
        cost = low.cost + copy_cost(k, candidates[0], target) + _plain_cost(low.kernel, target)
        if best is None or cost < best[0]:
            best = (cost, k, low)
    if best is None:
        raise ValueError(f"variant={variant}: no candidate lowering has that many variants")
    return best[1], best[2]


@dataclass(frozen=True, kw_only=True)
class Lowering:
    """What :func:`lower_contractions` made of a kernel."""

    kernel: Kernel  # with BRGEMM statements
    parallel: dict[str, frozenset[int]]  # parallel schedule dimensions of each new statement
    chosen: tuple[ContractionSchedule, ...]  # the plan of each contraction, as a record
    alternatives: tuple[tuple[str, tuple[ContractionSchedule, ...]], ...]  # ranked, per stmt
    cost: float  # the chosen variants' predicted costs, summed
    unpacked: frozenset[str] = frozenset()  # BRGEMM statements whose plan says pack=False
    fusion: tuple = ()  # transform/fuse_contractions verdicts (fuse.Candidate) of the groups


def _plain_cost(lowered: Kernel, target) -> float:
    """Cost-model units of the statements no BRGEMM call took (a guarded remainder nest),
    copies of gathered operands aside: their bounding boxes' instances at the target's
    ``plain_cycles`` each, in the L1 bytes a core loads per cycle (the unit of optimize/cost.py)."""
    temps = {t.name for t in lowered.temps}
    per_cycle = target.l1_bytes_per_cycle
    return sum(
        poly.box_size(poly.domain(lowered, s)) * target.plain_cycles * per_cycle
        for s in lowered.statements
        if s.micro is None and s.target.tensor not in temps
    )


def lower_contractions(
    kernel: Kernel,
    isa: str,
    *,
    target=None,
    threads: int = 1,
    rank: bool = True,
    variant: int = 0,
    rank_all: bool = False,
    replay: Schedule | None = None,
    groups: tuple = (),
) -> Lowering:
    """Every foldable contraction of ``kernel`` computed by BRGEMM calls (:class:`Lowering`).

    Each contraction is ranked by the cost model (``rank_all``: the small ones too, so that the
    summed cost covers every call) and takes the variant of rank ``variant`` (cost-model
    studies and tuning; ranks past the last legal variant are refused), or the plan ``replay``
    records for it (checked for legality; ``ScheduleError`` when the record does not fit).
    ``groups`` (``transform/fuse_contractions.offer``): pairs of contraction nests that may share
    their batch loop; each is scored with the ranked costs and, when it pays, lowered image by
    image (a replayed schedule fuses none).
    """
    from .kernels import FAMILIES
    from .optimize.plan import default_plan, ranked

    kernel, found = contractions_of(kernel)
    lanes = FAMILIES[isa].vector_width
    parallel: dict[str, frozenset[int]] = {}
    chosen: list[ContractionSchedule] = []
    alternatives: list[tuple[str, tuple[ContractionSchedule, ...]]] = []
    total = 0.0
    unpacked: set[str] = set()
    work = {c.stmt: math.prod(hi - lo + 1 for _, (lo, hi) in c.extents) for c in found}
    plans: list[tuple] = []  # (contraction, plan, parallel loops, predicted cost)
    for c in found:
        what = f"{c.c} += {c.a} x {c.b}"
        nest_k = contraction_nest(kernel, c)
        if replay is not None:
            entry = replay.entry(c.stmt)
            if entry is None:
                raise ScheduleError(
                    f"schedule of {replay.kernel} has no entry for contraction {c.stmt} "
                    f"({what}, line {kernel.statement(c.stmt).line}); its entries: "
                    f"{[e.stmt for e in replay.contractions]}"
                )
            plan = _replayed_plan(nest_k, c, entry, isa)
            chosen.append(replace(entry, what=what))
            n_par = entry.n_parallel
            predicted = 0.0
        else:
            top = max(10, variant + 1)
            # the small cells of a split nest (a border row of a padded conv) take the default
            # plan: ranking them costs more compile time than their run time could give back
            small = not rank_all and work[c.stmt] * SMALL_CONTRACTION < max(work.values())
            choices = (
                ranked(nest_k, c, target=target, threads=threads, top=top)
                if rank and not small
                else []
            )
            if variant >= max(1, len(choices)) and not small:
                raise ValueError(f"variant={variant}: {c.stmt} has {len(choices)} ranked variants")
            records = [_record(c, what, v, p, i + 1) for i, (v, p) in enumerate(choices)]
            if choices:
                pick = min(variant, len(choices) - 1)
                (var, plan), record = choices[pick], records[pick]
                n_par = var.n_parallel
                predicted = var.cost.total
                total += predicted
            else:
                plan = default_plan(c, lanes)
                if plan is None:
                    continue
                n_par = len(plan.loops)
                predicted = 0.0
                record = _record(c, what, None, plan, None)
            chosen.append(record)
            if records:
                alternatives.append((c.stmt, tuple(records)))
        plans.append((c, plan, n_par, predicted))
    # Conv -> conv groups: scored on the ranked costs; the fused ones run their contractions
    # image by image (the batch loop first in every plan, parallel alone), shared below.
    verdicts, fused, plans, chosen, saved = _score_groups(
        kernel, groups if replay is None else (), plans, chosen, threads, target
    )
    total -= saved
    placements: list = []
    if replay is None and target is not None:
        plans, chosen = _streamed_stores(kernel, plans, chosen, isa, target)
        # A gathered copy (an im2col) that spills the caches whole is made where its calls
        # read it: per image, or per block of output rows, its plan tiled to match, when the
        # cost model says so (transform/fuse_gather.py; placed after lowering, below).
        plans, chosen, placements, gain = _place_gathers(
            kernel, plans, chosen, fused, target, threads
        )
        total -= gain
    for i, (c, plan, n_par, _) in enumerate(plans):
        what = f"{c.c} += {c.a} x {c.b}"
        before = {s.name for s in kernel.statements}
        try:
            kernel = _checked(lower(kernel, c, plan))
        except ValueError as e:
            if replay is None:
                raise
            raise ScheduleError(
                f"contraction {c.stmt} ({what}): schedule {plan.loops}: {e}"
            ) from None
        for s in kernel.statements:
            if s.name not in before:
                parallel[s.name] = frozenset(range(1, 1 + n_par))
                if not chosen[i].pack:
                    unpacked.add(s.name)
    for pl in placements:
        kernel = _checked(place_gather(kernel, pl))
        for name in gathers_moved(kernel, pl):
            parallel[name] = frozenset({1}) if threads > 1 else frozenset()
    for group, span, tiling in fused:
        # the image loop (several images) or the loop over blocks of rows (one image) shared
        shared = share_batch_loop(kernel, span, iterator=tiling is None)
        if shared is None:  # checked by _score_groups before lowering
            raise AssertionError(f"{group.first} | {group.second}: no batch loop to share")
        kernel, moved = shared
        for name in moved:
            parallel[name] = frozenset({1}) if threads > 1 else frozenset()
        if tiling is not None:
            if tiling.shape is not None:  # the scratch intermediate: one block per thread
                kernel = _checked(compact_rows(kernel, group.tensor, tiling, moved))
        elif group.scratch and private_tensor(
            kernel, [kernel.statement(n) for n in moved], group.tensor
        ):
            kernel = _checked(contract_tensor(kernel, group.tensor, moved))
    if replay is not None:
        extra = {e.stmt for e in replay.contractions} - {c.stmt for c in found}
        if extra:
            raise ScheduleError(
                f"schedule of {replay.kernel}: entries {sorted(extra)} match no contraction of "
                f"the kernel (its contractions: {[c.stmt for c in found]})"
            )
    return Lowering(
        kernel=kernel,
        parallel=parallel,
        chosen=tuple(chosen),
        alternatives=tuple(alternatives),
        cost=total,
        unpacked=frozenset(unpacked),
        fusion=verdicts,
    )


def _place_gathers(kernel: Kernel, plans: list, chosen: list, fused: list, target, threads: int):
    """(plans, records, placements, cost units saved): each contraction outside a fused group
    whose gathered copy :func:`transform.fuse_gather.plan` places per image or per block."""
    from .transform.fuse_gather import plan as plan_gather

    spans = [span for _, span, _ in fused]
    plans, chosen, placements, gain = list(plans), list(chosen), [], 0.0
    for i, entry in enumerate(plans):
        pos = poly.top_position(kernel, kernel.statement(entry[0].stmt))
        if pos is None or any(lo <= pos <= hi for lo, hi in spans):
            continue
        pl, new, _, saved = plan_gather(
            kernel, entry, contraction_nest(kernel, entry[0]), target, threads
        )
        if pl is None:
            continue
        plans[i], gain = new, gain + saved
        _, bp, n_par, _ = new
        chosen[i] = replace(chosen[i], bm=bp.bm, bn=bp.bn, loops=bp.loops, n_parallel=n_par)
        placements.append(pl)
    return plans, chosen, placements, gain


def _streamed_stores(kernel: Kernel, plans: list, chosen: list, isa: str, target):
    """The plans with non-temporal stores of C where C is a kernel argument, the kernel's
    arguments together larger than the caches keep (``transform/transpose.past_caches`` of
    their bytes: the kernel's own streams push C's lines out before anything reads them) and
    the microkernel may store it so (one call zeroes and finishes each C block): no read for
    ownership of lines that leave the caches anyway. Fused chains (conv 1x1 + BN + residual +
    ReLU): ResNet-50 res2 at batch 8 (its output alone 25.7 MB) gained 1.15-1.2x at one
    thread, res3 at batch 8 (12.8 MB of output, 28.8 MB with the input and residual) 1.1x,
    res4 at batch 8 (14.4 MB in all) nothing (``benchmarks/fusion.py --nt-ab``). A scratch C
    (read again in the kernel, perhaps from a cache once fused) keeps its ordinary stores."""
    from .transform.transpose import past_caches

    temps = {t.name for t in kernel.temps}
    footprint = sum(kernel.nbytes(t.name) for t in kernel.tensors)
    plans, chosen = list(plans), list(chosen)
    for i, (c, plan, n_par, predicted) in enumerate(plans):
        nt = replace(plan, nontemporal=True)
        if plan.nontemporal or c.c in temps or micro_problem(c, nt, isa):
            continue
        if past_caches(footprint, target):
            plans[i] = (c, nt, n_par, predicted)
            chosen[i] = replace(chosen[i], nontemporal=True)
    return plans, chosen


def _score_groups(
    kernel: Kernel, groups: tuple, plans: list, chosen: list, threads: int, target=None
):
    """The conv -> conv groups (transform/fuse_contractions.py) scored on the contractions'
    ranked costs: (verdicts, [(group, nest positions, row tiling or None)] of the fused ones,
    the plans and records with the fused contractions' batch loop (or loop over blocks of
    rows: transform/fuse_rows.py) first and alone parallel, cost units saved)."""
    verdicts, fused, saved = [], [], 0.0
    plans, chosen = list(plans), list(chosen)
    for g in groups:
        span = members(kernel, g)
        if span is None:
            continue
        lo, hi = span
        inside = [
            i
            for i, (c, *_) in enumerate(plans)
            if lo <= poly.top_position(kernel, kernel.statement(c.stmt)) <= hi
        ]
        tops = {s.name: poly.top_position(kernel, s) for s in kernel.statements}
        stmts = [
            s for s in kernel.statements if tops[s.name] is not None and lo <= tops[s.name] <= hi
        ]
        if g.rows:
            found = _score_rows(kernel, g, span, inside, stmts, plans, threads, target)
            verdicts.append(found[0])
            if found[1] is None:
                continue
            _, tiling, gain = found
            saved += gain
            fused.append((g, span, tiling))
            for i, entry in tiling.plans:
                plans[i] = entry
                _, plan, n_par, _ = entry
                chosen[i] = replace(
                    chosen[i], bm=plan.bm, bn=plan.bn, loops=plan.loops, n_parallel=n_par
                )
            continue
        batch = {
            i: poly.dim_iterator(kernel, kernel.statement(plans[i][0].stmt), 1) for i in inside
        }
        loose = [s.name for s in stmts if poly.dim_iterator(kernel, s, 1) is None]
        loose += [plans[i][0].stmt for i, v in batch.items() if v not in plans[i][0].outer]
        if loose:
            why = f"{g.tensor}: {', '.join(loose)} after splitting: outermost loop not the batch"
            verdicts.append(g.candidate(False, "not fusable", why))
            continue
        cost = sum(plans[i][3] for i in inside)
        pays, why, fused_cost = score(g, cost, threads)
        verdicts.append(g.candidate(pays, "fused" if pays else "unprofitable", why))
        if not pays:
            continue
        saved += cost - fused_cost
        fused.append((g, span, None))
        for i in inside:
            c, plan, _, predicted = plans[i]
            plan = replace(plan, loops=batch_first(plan.loops, batch[i]))
            plans[i] = (c, plan, 1, predicted)
            chosen[i] = replace(chosen[i], loops=plan.loops, n_parallel=1)
    return tuple(verdicts), fused, plans, chosen, saved


def _score_rows(kernel: Kernel, g, span, inside, stmts, plans, threads: int, target):
    """(verdict, row tiling or None, cost units saved) of a one-image group: every statement
    of its nests a call of its contractions, the block of rows the cost model prefers
    (transform/fuse_rows.plan)."""
    calls = {n for i in inside for n in plans[i][0].folded}
    others = [s.name for s in stmts if s.name not in calls]
    if others:
        why = f"{g.tensor}: {', '.join(others)} between the convs would not be BRGEMM calls"
        return g.candidate(False, "not fusable", why), None, 0.0
    nests = {i: contraction_nest(kernel, plans[i][0]) for i in inside}
    private = g.scratch and private_tensor(kernel, stmts, g.tensor)
    tiling, why, fused_cost, unfused = plan_rows(
        kernel, g, inside, plans, nests, target, threads, private
    )
    if tiling is None:
        verdict = "unprofitable" if why.startswith("rows:") else "not fusable"
        return g.candidate(False, verdict, why), None, 0.0
    return g.candidate(True, "fused", why), tiling, unfused - fused_cost


def contractions_of(kernel: Kernel):
    """``(kernel, contractions)``: the foldable contractions of ``kernel`` after index-set
    splitting and column coalescing, and the kernel they are found in (the first part of
    :func:`lower_contractions`; the tuner's space reads them too)."""
    from .analysis.contraction import find_all

    # The contractions of the kernel, found once: each pass below takes those of its input
    # and returns those of its output, recognised anew only where it changed the kernel.
    found = find_all(kernel)
    # Guarded contractions (a padded conv written by hand): index-set splitting gives their
    # guard-free cells nests of their own, contractions of their own (transform/split.py).
    kernel, found = split_guards(kernel, found)
    _checked(kernel)
    # Columns that continue in the next row (a 1x1 stride-1 NCHW conv: p and q are one run of
    # P*Q pixels) become one iterator, so that a call covers more than one row (coalesce.py).
    kernel, found = coalesce_columns(kernel, found)
    # Reduction iterators that are one run in both operands (a gathered im2col's c, r, s)
    # become one k, so that a call reduces over all of them at once (coalesce_reduction.py).
    kernel, found = coalesce_reduction(kernel, found)
    _checked(kernel)
    return kernel, tuple(c for c in found if foldable(kernel, c))


def contraction_nest(kernel: Kernel, c) -> Kernel:
    """The kernel of ``c``'s own nest, on which its plans are ranked and checked: the folded
    statements in the reduction's top-level nest (foldable: in place between the others; an
    epilogue nest of its own is computed at the store and changes no loop's working set much)."""
    pos = poly.top_position(kernel, kernel.statement(c.stmt))
    nest = [
        s for s in kernel.statements if s.name in c.folded and poly.top_position(kernel, s) == pos
    ]
    return replace(kernel, statements=tuple(nest))


@dataclass(frozen=True, kw_only=True)
class LoweringChoice:
    """One way the optimiser may lower a kernel's contractions (``Schedule.lowering``), with
    what the tuner's space needs of it (``polydl/tune/space.py``)."""

    lowering: str  # "split" or "gather"
    kernel: Kernel  # the kernel the contractions are found in (split, coalesced)
    nests: tuple[tuple[object, Kernel], ...]  # each contraction and its own nest
    ranked: Lowering  # every contraction ranked by the cost model (records, alternatives)
    extra_cost: float  # gather copies and statements left plain, cost-model units


def lowering_choices(
    kernel: Kernel,
    sizes: Mapping[str, int],
    *,
    target=None,
    threads: int = 1,
    fuse: bool = True,
) -> tuple[LoweringChoice, ...]:
    """Every lowering ``compile_kernel`` chooses among for ``kernel`` (steps 1-5 without code:
    split first, then a guarded contraction's gathered operand when there is one), each with
    its contractions ranked."""
    from .target import resolve

    tgt = resolve(target)
    out = []
    with _isl_lock:
        candidates, _, _ = _front(kernel, sizes, tgt, threads=threads, optimize=True, fuse=fuse)
        for i, k in enumerate(candidates):
            low = lower_contractions(k, tgt.isa, target=tgt, threads=threads, rank_all=True)
            extra = copy_cost(k, candidates[0], tgt) + _plain_cost(low.kernel, tgt)
            ck, found = contractions_of(k)
            out.append(
                LoweringChoice(
                    lowering="gather" if i else "split",
                    kernel=ck,
                    nests=tuple((c, contraction_nest(ck, c)) for c in found),
                    ranked=low,
                    extra_cost=extra,
                )
            )
    return tuple(out)


def _record(c, what: str, var, plan, rank: int | None) -> ContractionSchedule:
    """The record of a plan (``var``: its ranked variant, with the cost model's prediction)."""
    from .optimize.search import ws_summary

    predicted = None
    if var is not None:
        cost = var.cost
        predicted = Prediction(
            rank=rank, cost=cost.total, core=cost.core, data=cost.data, working_sets=ws_summary(var)
        )
    return ContractionSchedule(
        stmt=c.stmt,
        bm=plan.bm,
        bn=plan.bn,
        bk=plan.bk,
        loops=tuple(plan.loops),
        n_parallel=var.n_parallel if var is not None else len(plan.loops),
        what=what,
        predicted=predicted,
    )


def _replayed_plan(nest_k: Kernel, c, entry: ContractionSchedule, isa: str):
    """The block plan a record gives for contraction ``c``, checked: the microkernel accepts
    its blocks and its knobs (a register tile that fits family ``isa``'s registers;
    non-temporal stores only where one call zeroes and finishes C), and the loop order breaks
    no dependence (reductions relaxed, as in ranking)."""
    from .analysis.deps import check_schedule
    from .optimize.plan import config_ok
    from .optimize.search import legal_order

    plan = BlockPlan(
        bm=entry.bm,
        bn=entry.bn,
        bk=entry.bk,
        loops=entry.loops,
        register_tile=entry.register_tile,
        k_unroll=entry.k_unroll,
        nontemporal=entry.nontemporal,
        prefetch=entry.prefetch,
    )
    where_ = f"contraction {c.stmt} ({c.c} += {c.a} x {c.b}): schedule {entry.order}"
    problem = micro_problem(c, plan, isa)
    if problem:
        raise ScheduleError(f"{where_}: {problem}")
    iters = nest_k.statement(c.stmt).iterators
    unknown = sorted({v for v, _ in entry.loops} - set(iters))
    if unknown:
        raise ScheduleError(f"{where_} loops over {unknown}, not iterators of {c.stmt} {iters}")
    if not config_ok(c, plan):
        raise ScheduleError(f"{where_}: blocks {entry.bm}x{entry.bn}x{entry.bk} do not fit")
    try:
        if not legal_order(nest_k, c.stmt, plan.loops, check_schedule):
            raise ScheduleError(f"{where_} breaks a dependence")
    except ValueError as e:
        raise ScheduleError(f"{where_}: {e}") from None
    return plan


def micro_problem(c, plan: BlockPlan, isa: str) -> str | None:
    """Why ``plan``'s microkernel knobs do not fit contraction ``c`` on family ``isa`` (None:
    they do): the register tile must fit the register file (``kernels/isa.tile_problem``);
    non-temporal stores need a zero-initialised C (the call's beta = 0) and the whole reduction
    in one call (no reduction loop of more than one trip)."""
    from .kernels import FAMILIES
    from .kernels.isa import tile_problem

    if plan.register_tile is not None:
        why = tile_problem(FAMILIES[isa], *plan.register_tile)
        if why:
            return why
    if plan.nontemporal:
        if not c.init:
            return (
                f"non-temporal stores need C={c.c} zeroed by the contraction (beta = 0); it "
                "accumulates into C"
            )
        for v, b in plan.loops:
            if (v == c.k or v in c.batch) and b < c.extent(v):
                return (
                    f"non-temporal stores need the whole reduction in one call; the loop over "
                    f"{v} steps by {b} of {c.extent(v)}"
                )
    return None
