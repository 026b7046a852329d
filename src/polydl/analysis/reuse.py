"""Working sets of a tiled loop nest, from the statement's isl access relations.

A tiled nest of one statement is described by ``loops``: ``(iterator, block)`` pairs, outermost
first. Each loop steps one original iterator by ``block`` over the tile of the loops above it
(tiles are aligned at multiples of the block, as ``floor(i / block)`` in the schedule); an
iterator may appear several times with decreasing blocks (a tile loop, then a point loop).
Iterators that never appear are covered whole by the innermost level (the microkernel call).

For loop level ``l`` the working set is the data touched by ONE iteration of that loop, the first
one: every iterator scanned by a loop at or above ``l`` is limited to the block of the innermost
such loop, at the origin of the lexicographically first tile (found greedily from the domain's
``dim_min``), the others range freely, and the result is intersected with the statement's
domain. Its image under each access relation is the footprint; a tensor read several times (as
``A[i, k]`` and ``A[j, k]``) counts the union of its images once. Sizes come from the extents
(``dim_min``/``dim_max``) of the footprints, exact for dense accesses: no counting of points.

A footprint depends only on the blocks of the iterators its accesses use, and of the iterators
the domain's constraints link to those (a conv's padding condition links ``p`` and ``r``); an
:class:`Analyzer` caches footprints on exactly that key, so ranking thousands of variants needs
only a few hundred isl operations.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..ir import nodes, poly
from ..target import Cache, Target, resolve

LINE_BYTES = 64  # a cache line: the unit in which a short run of a footprint is brought in

Loops = Sequence[tuple[str, int]]
Box = dict[str, tuple[int, int]]  # iterator -> half-open range [lo, hi)


@dataclass(frozen=True, kw_only=True)
class Footprint:
    """The data of one tensor touched by one iteration of a loop level."""

    tensor: str
    elements: int
    bytes: int


@dataclass(frozen=True, kw_only=True)
class Level:
    """One loop level of a tiled nest (or, last, the innermost block under all loops)."""

    depth: int  # 0 = outermost loop; len(loops) = the block of one microkernel call
    loop: tuple[str, int] | None  # (iterator, block) of this loop; None for the innermost block
    ranges: tuple[tuple[str, int, int], ...]  # (iterator, lo, hi) half-open, in the first iteration
    trip: int  # iterations of this loop in the first iteration of the loop above (1 for the block)
    footprints: tuple[Footprint, ...]  # per tensor, in the kernel's argument order
    total_bytes: int
    cache: Cache | None  # smallest cache of the target holding total_bytes (None: memory)

    def footprint(self, tensor: str) -> Footprint:
        for f in self.footprints:
            if f.tensor == tensor:
                return f
        raise KeyError(tensor)

    @property
    def label(self) -> str:
        if self.loop is None:
            return "micro"
        v, b = self.loop
        return v if b == 1 else f"{v}/{b}"


class Analyzer:
    """isl footprints of one statement, cached by the blocks that can change them."""

    def __init__(self, kernel: nodes.Kernel, stmt: nodes.Statement):
        if not kernel.bindings and kernel.sizes:
            raise ValueError(f"working sets of {kernel.name} need bound sizes (kernel.bind)")
        self.kernel = kernel
        self.stmt = stmt
        self.domain = poly.domain(kernel, stmt)
        self.iterators = tuple(stmt.iterators)
        groups = poly.coupled(self.domain)
        self.group = {v: g for g in groups for v in g}
        accesses: dict[str, list] = {}
        used: dict[str, set[str]] = {}
        for load in (stmt.target, *stmt.reads):
            m = poly.access_map(kernel, stmt, load)  # handles // and % in indices
            if any(m.is_equal(o) for o in accesses.get(load.tensor, ())):
                continue  # C[i, j] as target and as read of +=: one relation
            accesses.setdefault(load.tensor, []).append(m)
            for e in load.index:
                used.setdefault(load.tensor, set()).update(
                    v for v in nodes.int_vars(e) if v in self.group
                )
        order = [t.name for t in kernel.all_tensors if t.name in accesses]
        self.tensors = tuple(order)
        self.maps = {t: accesses[t] for t in order}
        # per tensor dimension (single-access tensors): the 1-d access and the iterators
        # (with those the domain links to them) its extent depends on
        self.dims: dict[str, list[tuple[object, frozenset[str]]]] = {}
        for t, ms in accesses.items():
            if len(ms) != 1:
                continue
            load = next(ld for ld in (stmt.target, *stmt.reads) if ld.tensor == t)
            self.dims[t] = [
                (
                    md,
                    frozenset().union(
                        *(self.group[v] for v in nodes.int_vars(e) if v in self.group)
                    ),
                )
                for md, e in zip(poly.output_dims(ms[0]), load.index, strict=True)
            ]
        self.relevant = {
            t: frozenset().union(*(self.group[v] for v in used.get(t, ())))
            if used.get(t)
            else frozenset()
            for t in order
        }
        self.elem_bytes = {t: nodes.DTYPE_BYTES[kernel.arg(t).dtype] for t in order}  # type: ignore[union-attr]
        self._extents: dict = {}
        self._sizes: dict = {}
        self._fps: dict = {}
        self.empty = self.domain.is_empty()

    # ------------------------------------------------------------ isl, cached

    def extent(self, v: str, box: Box) -> tuple[int, int] | None:
        """Inclusive range of iterator ``v`` over the domain within ``box``."""
        key = (v, tuple(sorted((u, box[u]) for u in self.group[v] if u in box)))
        if key not in self._extents:
            sub = poly.restrict(self.domain, dict(key[1]))
            self._extents[key] = poly.extent(sub, v)
        return self._extents[key]

    def elements(self, tensor: str, box: Box) -> int:
        """Elements of ``tensor`` touched by the iterations within ``box``.

        A tensor accessed once counts the bounding box of its footprint as the product of the
        extents of its dimensions, each cached on the blocks of the iterators it depends on.
        """
        if tensor in self.dims:
            return math.prod(self._dim_extents(tensor, box))
        key = (tensor, tuple(sorted((u, box[u]) for u in self.relevant[tensor] if u in box)))
        if key not in self._sizes:
            sub = poly.restrict(self.domain, dict(key[1]))
            self._sizes[key] = poly.footprint_size(poly.image(m, sub) for m in self.maps[tensor])
        return self._sizes[key]

    def _dim_extents(self, tensor: str, box: Box) -> list[int]:
        out = []
        for d, (md, deps) in enumerate(self.dims[tensor]):
            key = (tensor, d, tuple(sorted((u, box[u]) for u in deps if u in box)))
            if key not in self._sizes:
                sub = poly.restrict(self.domain, dict(key[2]))
                ext = poly.range_extent(md, sub)  # type: ignore[arg-type]
                self._sizes[key] = 0 if ext is None else ext[1] - ext[0] + 1
            out.append(self._sizes[key])
        return out

    def line_bytes(self, tensor: str, box: Box, elements: int) -> int:
        """Bytes of the cache lines the footprint occupies: a short run along the contiguous
        dimension (one tap of a filter, ``W[k, c, r, s]`` with ``s`` fixed) still brings the
        line around it, up to the whole dimension (a bounding-box estimate: the elements of
        the last dimension between the touched ones come along, at most a line's worth)."""
        eb = self.elem_bytes[tensor]
        if tensor not in self.dims or not elements:
            return elements * eb
        last = self._dim_extents(tensor, box)[-1]
        full = self.kernel.shape_of(tensor)[-1]
        run = min(full, max(last, LINE_BYTES // eb))
        return elements // last * run * eb

    # ------------------------------------------------------------ levels

    def footprints(self, box: Box) -> tuple[Footprint, ...]:
        key = tuple(sorted(box.items()))
        fps = self._fps.get(key)
        if fps is None:
            out = []
            for t in self.tensors:
                n = self.elements(t, box)
                out.append(Footprint(tensor=t, elements=n, bytes=self.line_bytes(t, box, n)))
            fps = self._fps[key] = tuple(out)
        return fps

    def whole(self) -> tuple[Footprint, ...]:
        """Footprints of the whole statement (every iterator free)."""
        return self.footprints({})

    def boxes(self, loops: Loops, *, full: bool = False) -> list[tuple[Box, int]]:
        """For each loop, the iterator ranges of its first iteration and its trip count
        (``full``: of its first full iteration where the first is partial, a range not
        starting on a multiple of the tile: the interior rows of a padded conv's cell)."""
        box: Box = {}
        out: list[tuple[Box, int]] = []
        for v, b in loops:
            if v not in self.group:
                raise ValueError(f"{v!r} is not an iterator of {self.stmt.name} {self.iterators}")
            if b < 1:
                raise ValueError(f"block of {v!r} must be positive, got {b}")
            ext = None if self.empty else self.extent(v, box)
            if ext is None:
                out.append((dict(box), 0))
                continue
            lo, hi = ext
            a = (lo // b) * b
            trip = hi // b - lo // b + 1
            if full and a < lo and -(-lo // b) * b + b - 1 <= hi:
                a = -(-lo // b) * b  # the first tile inside the range
            old = box.get(v, (a, a + b))
            box = {**box, v: (max(a, old[0]), min(a + b, old[1]))}
            out.append((box, trip))
        return out

    def levels(
        self, loops: Loops, target: Target, threads: int = 1, *, full: bool = False
    ) -> tuple[Level, ...]:
        loops = tuple((str(v), int(b)) for v, b in loops)
        out: list[Level] = []
        box: Box = {}
        boxes = self.boxes(loops, full=full)
        for depth, ((v, b), (box, trip)) in enumerate(zip(loops, boxes, strict=True)):
            out.append(self._level(depth, (v, b), box, trip, target, threads))
        out.append(self._level(len(loops), None, box, 1, target, threads))
        return tuple(out)

    def _level(self, depth, loop, box: Box, trip: int, target: Target, threads: int) -> Level:
        fps = (
            self.footprints(box)
            if trip
            else tuple(Footprint(tensor=t, elements=0, bytes=0) for t in self.tensors)
        )
        total = sum(f.bytes for f in fps)
        return Level(
            depth=depth,
            loop=loop,
            ranges=tuple((v, *box[v]) for v in self.iterators if v in box),
            trip=trip,
            footprints=fps,
            total_bytes=total,
            cache=target.fit(total, threads),
        )


@functools.lru_cache(maxsize=64)
def analyzer(kernel: nodes.Kernel, stmt: str) -> Analyzer:
    """The (cached) :class:`Analyzer` of statement ``stmt`` of ``kernel``."""
    return Analyzer(kernel, kernel.statement(stmt))


def _stmt_name(stmt: nodes.Statement | str) -> str:
    return stmt if isinstance(stmt, str) else stmt.name


def working_sets(
    kernel: nodes.Kernel,
    stmt: nodes.Statement | str,
    loops: Loops,
    *,
    target: Target | str | None = None,
    threads: int = 1,
) -> tuple[Level, ...]:
    """Working set of every level of a tiled nest of ``stmt``: one :class:`Level` per loop
    (outermost first), then one for the block under all loops (one microkernel call).

    ``target`` (default: the host) places each level in its smallest cache that holds it;
    with ``threads`` cores running, a shared cache counts only its per-core share.
    """
    return analyzer(kernel, _stmt_name(stmt)).levels(loops, resolve(target), threads)


def nest_footprint(kernel: nodes.Kernel, stmt: nodes.Statement | str) -> tuple[Footprint, ...]:
    """Footprint per tensor of the whole statement."""
    return analyzer(kernel, _stmt_name(stmt)).whole()


def extents(kernel: nodes.Kernel, stmt: nodes.Statement | str) -> dict[str, tuple[int, int]]:
    """Inclusive range of every iterator of ``stmt`` over its domain."""
    a = analyzer(kernel, _stmt_name(stmt))
    out: dict[str, tuple[int, int]] = {}
    for v in a.iterators:
        ext = None if a.empty else a.extent(v, {})
        out[v] = ext if ext is not None else (0, -1)
    return out


def fmt_bytes(n: float) -> str:
    """``12K``, ``1.3M``, ``512``: short sizes for tables."""
    if n < 1024:
        return f"{int(n)}"
    for unit, scale in (("K", 1024), ("M", 1024**2), ("G", 1024**3)):
        v = n / scale
        if v < 1024 or unit == "G":
            return f"{v:.0f}{unit}" if v >= 10 else f"{v:.1f}{unit}".replace(".0", "")
    raise AssertionError


__all__ = [
    "Analyzer",
    "Footprint",
    "Level",
    "analyzer",
    "extents",
    "fmt_bytes",
    "nest_footprint",
    "working_sets",
]
