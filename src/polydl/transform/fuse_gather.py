"""A gathered copy made where its calls read it: the copy nests of ``transform/gather.py`` moved
under the contraction's image loop, and under its loop over blocks of output rows, the scratch
shrunk to what one iteration copies (one copy per thread). One pure pass, Kernel -> Kernel
(:func:`place`), after :func:`plan` chose the placement with the cost model.

``gather.py`` copies a strided or padded operand (a 7x7 stride-2 conv's im2col: for ResNet-50's
first layer 7.4 MB per image) whole before the calls. A copy larger than the caches is written to
memory and streamed back by every call that reads it. Placed per image, or per block of ``B``
output rows of an image, the copy is made just before the calls that read it, into a scratch of
one image or one block, and read back from the cache it was written to::

    for n, c, r, s, p, q: I_g0[n, c, r, s, p, q] = 0 ; ... = I[n, c, 2*p + r - 3, ...]
    for pq_t, n, k: brgemm(... I_g0@(n*CRSPQ + pq) ...)

becomes (``B`` rows a block, ``I_g0`` of shape ``[1, C, R, S, B, Q]`` per thread)::

    for n: for pb in range(ceil(P / B)):               (the first of these loops parallel)
        for c, r, s, p in block pb, q: I_g0[0, c, r, s, p % B, q] = 0 ; ... = I[n, c, ...]
        brgemm calls of the pixels of block pb: I_g0@(pq - B*Q*(pq // (B*Q)) + ...)

Legality: the copy writes exactly the scratch elements the calls of the same block read (the
block's rows of every image), nothing else reads it, and it reads only a kernel argument the
kernel does not write; so copying block by block, each before its calls, computes the same
values. Each thread has its own scratch, and the shared loop's iterations (parallel or not)
run a block's copy before its calls.

:func:`plan` (``pipeline.lower_contractions``, step 5, before lowering): the contraction's ranked
plan with the image loop first (several images) and, for each candidate ``B``, a tile loop of
``B`` rows after it (``fuse_rows.refit``: no call crosses a block, and none is narrower than the
ranked plan's), costed by the cost model
(``fuse_rows``'s ``_cost``) plus the copy: each element of the copy read from memory and written
(zeroed first under a guard) to the cache one block fits, and read back by the calls from there
rather than from where the whole copy fits. The cheapest of whole, per image and per block wins;
a copy that a core's own caches hold whole stays whole (nothing to save, and smaller calls).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..analysis.reuse import fmt_bytes
from ..ir import poly
from ..ir.nodes import Int, IntOp, Kernel, Load, Statement, Var
from ..target import Target
from . import fuse_rows


@dataclass(frozen=True, kw_only=True)
class Placement:
    """Where :func:`place` makes the gathered copy ``tensor`` of contraction ``stmt``."""

    stmt: str  # the contraction (its calls are ``<stmt>_mk<i>``)
    tensor: str  # the gathered copy (a scratch tensor of the kernel)
    copies: tuple[str, ...]  # the statements writing it (zero fill, copy), in order
    image: str | None  # the image iterator shared by the copies and the calls (None: one image)
    row: str | None  # the copies' row iterator (None: a whole image per iteration)
    column: str  # the calls' pixel iterator (rows of ``width`` pixels)
    width: int  # pixels per row
    rows: int  # B: rows per block (the image's rows when ``row`` is None)
    shape: tuple[int, ...]  # the scratch's shape per thread
    coefs: tuple[tuple[str, int], ...]  # the calls' offset coefficients on the compacted copy


@dataclass(frozen=True, kw_only=True)
class _Copy:
    tensor: str
    role: str  # "A" or "B": the contraction operand that reads it
    copies: tuple[Statement, ...]
    image: str | None
    row: str
    column: str
    width: int
    height: int


def _gathered(kernel: Kernel, c) -> _Copy | None:
    """The gathered copy contraction ``c`` reads, when its copy nests come just before the
    contraction's nest, nothing else reads it, and its last two dimensions are the rows and
    columns of the output (the calls' pixels coalesced into one run)."""
    temps = {t.name for t in kernel.temps}
    for role, t in (("B", c.b), ("A", c.a)):
        if t not in temps:
            continue
        copies = tuple(s for s in kernel.statements if s.target.tensor == t)
        readers = {s.name for s in kernel.statements if any(ld.tensor == t for ld in s.reads)}
        pos = poly.top_position(kernel, kernel.statement(c.stmt))
        tops = [poly.top_position(kernel, s) for s in copies]
        if not copies or readers - {c.stmt} or pos is None or None in tops:
            continue
        if tops != list(range(pos - len(copies), pos)):
            continue
        its = copies[0].iterators
        if len(its) < 3 or any(s.iterators != its for s in copies):
            continue
        if any(s.target.index != tuple(Var(name=v) for v in its) for s in copies):
            continue  # (gather.py's copies index their box from 0)
        shape = kernel.shape_of(t)
        p, q = its[-2], its[-1]
        if c.n in its or c.linear(role).coef(c.n) != 1 or c.extent(c.n) != shape[-2] * shape[-1]:
            continue
        image = its[0] if its[0] in c.outer and its[0] not in (p, q) else None
        return _Copy(
            tensor=t,
            role=role,
            copies=copies,
            image=image,
            row=p,
            column=c.n,
            width=shape[-1],
            height=shape[-2],
        )
    return None


def _first(loops, v: str):
    return ((v, 1), *((u, b) for u, b in loops if u != v))


def plan(kernel: Kernel, entry: tuple, nest_k: Kernel, target: Target, threads: int):
    """``(placement or None, the plan entry to lower, why, cost units saved)`` for the contraction of ``entry``
    (``(contraction, block plan, parallel loops, predicted cost)``, module doc)."""
    from ..analysis.deps import check_schedule
    from ..optimize.plan import config_ok
    from ..optimize.search import legal_order

    c, bp, n_par, predicted = entry
    g = _gathered(kernel, c)
    if g is None:
        return None, entry, "", 0.0
    shape = kernel.shape_of(g.tensor)
    whole = kernel.nbytes(g.tensor)
    images = c.extent(g.image) if g.image else 1
    writes = len(g.copies)
    share = whole / threads
    level = target.fit(whole, threads)

    def units(block: int) -> float:
        # the copy: read from memory, written ``writes`` times and read back by the calls at
        # the level one block fits (the calls' own cost counts their reads where they fit)
        at = target.fit(block, threads)
        back = target.byte_cost(level) - target.byte_cost(at)
        return share * (writes * target.byte_cost(at) + target.byte_cost(None) - back)

    if level is not None and not level.shared:
        # (as transform/fuse_rows.py: what a core's own caches hold whole stays whole)
        return None, entry, f"{g.tensor} {fmt_bytes(whole)} fits a core's own cache whole", 0.0
    par = 1 if threads > 1 else 0
    base = fuse_rows._cost(nest_k, c, bp, threads, n_par, target) + units(whole)
    best = (base, None, bp, whole)
    options = []
    if images > 1 and g.image in bp.order and images >= threads:
        options.append((None, replace(bp, loops=_first(bp.loops, g.image))))
    for rows in fuse_rows.candidates(g.height, threads if images == 1 else 1):
        fit = fuse_rows.refit(c, bp, g.column, g.width, rows)
        if fit is None or (fit.block(c.n) or 1) < (bp.block(c.n) or 1):
            # calls of fewer columns than ranked cost more than the model says: resnet_07 and
            # 12 (3x3 im2col, one or two rows of 28 columns a call, not 64-80) at 1 thread,
            # batch 1: 0.93 -> 0.67 and 0.91 -> 0.53 of torch; blocks keep the ranked calls
            continue
        if threads > 1 and images == 1 and c.extent(c.n) % (fit.block(c.n) or 1):
            # the partial block of pixels would be made after the parallel loop (isl orders it
            # last), reading the scratch of thread 0 rather than of the thread that copied it
            continue
        if images > 1:
            if g.image not in bp.order or images < threads:
                continue
            fit = replace(fit, loops=_first(fit.loops, g.image))
        options.append((rows, fit))
    for rows, fit in options:
        block = whole // images * (rows or g.height) // g.height
        cost = fuse_rows._cost(nest_k, c, fit, threads, par, target) + units(block)
        if cost < best[0] * (1 - 1e-9):
            best = (cost, rows, fit, block)
    cost, rows, fit, block = best
    if fit is bp:
        why = f"{g.tensor} {fmt_bytes(whole)} copied whole (predicted {base:.3g})"
        return None, entry, why, 0.0
    if not config_ok(c, fit) or not legal_order(nest_k, c.stmt, fit.loops, check_schedule):
        return None, entry, f"{g.tensor}: the calls tiled by {rows} rows break their nest", 0.0
    small = [1 if g.image else shape[0], *shape[1:]]
    if rows:
        small[-2] = rows
    cc = fuse_rows.compacted(kernel, c, g.tensor, tuple(small))
    if cc is None:
        return None, entry, f"{g.tensor}: not affine on a block", 0.0
    lin = cc.linear(g.role)
    placement = Placement(
        stmt=c.stmt,
        tensor=g.tensor,
        copies=tuple(s.name for s in g.copies),
        image=g.image if images > 1 else None,
        row=g.row if rows else None,
        column=g.column,
        width=g.width,
        rows=rows or g.height,
        shape=tuple(small),
        coefs=tuple((v, lin.coef(v)) for v in (g.image, g.column) if v),
    )
    what = f"a block of {rows} of {g.height} rows" if rows else "one image"
    why = (
        f"{g.tensor} {fmt_bytes(whole)} copied as {what} {fmt_bytes(block)} before its calls "
        f"(predicted {cost:.3g} vs {base:.3g} whole)"
    )
    return placement, (cc, fit, par, predicted), why, base - cost


def place(kernel: Kernel, p: Placement) -> Kernel:
    """The lowered ``kernel`` with the copies of ``p.tensor`` under the loops its calls share
    (the image, the block of rows), the scratch one block per thread (module doc)."""
    calls = [s for s in kernel.statements if s.name.rsplit("_mk", 1)[0] == p.stmt and s.micro]
    if not calls:
        raise ValueError(f"place: contraction {p.stmt} has no BRGEMM calls to place the copy at")
    first = poly.top_position(kernel, kernel.statement(p.copies[0]))
    assert first is not None
    tile = p.rows * p.width
    blocked = p.row is not None
    copy_prefix = [
        *([p.image] if p.image else []),
        *([f"floor({p.row}/{p.rows})"] if blocked else []),
    ]
    call_prefix = [
        *([p.image] if p.image else []),
        *([f"floor({p.column}/{tile})"] if blocked else []),
    ]
    coefs = dict(p.coefs)

    def less(origin):
        if p.image and coefs.get(p.image):
            origin = IntOp(
                op="-", a=origin, b=IntOp(op="*", a=Var(name=p.image), b=Int(value=coefs[p.image]))
            )
        if blocked and coefs.get(p.column):
            block = IntOp(op="//", a=Var(name=p.column), b=Int(value=tile))
            step = Int(value=coefs[p.column] * tile)
            origin = IntOp(op="-", a=origin, b=IntOp(op="*", a=block, b=step))
        return origin

    def local(s: Statement) -> Load:
        index = list(s.target.index)
        if p.image:
            index[0] = Int(value=0)
        if blocked:
            index[-2] = IntOp(op="%", a=Var(name=p.row), b=Int(value=p.rows))
        return replace(s.target, index=tuple(index))

    out = []
    for s in kernel.statements:
        if s.name in p.copies:
            sched = poly.shared_schedule(s.schedule, first, tuple(copy_prefix), 0)
            s = replace(s, schedule=sched, target=local(s))
        elif s in calls:
            mk = s.micro
            mk = replace(
                mk,
                a_origin=less(mk.a_origin) if mk.a == p.tensor else mk.a_origin,
                b_origin=less(mk.b_origin) if mk.b == p.tensor else mk.b_origin,
            )
            sched = poly.shared_schedule(s.schedule, first, tuple(call_prefix), 1)
            s = replace(s, schedule=sched, micro=mk)
        out.append(s)
    ndim = max(poly.map_ndim(s.schedule) for s in out)
    out = [replace(s, schedule=poly.pad_schedule(s.schedule, ndim)) for s in out]
    temps = tuple(
        replace(t, shape=tuple(Int(value=d) for d in p.shape), per_thread=True)
        if t.name == p.tensor
        else t
        for t in kernel.temps
    )
    return replace(kernel, statements=tuple(out), temps=temps)


def moved(kernel: Kernel, p: Placement) -> tuple[str, ...]:
    """The statements :func:`place` put under the shared loops (the copies and the calls)."""
    calls = [s.name for s in kernel.statements if s.name.rsplit("_mk", 1)[0] == p.stmt and s.micro]
    return (*p.copies, *calls)


def shared_depth(p: Placement) -> int:
    """The loops :func:`place` shares (schedule dimensions 1 .. depth)."""
    return (p.image is not None) + (p.row is not None)
