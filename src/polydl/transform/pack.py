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


def _key(level: L.For | None, mk: Micro, src, panels: tuple[L.For, ...]) -> tuple:
    """Calls with equal keys read the same blocks through the same panel loops: one copy."""
    sig = tuple((f.var, f.init, f.cond, f.step) for f in panels)
    return (id(level), mk.b, src, mk.k, mk.n, mk.ldb, mk.b_offsets, sig)


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
) -> tuple[L.Node, ...]:
    """``tree`` with the B blocks of reused, widely strided BRGEMM operands copied into dense
    buffers (see the module docstring); the calls of the statements in ``skip`` (a schedule
    record's ``pack=False``) read B where it is. Pure: ``tree`` is not changed."""
    sizes = kernel.size_values
    stmts = {s.name: s for s in kernel.statements}
    written = {s.target.tensor for s in kernel.statements}
    found: list[tuple[L.Call, tuple[L.For, ...], Micro]] = []

    def visit(nodes, stack, clean: bool):
        for n in nodes:
            if isinstance(n, L.For):
                visit(n.body, (*stack, n), clean)
            elif isinstance(n, L.If):
                # calls under a guard are packed only above the guard (the copy would read the
                # blocks of iterations the guard excludes)
                visit(n.then, stack, False)
                visit(n.orelse, stack, False)
            elif isinstance(n, L.Call) and clean and n.stmt not in skip:
                mk = stmts[n.stmt].micro
                if mk is not None and _wide(mk, kernel) and mk.b not in written:
                    found.append((n, stack, mk))

    visit(tree, (), True)
    plans: dict[int, _Plan] = {}
    for call, stack, mk in found:
        if _even_spacing(mk.b_offsets) is None:
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
            elems = len(mk.b_offsets) * mk.k * mk.n
            total = elems * max(1, math.prod(trips))  # type: ignore[arg-type]
            if total * DTYPE_BYTES[kernel.arg(mk.b).dtype] > max_bytes:  # type: ignore[union-attr]
                break
            level = stack[h] if h >= 0 else None
            key = _key(level, mk, src, panels)
            plans[id(call)] = _Plan(level=level, panels=panels, trips=trips, key=key)  # type: ignore[arg-type]
            break
    # calls with no reuse of their own may read a buffer that a sibling's copy fills
    keys = {p.key for p in plans.values()}
    for call, stack, mk in found:
        if id(call) in plans or _even_spacing(mk.b_offsets) is None:
            continue
        src = _b_source(mk, call, stmts[call.stmt].iterators)
        deps = {v for v in int_vars(src) if v not in sizes}
        for h in range(len(stack) - 1, -2, -1):
            level = stack[h] if h >= 0 else None
            panels = tuple(f for f in stack[h + 1 :] if f.var in deps)
            key = _key(level, mk, src, panels)
            if key in keys:
                trips = tuple(max_trips(f, sizes) for f in panels)
                plans[id(call)] = _Plan(level=level, panels=panels, trips=trips, key=key)  # type: ignore[arg-type]
                break
    if not plans:
        return tree
    return _rewrite(kernel, tree, plans, found)


def _panel_index(p: _Plan):
    """The block number of the current panel-loop values (mixed radix over their trips)."""
    idx = Int(value=0)
    for f, t in zip(p.panels, p.trips, strict=True):
        pos = IntOp(op="-", a=Var(name=f.var), b=f.init)
        if f.step != 1:
            pos = IntOp(op="//", a=pos, b=Int(value=f.step))
        idx = _add(_mul(idx, t), pos)
    return idx


def _rewrite(kernel, tree, plans: dict[int, _Plan], found) -> tuple[L.Node, ...]:
    stmts = {s.name: s for s in kernel.statements}
    names: dict[tuple, str] = {}
    inserts: dict[int, list[L.Node]] = {}  # id of a node -> the copies that go right before it
    calls: dict[int, L.Call] = {}
    for call, stack, mk in found:
        p = plans.get(id(call))
        if p is None:
            continue
        elems = len(mk.b_offsets) * mk.k * mk.n
        dst = _mul(_panel_index(p), elems)
        buf = names.get(p.key)
        if buf is None:
            buf = names[p.key] = f"pk{len(names)}"
            dtype = kernel.arg(mk.b).dtype
            src = _b_source(mk, call, stmts[call.stmt].iterators)
            rows = len(mk.b_offsets) * mk.k
            r = Var(name=f"{buf}_r")
            spacing = _even_spacing(mk.b_offsets)
            if spacing == mk.k * mk.ldb or len(mk.b_offsets) == 1:
                row_src = _mul(r, mk.ldb)
            else:
                row_src = _add(
                    _mul(IntOp(op="//", a=r, b=Int(value=mk.k)), spacing),  # type: ignore[arg-type]
                    _mul(IntOp(op="%", a=r, b=Int(value=mk.k)), mk.ldb),
                )
            copy: L.Node = L.For(
                var=r.name,
                dim=-1,
                init=Int(value=0),
                cond=L.Cmp(op="<", a=r, b=Int(value=rows)),
                step=1,
                body=(
                    L.Copy(
                        buf=buf,
                        dst=_add(dst, _mul(r, mk.n)),
                        tensor=mk.b,
                        src=_add(src, row_src),
                        count=mk.n,
                    ),
                ),
            )
            for f in reversed(p.panels):
                copy = replace(f, body=(copy,), parallel=False)
            # right before the level's child holding the first call that reads the buffer
            h = next((i for i, f in enumerate(stack) if f is p.level), -1)
            anchor = stack[h + 1] if h + 1 < len(stack) else call
            inserts.setdefault(id(anchor), []).extend(
                [L.Buffer(name=buf, elems=elems * max(1, math.prod(p.trips)), dtype=dtype), copy]
            )
        calls[id(call)] = replace(call, packed_b=(buf, dst))

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
