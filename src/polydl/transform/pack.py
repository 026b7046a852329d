"""Pack the B blocks of BRGEMM calls into dense scratch buffers: one pure pass, tree -> tree.

A call reads its B block as ``batch x k`` rows of ``n`` elements, ``ldb`` apart. When ``ldb`` is
much larger than ``n`` (a big GEMM: rows 4-8 KiB apart) every row sits in its own page and the
same few cache sets: the hardware prefetchers cannot follow and L1 keeps evicting the block.
When the same block is read again by later calls (a loop between the copy and the call that
does not move B), copying it once into a dense buffer pays for itself: the calls then read
``k * n`` consecutive elements.

Before (a GEMM; ``c2`` tiles k, ``c3`` steps rows, ``c4`` steps column blocks)::

    for c2: for c3: for c4: S1(c2, c3, c4)       // brgemm(...; B@(c4 + c2 * N), ldb = N)

After (``c3`` does not move B, so the copy goes right inside ``c2``)::

    for c2:
        float pk0[8 * 256 * 64];
        for c4: for pk0_r in [0, 256): copy(pk0 + ((c4 - lo) / 64) * 16384 + pk0_r * 64,
                                             B + c4 + c2 * N + pk0_r * N, 64)
        for c3: for c4: S1(c2, c3, c4)  [B from pk0 + ((c4 - lo) / 64) * 16384]

bf16 calls on a CPU whose bf16 family multiplies pairs (``vdpbf16ps``, AMX) get a *VNNI-2*
copy instead, whatever ``ldb``: rows ``k, k + 1`` interleaved element by element (``[k/2][n][2]``,
``kernels/config.py``), the last row of an odd ``k`` beside zeros, so the kernel loads each pair
vector as it is where it would otherwise interleave two rows in registers for every row tile.
It goes where a dense copy would; without reuse across calls, right before its call (the row
tiles of one call already re-read it), when the cost model (``optimize/cost.vnni_pays``) says
the kernel's saved cycles over the calls reading it outweigh the copy::

    for c1: for c3: copy_pairs(pk0 + pk0_r * 128, B + c3 + pk0_r * 1024, 512, 64) ...
                    S1(c1, 0, c3)  [B from pk0 + 0, VNNI-2]

The copy is placed at the deepest loop below which some loop leaves B unchanged (so the block is
reused), copying every block that the loops between it and the call visit (the *panel* loops,
whose bounds must not depend on each other). Buffers are owned by the function that runs the
copy: one per thread inside a parallel loop; a copy above a parallel loop is shared (it runs
before the threads start, and they only read it). Conditions: B's rows are at least
``WIDE_ROW_BYTES`` apart, B is read-only in the kernel, its batch offsets are evenly spaced, and
the buffer fits in ``max_bytes``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

from ..ir import loops as L
from ..ir.nodes import DTYPE_BYTES, Int, IntOp, Kernel, Micro, Var, affine, int_vars, substitute


def _add(a, b):
    return IntOp(op="+", a=a, b=b)


def _mul(a, k: int):
    return a if k == 1 else IntOp(op="*", a=a, b=Int(value=k))


def max_trips(f: L.For, sizes: dict[str, int]) -> int | None:
    """An upper bound on the trips of ``f`` whatever the outer iterators are, when the bounds
    differ by a constant (``lo = max(a, ...)``, ``hi = min(b, ...)`` with ``b - a`` constant)."""
    hi = f.upper()
    if hi is None:
        return None

    def operands(e, op):
        if isinstance(e, IntOp) and e.op == op:
            return [*operands(e.a, op), *operands(e.b, op)]
        if isinstance(e, IntOp) and e.op in ("+", "-") and isinstance(e.b, Int):
            return [replace(e, a=x) for x in operands(e.a, op)]  # min(a, b) + 1
        return [e]

    best = None
    for h, lo in itertools.product(operands(hi, "min"), operands(f.init, "max")):
        d = affine(IntOp(op="-", a=h, b=lo), sizes)
        if d is not None and not d[0]:
            trips = max(0, -(-d[1] // f.step))
            best = trips if best is None else min(best, trips)
    return best


@dataclass(frozen=True, kw_only=True)
class _Plan:
    """Where one call's B copy goes: under ``level`` (an enclosing For, None: the top level),
    copying every block that the ``panels`` loops visit."""

    level: L.For | None
    panels: tuple[L.For, ...]
    trips: tuple[int, ...]
    key: tuple


def _key(level: L.For | None, mk: Micro, src, panels: tuple[L.For, ...], vnni: bool) -> tuple:
    """Calls with equal keys read the same blocks through the same panel loops: one copy."""
    sig = tuple((f.var, f.init, f.cond, f.step) for f in panels)
    return (id(level), mk.b, src, mk.k, mk.n, mk.ldb, mk.b_offsets, sig, vnni)


def _rows(mk: Micro, vnni: bool) -> int:
    """Rows of one packed block: ``k``, or ``2*ceil(k/2)`` in VNNI-2 pairs (the pad of an odd k)."""
    return 2 * -(-mk.k // 2) if vnni else mk.k


# B rows at least this far apart are "widely strided": each in a page region of its own, which
# the prefetchers do not follow. Closer rows (a 14x14 image's channel planes, 784 bytes apart)
# stream well as they are, and a copy before a parallel loop runs on one thread.
WIDE_ROW_BYTES = 2048


def _wide(mk: Micro, kernel: Kernel) -> bool:
    eb = DTYPE_BYTES[kernel.arg(mk.b).dtype]  # type: ignore[union-attr]
    return mk.ldb != mk.n and mk.ldb * eb >= WIDE_ROW_BYTES


def _b_source(mk: Micro, call: L.Call, iterators: tuple[str, ...]):
    env = dict(zip(iterators, call.args, strict=True))
    return substitute(mk.b_origin, env)


def _even_spacing(offsets: tuple[int, ...]) -> int | None:
    if len(offsets) == 1:
        return 0
    d = offsets[1] - offsets[0]
    ok = all(b - a == d for a, b in itertools.pairwise(offsets))
    return d if ok and offsets[0] == 0 else None


def pack_operands(
    kernel: Kernel,
    tree: tuple[L.Node, ...],
    *,
    max_bytes: int,
    skip: frozenset[str] = frozenset(),
    target=None,
) -> tuple[L.Node, ...]:
    """``tree`` with the B blocks of reused, widely strided BRGEMM operands copied into dense
    buffers, and those of bf16 calls into VNNI-2 pairs where ``target``'s bf16 family takes
    them (see the module docstring); the calls of the statements in ``skip`` (a schedule
    record's ``pack=False``) read B where it is. Pure: ``tree`` is not changed."""
    from ..optimize.cost import vnni_pays, vnni_target

    sizes = kernel.size_values
    stmts = {s.name: s for s in kernel.statements}
    written = {s.target.tensor for s in kernel.statements}
    pairs = target is not None and vnni_target(target)
    found: list[tuple[L.Call, tuple[L.For, ...], Micro]] = []
    guarded: set[int] = set()  # calls under a guard: a VNNI copy right before them at most
    vnni: set[int] = set()

    def visit(nodes, stack, clean: bool):
        for n in nodes:
            if isinstance(n, L.For):
                visit(n.body, (*stack, n), clean)
            elif isinstance(n, L.If):
                # calls under a guard are packed only above the guard (the copy would read the
                # blocks of iterations the guard excludes)
                visit(n.then, stack, False)
                visit(n.orelse, stack, False)
            elif isinstance(n, L.Call) and n.stmt not in skip:
                mk = stmts[n.stmt].micro
                if mk is None or mk.b in written or mk.b_vnni:
                    continue  # (a B in VNNI-2 pairs already is read where it is)
                if pairs and mk.ab_dtype == "bf16":
                    vnni.add(id(n))
                elif not (clean and _wide(mk, kernel)):
                    continue
                found.append((n, stack, mk))
                if not clean:
                    guarded.add(id(n))

    def pays(mk: Micro, reuse: int) -> bool:
        return vnni_pays(mk.m, mk.n, mk.k, len(mk.b_offsets), target, reuse=reuse)

    visit(tree, (), True)
    plans: dict[int, _Plan] = {}
    for call, stack, mk in found:
        if _even_spacing(mk.b_offsets) is None:
            continue
        pk = id(call) in vnni
        if id(call) in guarded:
            if pays(mk, 1):  # its own block, right before it (inside the guard)
                level = stack[-1] if stack else None
                src = _b_source(mk, call, stmts[call.stmt].iterators)
                plans[id(call)] = _Plan(
                    level=level, panels=(), trips=(), key=_key(level, mk, src, (), True)
                )
            continue
        src = _b_source(mk, call, stmts[call.stmt].iterators)
        deps = {v for v in int_vars(src) if v not in sizes}
        for h in range(len(stack) - 1, -2, -1):
            inner = stack[h + 1 :]
            outer_vars = {f.var for f in stack[: h + 1]}
            panels = tuple(f for f in inner if f.var in deps)
            reuse = [f for f in inner if f.var not in deps]
            if not reuse or all(max_trips(f, sizes) == 1 for f in reuse):
                continue
            trips = tuple(max_trips(f, sizes) for f in panels)
            if any(t is None for t in trips):
                break  # deeper levels failed for want of reuse; higher ones add this panel too
            bounds_vars = {
                v
                for f in panels
                for e in (f.init, f.upper())
                for v in int_vars(e)  # type: ignore[arg-type]
                if v not in sizes
            }
            if not bounds_vars <= outer_vars:
                break
            elems = len(mk.b_offsets) * _rows(mk, pk) * mk.n
            total = elems * max(1, math.prod(trips))  # type: ignore[arg-type]
            if total * DTYPE_BYTES[kernel.arg(mk.b).dtype] > max_bytes:  # type: ignore[union-attr]
                break
            if pk and not pays(mk, math.prod(max_trips(f, sizes) or 1 for f in reuse)):
                break
            level = stack[h] if h >= 0 else None
            key = _key(level, mk, src, panels, pk)
            plans[id(call)] = _Plan(level=level, panels=panels, trips=trips, key=key)  # type: ignore[arg-type]
            break
        if pk and id(call) not in plans and pays(mk, 1):
            # no reuse across calls (or its panel too large): this call's own block, right
            # before it; its row tiles still read each pair vector as it is
            level = stack[-1] if stack else None
            key = _key(level, mk, src, (), True)
            plans[id(call)] = _Plan(level=level, panels=(), trips=(), key=key)
    # calls with no reuse of their own may read a buffer that a sibling's copy fills
    keys = {p.key for p in plans.values()}
    for call, stack, mk in found:
        if id(call) in plans or id(call) in guarded or _even_spacing(mk.b_offsets) is None:
            continue
        src = _b_source(mk, call, stmts[call.stmt].iterators)
        deps = {v for v in int_vars(src) if v not in sizes}
        for h in range(len(stack) - 1, -2, -1):
            level = stack[h] if h >= 0 else None
            panels = tuple(f for f in stack[h + 1 :] if f.var in deps)
            key = _key(level, mk, src, panels, id(call) in vnni)
            if key in keys:
                trips = tuple(max_trips(f, sizes) for f in panels)
                plans[id(call)] = _Plan(level=level, panels=panels, trips=trips, key=key)  # type: ignore[arg-type]
                break
    if not plans:
        return tree
    return _rewrite(kernel, tree, plans, found, vnni)


def _panel_index(p: _Plan):
    """The block number of the current panel-loop values (mixed radix over their trips)."""
    idx = Int(value=0)
    for f, t in zip(p.panels, p.trips, strict=True):
        pos = IntOp(op="-", a=Var(name=f.var), b=f.init)
        if f.step != 1:
            pos = IntOp(op="//", a=pos, b=Int(value=f.step))
        idx = _add(_mul(idx, t), pos)
    return idx


def _loop(var: str, count: int, body: tuple[L.Node, ...]) -> L.For:
    v = Var(name=var)
    return L.For(
        var=var,
        dim=-1,
        init=Int(value=0),
        cond=L.Cmp(op="<", a=v, b=Int(value=count)),
        step=1,
        body=body,
    )


def _vnni_copy(buf: str, dst, src, mk: Micro, spacing: int) -> tuple[L.Node, ...]:
    """The copy of a call's B blocks into VNNI-2 pair rows at ``dst``: per block (``spacing``
    apart in B), ``k // 2`` pair rows, then the odd last row beside zeros."""
    rows = _rows(mk, True)
    b, r = Var(name=f"{buf}_b"), Var(name=f"{buf}_r")
    nb = len(mk.b_offsets)
    at = _add(dst, _mul(b, rows * mk.n)) if nb > 1 else dst
    frm = _add(src, _mul(b, spacing)) if nb > 1 else src
    body: list[L.Node] = []
    if mk.k // 2:
        pair = L.Copy(
            buf=buf,
            dst=_add(at, _mul(r, 2 * mk.n)),
            tensor=mk.b,
            src=_add(frm, _mul(r, 2 * mk.ldb)),
            count=mk.n,
            kind="pairs",
            ld=mk.ldb,
        )
        body.append(_loop(r.name, mk.k // 2, (pair,)))
    if mk.k % 2:
        last = L.Copy(
            buf=buf,
            dst=_add(at, Int(value=(mk.k - 1) * mk.n)),
            tensor=mk.b,
            src=_add(frm, Int(value=(mk.k - 1) * mk.ldb)),
            count=mk.n,
            kind="last",
        )
        body.append(last)
    return (_loop(b.name, nb, tuple(body)),) if nb > 1 else tuple(body)


def _rewrite(kernel, tree, plans: dict[int, _Plan], found, vnni: set[int]) -> tuple[L.Node, ...]:
    stmts = {s.name: s for s in kernel.statements}
    names: dict[tuple, str] = {}
    inserts: dict[int, list[L.Node]] = {}  # id of a node -> the copies that go right before it
    calls: dict[int, L.Call] = {}
    for call, stack, mk in found:
        p = plans.get(id(call))
        if p is None:
            continue
        pk = id(call) in vnni
        elems = len(mk.b_offsets) * _rows(mk, pk) * mk.n
        dst = _mul(_panel_index(p), elems)
        buf = names.get(p.key)
        if buf is None:
            buf = names[p.key] = f"pk{len(names)}"
            dtype = kernel.arg(mk.b).dtype
            src = _b_source(mk, call, stmts[call.stmt].iterators)
            rows = len(mk.b_offsets) * mk.k
            r = Var(name=f"{buf}_r")
            spacing = _even_spacing(mk.b_offsets)
            if pk:
                copy = _vnni_copy(buf, dst, src, mk, spacing)  # type: ignore[arg-type]
            elif spacing == mk.k * mk.ldb or len(mk.b_offsets) == 1:
                row_src = _mul(r, mk.ldb)
            else:
                row_src = _add(
                    _mul(IntOp(op="//", a=r, b=Int(value=mk.k)), spacing),  # type: ignore[arg-type]
                    _mul(IntOp(op="%", a=r, b=Int(value=mk.k)), mk.ldb),
                )
            if not pk:
                row = L.Copy(
                    buf=buf,
                    dst=_add(dst, _mul(r, mk.n)),
                    tensor=mk.b,
                    src=_add(src, row_src),
                    count=mk.n,
                )
                copy = (_loop(r.name, rows, (row,)),)
            for f in reversed(p.panels):
                copy = (replace(f, body=copy, parallel=False),)
            # right before the level's child holding the first call that reads the buffer
            h = next((i for i, f in enumerate(stack) if f is p.level), -1)
            if pk and not any(f.parallel for f in stack[: h + 1]) and isinstance(copy[0], L.For):
                # a pair copy outside the threads' loops: its blocks are split among the
                # threads too (they write disjoint parts of the buffer)
                copy = (replace(copy[0], parallel=True), *copy[1:])
            anchor = stack[h + 1] if h + 1 < len(stack) else call
            inserts.setdefault(id(anchor), []).extend(
                [L.Buffer(name=buf, elems=elems * max(1, math.prod(p.trips)), dtype=dtype), *copy]
            )
        calls[id(call)] = replace(call, packed_b=(buf, dst), packed_vnni=pk)

    def rebuild(nodes):
        out = []
        for n in nodes:
            out.extend(inserts.get(id(n), []))
            if isinstance(n, L.For):
                out.append(replace(n, body=tuple(rebuild(n.body))))
            elif isinstance(n, L.If):
                out.append(replace(n, then=tuple(rebuild(n.then)), orelse=tuple(rebuild(n.orelse))))
            elif isinstance(n, L.Call):
                out.append(calls.get(id(n), n))
            else:
                out.append(n)
        return out

    return tuple(rebuild(tree))
