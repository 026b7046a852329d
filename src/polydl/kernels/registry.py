"""Registry of BRGEMM kernels: what each configuration is, and its compiled form, once per process.

:func:`spec` describes a configuration (ISA family, register blocking, operand layouts, NumPy
reference twin) without compiling anything. :func:`compile_brgemm` JIT-compiles a module holding
the kernel, caches it by the full configuration and target, and returns a :class:`BrgemmKernel`
whose ``__call__`` is the Python entry point for tests and benchmarks (ctypes, pointer cached).
Generated code does not go through here: it pastes :func:`polydl.kernels.generate` text into its
own module and calls the kernel directly.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .. import jit
from ..errors import PolyDLError
from . import amx
from .config import BrgemmConfig
from .generator import KernelIR, generate, nontemporal_align
from .isa import Blocking, IsaFamily, compile_target, family, plan
from .reference import reference


@dataclass(frozen=True, kw_only=True)
class KernelSpec:
    """A kernel configuration with everything it declares: ISA, blocking, layouts, twin."""

    config: BrgemmConfig  # normalized, ``isa`` resolved
    family: IsaFamily
    blocking: Blocking
    layouts: tuple[tuple[str, str], ...]
    reference: Callable[..., np.ndarray] = field(repr=False, compare=False)

    def describe(self) -> str:
        c = self.config
        lay = "; ".join(f"{k}: {v}" for k, v in self.layouts)
        return (
            f"brgemm f32 {c.form} m={c.m} n={c.n} k={c.k} beta={c.beta} alpha={c.alpha} "
            f"epilogue={c.epilogue.text() if c.epilogue else 'none'} "
            f"isa={self.family.name} tile={self.blocking.tile} "
            f"groups={len(self.blocking.groups)} | {lay}"
        )


def spec(config: BrgemmConfig) -> KernelSpec:
    """Describe ``config``; an unset ``isa`` becomes the host's best family (select_isa)."""
    fam = family(config.isa)
    cfg = replace(config.normalized(), isa=fam.name)
    layouts = (
        ("A", f"row-major {cfg.m}x{cfg.k}, lda={cfg.lda}"),
        (
            "B",
            f"VNNI-2 {-(-cfg.k // 2)}x{cfg.n}x2, ldb={cfg.ldb}"
            if cfg.b_vnni
            else f"row-major {cfg.k}x{cfg.n}, ldb={cfg.ldb}",
        ),
        ("C", f"row-major {cfg.m}x{cfg.n} {cfg.c_dtype}, ldc={cfg.ldc}"),
        *(
            (
                f"e{t} ({o.name})",
                f"{'per row' if not o.col else 'like C'}, ld={o.ld}"
                + (f", ld_group={o.ld_group}" if o.ld_group is not None else ""),
            )
            for t, o in enumerate(cfg.epilogue.operands if cfg.epilogue else ())
        ),
    )
    return KernelSpec(
        config=cfg,
        family=fam,
        blocking=plan(cfg, fam),
        layouts=layouts,
        reference=lambda *a, **kw: reference(cfg, *a, **kw),
    )


def _argtypes(cfg: BrgemmConfig) -> list:
    args = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    if cfg.form == "offset":
        args += [ctypes.c_void_p, ctypes.c_void_p]
    args += [ctypes.c_void_p] * len(cfg.epilogue.operands if cfg.epilogue else ())
    if cfg.alpha_arg:
        args.append(ctypes.c_float)
    return args


def _f32(
    x: np.ndarray, what: str, need: int, *, writable: bool = False, dtype: str = "f32"
) -> np.ndarray:
    if dtype == "bf16":
        ok = isinstance(x, np.ndarray) and (x.dtype == np.uint16 or x.dtype.name == "bfloat16")
        kind = "bfloat16 (or uint16)"
    else:
        ok = isinstance(x, np.ndarray) and x.dtype == np.float32
        kind = "float32"
    if not ok or not x.flags.c_contiguous:
        raise PolyDLError(f"BRGEMM {what} must be a C-contiguous {kind} ndarray")
    if writable and not x.flags.writeable:
        raise PolyDLError(f"BRGEMM {what} must be writable")
    if x.size < need:
        raise PolyDLError(f"BRGEMM {what} holds {x.size} elements, the call reads {need}")
    return x


def _offsets(x: np.ndarray, what: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.int64)
    if x.ndim != 1 or (x.size and x.min() < 0):
        raise PolyDLError(f"BRGEMM {what} must be a 1-D array of non-negative element offsets")
    return x


@dataclass
class BrgemmKernel:
    """A compiled kernel; call it with NumPy arrays (see :meth:`__call__`)."""

    spec: KernelSpec
    ir: KernelIR
    module: jit.JitModule = field(repr=False)
    address: int
    compile_seconds: float
    _fn: Callable = field(repr=False)

    @property
    def symbol(self) -> str:
        return self.ir.name

    def __call__(
        self,
        a: np.ndarray | Sequence[np.ndarray],
        b: np.ndarray | Sequence[np.ndarray],
        c: np.ndarray,
        *,
        batch: int | None = None,
        a_offsets: np.ndarray | None = None,
        b_offsets: np.ndarray | None = None,
        bias: np.ndarray | None = None,
        operands: Sequence[np.ndarray] | None = None,
        alpha: float | None = None,
    ) -> np.ndarray:
        """Run the kernel in place on ``c`` and return it. By form: ``stride`` takes flat buffers
        ``a``, ``b`` and ``batch``; ``offset`` takes buffers and int64 ``a_offsets``/``b_offsets``;
        ``address`` takes sequences of per-pair arrays. ``operands`` are the epilogue's tensors
        (``bias=`` for the bias shorthand). Every access is bounds-checked first."""
        cfg = self.spec.config
        _f32(c, "C", cfg.c_extent(), writable=True, dtype=cfg.c_dtype)
        align = nontemporal_align(cfg)
        if align and c.ctypes.data % align:
            raise PolyDLError(
                f"BRGEMM {cfg.m}x{cfg.n}x{cfg.k} stores C non-temporally: C must start on a "
                f"{align}-byte boundary (pd.empty allocates so), its data is at "
                f"{c.ctypes.data % align} past one"
            )
        keep: list = []
        if cfg.form == "stride":
            if batch is None or batch < 0:
                raise PolyDLError("BRGEMM stride form needs batch >= 0")
            last = max(batch - 1, 0)
            need_a = last * cfg.stride_a + cfg.a_extent() if batch else 0
            need_b = last * cfg.stride_b + cfg.b_extent() if batch else 0
            args = [
                _f32(a, "A", need_a, dtype=cfg.ab_dtype).ctypes.data,
                _f32(b, "B", need_b, dtype=cfg.ab_dtype).ctypes.data,
            ]
            args += [c.ctypes.data, batch]
        elif cfg.form == "offset":
            oa, ob = _offsets(a_offsets, "a_offsets"), _offsets(b_offsets, "b_offsets")
            if oa.size != ob.size or (batch is not None and batch != oa.size):
                raise PolyDLError("BRGEMM offset arrays (and batch) must agree in length")
            need_a = int(oa.max()) + cfg.a_extent() if oa.size else 0
            need_b = int(ob.max()) + cfg.b_extent() if ob.size else 0
            args = [
                _f32(a, "A", need_a, dtype=cfg.ab_dtype).ctypes.data,
                _f32(b, "B", need_b, dtype=cfg.ab_dtype).ctypes.data,
            ]
            args += [c.ctypes.data, oa.size, oa.ctypes.data, ob.ctypes.data]
            keep += [oa, ob]
        else:
            if len(a) != len(b) or (batch is not None and batch != len(a)):
                raise PolyDLError("BRGEMM address lists (and batch) must agree in length")
            pa = np.array(
                [_f32(x, "A[b]", cfg.a_extent(), dtype=cfg.ab_dtype).ctypes.data for x in a],
                np.uintp,
            )
            pb = np.array(
                [_f32(x, "B[b]", cfg.b_extent(), dtype=cfg.ab_dtype).ctypes.data for x in b],
                np.uintp,
            )
            args = [pa.ctypes.data, pb.ctypes.data, c.ctypes.data, len(a)]
            keep += [pa, pb]
        wanted = cfg.epilogue.operands if cfg.epilogue else ()
        if bias is not None:
            if operands is not None or [o.name for o in wanted] != ["bias"]:
                raise PolyDLError("BRGEMM got bias= but its epilogue has no (single) bias")
            operands = [bias]
        given = list(operands or ())
        if len(given) != len(wanted):
            names = [o.name for o in wanted]
            raise PolyDLError(
                f"BRGEMM epilogue reads {len(wanted)} operand(s) {names}, got {len(given)}"
            )
        for o, x, need in zip(wanted, given, cfg.operand_extents(), strict=True):
            args.append(_f32(x, o.name, need).ctypes.data)
        if cfg.alpha_arg:
            if alpha is None:
                raise PolyDLError("BRGEMM configured with alpha_arg=True needs alpha=")
            args.append(float(alpha))
        elif alpha is not None:
            raise PolyDLError("BRGEMM with a compile-time alpha got alpha=")
        self._fn(*args)
        del keep
        return c


_cache: dict[tuple[BrgemmConfig, str | None], BrgemmKernel] = {}
_cache_lock = threading.Lock()


# BrgemmConfig fields added after symbol names were first hashed, and their defaults
LATER_FIELDS = {"register_tile": None, "k_unroll": None, "nontemporal": False}


def symbol_for(config: BrgemmConfig) -> str:
    """A deterministic symbol name for a configuration (the same in every process)."""
    c = config.normalized()
    epi = f"e{len(c.epilogue.operands)}" if c.epilogue else "ne"
    tag = f"{c.form}_{c.m}x{c.n}x{c.k}_l{c.lda}_{c.ldb}_{c.ldc}_b{c.beta}_{epi}"
    # the configuration's repr, without the fields added after it was first hashed when they
    # are at their defaults (the same names as before those fields existed)
    text = ", ".join(
        f"{f.name}={getattr(c, f.name)!r}"
        for f in dataclasses.fields(c)
        if f.name not in LATER_FIELDS or getattr(c, f.name) != LATER_FIELDS[f.name]
    )
    digest = hashlib.sha1(f"{type(c).__name__}({text})".encode()).hexdigest()[:8]
    return f"polydl_brgemm_{c.isa or 'host'}_{tag}_{digest}"


def compile_brgemm(config: BrgemmConfig, *, target: str | None = None) -> BrgemmKernel:
    """The compiled kernel for ``config``, built once per (configuration, target) per process.

    ``target`` is an LLVM CPU name; by default the host when ``config.isa`` is (or resolves to)
    the host's best family, else the family's canonical CPU (see isa.compile_target). Raises
    TargetError if the result cannot run on this host.
    """
    sp = spec(config)
    key = (sp.config, target)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    ir = generate(sp.config, name=symbol_for(sp.config))
    t0 = time.perf_counter()
    mod = jit.build(ir.module(), target=compile_target(sp.family, target), name=ir.name)
    if sp.family.amx:  # before the first tile instruction (kernels/amx.py)
        amx.request_permission()
    addr = mod.address(ir.name)
    seconds = time.perf_counter() - t0
    fn = ctypes.CFUNCTYPE(None, *_argtypes(sp.config))(addr)
    kernel = BrgemmKernel(spec=sp, ir=ir, module=mod, address=addr, compile_seconds=seconds, _fn=fn)
    with _cache_lock:
        return _cache.setdefault(key, kernel)


def emit_asm(config: BrgemmConfig, *, cpu: str | None = None) -> str:
    """Assembly of the kernel for any LLVM CPU (default: the family's canonical CPU); nothing
    runs, so this works for ISAs the host lacks."""
    sp = spec(config)
    ir = generate(sp.config, name=symbol_for(sp.config))
    return jit.emit_asm(ir.module(), cpu=cpu or sp.family.canonical_cpu, name=ir.name)


def cache_info() -> list[tuple[str, str, float]]:
    """(symbol, target CPU, compile seconds) of every kernel compiled in this process."""
    with _cache_lock:
        return [(k.symbol, k.module.cpu, k.compile_seconds) for k in _cache.values()]


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
