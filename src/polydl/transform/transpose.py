"""Copy nests that transpose a 2-D slice become tile-transpose calls: one pure pass,
Kernel -> Kernel (plus the parallel loops of the new statements).

A statement ``dst[..] = src[..]`` alone in its top-level nest is a transpose when, its offsets
linearised (``analysis/contraction.linearize``), one iterator ``a`` is the source's unit
stride (coefficient 1) and another ``b`` the destination's, ``a`` steps the destination by
``ldd >= 1`` and ``b`` the source by ``lds >= 1`` (NCW -> NWC: ``Xt[n, step*i + left, c] =
X[n, c, i]``, ``a = i``, ``b = c``, ``ldd = step*C``, ``lds = W``). Iterators no offset uses
(a tile loop of the source, ``for i0 ...: for i in range(i0, min(i0 + T, W))``) are projected
away: a copy writes each element once whatever the order. The instances left must be a box
(guards that bound one iterator by constants, a border as ``0 <= step*i + left < L``, are
fine) on which the destination offset is one-to-one (no element written twice).

Before (to_nwc, 64 channels)::

    for n: for i0 in range(0, W, 16): for i in range(i0, min(i0 + 16, W)): for c:
        if 0 <= i + 12 < L: Xt[n, i + 12, c] = X[n, c, i]                   S0

After (AVX-512: tiles of 16 x 16; a partial tile of its own statement)::

    for n: for i in range(0, W - W % 16, 16): for c in range(0, 64, 16):
        transpose(16x16, lds=W, ldd=64; Xt@(n*L*64 + (i + 12)*64 + c) = X@(n*64*W + c*W + i)^T)
    ... the last W % 16 positions: transpose(W%16 x 16 ...)

The tile's columns (``a``) are its source rows' elements; the loops go over ``a`` then ``b``
inside the other iterators (the destination's rows written whole, one tile after the other).
Every loop is parallel (a copy carries no dependence). :data:`ENABLED` turns the pass off (the
benchmarks' A/B switch; kernels compiled before a change keep their code).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..analysis.contraction import Linear, linearize
from ..ir import poly
from ..ir.nodes import Kernel, Load, Statement, Transpose
from ..kernels.transpose import ELEMENT_BYTES, TransposeConfig, tile
from .brgemm import block_pieces

ENABLED = True
# each source row prefetched this many bytes past the tile when the source is larger than a
# core's private cache (its rows, one stream each, outnumber the hardware prefetcher's streams;
# measured on the Zen 4 host: 64 channels x 60k positions 7.7 -> 15 GB/s at one thread)
PREFETCH_BYTES = 1024
STREAM_BYTES: int | None = None  # sources larger than this are prefetched (None: the L2's size)
# the destination stored non-temporally (no read for ownership; the copy's output does not stay
# in the caches anyway) when it is larger than this share of the largest cache
NT_SHARE = 0.5


def past_caches(nbytes: int, target) -> bool:
    """Whether a destination of ``nbytes`` written once is stored non-temporally: larger than
    ``NT_SHARE`` of the largest cache, its lines would not stay in the caches anyway (a copy's
    output here; a BRGEMM's C, ``pipeline.lower_contractions``)."""
    largest = max((c.size_bytes for c in target.caches), default=1 << 25)
    return nbytes > NT_SHARE * largest


@dataclass(frozen=True, kw_only=True)
class Match:
    """A transpose statement: its used iterators (outer ones first, then ``a`` and ``b``), their
    inclusive extents and the flat offsets of destination and source."""

    outer: tuple[str, ...]
    a: str
    b: str
    box: dict[str, tuple[int, int]]
    dst: Linear
    src: Linear

    def extent(self, v: str) -> int:
        return self.box[v][1] - self.box[v][0] + 1


def match(kernel: Kernel, s: Statement, isa: str | None = None) -> Match | None:
    """``s`` as a transpose (module docstring), None when it is not one, or when its tiles of
    ``lanes x lanes`` (``isa``'s vectors of the tensors' element type) would be less than half
    full along ``a`` or ``b`` (a 7-pixel row: the loop vectoriser's copy moves as many
    elements per instruction)."""
    if s.micro is not None or s.transpose is not None or s.op != "=":
        return None
    src = s.expr
    if not isinstance(src, Load) or src.tensor == s.target.tensor:
        return None
    dtypes = {kernel.arg(t).dtype for t in (src.tensor, s.target.tensor)}
    if len(dtypes) != 1 or not dtypes <= set(ELEMENT_BYTES):  # a copy, no conversion
        return None
    lt, ls = linearize(kernel, s.target), linearize(kernel, src)
    if lt is None or ls is None:
        return None
    used = [v for v in s.iterators if lt.coef(v) or ls.coef(v)]
    dom = poly.project_onto(poly.domain(kernel, s), used)
    box = poly.extents(dom, used)
    if box is None or not poly.is_box(dom, box):
        return None
    # an iterator of one value (a 1x1 filter's r, s) is a constant, neither a row nor a column
    wide = [v for v in used if box[v][1] > box[v][0]]
    a = [v for v in wide if ls.coef(v) == 1]
    b = [v for v in wide if lt.coef(v) == 1]
    if len(a) != 1 or len(b) != 1 or a == b:
        return None
    (a,), (b,) = a, b
    if lt.coef(a) < 1 or ls.coef(b) < 1:
        return None
    lanes = tile(isa, dtypes.pop())
    if min(box[v][1] - box[v][0] + 1 for v in (a, b)) < max(2, -(-lanes // 2)):
        return None
    if not _one_to_one(lt, box, used):
        return None
    outer = tuple(v for v in used if v not in (a, b))
    return Match(outer=outer, a=a, b=b, box=box, dst=lt, src=ls)


def _one_to_one(lin: Linear, box: dict[str, tuple[int, int]], used: list[str]) -> bool:
    """Whether ``lin`` takes distinct values on the box: positive coefficients, each larger
    than the span of the smaller ones (mixed radix)."""
    coefs = sorted((lin.coef(v), box[v][1] - box[v][0]) for v in used)
    span = 0
    for coef, ext in coefs:
        if coef <= span:
            return False
        span += coef * ext
    return True


def transpose_nests(kernel: Kernel, target) -> tuple[Kernel, dict[str, frozenset[int]]]:
    """``kernel`` with every transpose statement (module docstring) computed by tile-transpose
    calls of ``target``'s ISA family (``target.Target``), and the parallel schedule dimensions
    of each new statement."""
    if not ENABLED:
        return kernel, {}
    tops = {s.name: poly.top_position(kernel, s) for s in kernel.statements}
    found = {}
    for s in kernel.statements:
        pos = tops[s.name]
        if pos is not None and list(tops.values()).count(pos) == 1:
            m = match(kernel, s, target.isa)
            if m is not None:
                found[s.name] = m
    if not found:
        return kernel, {}
    ndim = max(poly.schedule_ndim(kernel, s) for s in kernel.statements)
    ndim = max(ndim, *(len(m.outer) + 4 for m in found.values()))
    out: list[Statement] = []
    parallel: dict[str, frozenset[int]] = {}
    for s in kernel.statements:
        m = found.get(s.name)
        if m is None:
            out.append(replace(s, schedule=poly.pad_schedule(s.schedule, ndim)))
            continue
        src, dst = s.expr.tensor, s.target.tensor  # type: ignore[union-attr]
        ahead = PREFETCH_BYTES // ELEMENT_BYTES[kernel.arg(src).dtype]
        stream = target.private_bytes() if STREAM_BYTES is None else STREAM_BYTES
        knobs = {
            "prefetch": ahead if kernel.nbytes(src) > stream and m.extent(m.a) > ahead else 0,
            "nontemporal": past_caches(kernel.nbytes(dst), target),
        }
        new = _lowered(kernel, s, m, tops[s.name], ndim, target.isa, knobs)
        out.extend(new)
        for n in new:
            parallel[n.name] = frozenset(range(1, len(m.outer) + 3))
    return replace(kernel, statements=tuple(out)), parallel


def _lowered(
    kernel: Kernel, s: Statement, m: Match, pos: int, ndim: int, isa: str, knobs: dict
) -> list[Statement]:
    """The statements of ``s``'s tiles: full and partial ones in ``a`` and ``b`` (tiles of the
    family's vector width; non-temporal stores on the tiles whose columns are whole vectors)."""
    dtype = kernel.arg(s.target.tensor).dtype
    t = tile(isa, dtype)
    order = (*m.outer, m.a, m.b)
    params = poly.params_text(kernel.sizes)
    outer = [f"{lo} <= {v} <= {hi}" for v, (lo, hi) in m.box.items() if v in m.outer]
    pieces = [block_pieces(v, m.box[v][0], m.box[v][1] - m.box[v][0] + 1, t) for v in (m.a, m.b)]
    new = []
    for (cols, a_cons), (rows, b_cons) in ((pa, pb) for pa in pieces[0] for pb in pieces[1]):
        name = f"{s.name}_tr{len(new)}"
        cons = " and ".join([*outer, a_cons, b_cons])
        domain = f"{params} -> {{ {name}[{', '.join(order)}] : {cons} }}"
        dims = [str(pos), *order, str(len(new))]
        dims += ["0"] * (ndim - len(dims))
        sched = f"{params} -> {{ {name}[{', '.join(order)}] -> [{', '.join(dims)}] }}"
        cfg = TransposeConfig(
            rows=rows, cols=cols, lds=m.src.coef(m.b), ldd=m.dst.coef(m.a), isa=isa, dtype=dtype
        )
        tr = Transpose(
            rows=rows,
            cols=cols,
            lds=cfg.lds,
            ldd=cfg.ldd,
            src=s.expr.tensor,  # type: ignore[union-attr]
            dst=s.target.tensor,
            src_origin=m.src.expr(),
            dst_origin=m.dst.expr(),
            prefetch=knobs["prefetch"],
            nontemporal=knobs["nontemporal"] and cfg.nt_ok(),
            dtype=dtype,
        )
        new.append(
            replace(s, name=name, iterators=order, domain=domain, schedule=sched, transpose=tr)
        )
    return new
