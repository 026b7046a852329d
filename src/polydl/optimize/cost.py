"""Data-movement cost of a tiled loop nest, in the manner of PolyScientist / PolyDL.

Tavarageri et al. (arXiv 2002.02145, 2006.02230) rank loop variants by the data they move
through the cache hierarchy, computed from the working sets of the loop levels, without running
anything. This module does the same with the working sets of ``analysis/reuse.py``.

Notation, for a nest of ``L`` loops (outermost first) and one statement:

* ``WS_l`` the bytes touched by one iteration of loop ``l`` (``l = L``: one microkernel call,
  ``l = -1``: the whole nest); ``f_l(t)`` the part of tensor ``t``; ``T_l`` the trip count of
  loop ``l`` (``T_L = 1``).
* Parallel loops: the outermost ``p`` loops run in parallel, collapsed: ``P = T_0 ... T_{p-1}``
  iterations over ``u = min(threads, P)`` cores, each core doing ``ceil(P / u)`` of them. Costs
  are per core, that is the time of the slowest core: ``share = ceil(P / u) / P``.
* ``E_l = max(1, T_0 ... T_l * share)``, the iterations of level ``l`` one core runs (``E_-1 = 1``).
* ``c(l)`` the smallest cache that holds ``WS_l`` (private caches whole, shared ones divided by
  ``u``); ``c(-1)`` is memory (the data start there). ``w(c)`` the target's relative cost of a
  byte from ``c`` (``Target.byte_costs``).

Level ``l`` brings data into ``c(l)`` from ``c(l-1)`` when the two differ (otherwise its data is
already where its parent's is, and costs nothing at this boundary). The bytes it brings are, per
tensor ``t``:

* if ``t`` does not change across the iterations of loops ``l, l-1, ..., m`` (a contiguous run,
  ``f_{j-1}(t) = f_j(t)``), its block stays in ``c(l)`` for all of them (it is touched in every
  iteration, so it stays recent): ``E_{m-1} * f_l(t)``;
* otherwise consecutive iterations of loop ``l`` reuse what they share (a conv's halo) within
  ``c(l)``: ``min(E_{l-1} * f_{l-1}(t), E_l * f_l(t))``.

``cost_l = bytes_l * w(c(l-1))``. The microkernel level also reads its working set from where
it lives once per call: ``E_L * WS_L * w(c(L))`` (cheap from L1, dear from L2). The data cost
``D`` is the sum over levels; the load imbalance of parallel loops counts through ``share``.

The call itself (:class:`Call`, from the register tiles the microkernel generator uses for the
call's shape, see :func:`call_model`): a register tile of ``mr`` rows by ``nv`` vectors does, per
step of the reduction, ``mr * nv`` FMAs and ``nv + mr`` loads (B vectors, A broadcasts), so it
takes ``max(mr * nv / fma_ports, (nv + mr) / load_ports)`` cycles; each tile also loads/stores
its accumulators, each batch element and each call cost a few cycles of address arithmetic.
The tiles of one call run one after the other, each over the whole reduction: B's panel
(``batch * k`` rows of the tile's columns) is streamed once per row tile, A's once per column
tile. A panel that fits in L1 is re-read from L1 (in-core loads, part of the cycles); one that
does not comes again from where the call's working set lives, ``(passes - 1) * panel *
w(c(L))`` more per call, added to ``D``. The in-core cost is ``K = E_L * cycles * u``, with
``u = load_ports * vector bytes``, the L1 bytes a core loads per cycle (the unit of the byte
weights).

The cost of a variant is ``K + D`` (lower is better; ``D`` alone without a :class:`Call`):
the non-overlapping form of the execution-cache-memory (ECM) model. On the Ice Lake host the
overlapping form ``max(K, D)`` mispredicted: in ResNet-50's layer 1, variants whose ``D`` stays
below ``K`` still ran 1.35x slower when their loops bring the activations from L3 rather than
L2 (``p/2 kb | micro`` 116 GFLOPS, ``kb/2 p/2 kb | micro`` 86), which the sum predicts in the
right direction (1.10x) and the maximum not at all. ``K`` matters between variants through the
load balance of parallel loops (the slowest core's share of the calls) and between call shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..analysis.reuse import Footprint, Level, analyzer
from ..ir import nodes
from ..target import Target, resolve


@dataclass(frozen=True, kw_only=True)
class LevelCost:
    """What one level of a variant costs."""

    depth: int  # as Level.depth; the microkernel level is len(loops)
    loop: str  # "k/64", "p", or "micro"
    working_set: int  # bytes of one iteration
    cache: str  # "L1", "L2", "L3" or "mem": where the working set fits
    source: str  # where the bytes it brings in come from ("" if none)
    bytes: float  # bytes brought in from ``source``, per core
    weight: float  # relative cost of a byte from ``source``
    cost: float  # bytes * weight


@dataclass(frozen=True, kw_only=True)
class Call:
    """One microkernel call as its register tiles run it (see :func:`call_model`)."""

    cycles: float  # in-core cycles of one call
    flops: int  # 2 * m * n * k * batch
    row_passes: int  # register-tile rows: how often B's panel is streamed per call
    col_passes: int  # register-tile columns: how often A's panel is streamed per call
    a_panel: int  # bytes of A one column of tiles reads (all rows, whole reduction)
    b_panel: int  # bytes of B one row of tiles reads (one tile's columns, whole reduction)
    tile: str  # "7x32": the main register tile


@dataclass(frozen=True, kw_only=True)
class Cost:
    total: float  # core + data
    levels: tuple[LevelCost, ...]
    threads: int  # cores the parallel loops use
    balance: float  # P / (threads * ceil(P / threads)); 1.0 is perfect balance
    data: float = 0.0  # D: data movement, in units of an L1 byte
    core: float = 0.0  # K: in-core execution of the calls, same units (0: no call model)


def call_model(
    m: int,
    n: int,
    k: int,
    batch: int,
    target: Target,
    *,
    beta: int = 1,
    dtype_bytes: int = 4,
    ab_dtype: str = "f32",
    b_vnni: bool | None = False,
    register_tile: tuple[int, int] | None = None,
    b_copied: bool = True,
) -> Call:
    """The in-core cycles and panel traffic of one BRGEMM call of ``m x n``, reduction ``k``
    and ``batch`` blocks, with the register blocking the microkernel generator picks on
    ``target``'s ISA (:func:`polydl.kernels.isa.plan`). bf16 operands on a dot-product family
    (vdpbf16ps) take one instruction per accumulator per k pair and, per pair, one broadcast
    per A row and per B vector two loads and an interleave, or with ``b_vnni`` (B copied into
    VNNI-2 pairs first, ``transform/pack.py``) one load, plus the copy (:func:`vnni_copy_cycles`)
    in the call's cycles. ``b_vnni=None``: as the packing pass would choose for one call
    (:func:`vnni_pays` with no reuse across calls). ``register_tile``: a schedule record's
    override of the register tile (``BrgemmConfig.register_tile``). ``b_copied=False``: a
    VNNI-2 B read where it is (the tensor holds the pairs: no copy in the cycles)."""
    from ..kernels import isa as kisa
    from ..kernels.config import BrgemmConfig

    fam = kisa.family(target.isa)
    if ab_dtype == "bf16":
        plain = None if b_vnni is not False else BrgemmConfig(m=m, n=n, k=k, ab_dtype="bf16")
        fam = kisa.bf16_family(target.llvm_cpu, fam.name, plain)  # no AMX without VNNI-2 B
        dtype_bytes = 2
    dot = fam.bf16_dot and ab_dtype == "bf16"
    if b_vnni is None:
        b_vnni = dot and vnni_pays(m, n, k, batch, target, reuse=1)
    b_vnni = b_vnni and dot
    cfg = BrgemmConfig(
        m=m, n=n, k=k, ldb=n, ldc=n, beta=beta, ab_dtype=ab_dtype, register_tile=register_tile
    )
    blocking = kisa.plan(cfg, fam)
    fma_ports, load_ports = target.fma_issue, target.load_ports
    cycles = target.call_cycles
    for g in blocking.groups:
        if fam.amx:  # tiles: tdpbf16ps per 32 k (kernels/amx.call_cycles), B in VNNI-2
            from ..kernels import amx

            acc_io = g.mr * g.nv * (2 + beta) / load_ports  # tiles stored, C (re)read, stored
            tile = amx.call_cycles(g, k, batch) + batch * target.batch_cycles + acc_io
            cycles += g.i_count * g.j_count * (tile + target.tile_cycles)
            continue
        if dot:
            # per B vector per k pair: one load of a VNNI-2 pair vector, or two loads and the
            # interleave, a shuffle that issues on the vector ports the dot products use
            b_loads, shuffles = (1, 0) if b_vnni else (2, 1)
            per_k = max(
                (g.mr * g.nv + shuffles * g.nv) / (2 * fma_ports),
                (g.mr + (b_loads + shuffles) * g.nv) / (2 * load_ports),
            )
        else:
            per_k = max(g.mr * g.nv / fma_ports, (g.mr + g.nv) / load_ports)
        acc_io = g.mr * g.nv * (1 + beta) / load_ports  # store (and load, beta = 1) of C
        tile = k * batch * per_k + batch * target.batch_cycles + target.tile_cycles + acc_io
        cycles += g.i_count * g.j_count * tile
    if b_vnni and b_copied:
        cycles += vnni_copy_cycles(k * batch * n, target)
    first_cols = blocking.groups[0].j_start
    row_tiles = sum(g.i_count for g in blocking.groups if g.j_start == first_cols)
    col_tiles = sum(g.j_count for g in blocking.groups if g.i_start == 0)
    width = blocking.nv * blocking.vector_width
    return Call(
        cycles=cycles,
        flops=2 * m * n * k * batch,
        row_passes=max(1, row_tiles),
        col_passes=max(1, col_tiles),
        a_panel=m * k * batch * dtype_bytes,
        b_panel=k * batch * min(n, width) * dtype_bytes,
        tile=blocking.tile,
    )


def vnni_target(target: Target) -> bool:
    """Whether ``target``'s bf16 family multiplies pairs (its calls take VNNI-2 B)."""
    from ..kernels import isa as kisa

    return kisa.bf16_family(target.llvm_cpu, target.isa).bf16_dot


def vnni_copy_cycles(elems: int, target: Target) -> float:
    """Cycles of copying ``elems`` bf16 B elements into VNNI-2 pairs, beyond what the calls
    reading B in place cost: the copy is written to the cache that holds it and read from
    there once more (the first read of B, from wherever it is, is the calls' either way), in
    L1-byte units (``Target.byte_cost``) over the bytes a core loads from L1 per cycle."""
    nbytes = 2 * elems
    return 2 * nbytes * target.byte_cost(target.fit(nbytes)) / target.l1_bytes_per_cycle


def vnni_pays(m: int, n: int, k: int, batch: int, target: Target, *, reuse: int = 1) -> bool:
    """Whether copying a bf16 call's B blocks (``batch`` of ``k x n``) into VNNI-2 pairs once
    pays on ``target``: the cycles it saves in each of the ``reuse`` calls that read the copy
    (each row tile loads a pair vector where it interleaved two rows) against the copy's."""
    from ..kernels import isa as kisa

    if not vnni_target(target):
        return False
    if kisa.bf16_family(target.llvm_cpu, target.isa).amx:
        return True  # tiles take B in VNNI-2 pairs only
    plain = call_model(m, n, k, batch, target, ab_dtype="bf16", b_vnni=False)
    packed = call_model(m, n, k, batch, target, ab_dtype="bf16", b_vnni=True)
    copy = vnni_copy_cycles(k * batch * n, target)
    return reuse * (plain.cycles - (packed.cycles - copy)) > copy


def evaluate(
    levels: Sequence[Level],
    whole: Sequence[Footprint],
    target: Target,
    *,
    n_parallel: int = 0,
    threads: int = 1,
    detail: bool = True,
    call: Call | None = None,
) -> Cost:
    """The cost of a nest from its working sets (see the module docstring).

    ``levels`` are :func:`polydl.analysis.reuse.working_sets` (loops, then the microkernel
    block), ``whole`` the footprints of the whole nest, ``n_parallel`` how many outermost loops
    run in parallel on at most ``threads`` cores, ``call`` the microkernel call of the innermost
    block (None: data movement only). ``detail=False`` leaves ``levels`` empty (faster, for
    ranking).
    """
    n_loops = len(levels) - 1
    if not 0 <= n_parallel <= n_loops:
        raise ValueError(f"n_parallel={n_parallel} outside 0..{n_loops}")
    trips = [max(lv.trip, 0) for lv in levels]
    p_iters = math.prod(trips[:n_parallel])
    used = max(1, min(threads, p_iters)) if n_parallel else 1
    chunk = math.ceil(p_iters / used) if n_parallel else 1
    share = chunk / p_iters if n_parallel and p_iters else 1.0
    balance = p_iters / (used * chunk) if n_parallel and p_iters else 1.0

    execs: list[float] = []  # E_l
    prod = 1
    for t in trips:
        prod *= t
        execs.append(max(1.0, prod * share) if prod else 0.0)

    def e(d: int) -> float:  # E_d, with E_-1 = 1
        return 1.0 if d < 0 else execs[d]

    ws = [lv.total_bytes for lv in levels]
    caps = [target.capacity(c, used) for c in target.caches]
    names = [c.name for c in target.caches] + ["mem"]
    weights = list(target.byte_costs)
    mem = len(caps)
    fits: list[int] = []  # index of the cache holding WS_d (mem: len(caches))
    for b in ws:
        r = next((i for i, cap in enumerate(caps) if b <= cap), mem)
        fits.append(min(r, fits[-1]) if fits else r)  # nested sets: never bigger inside
    by_level = [{fp.tensor: fp.bytes for fp in lv.footprints} for lv in levels]
    by_whole = {fp.tensor: fp.bytes for fp in whole}
    tensors = list(by_whole)

    def f(d: int, t: str) -> int:  # f_d(t), with f_-1 the whole nest
        return (by_whole if d < 0 else by_level[d]).get(t, 0)

    out: list[LevelCost] = []
    total = 0.0
    for d, lv in enumerate(levels):
        here, parent = fits[d], (fits[d - 1] if d else mem)
        moved = 0.0
        if here < parent:
            for t in tensors:
                m = d
                while m >= 0 and f(m - 1, t) == f(m, t):
                    m -= 1
                if m < d:  # invariant over loops m+1..d: loaded once per iteration of loop m
                    moved += e(m) * f(d, t)
                else:  # consecutive iterations share what overlaps (a halo)
                    moved += min(e(d - 1) * f(d - 1, t), e(d) * f(d, t))
        weight = weights[parent] if moved else 0.0
        cost = moved * weight
        if lv.loop is None:  # the microkernel reads its block from where it lives, per call
            cost += e(d) * ws[d] * weights[here]
            if call is not None and here > 0:  # panels re-streamed by later register tiles
                l1 = caps[0] if caps else 0
                for passes, panel in (
                    (call.row_passes, call.b_panel),
                    (call.col_passes, call.a_panel),
                ):
                    if passes > 1 and panel > l1 // 2:  # L1 also holds the other operands
                        cost += e(d) * (passes - 1) * panel * weights[here]
        total += cost
        if detail:
            out.append(
                LevelCost(
                    depth=lv.depth,
                    loop=lv.label,
                    working_set=ws[d],
                    cache=names[here],
                    source=names[parent] if moved else "",
                    bytes=moved,
                    weight=weight,
                    cost=cost,
                )
            )
    core = 0.0
    if call is not None and levels:
        core = e(len(levels) - 1) * call.cycles * target.l1_bytes_per_cycle
    return Cost(
        total=core + total,
        levels=tuple(out),
        threads=used,
        balance=balance,
        data=total,
        core=core,
    )


def cost(
    kernel: nodes.Kernel,
    stmt: nodes.Statement | str,
    loops: Sequence[tuple[str, int]],
    *,
    target: Target | str | None = None,
    n_parallel: int = 0,
    threads: int | None = None,
) -> Cost:
    """The predicted data-movement cost of running ``stmt`` as the tiled nest ``loops`` with
    its ``n_parallel`` outermost loops parallel over ``threads`` cores (default: all the
    target's)."""
    tgt = resolve(target)
    name = stmt if isinstance(stmt, str) else stmt.name
    a = analyzer(kernel, name)
    nthreads = tgt.cores if threads is None else threads
    levels = a.levels(loops, tgt, nthreads)
    return evaluate(levels, a.whole(), tgt, n_parallel=n_parallel, threads=nthreads)
