"""The machine the optimiser plans for: ISA, caches, cores and the relative cost of a byte.

A :class:`Target` is detected from the host (:func:`host`: llvmlite's CPU name and features, the
caches under ``/sys/devices/system/cpu/cpu0/cache``, the CPUs this process may use), taken from a
named preset (:data:`PRESETS`: ``znver3``, ``skylake-avx512``, ``icelake-server``), or built by
hand. :func:`resolve` turns what a user passes as ``target=`` into a Target.

``byte_costs`` are relative costs of moving one byte from L1, L2, L3 (one entry per cache, in
level order) and finally from memory: roughly the inverse of the sustained bandwidth each level
gives one core, normalised to L1 = 1. They weigh the data movement of ``optimize/cost.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import TargetError

__all__ = ["PRESETS", "Cache", "Target", "family", "host", "isa_of", "read_caches", "resolve"]

_KIB = 1024
_MIB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class Cache:
    """One data (or unified) cache as seen from one core."""

    level: int  # 1, 2, 3, ...
    size_bytes: int  # the whole cache (a shared cache: all of it, not a per-core slice)
    shared: bool  # shared by several cores (the capacity one core can count on is divided)
    line_bytes: int = 64

    @property
    def name(self) -> str:
        return f"L{self.level}"


@dataclass(frozen=True, kw_only=True)
class Target:
    """A CPU to optimise and compile for (``pd.Target``)."""

    name: str
    llvm_cpu: str  # LLVM CPU name given to codegen
    isa: str  # one of ISAS
    vector_bits: int
    vector_registers: int
    fma: bool
    caches: tuple[Cache, ...]  # data/unified caches, L1 first
    cores: int
    byte_costs: tuple[float, ...]  # relative cost of a byte from each cache, then from memory
    peak_gflops: float | None = None  # per core, fp32, when known
    # share of a cache a working set may fill and still be counted as staying there (LRU with
    # streaming neighbours, conflict misses and the other tensors keep the rest busy)
    utilization: float = 1.0
    # in-core constants of the cost model's call model (optimize/cost.py), in cycles: issue
    # ports of loads and FMAs, and the bookkeeping around the FMAs that does not overlap with
    # them (a call's entry and offset tables, a tile's setup, a batch element's pointer loads,
    # one instance of a statement left on the scalar path). Estimates, not calibrated: they
    # separate call shapes; conv variants of one layer share their call shape.
    load_ports: int = 2
    fma_ports: int = 2
    call_cycles: float = 20.0
    tile_cycles: float = 6.0
    batch_cycles: float = 1.0
    plain_cycles: float = 2.0
    # the longest reduction one BRGEMM call covers whole (longer ones split near 256:
    # optimize/plan.k_tiles); None: the planner's default (optimize/plan.KC_WHOLE_MAX)
    kc_whole_max: int | None = None

    def __post_init__(self) -> None:
        from .kernels.isa import FAMILIES

        if self.isa not in FAMILIES:
            raise TargetError(
                f"Target {self.name!r}: isa {self.isa!r} is not one of {tuple(FAMILIES)}"
            )
        if self.cores < 1 or self.vector_bits < 64 or self.vector_registers < 1:
            raise TargetError(f"Target {self.name!r}: cores, vector_bits, vector_registers")
        levels = [c.level for c in self.caches]
        if levels != sorted(levels) or len(set(levels)) != len(levels):
            raise TargetError(f"Target {self.name!r}: caches must be in increasing level order")
        if len(self.byte_costs) != len(self.caches) + 1:
            raise TargetError(
                f"Target {self.name!r}: byte_costs needs one weight per cache and one for "
                f"memory ({len(self.caches) + 1}), got {len(self.byte_costs)}"
            )

    @property
    def family(self):
        """The BRGEMM microkernel family of this target's ISA (``kernels/isa.py``): the one
        place its vector width, registers and register tiles are declared."""
        return family(self.isa)

    @property
    def register_tile(self) -> tuple[int, int]:
        """(rows, columns) of the microkernels' widest register tile on this target."""
        return self.family.register_tile

    @property
    def fma_issue(self) -> int:
        """FMAs a core starts per cycle (1 without FMA units: a multiply and an add)."""
        return self.fma_ports if self.fma else 1

    @property
    def l1_bytes_per_cycle(self) -> int:
        """Bytes a core loads from L1 per cycle: the unit of the cost model's byte weights."""
        return self.load_ports * self.vector_bits // 8

    # ------------------------------------------------------------ cache budgets

    def private_bytes(self) -> int:
        """The largest private cache (L2): what one core keeps to itself."""
        return max((c.size_bytes for c in self.caches if not c.shared), default=1 << 20)

    def share_bytes(self) -> int:
        """One core's share of the largest cache when every core runs."""
        return max((self.capacity(c, self.cores) for c in self.caches), default=1 << 20)

    def scratch_bytes(self) -> int:
        """Scratch one packed operand buffer may take (transform/pack.py): the largest private
        cache, or one core's share of a shared one up to 8 MiB (the copy then streams from
        there, densely)."""
        shared = [c.size_bytes // self.cores for c in self.caches if c.shared]
        return max(self.private_bytes(), min(max(shared, default=0), 8 << 20))

    def panel_bytes(self, share: int = 4) -> int:
        """Bytes one BRGEMM call's B panel may take (optimize/plan.batch_tiles): a ``share``-th
        of the largest private cache, the rest holding A, C and the next panel."""
        return self.private_bytes() // share

    def lanes(self, dtype_bytes: int = 4) -> int:
        """Vector lanes for elements of ``dtype_bytes`` bytes."""
        return self.vector_bits // (8 * dtype_bytes)

    def cache(self, level: int) -> Cache | None:
        for c in self.caches:
            if c.level == level:
                return c
        return None

    def capacity(self, cache: Cache, threads: int = 1) -> int:
        """Bytes of ``cache`` one core can count on when ``threads`` cores run."""
        if cache.shared:
            return cache.size_bytes // max(1, min(threads, self.cores))
        return cache.size_bytes

    def fit(self, nbytes: int, threads: int = 1) -> Cache | None:
        """The smallest cache that holds ``nbytes`` (None: only memory does)."""
        for c in self.caches:
            if nbytes <= self.capacity(c, threads) * self.utilization:
                return c
        return None

    def byte_cost(self, cache: Cache | None) -> float:
        """Relative cost of a byte from ``cache`` (None: memory)."""
        if cache is None:
            return self.byte_costs[-1]
        return self.byte_costs[self.caches.index(cache)]


# ---------------------------------------------------------------- presets


def family(isa: str):
    """The microkernel family named ``isa`` (``kernels/isa.FAMILIES``)."""
    from .kernels.isa import FAMILIES

    return FAMILIES[isa]


def _target(
    name: str, cpu: str, isa: str, caches, *, fma: bool, costs=None, cores=None, peak=None
) -> Target:
    """A Target for ``cpu`` (its ISA's family gives the vector facts; ``cores``: this
    machine's when not given)."""
    fam = family(isa)
    return Target(
        name=name,
        llvm_cpu=cpu,
        isa=isa,
        vector_bits=32 * fam.vector_width,
        vector_registers=fam.registers,
        fma=fma,
        caches=caches,
        cores=host_cores() if cores is None else cores,
        byte_costs=costs if costs is not None else _costs_for(len(caches)),
        peak_gflops=peak,
    )


def _preset(name, cpu, isa, caches, cores, costs, peak) -> Target:
    levels = tuple(
        Cache(level=i + 1, size_bytes=size, shared=sh, line_bytes=64)
        for i, (size, sh) in enumerate(caches)
    )
    return _target(
        name, cpu, isa, levels, fma=isa != "generic", costs=costs, cores=cores, peak=peak
    )


PRESETS: dict[str, Target] = {
    # AMD EPYC 7003 / Ryzen 5000: 32K L1d, 512K L2 per core, 32M L3 per 8-core CCD.
    # 2 x 256-bit FMA per cycle at ~3.5 GHz: 8 lanes * 2 flops * 2 units * 3.5.
    "znver3": _preset(
        "znver3",
        "znver3",
        "avx2",
        [(32 * _KIB, False), (512 * _KIB, False), (32 * _MIB, True)],
        8,
        (1.0, 2.0, 4.0, 16.0),
        112.0,
    ),
    # Xeon Platinum 8180 (Skylake-SP): 32K L1d, 1M L2 per core, 38.5M non-inclusive L3, 28 cores.
    # 2 x 512-bit FMA per cycle at ~2.3 GHz (AVX-512 licence): 16 * 2 * 2 * 2.3.
    "skylake-avx512": _preset(
        "skylake-avx512",
        "skylake-avx512",
        "avx512",
        [(32 * _KIB, False), (1 * _MIB, False), (38 * _MIB + 512 * _KIB, True)],
        28,
        (1.0, 2.5, 8.0, 24.0),
        147.2,
    ),
    # Xeon Platinum 8380 (Ice Lake-SP): 48K L1d, 1.25M L2 per core, 60M L3, 40 cores.
    # 2 x 512-bit FMA per cycle at ~2.3 GHz: 16 * 2 * 2 * 2.3.
    "icelake-server": _preset(
        "icelake-server",
        "icelake-server",
        "avx512",
        [(48 * _KIB, False), (1280 * _KIB, False), (60 * _MIB, True)],
        40,
        (1.0, 2.5, 7.0, 24.0),
        147.2,
    ),
}

# The longest reduction a call covers whole on a detected CPU (Target.kc_whole_max), where it
# differs from the planner's default of 256 (set on Ice Lake, where longer panels missed in L1
# and the TLB): on Zen 4, one thread, the whole k against k split in 256 ran GEMM 1024^3 1.11x,
# 512^3 1.05x, 256 x 1024 x 768 and 1024 x 1024 x 576 the same, linear + GELU at BERT-base
# shapes (K = 768) 1.06-1.19x and conv 1x1 + BN + add + ReLU at res5 (K = 512) 1.01-1.10x.
KC_WHOLE = {"znver4": 1024}

# Weights for a detected or unknown machine: L1, L2, L3, ... then memory.
_DEFAULT_COSTS = (1.0, 2.5, 7.0, 20.0)


def _costs_for(n_caches: int) -> tuple[float, ...]:
    cache_costs = list(_DEFAULT_COSTS[:-1])
    while len(cache_costs) < n_caches:
        cache_costs.append(cache_costs[-1] * 2)
    return (*cache_costs[:n_caches], _DEFAULT_COSTS[-1])


def isa_of(features: frozenset[str] | set[str]) -> str:
    """The microkernel family a set of LLVM CPU features runs best (``kernels/isa.select_isa``:
    the highest-priority family whose required features are all there)."""
    from .kernels.isa import select_isa

    return select_isa(frozenset(features)).name


# ---------------------------------------------------------------- host detection


def parse_size(text: str) -> int:
    """``"48K"`` -> 49152, ``"1280K"``, ``"48M"``, ``"1G"``, or plain bytes."""
    t = text.strip().upper()
    mult = {"K": _KIB, "M": _MIB, "G": 1024 * _MIB}
    if t and t[-1] in mult:
        return int(t[:-1]) * mult[t[-1]]
    return int(t)


def parse_cpu_list(text: str) -> set[int]:
    """``"0-3,8,10-11"`` -> {0, 1, 2, 3, 8, 10, 11}."""
    out: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-")
            out.update(range(int(a), int(b) + 1))
        else:
            out.add(int(part))
    return out


def read_caches(root: str | Path = "/sys/devices/system/cpu/cpu0") -> tuple[Cache, ...]:
    """Data and unified caches of one CPU from sysfs (empty if unreadable).

    A cache counts as shared when more CPUs use it than the SMT siblings of this core.
    """
    root = Path(root)
    try:
        siblings = len(parse_cpu_list((root / "topology/thread_siblings_list").read_text()))
    except (OSError, ValueError):
        siblings = 1
    found: dict[int, Cache] = {}
    for d in sorted(root.glob("cache/index*")):
        try:
            kind = (d / "type").read_text().strip()
            if kind not in ("Data", "Unified"):
                continue
            level = int((d / "level").read_text())
            size = parse_size((d / "size").read_text())
            users = len(parse_cpu_list((d / "shared_cpu_list").read_text()))
            try:
                line = int((d / "coherency_line_size").read_text())
            except (OSError, ValueError):
                line = 64
        except (OSError, ValueError):
            continue
        found[level] = Cache(
            level=level, size_bytes=size, shared=users > max(1, siblings), line_bytes=line
        )
    return tuple(found[k] for k in sorted(found))


def host_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_host: Target | None = None


def host() -> Target:
    """The machine this process runs on (detected once)."""
    global _host
    if _host is None:
        from . import jit

        cpu = jit.host_cpu()
        feats = jit.host_features()
        isa = isa_of(feats)
        caches = read_caches()
        if not caches:  # no sysfs (containers, other OSes): a preset's or a generic hierarchy
            caches = PRESETS[cpu].caches if cpu in PRESETS else _generic_caches()
        costs = (
            PRESETS[cpu].byte_costs
            if cpu in PRESETS and len(PRESETS[cpu].caches) == len(caches)
            else _costs_for(len(caches))
        )
        _host = replace(
            _target("host", cpu, isa, caches, fma="fma" in feats, costs=costs),
            kc_whole_max=KC_WHOLE.get(cpu),
        )
    return _host


def _generic_caches() -> tuple[Cache, ...]:
    return (
        Cache(level=1, size_bytes=32 * _KIB, shared=False),
        Cache(level=2, size_bytes=1 * _MIB, shared=False),
        Cache(level=3, size_bytes=8 * _MIB, shared=True),
    )


def resolve(target: str | Target | None) -> Target:
    """What ``target=`` means: None or "host" -> :func:`host`; a preset name -> the preset; a
    Target -> itself; any other LLVM CPU name -> a generic Target for that CPU, its ISA guessed
    from the features LLVM's CPU implies."""
    if target is None:
        return host()
    if isinstance(target, Target):
        return target
    if not isinstance(target, str):
        raise TargetError(
            f"target must be None, a CPU name or a pd.Target, not {type(target).__name__}"
        )
    name = target.strip()
    if not name or any(ch.isspace() for ch in name):
        raise TargetError(f"target {target!r} is not an LLVM CPU name")
    if name in ("host", "native"):
        return host()
    if name in PRESETS:
        return PRESETS[name]
    from . import jit

    isa = isa_of(jit.cpu_features(name))
    return _target(name, name, isa, _generic_caches(), fma=isa != "generic")
