"""NumPy twin of every BRGEMM kernel: same arguments, same layouts, computed in float64.

The twin reads blocks through explicit index arrays, so it never reads outside the buffers and
it follows exactly the address rules of :mod:`polydl.kernels.config`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..memory import from_bf16
from .config import BrgemmConfig
from .epilogue import evaluate


def block(flat: np.ndarray, offset: int, rows, cols: int, ld: int = 0) -> np.ndarray:
    """The ``rows x cols`` block at element ``offset`` of ``flat`` (a copy): row ``i`` at
    ``i*ld``, or at ``rows[i]`` when ``rows`` is a sequence of row offsets. bfloat16 bits
    (``uint16``) are read as the float32 they stand for."""
    starts = np.arange(rows) * ld if isinstance(rows, int) else np.asarray(rows)
    idx = offset + starts[:, None] + np.arange(cols)[None, :]
    out = flat.reshape(-1)[idx]
    if out.dtype == np.uint16:
        return (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _b_block(c: BrgemmConfig, flat: np.ndarray, offset: int) -> np.ndarray:
    """The ``k x n`` B block at ``offset``: rows ``ldb`` apart, or VNNI-2 pairs of rows
    (``B[p, j]`` at ``(p//2)*2*ldb + 2*j + p%2``)."""
    if not c.b_vnni:
        return block(flat, offset, c.k, c.n, c.ldb)
    p = np.arange(c.k)
    rows = (p // 2) * 2 * c.ldb + p % 2
    idx = offset + rows[:, None] + 2 * np.arange(c.n)[None, :]
    out = flat.reshape(-1)[idx]
    return from_bf16(out)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 ``x`` rounded to bfloat16 bits (uint16; to nearest, ties to even, NaN quiet):
    what a ``c_dtype="bf16"`` kernel stores."""
    b = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    up = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(x, np.float32))
    return np.where(nan, ((b >> 16) | 0x40).astype(np.uint16), up)


def pairs(
    cfg: BrgemmConfig,
    a: np.ndarray | Sequence[np.ndarray],
    b: np.ndarray | Sequence[np.ndarray],
    batch: int,
    a_offsets: np.ndarray | None = None,
    b_offsets: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (A_b, B_b) blocks of a call, following the batch form of ``cfg``."""
    c = cfg.normalized()
    a_rows = [c.a_row(i) for i in range(c.m)]
    out = []
    for i in range(batch):
        if c.form == "stride":
            fa, oa, fb, ob = a, i * c.stride_a, b, i * c.stride_b
        elif c.form == "offset":
            fa, oa, fb, ob = a, int(a_offsets[i]), b, int(b_offsets[i])
        else:
            fa, oa, fb, ob = a[i], 0, b[i], 0
        out.append((block(fa, oa, a_rows, c.k), _b_block(c, fb, ob)))
    return out


def reference(
    cfg: BrgemmConfig,
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
    """What the kernel leaves in ``c`` (a new array; ``c`` itself is not changed); ``alpha`` is
    the run-time alpha of an ``alpha_arg`` kernel; ``operands`` are the flat arrays of the
    epilogue's operands from each one's origin (``bias=`` is the one operand of the bias
    shorthand)."""
    n = cfg.normalized()
    if batch is None:
        batch = len(a_offsets) if n.form == "offset" else len(a)
    acc = np.zeros((n.m, n.n))
    for ab, bb in pairs(n, a, b, batch, a_offsets, b_offsets):
        acc += ab.astype(np.float64) @ bb.astype(np.float64)
    out = c.copy()
    flat = out.reshape(-1)
    idx = np.array([n.c_row(i) for i in range(n.m)])[:, None] + np.arange(n.n)[None, :]
    res = (float(np.float32(alpha)) if n.alpha_arg else n.alpha) * acc
    if n.beta == 1:
        res = res + (from_bf16(flat[idx]) if n.c_dtype == "bf16" else flat[idx]).astype(np.float64)
    if n.epilogue is not None:
        ins = list(operands) if operands is not None else ([bias] if bias is not None else [])
        blocks = []
        for op, x in zip(n.epilogue.operands, ins, strict=True):
            rows = [op.row_offset(i, n.row_group) for i in range(n.m)]
            at = np.array(rows)[:, None] + op.col * np.arange(n.n)[None, :]
            blocks.append(np.asarray(x).reshape(-1)[at].astype(np.float64))
        res = evaluate(n.epilogue.expr, res, blocks)
    res32 = res.astype(np.float32)
    flat[idx] = round_bf16(res32).view(flat.dtype) if n.c_dtype == "bf16" else res32
    return out
