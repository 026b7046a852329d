"""The ``amx_bf16`` family: BRGEMM on AMX tiles (Sapphire Rapids and later), bf16 A and VNNI-2 B.

Tiles (``microkernels/amx/brgemm.ll.j2``): eight registers of at most 16 rows x 64 bytes. A
*block* of C is up to 32 x 32 elements: 2 x 2 C tiles (16 x 16 f32 each) kept across the whole
batch and reduction, with 2 A tiles (16 rows x 32 bf16 of k) and 2 B tiles (16 VNNI-2 pair rows
x 16 columns x 2) loaded per 32 k (``tileloadd``) and multiplied by ``tdpbf16ps``: 4 C + 2 A + 2
B = 8 tiles. The k tail (``k % 32``) is copied into zero-padded stack buffers of a whole 32 k
(A's elements past the tail zero, B's pair rows past it zero, an odd k's last pad cleared), so
every k step has the same tile shapes and neither a NaN past A's rows nor B's pad reaches the
sums. Edge blocks have constant shapes of their own (a tile group per row kind x column kind,
like the vector families' register tiles), each group in a function of its own: LLVM 22's
``.internal`` intrinsics take the shapes as operands and its backend inserts one ``ldtilecfg``
per function, whose eight registers each hold one shape (the function is compiled at O3). The finished tiles go to a stack buffer (``tilestored``), and the
epilogue runs on 16-float vectors per row (``common/epilogue.ll.j2``, like every family).

Linux hands a process the AMX tile state only on request: :func:`request_permission` asks once
per process (``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``) before the first call; a
refusal is a :class:`~polydl.errors.TargetError`.
"""

from __future__ import annotations

import ctypes
import math
import threading

from ..errors import TargetError
from .config import BrgemmConfig

TILE_ROWS = 16  # rows of a tile (A, C) and pair rows of a B tile
TILE_K = 32  # bf16 k elements of an A tile row (64 bytes)
TILE_COLS = 16  # f32 columns of a C tile (64 bytes)
BLOCK = 2  # tiles per block side: 2 x 2 C tiles, 32 x 32 elements
TDP_CYCLES = 16  # cycles of one 16 x 16 x 32 tdpbf16ps (1024 bf16 flops per cycle)

ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18
SYS_ARCH_PRCTL = 158  # x86-64 Linux

MARK = "@llvm.x86.tileloadd64.internal"  # in a module's text: it runs AMX tiles

DECLARATIONS = (
    "declare x86_amx @llvm.x86.tilezero.internal(i16, i16)",
    "declare x86_amx @llvm.x86.tileloadd64.internal(i16, i16, ptr, i64)",
    "declare x86_amx @llvm.x86.tdpbf16ps.internal(i16, i16, i16, x86_amx, x86_amx, x86_amx)",
    "declare void @llvm.x86.tilestored64.internal(i16, i16, ptr, i64, x86_amx)",
    "declare void @llvm.x86.tilerelease()",
    "declare <32 x i16> @llvm.masked.load.v32i16.p0(ptr, i32 immarg, <32 x i1>, <32 x i16>)",
)

_granted = False
_lock = threading.Lock()


def request_permission() -> None:
    """Ask Linux once per process for the AMX tile data state (before the first tile
    instruction, which otherwise dies with SIGILL); raises TargetError when refused."""
    global _granted
    with _lock:
        if _granted:
            return
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.syscall(
            ctypes.c_long(SYS_ARCH_PRCTL),
            ctypes.c_long(ARCH_REQ_XCOMP_PERM),
            ctypes.c_long(XFEATURE_XTILEDATA),
        )
        if rc != 0:
            err = ctypes.get_errno()
            raise TargetError(
                "amx_bf16 BRGEMM kernel: Linux refused the AMX tile state "
                f"(arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) = {rc}, errno {err}); "
                "run on a kernel >= 5.16 with AMX enabled, or compile for another target"
            )
        _granted = True


def supports(cfg: BrgemmConfig) -> str | None:
    """Why ``cfg`` (normalized) cannot run on AMX tiles, or None: tiles read rows at one
    stride (no row groups), bf16 A with B in VNNI-2 pairs."""
    if cfg.ab_dtype != "bf16" or not cfg.b_vnni:
        return "AMX multiplies bf16 A by VNNI-2 B (b_vnni=True)"
    if cfg.row_group is not None:
        return "AMX tiles read rows at one stride (no row groups)"
    return None


def _sides(extent: int, tile: int) -> list[tuple[int, int, tuple[int, ...]]]:
    """(first element, blocks, tile extents of a block) of the full blocks then the edge one."""
    full, rem = divmod(extent, BLOCK * tile)
    out = [(0, full, (tile,) * BLOCK)] if full else []
    if rem:
        out.append(
            (
                full * BLOCK * tile,
                1,
                tuple(min(tile, rem - t * tile) for t in range(math.ceil(rem / tile))),
            )
        )
    return out


def groups(cfg: BrgemmConfig) -> list[dict]:
    """The tile groups of ``cfg``: blocks of one shape (rows of each A/C tile, columns of each
    B/C tile), where they start and how many, as the template lays them out."""
    out = []
    for j_start, j_count, cols in _sides(cfg.n, TILE_COLS):
        for i_start, i_count, rows in _sides(cfg.m, TILE_ROWS):
            out.append(
                {
                    "i_start": i_start,
                    "i_count": i_count,
                    "j_start": j_start,
                    "j_count": j_count,
                    "rows": rows,
                    "cols": cols,
                }
            )
    return out


def plan(cfg: BrgemmConfig, fam):
    """The :class:`~polydl.kernels.isa.Blocking` of an AMX kernel: one group per block shape,
    ``mr`` its rows, ``nv`` its 16-column tiles (the cost model reads them)."""
    from .isa import Blocking, TileGroup

    gs = tuple(
        TileGroup(
            mr=sum(g["rows"]),
            nv=len(g["cols"]),
            i_start=g["i_start"],
            i_count=g["i_count"],
            j_start=g["j_start"],
            j_count=g["j_count"],
            j_step=BLOCK * TILE_COLS,
            lanes=g["cols"],
            ksets=1,
            unroll=1,
        )
        for g in groups(cfg)
    )
    return Blocking(
        family=fam.name, vector_width=TILE_COLS, mr=BLOCK * TILE_ROWS, nv=BLOCK, groups=gs
    )


def call_cycles(g, k: int, batch: int) -> float:
    """In-core cycles of one block of group ``g`` over the reduction: its tdpbf16ps (one per
    C tile per 32 k, a short k step costs a full one) and tile loads (one per A and B tile)."""
    tiles = math.ceil(g.mr / TILE_ROWS) * g.nv
    steps = math.ceil(k / TILE_K) + (k % 2)
    return batch * steps * max(tiles * TDP_CYCLES, (math.ceil(g.mr / TILE_ROWS) + g.nv) * 8)


def _args(params: str) -> str:
    """The arguments that pass a function's own IR parameters on (``ptr noalias %C`` ->
    ``ptr %C``)."""
    return ", ".join(f"{p.split()[0]} {p.split()[-1]}" for p in params.split(", "))


def context(cfg: BrgemmConfig, mask, params: str) -> dict:
    """What ``microkernels/amx/brgemm.ll.j2`` lays out, beyond the shared context: per group
    its tiles' shapes (rows, bytes) and the rows of the k tail's zero-padded copies."""
    k_main, k_rem = divmod(cfg.k, TILE_K)
    tail_pairs = -(-k_rem // 2)
    out = []
    for gi, g in enumerate(groups(cfg)):
        rows = [{"t": t, "rows": r, "off": t * TILE_ROWS} for t, r in enumerate(g["rows"])]
        cols = [{"t": t, "cols": c, "off": t * TILE_COLS} for t, c in enumerate(g["cols"])]
        tiles = [f"{a['t']}{b['t']}" for a in rows for b in cols]
        shape = {f"{a['t']}{b['t']}": (a["rows"], 4 * b["cols"]) for a in rows for b in cols}
        vecs = [
            {"c": c, "off": c * TILE_COLS, "mask": mask(TILE_COLS, n), "lanes": n}
            for c, n in enumerate(g["cols"])
        ]
        # the k tail, copied zero-padded to a whole 32 k: A rows (its elements past k_rem
        # zero), B pair rows (those past the tail zero, an odd k's last pad cleared)
        a_fill = [
            {
                "t": a["t"],
                "r": r,
                "src": k_main * TILE_K + (a["off"] + r) * cfg.lda,
                "dst": a["t"] * 512 + r * 32,
            }
            for a in rows
            for r in range(a["rows"])
        ]
        b_fill = [
            {
                "t": b["t"],
                "q": q,
                "src": (k_main * TILE_K + 2 * q) * cfg.ldb + 2 * b["off"],
                "dst": b["t"] * 256 + q * 16,
                "load": q < tail_pairs,
                "clear": k_rem % 2 == 1 and q == tail_pairs - 1,
                "mask": mask(TILE_COLS, b["cols"]),
            }
            for b in cols
            for q in range(TILE_ROWS)
        ]
        out.append(
            {
                "p": f"g{gi}",
                **g,
                "tiles_rows": rows,
                "tiles_cols": cols,
                "ctiles": tiles,
                "shape": shape,
                "vecs": vecs,
                "n_rows": sum(g["rows"]),
                "a_fill": a_fill,
                "b_fill": b_fill,
            }
        )
    return {
        "amx_groups": out,
        "k_main": k_main,
        "k_rem": k_rem,
        "k_mask": mask(TILE_K, k_rem) if k_rem else "",
        "a_stride": 2 * cfg.lda,  # bytes from one A row to the next
        "b_stride": 4 * cfg.ldb,  # bytes from one VNNI-2 pair row to the next
        "b_step": TILE_K * cfg.ldb,  # i16 elements of B per 32 k (16 pair rows)
        "cbuf_ld": BLOCK * TILE_COLS,  # floats per row of the block's stack buffer
        "args": _args(params),
    }
