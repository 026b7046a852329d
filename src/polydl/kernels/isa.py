"""ISA families of BRGEMM microkernels, the selection rule, and register blocking.

A family is a set of templates in ``microkernels/<family>/`` plus the machine facts the blocking
needs: vector width, number of vector registers, how many accumulators hide the FMA latency.

Selection rule (:func:`select_isa`): among the families whose required CPU features the target
has, take the one with the highest ``priority`` (``avx512`` > ``avx2`` > ``generic``). ``generic``
needs no feature and is valid for any LLVM target, so there is always an answer.

Blocking rule (:func:`plan`): a register tile is ``mr`` rows by ``nv`` vectors. ``nv`` is the
number of vectors ``n`` needs, capped at ``max_col_vectors``; ``mr`` fills the accumulator budget
(``acc_budget // nv``, at most ``m``). AVX2: 6x16 (12 ymm accumulators + 2 B vectors + 1
broadcast). AVX-512: 6x64 for n >= 64 (24 zmm accumulators + 4 B vectors + 1 broadcast; measured
on Ice Lake at 92-100% of peak where 14x32 reached 75-90%: fewer loads and broadcasts per FMA),
12x32 for n = 32, and for n <= 16 ymm vectors in 12x16 tiles (see :func:`effective`).
Rows are split into ``ceil(m / mr)`` balanced tiles of ``base`` or ``base + 1`` rows (64 rows on
AVX2: nine 6-row and two 5-row tiles, not ten 6-row and one 4-row tile), so no thin tile streams
B for a few FMAs. When ``n`` is not a multiple of the tile width, the last full-width column
tile absorbs the remainder: a wider tile (e.g. 3 ymm vectors, the last one masked) with fewer
rows, instead of a one-vector tile that would need one broadcast per FMA; on 16-lane vectors a
last column of at most 8 live lanes accumulates in an 8-lane vector
(``generator.narrow_width``: one 256-bit FMA where Zen 4 splits a 512-bit one in two). The block is covered
by at most four tile groups (two row heights x two column kinds); partial vectors use masked
vector loads and stores, never scalar code. When a tile has fewer accumulators
than ``min_accumulators`` (FMA latency x FMA ports), the k loop keeps several accumulator sets
that it adds up at the store, so small edge tiles are not latency bound.

Overrides (the auto-tuner's knobs, ``BrgemmConfig.register_tile`` and ``k_unroll``): a register
tile of ``(rows, vectors)`` replaces ``mr`` and ``nv`` of the rule (``nv`` capped at the vectors
``n`` needs, ``mr`` at ``m``; the remainder tiles keep that many accumulators at most), legal
when its accumulators, one B vector per column, the broadcast and, on AVX2, the mask fit the
register file (:func:`tile_problem`); ``k_unroll`` replaces ``target_unroll``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .. import jit
from ..errors import PolyDLError, TargetError
from .config import BrgemmConfig


@dataclass(frozen=True, kw_only=True)
class IsaFamily:
    name: str
    vector_width: int  # f32 lanes per vector register
    registers: int  # architectural vector registers
    acc_budget: int  # vector registers given to accumulators
    max_col_vectors: int  # vectors per tile row
    min_accumulators: int  # independent FMA chains needed to cover latency x ports
    target_unroll: int  # k steps per iteration of the main k loop (rounded to a multiple of sets)
    required_features: frozenset[str]
    canonical_cpu: str  # LLVM CPU to compile for when the host is not used
    fma: str  # "llvm.fma" (fused, the ISA has FMA) or "llvm.fmuladd" (backend decides)
    priority: int
    template: str  # path under microkernels/
    narrow_width: int | None = None  # vector width when n fits one full-width vector
    mask_in_vector_reg: bool = True  # AVX2 masks occupy a vector register (AVX-512: k registers)
    # element types of A and B it takes: every family takes bf16 by widening it to f32 at the
    # loads; a ``bf16_dot`` family multiplies bf16 pairs into f32 (vdpbf16ps) at twice the rate
    dtypes: frozenset[str] = frozenset({"f32", "bf16"})
    bf16_dot: bool = False
    amx: bool = False  # AMX tiles (kernels/amx.py): bf16 A, B in VNNI-2 pairs only

    @property
    def vty(self) -> str:
        return f"<{self.vector_width} x float>"

    @property
    def register_tile(self) -> tuple[int, int]:
        """(rows, columns) of the widest register tile :func:`plan` uses: the accumulator budget
        shared by ``max_col_vectors`` vectors per row (AVX-512 6x64, AVX2 6x16, generic 6x8).
        The optimiser sizes its calls by it (``optimize/plan.micro_blocks``)."""
        return self.acc_budget // self.max_col_vectors, self.max_col_vectors * self.vector_width


_AVX512 = IsaFamily(
    name="avx512",
    vector_width=16,
    registers=32,
    acc_budget=24,
    max_col_vectors=4,
    min_accumulators=8,
    target_unroll=2,
    required_features=frozenset({"avx512f", "fma"}),
    canonical_cpu="skylake-avx512",
    fma="llvm.fma",
    priority=30,
    template="avx512/brgemm.ll.j2",
    narrow_width=8,
    mask_in_vector_reg=False,
)


FAMILIES: dict[str, IsaFamily] = {
    f.name: f
    for f in (
        _AVX512,
        # the AVX-512 kernels, bf16 A/B only, k pairs multiplied by vdpbf16ps
        replace(
            _AVX512,
            name="avx512_bf16",
            required_features=_AVX512.required_features | {"avx512bf16"},
            canonical_cpu="cooperlake",
            priority=40,
            dtypes=frozenset({"bf16"}),
            bf16_dot=True,
        ),
        # AMX tiles: bf16 A times VNNI-2 B (kernels/amx.py); the epilogue on zmm vectors
        replace(
            _AVX512,
            name="amx_bf16",
            required_features=_AVX512.required_features | {"avx512bf16", "amx-tile", "amx-bf16"},
            canonical_cpu="sapphirerapids",
            priority=50,
            template="amx/brgemm.ll.j2",
            narrow_width=None,
            dtypes=frozenset({"bf16"}),
            bf16_dot=True,
            amx=True,
        ),
        IsaFamily(
            name="avx2",
            vector_width=8,
            registers=16,
            acc_budget=12,
            max_col_vectors=2,
            min_accumulators=8,
            target_unroll=4,
            required_features=frozenset({"avx2", "fma"}),
            canonical_cpu="haswell",
            fma="llvm.fma",
            priority=20,
            template="avx2/brgemm.ll.j2",
        ),
        IsaFamily(
            name="generic",
            vector_width=4,
            registers=16,
            acc_budget=12,
            max_col_vectors=2,
            min_accumulators=8,
            target_unroll=4,
            required_features=frozenset(),
            canonical_cpu="generic",
            fma="llvm.fmuladd",
            priority=10,
            template="generic/brgemm.ll.j2",
        ),
    )
}


def select_isa(features: frozenset[str] | None = None, dtype: str = "f32") -> IsaFamily:
    """The best family for a feature set (default: this host's features) and A/B element
    type (``"bf16"``: the dot-product family where the features have it)."""
    feats = jit.host_features() if features is None else features
    usable = [f for f in FAMILIES.values() if f.required_features <= feats and dtype in f.dtypes]
    return max(usable, key=lambda f: f.priority)


def bf16_family(cpu: str | None, fallback: str, cfg: BrgemmConfig | None = None) -> IsaFamily:
    """The family a bf16 contraction's calls use on LLVM CPU ``cpu`` (None: this host): the
    dot-product family where the CPU has it (AMX tiles first, for a call ``cfg`` they take:
    kernels/amx.supports), else ``fallback`` (the f32 family, widening)."""
    from . import amx

    host = cpu in (None, "host", "native", jit.host_cpu())
    feats = jit.host_features() if host else jit.cpu_features(cpu)
    usable = [
        f
        for f in FAMILIES.values()
        if f.required_features <= feats
        and "bf16" in f.dtypes
        and not (f.amx and cfg is not None and amx.supports(cfg.normalized()) is not None)
    ]
    best = max(usable, key=lambda f: f.priority)
    return best if best.bf16_dot else FAMILIES[fallback]


def isa_for_cpu(cpu: str | None) -> IsaFamily:
    """The best family for code compiled for LLVM CPU ``cpu`` (None or "host": this host), e.g.
    avx512 for "skylake-avx512", avx2 for "haswell" or "znver3", generic for unknown CPUs."""
    if cpu in (None, "host", "native", jit.host_cpu()):
        return select_isa()
    return select_isa(jit.cpu_features(cpu))


def family(name: str | None) -> IsaFamily:
    """The named family, or the host's best one for ``None``."""
    if name is None:
        return select_isa()
    try:
        return FAMILIES[name]
    except KeyError:
        raise TargetError(
            f"unknown BRGEMM ISA family {name!r}; known: {sorted(FAMILIES)}"
        ) from None


def compile_target(fam: IsaFamily, target: str | None) -> str | None:
    """The LLVM CPU to compile ``fam`` for: ``target`` if given, the host if its best family is
    ``fam``, else the family's canonical CPU (e.g. forced AVX2 on an AVX-512 host -> haswell)."""
    if target is not None:
        return target
    if select_isa() is fam:
        return None
    return fam.canonical_cpu


# k steps per main-loop iteration the tuner may ask for (``BrgemmConfig.k_unroll``)
K_UNROLLS = (1, 2, 4, 8)


def tile_problem(fam: IsaFamily, rows: int, vectors: int) -> str | None:
    """Why a ``rows x vectors`` register tile does not fit ``fam``'s register file (None: it
    does): its accumulators, one B vector per column, the broadcast of A and, where masks take
    a vector register (AVX2), the lane mask must fit in ``fam.registers``."""
    if fam.amx:
        return f"family {fam.name} computes in AMX tiles: no vector register tile to choose"
    if min(rows, vectors) < 1:
        return f"register tile {rows}x{vectors} vectors: rows and vectors must be positive"
    need = rows * vectors + vectors + 1 + (1 if fam.mask_in_vector_reg else 0)
    if need > fam.registers:
        return (
            f"register tile {rows} rows x {vectors} vectors needs {need} vector registers "
            f"({rows * vectors} accumulators, {vectors} B, 1 broadcast"
            f"{', 1 mask' if fam.mask_in_vector_reg else ''}); family {fam.name} has "
            f"{fam.registers}"
        )
    return None


def effective(fam: IsaFamily, cfg: BrgemmConfig) -> IsaFamily:
    """``fam`` with the vector width used for ``cfg``: when ``n`` fits in one full-width vector,
    a full-width tile row needs one broadcast of A per FMA, and broadcasts, not FMAs, bound the
    kernel; ``narrow_width`` vectors (ymm on AVX-512, still with 32 registers) give two FMAs per
    broadcast instead."""
    if fam.narrow_width is None or cfg.n > fam.vector_width:
        return fam
    return replace(fam, vector_width=fam.narrow_width)


@dataclass(frozen=True, kw_only=True)
class TileGroup:
    """Identical register tiles covering rows [i_start, i_start + i_count*mr) and columns
    [j_start, j_start + j_count*j_step); ``masks[c]`` is the lane mask of tile vector ``c``."""

    mr: int
    nv: int
    i_start: int
    i_count: int
    j_start: int
    j_count: int
    j_step: int
    lanes: tuple[int, ...]  # active lanes per vector of the tile (V for full vectors)
    ksets: int  # accumulator sets the k loop alternates between
    unroll: int  # k steps per main-loop iteration (a multiple of ksets)


@dataclass(frozen=True, kw_only=True)
class Blocking:
    family: str
    vector_width: int
    mr: int
    nv: int
    groups: tuple[TileGroup, ...]

    @property
    def tile(self) -> str:
        return f"{self.mr}x{self.nv * self.vector_width}"


def _group(fam: IsaFamily, cfg: BrgemmConfig, mr, i_start, i_count, nv, j_start, j_count, lanes):
    accs = mr * nv
    # registers left for extra accumulator sets: two B vectors per column (the scheduler loads the
    # next k step early), a broadcast or two, and the lane mask where it takes a vector register
    masked = any(x < fam.vector_width for x in lanes)
    spare = fam.registers - 2 * nv - 2 - (1 if masked and fam.mask_in_vector_reg else 0)
    cap = min(fam.acc_budget, spare) // accs
    ksets = max(1, min(math.ceil(fam.min_accumulators / accs), cap, cfg.k))
    target = cfg.k_unroll if cfg.k_unroll is not None else fam.target_unroll
    unroll = ksets * max(1, round(target / ksets))
    return TileGroup(
        mr=mr,
        nv=nv,
        i_start=i_start,
        i_count=i_count,
        j_start=j_start,
        j_count=j_count,
        j_step=nv * fam.vector_width,
        lanes=tuple(lanes),
        ksets=ksets,
        unroll=unroll,
    )


def _row_tiles(m: int, mr: int) -> list[tuple[int, int, int]]:
    """Balanced row tiles (rows, first row, count): ceil(m / mr) tiles of base or base + 1 rows,
    never a thin last tile (a 1-row tile re-streams B for one broadcast per FMA)."""
    tiles = math.ceil(m / mr)
    base, extra = divmod(m, tiles)
    rows = [(base + 1, 0, extra)] if extra else []
    if tiles > extra:
        rows.append((base, extra * (base + 1), tiles - extra))
    return rows


def plan(cfg: BrgemmConfig, fam: IsaFamily) -> Blocking:
    """Register blocking of ``cfg`` for ``fam`` (see the module docstring for the rule; AMX:
    blocks of 2 x 2 tiles, :func:`polydl.kernels.amx.plan`)."""
    if fam.amx:
        from . import amx

        return amx.plan(cfg.normalized(), fam)
    fam = effective(fam, cfg)
    v = fam.vector_width
    if cfg.register_tile is not None:  # the tuner's override, checked against the registers
        why = tile_problem(fam, *cfg.register_tile)
        if why:
            raise PolyDLError(f"BRGEMM {cfg.m}x{cfg.n}x{cfg.k}: {why}")
        rows, vectors = cfg.register_tile
        budget = rows * vectors
    else:
        budget, vectors = fam.acc_budget, fam.max_col_vectors
    nv = min(math.ceil(cfg.n / v), vectors)
    mr = min(cfg.m, budget // nv)
    full_j, rem_n = divmod(cfg.n, nv * v)
    # column groups: (vectors, first column, count, lanes per vector, rows per tile)
    cols = []
    if rem_n and full_j:
        # the last full column tile absorbs the remainder: one wider tile with fewer rows, so
        # no narrow tile does one broadcast per FMA
        nv_m = nv + math.ceil(rem_n / v)
        lanes = [v] * (nv_m - 1) + [rem_n - (nv_m - nv - 1) * v]
        spare = fam.registers - nv_m - 1 - (1 if fam.mask_in_vector_reg else 0)
        mr_m = max(1, min(cfg.m, budget // nv_m, spare // nv_m))
        if full_j > 1:
            cols.append((nv, 0, full_j - 1, [v] * nv, mr))
        cols.append((nv_m, (full_j - 1) * nv * v, 1, lanes, mr_m))
    else:
        if full_j:
            cols.append((nv, 0, full_j, [v] * nv, mr))
        if rem_n:
            nv_e = math.ceil(rem_n / v)
            lanes = [v] * (nv_e - 1) + [rem_n - (nv_e - 1) * v]
            mr_e = min(cfg.m, budget // nv_e)
            cols.append((nv_e, full_j * nv * v, 1, lanes, mr_e))
    groups = tuple(
        _group(fam, cfg, r_mr, r_start, r_count, c_nv, c_start, c_count, lanes)
        for (c_nv, c_start, c_count, lanes, c_mr) in cols
        for (r_mr, r_start, r_count) in _row_tiles(cfg.m, c_mr)
    )
    return Blocking(family=fam.name, vector_width=v, mr=mr, nv=nv, groups=groups)
