"""Loop coalescing of a contraction's reduction: one pure pass, Kernel -> Kernel.

A strided NCHW convolution whose input is gathered into an im2col copy (``transform/gather.py``,
``I_g0[n, c, r, s, pq]``) reduces over ``c, r, s`` with the weights ``Wt[k, c, r, s]``::

    for n, k, pq: for c, r, s:   O[n, k, pq] += I_g0[n, c, r, s, pq] * Wt[k, c, r, s]      S1

``recognise`` makes ``s`` the microkernel's reduction (unit stride in Wt) and ``c, r`` its batch:
for ResNet-50's first layer a call is 21 batch entries of k = 7 each. Yet in every access of
the reduction ``coef(c) = R * coef(r)`` and ``coef(r) = S * coef(s)`` (flat offsets,
``analysis/contraction.linearize``; Wt: 49, 7, 1; the copy: ``7*3136``, ``7*448``, 448): the
three are one run ``crs = R*S*c + S*r + s`` of extent ``C*R*S`` in both operands, and one call
can reduce over all 147 at once (k = 147, batch 1; the plan may still block k by a divisor).

The pass joins the reduction iterators into one when *all* of them form such a chain (outermost
first, by their strides in A): a reduction left partly in the batch (a blocked layout's 3x3
conv, whose ``r`` is no multiple of ``s, c``) is left as it is. As in ``coalesce.py``, the
domain and schedule are re-indexed through isl (``poly.fuse_dims``: the same points in the same
order, no legality check needed), and the accesses substitute

    v_1 = f // E_1,   v_i = f // E_i - e_i * (f // E_(i-1)),   v_j = f % e_j

(``e_i`` the extents, ``E_i = e_(i+1) * .. * e_j``), which name the same elements and which
``linearize`` reads as ``coef(v_j) * f``: the chain makes every ``f // E_i`` but the last
cancel. A re-indexed nest is kept only if it is still a foldable contraction with ``f`` as its
``k``, no batch, and the same folded statements; the others are returned unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..analysis.contraction import Contraction, linearize, refresh
from ..ir import poly
from ..ir.nodes import Int, IntOp, Kernel, Var
from .brgemm import foldable
from .coalesce import _expr, _fused_name, _span


def coalesce_reduction(
    kernel: Kernel, found: Sequence[Contraction]
) -> tuple[Kernel, tuple[Contraction, ...]]:
    """``kernel`` with the reduction iterators of every foldable contraction joined into one
    where they form one run in both operands (module doc), and the contractions of the result;
    ``found``: those of ``kernel``."""
    found = tuple(found)
    for name in [c.stmt for c in found]:
        c = next((c for c in found if c.stmt == name), None)
        if c is None or not foldable(kernel, c):
            continue
        fused = _coalesce(kernel, found, c)
        if fused is not None:
            kernel, found = fused
    return kernel, found


def chain(kernel: Kernel, c: Contraction) -> tuple[str, ...] | None:
    """The reduction iterators of ``c`` outermost first when they form one run of strides in
    every access of the reduction (module doc), else None (fewer than two, or no run)."""
    red = kernel.statement(c.stmt)
    its = [*([c.k] if c.k else []), *c.batch]
    if len(its) < 2:
        return None
    lins = [linearize(kernel, ld) for ld in red.reads]
    if any(lin is None for lin in lins):
        return None
    la = c.linear("A")
    order = sorted(its, key=lambda v: -abs(la.coef(v)))
    for u, v in zip(order, order[1:], strict=False):
        if c.lo(v) != 0 or _span(kernel, red, v) != (0, c.extent(v) - 1):
            return None
        if any(lin.coef(u) != c.extent(v) * lin.coef(v) for lin in lins):
            return None
    if c.lo(order[0]) != 0:
        return None
    return tuple(order)


def _coalesce(
    kernel: Kernel, found: tuple[Contraction, ...], c: Contraction
) -> tuple[Kernel, tuple[Contraction, ...]] | None:
    order = chain(kernel, c)
    if order is None:
        return None
    red = kernel.statement(c.stmt)
    ext = [c.extent(v) for v in order]
    f = _fused_name(kernel, "".join(order), "")
    inner = [1] * len(order)  # E_i: the product of the extents inside v_i
    for i in range(len(order) - 2, -1, -1):
        inner[i] = inner[i + 1] * ext[i + 1]
    fv = Var(name=f)

    def div(e: int) -> IntOp:
        return IntOp(op="//", a=fv, b=Int(value=e))

    env = {}
    for i, v in enumerate(order):
        if i == len(order) - 1:
            env[v] = IntOp(op="%", a=fv, b=Int(value=ext[i]))
        elif i == 0:
            env[v] = div(inner[0])
        else:
            env[v] = IntOp(
                op="-", a=div(inner[i]), b=IntOp(op="*", a=Int(value=ext[i]), b=div(inner[i - 1]))
            )
    domain, schedule, cur = red.domain, red.schedule, order[0]
    for i, v in enumerate(order[1:], start=1):
        nxt = f if i == len(order) - 1 else f"{f}_{i}"
        domain = poly.fuse_dims(domain, cur, v, ext[i], nxt)
        schedule = poly.fuse_dims(schedule, cur, v, ext[i], nxt)
        cur = nxt
    new = replace(
        red,
        iterators=tuple(f if x == order[0] else x for x in red.iterators if x not in order[1:]),
        domain=domain,
        schedule=schedule,
        target=_expr(red.target, env),
        expr=_expr(red.expr, env),
    )
    out = replace(
        kernel, statements=tuple(new if s.name == red.name else s for s in kernel.statements)
    )
    out_found = refresh(kernel, found, out)
    c2 = next((x for x in out_found if x.stmt == c.stmt), None)
    if (
        c2 is None
        or c2.k != f
        or c2.batch
        or (c2.init, c2.epilogue, c2.post is None) != (c.init, c.epilogue, c.post is None)
        or not foldable(out, c2)
    ):
        return None
    return out, out_found
