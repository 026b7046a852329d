"""Software prefetch of the next call's B block: one pure pass, tree -> tree.

A BRGEMM call whose B rows are widely strided (``transform/pack.WIDE_ROW_BYTES`` apart: one
channel plane of a large NCHW image per row), or whose batch elements' blocks are that far
apart (a 1-D convolution on NCW: each input channel's taps a few elements apart, the channels a
whole signal apart), and that no copy packs (its block is read once: a 1x1 convolution with
all its output channels in one call) streams each row from a different page. The hardware prefetchers do not follow such rows, so every call waits for its block from
L3 or memory. The calls of a loop nest step through B with a constant distance, which the
microkernel can prefetch for: while it reads row ``r`` of its block it asks for the same line
``prefetch_b`` elements on, where the next call reads (``llvm.prefetch``, into L1).

The distance is that of the innermost enclosing loop (more than one trip) that moves B: the
loops inside it reuse the block (the next call reads the same rows), the first one that moves it
starts the next block. A distance that is not a constant (B's address not affine in that loop)
leaves the call as it is. Before (``pd.nn.conv2d_rows``, 1x1, batch 8; the loop over images
``c2`` moves B by one image, ``C*H*W`` elements)::

    for c1 in [0, 3136) step 64:
      for c2 in [0, 8):
        S1_mk0(c1, c2, 0);   // brgemm(m=64, n=64, k=64; ... x I@(j + n*200704))

After::

        S1_mk0(c1, c2, 0);   [prefetch B +200704]

How far ahead is the schedule record's (``ContractionSchedule.prefetch``, carried by the call's
``Micro.prefetch``): 1, the next call's block (the default); 2, the one after it (the distance
doubled); 0, no prefetch.

Run after ``pack_operands`` (a packed call reads its dense copy) and before
``assign_threads`` (whose collapsed loops hide the distance).
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from ..ir import loops as L
from ..ir.nodes import DTYPE_BYTES, Int, IntOp, Kernel, Var, affine, substitute
from .pack import WIDE_ROW_BYTES, _b_source, _wide, max_trips


def _scattered(mk, kernel: Kernel) -> bool:
    """Whether a call's B block lies in rows or batch blocks at least ``WIDE_ROW_BYTES`` apart
    (each in page regions of its own): widely strided rows (``pack._wide``), or short blocks
    (all ``k`` rows of one within ``WIDE_ROW_BYTES``) of consecutive batch elements that far
    apart (a 1-D convolution's input channels, whose taps are a few elements apart in each). A
    GEMM's batch blocks are long runs of rows, which the hardware streams."""
    if _wide(mk, kernel):
        return True
    eb = DTYPE_BYTES[kernel.arg(mk.b).dtype]
    if mk.k * mk.ldb * eb >= WIDE_ROW_BYTES:
        return False
    offs = sorted(set(mk.b_offsets))
    gaps = [b - a for a, b in itertools.pairwise(offs)]
    return bool(gaps) and min(gaps) * eb >= WIDE_ROW_BYTES


def prefetch_operands(kernel: Kernel, tree: tuple[L.Node, ...]) -> tuple[L.Node, ...]:
    """``tree`` with each unpacked, widely strided BRGEMM call's ``prefetch_b`` set to the
    distance to the next call's B block (module docstring). Pure: ``tree`` is not changed."""
    stmts = {s.name: s for s in kernel.statements}
    sizes = kernel.size_values

    def distance(call: L.Call, stack: tuple[L.For, ...]) -> int:
        s = stmts[call.stmt]
        mk = s.micro
        if mk is None or not mk.prefetch or call.packed_b is not None or not _scattered(mk, kernel):
            return 0
        src = _b_source(mk, call, s.iterators)
        for f in reversed(stack):
            if max_trips(f, sizes) == 1:
                continue
            step = IntOp(op="+", a=Var(name=f.var), b=Int(value=f.step))
            moved = IntOp(op="-", a=substitute(src, {f.var: step}), b=src)
            d = affine(moved, sizes)
            if d is None or d[0]:
                return 0  # not a constant distance
            if d[1]:
                return d[1] * mk.prefetch
        return 0

    def rebuild(nodes, stack: tuple[L.For, ...]) -> tuple[L.Node, ...]:
        out: list[L.Node] = []
        for n in nodes:
            if isinstance(n, L.For):
                n = replace(n, body=rebuild(n.body, (*stack, n)))
            elif isinstance(n, L.If):
                n = replace(n, then=rebuild(n.then, stack), orelse=rebuild(n.orelse, stack))
            elif isinstance(n, L.Call):
                d = distance(n, stack)
                if d:
                    n = replace(n, prefetch_b=d)
            out.append(n)
        return tuple(out)

    return rebuild(tree, ())
