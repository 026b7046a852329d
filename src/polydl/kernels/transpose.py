"""Tile-transpose microkernels: ``dst[j*ldd + i] = src[i*lds + j]`` for ``i < rows``,
``j < cols`` (f32, or bf16 moved as 16-bit patterns), rendered from
``microkernels/common/transpose.ll.j2``.

A registry entry like the BRGEMM kernels' (:mod:`polydl.kernels.registry`): a configuration
(:class:`TransposeConfig`), its LLVM text (:func:`generate_transpose`, pasted by the code
generator into the modules of kernels whose transpose nests ``transform/transpose.py``
replaced), a NumPy reference twin (:func:`reference_transpose`) and a compiled entry for tests
and benchmarks (:func:`compile_transpose`).

Vector families transpose a tile of up to ``lanes x lanes`` elements in registers (AVX-512:
16x16 f32 or 32x32 bf16, AVX2: 8x8 or 16x16): the tile's rows loaded as vectors (masked when it has fewer columns than a
vector has lanes), ``log2(lanes)`` stages of two-input ``shufflevector`` (stage ``b`` swaps bit
``b`` of the row and the column index: rows ``r`` and ``r | 2**b`` exchange their elements
whose column has bit ``b`` set with the other's whose column has it clear), the tile's columns
stored as vectors (masked when it has fewer rows than lanes). Rows past ``rows`` are never
loaded (poison lanes that no store keeps). The generic family (any LLVM target) copies the
elements one by one, tiles of :data:`GENERIC_TILE`.
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass, replace

import numpy as np

from .. import jit
from ..errors import PolyDLError
from .generator import _SYMBOL, environment
from .isa import compile_target, family

GENERIC_TILE = 8  # tile extent of the scalar fallback
PREFETCH_DECL = "declare void @llvm.prefetch.p0(ptr, i32 immarg, i32 immarg, i32 immarg)"
SFENCE_DECL = "declare void @llvm.x86.sse.sfence()"
SFENCE = "call void @llvm.x86.sse.sfence()"  # after the last non-temporal store


@dataclass(frozen=True, kw_only=True)
class TransposeConfig:
    """One tile transpose: ``rows x cols`` source elements, ``lds`` elements from one source row
    to the next, ``ldd`` from one destination row (a source column) to the next."""

    rows: int
    cols: int
    lds: int
    ldd: int
    isa: str | None = None  # the family (None: the host's best)
    # each source row prefetched this many elements past the tile (0: never): the tile loop
    # over the source's columns is the outer one, its rows too many streams for the hardware
    prefetch: int = 0
    # the destination stored with non-temporal full-vector stores (vector families, tiles of
    # ``lanes`` rows, ``ldd`` a multiple of the lanes; the caller passes a vector-aligned
    # destination and fences the stores once: :data:`SFENCE`)
    nontemporal: bool = False
    dtype: str = "f32"  # or "bf16": 16-bit elements, twice the lanes per vector

    @classmethod
    def of_call(cls, tr, isa: str | None) -> TransposeConfig:
        """The kernel of a tile statement (``ir.nodes.Transpose``), stored normally."""
        c = cls(
            rows=tr.rows,
            cols=tr.cols,
            lds=tr.lds,
            ldd=tr.ldd,
            isa=isa,
            prefetch=tr.prefetch,
            dtype=tr.dtype,
        )
        return c.normalized()

    @property
    def bytes(self) -> int:
        """Bytes per element."""
        return ELEMENT_BYTES[self.dtype]

    def normalized(self) -> TransposeConfig:
        fam = family(self.isa)
        return replace(self, isa=fam.name)

    def check(self) -> None:
        if self.dtype not in ELEMENT_BYTES:
            raise ValueError(f"transpose dtype {self.dtype!r}: one of {sorted(ELEMENT_BYTES)}")
        t = tile(self.isa, self.dtype)
        if not (1 <= self.rows <= t and 1 <= self.cols <= t):
            raise ValueError(f"transpose tile {self.rows}x{self.cols}: extents must be 1..{t}")
        if self.lds < self.cols or self.ldd < self.rows:
            raise ValueError(
                f"transpose tile {self.rows}x{self.cols}: lds={self.lds} must be >= cols and "
                f"ldd={self.ldd} >= rows"
            )

    def nt_ok(self) -> bool:
        """Whether the kernel may store non-temporally (full vectors, rows vector-aligned)."""
        lanes = _lanes(self.isa, self.dtype)
        return lanes is not None and self.rows == lanes and self.ldd % lanes == 0

    def src_extent(self) -> int:
        return (self.rows - 1) * self.lds + self.cols

    def dst_extent(self) -> int:
        return (self.cols - 1) * self.ldd + self.rows


ELEMENT_BYTES = {"f32": 4, "bf16": 2}
_LLVM_TYPE = {"f32": ("float", "f32"), "bf16": ("i16", "i16")}  # (element type, intrinsic suffix)


def _lanes(isa: str | None, dtype: str = "f32") -> int | None:
    """Lanes of ``dtype`` in the family's vectors (None: the scalar fallback)."""
    fam = family(isa)
    return None if fam.name == "generic" else fam.vector_width * 4 // ELEMENT_BYTES[dtype]


def tile(isa: str | None = None, dtype: str = "f32") -> int:
    """The largest tile extent the family's kernel takes (its lanes; :data:`GENERIC_TILE`)."""
    return _lanes(isa, dtype) or GENERIC_TILE


def symbol(cfg: TransposeConfig) -> str:
    c = cfg.normalized()
    knobs = (f"_pf{c.prefetch}" if c.prefetch else "") + ("_nt" if c.nontemporal else "")
    knobs += "_bf16" if c.dtype != "f32" else ""
    return f"polydl_transpose_{c.isa}_{c.rows}x{c.cols}_l{c.lds}_{c.ldd}{knobs}"


def _mask(n: int, lanes: int) -> str:
    bits = ", ".join("i1 1" if j < n else "i1 0" for j in range(lanes))
    return f"<{lanes} x i1> <{bits}>"


def _shuffles(rows: int, lanes: int) -> tuple[list[dict], dict[int, str]]:
    """The shuffle stages of a ``lanes x lanes`` transpose whose first ``rows`` rows are loaded
    (``%r0.<r>``): the instructions and the value holding each output row. A pair whose rows
    are both unloaded is skipped (its results are never stored); an unloaded one is poison."""
    cur = {r: f"%r0.{r}" if r < rows else "poison" for r in range(lanes)}
    out: list[dict] = []
    stage, bit = 0, 1
    while bit < lanes:
        stage += 1
        nxt = dict(cur)
        for r0 in range(lanes):
            if r0 & bit:
                continue
            r1 = r0 | bit
            a, b = cur[r0], cur[r1]
            if a == "poison" and b == "poison":
                continue
            lo = [c if not c & bit else lanes + (c ^ bit) for c in range(lanes)]
            hi = [c | bit if not c & bit else lanes + c for c in range(lanes)]
            for r, m in ((r0, lo), (r1, hi)):
                name = f"%r{stage}.{r}"
                mask = f"<{lanes} x i32> <{', '.join(f'i32 {x}' for x in m)}>"
                out.append({"out": name, "a": a, "b": b, "mask": mask})
                nxt[r] = name
        cur, bit = nxt, bit * 2
    return out, cur


@dataclass(frozen=True, kw_only=True)
class TransposeIR:
    """A kernel ready to paste: its declarations and the definition of ``@name``."""

    name: str
    config: TransposeConfig
    declarations: tuple[str, ...]
    definition: str

    def module(self) -> str:
        return "\n".join(self.declarations) + "\n\n" + self.definition


def generate_transpose(
    config: TransposeConfig,
    *,
    name: str | None = None,
    linkage: str = "",
    attributes: str = "nounwind",
) -> TransposeIR:
    """LLVM IR of the tile transpose ``config``: ``void @name(ptr src, ptr dst)``."""
    cfg = config.normalized()
    cfg.check()
    if cfg.nontemporal and not cfg.nt_ok():
        raise ValueError(
            f"transpose tile {cfg.rows}x{cfg.cols} ldd={cfg.ldd}: non-temporal stores need "
            f"{_lanes(cfg.isa, cfg.dtype)} rows and ldd a multiple of them ({cfg.isa})"
        )
    name = name or symbol(cfg)
    if not _SYMBOL.match(name):
        raise ValueError(f"not a plain LLVM symbol name: {name!r}")
    lanes = _lanes(cfg.isa, cfg.dtype)
    ety, suffix = _LLVM_TYPE[cfg.dtype]
    size = cfg.bytes
    ctx: dict = {
        "name": name,
        "linkage": linkage,
        "attributes": attributes,
        "rows": cfg.rows,
        "cols": cfg.cols,
        "family": cfg.isa,
        "vector": lanes is not None,
        "lanes": lanes,
        "dtype": cfg.dtype,
        "ety": ety,
        "size": size,
        "prefetches": [r * cfg.lds + cfg.prefetch for r in range(cfg.rows)] if cfg.prefetch else [],
        "store_align": f"align {size * lanes}, !nontemporal !{{i32 1}}"
        if cfg.nontemporal
        else f"align {size}",
    }
    decls: tuple[str, ...] = ()
    if lanes is None:
        ctx["elements"] = [
            {"n": i * cfg.cols + j, "src": i * cfg.lds + j, "dst": j * cfg.ldd + i}
            for i in range(cfg.rows)
            for j in range(cfg.cols)
        ]
    else:
        vty, mty = f"<{lanes} x {ety}>", f"<{lanes} x i1>"
        mload = f"llvm.masked.load.v{lanes}{suffix}.p0"
        mstore = f"llvm.masked.store.v{lanes}{suffix}.p0"
        col_mask = _mask(cfg.cols, lanes) if cfg.cols < lanes else ""
        row_mask = _mask(cfg.rows, lanes) if cfg.rows < lanes else ""
        shuffles, result = _shuffles(cfg.rows, lanes)
        ctx |= {
            "vty": vty,
            "mload": mload,
            "mstore": mstore,
            "loads": [{"r": r, "off": r * cfg.lds, "mask": col_mask} for r in range(cfg.rows)],
            "shuffles": shuffles,
            "stores": [
                {"c": c, "off": c * cfg.ldd, "value": result[c], "mask": row_mask}
                for c in range(cfg.cols)
            ],
        }
        decls = (
            *([PREFETCH_DECL] if cfg.prefetch else []),
            *([f"declare {vty} @{mload}(ptr, i32 immarg, {mty}, {vty})"] if col_mask else []),
            *([f"declare void @{mstore}({vty}, ptr, i32 immarg, {mty})"] if row_mask else []),
        )
    text = environment().get_template("common/transpose.ll.j2").render(**ctx)
    return TransposeIR(name=name, config=cfg, declarations=decls, definition=text.strip() + "\n")


def pasted(cfg: TransposeConfig) -> tuple[str, tuple[str, ...], str]:
    """(symbol, declarations, definition) of ``cfg``'s kernel for a generated module: internal
    and always inlined (a few dozen instructions per tile, called in the innermost loop)."""
    tir = generate_transpose(cfg, linkage="internal", attributes="nounwind alwaysinline")
    return tir.name, tir.declarations, tir.definition


def reference_transpose(cfg: TransposeConfig, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The NumPy twin: ``dst`` (flat, changed in place and returned) with
    ``dst[j*ldd + i] = src[i*lds + j]`` for ``i < rows``, ``j < cols``."""
    i = np.arange(cfg.rows)[:, None]
    j = np.arange(cfg.cols)[None, :]
    dst.reshape(-1)[j * cfg.ldd + i] = src.reshape(-1)[i * cfg.lds + j]
    return dst


@dataclass
class TransposeKernel:
    """A compiled tile transpose; ``kernel(src, dst)`` on flat float32 arrays (bf16: arrays of
    2-byte elements, ``uint16`` or ``ml_dtypes.bfloat16``; bounds-checked)."""

    config: TransposeConfig
    ir: TransposeIR
    module: jit.JitModule
    compile_seconds: float
    _fn: object

    def __call__(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        cfg = self.config
        for what, x, need in (
            ("source", src, cfg.src_extent()),
            ("destination", dst, cfg.dst_extent()),
        ):
            want = "float32" if cfg.dtype == "f32" else "2-byte (uint16 or bfloat16)"
            ok = x.dtype == np.float32 if cfg.dtype == "f32" else x.dtype.itemsize == 2
            if not isinstance(x, np.ndarray) or not ok or not x.flags.c_contiguous:
                raise PolyDLError(f"transpose {what} must be a C-contiguous {want} ndarray")
            if x.size < need:
                raise PolyDLError(
                    f"transpose {cfg.rows}x{cfg.cols} {what} holds {x.size} elements, the call "
                    f"touches {need}"
                )
        if not dst.flags.writeable:
            raise PolyDLError("transpose destination must be writable")
        align = cfg.bytes * tile(cfg.isa, cfg.dtype)
        if cfg.nontemporal and dst.ctypes.data % align:
            raise PolyDLError(
                f"transpose {cfg.rows}x{cfg.cols} stores non-temporally: the destination must "
                f"start on a {align}-byte boundary"
            )
        self._fn(src.ctypes.data, dst.ctypes.data)
        return dst


_cache: dict[TransposeConfig, TransposeKernel] = {}
_lock = threading.Lock()


def compile_transpose(config: TransposeConfig) -> TransposeKernel:
    """The compiled kernel of ``config`` (built once per process)."""
    cfg = config.normalized()
    with _lock:
        hit = _cache.get(cfg)
    if hit is not None:
        return hit
    ir = generate_transpose(cfg)
    text = ir.module()
    if cfg.nontemporal:  # the entry fences its stores (generated code fences once per region)
        entry = f"{ir.name}.fenced"
        text += (
            f"\n{SFENCE_DECL}\ndefine void @{entry}(ptr %s, ptr %d) {{\n"
            f"  call void @{ir.name}(ptr %s, ptr %d)\n  {SFENCE}\n  ret void\n}}\n"
        )
    else:
        entry = ir.name
    t0 = time.perf_counter()
    mod = jit.build(text, target=compile_target(family(cfg.isa), None), name=ir.name)
    fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)(mod.address(entry))
    kernel = TransposeKernel(
        config=cfg, ir=ir, module=mod, compile_seconds=time.perf_counter() - t0, _fn=fn
    )
    with _lock:
        return _cache.setdefault(cfg, kernel)
