"""Loop coalescing of a contraction's columns: one pure pass, Kernel -> Kernel.

A 1x1 stride-1 convolution written on NCHW (``pd.ops.conv2d(..., layout="nchw")``)::

    for n, k, p, q:   O[n, k, p, q] = 0                                   S0 (init)
      for c:          O[n, k, p, q] += I[n, c, p, q] * Wt[k, c, 0, 0]     S1
    for n, k, p, q:   O[n, k, p, q] = max(O[n, k, p, q] + b[k], 0)        S2 (epilogue)

is a GEMM per image with rows ``k``, reduction ``c`` and columns ``q`` (the microkernel's vector
dimension: unit stride in O and I, absent from Wt). One call covers at most one output row (7
columns in the last ResNet stage) and ``p`` is a loop around the calls. Yet ``p`` and ``q`` are
one contiguous run of ``P*Q`` pixels in O and in I: in every access ``coef(p) = Q * coef(q)``
(flat offsets, ``analysis/contraction.linearize``), ``0 <= q < Q``. The pass makes them one
iterator ``pq = Q*p + q`` of extent ``P*Q`` in every statement of the nest:

- domains and schedules are re-indexed through isl (``poly.fuse_dims``): the same points run in
  the same order, so the pass needs no legality check;
- accesses substitute ``p = pq // Q`` and ``q = pq % Q``: they name the same elements (bounds and
  dependences unchanged), and ``linearize`` reads ``Q*(pq // Q) + pq % Q`` as ``pq``.

Then ``recognise`` gives a contraction whose columns are ``pq`` (blocks of 64 pixels cross row
boundaries), and the optimiser tiles and parallelises it like any other. Rows are left to the
contraction's own coalescing (``m_inner``: the blocked layout's pixel rows). Only contractions
whose nest folds whole (``transform/brgemm.foldable``) are touched, and a re-indexed nest is kept
only if it is still such a contraction, with ``pq`` as its columns and the same folded
statements; the others are returned unchanged. The pass takes the contractions of its input
(``contraction.find_all``) and returns those of its output, recognised anew only at the
statements it re-indexed and their neighbours (``contraction.refresh``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..analysis.contraction import Contraction, linearize, refresh
from ..ir import poly
from ..ir.nodes import BinOp, Expr, Int, IntOp, Kernel, Load, Statement, UnOp, Var, substitute
from .brgemm import foldable


def coalesce_columns(
    kernel: Kernel, found: Sequence[Contraction]
) -> tuple[Kernel, tuple[Contraction, ...]]:
    """``kernel`` with the columns of every foldable contraction coalesced (module doc), and
    the contractions of the result; ``found``: those of ``kernel``."""
    found = tuple(found)
    for name in [c.stmt for c in found]:
        while True:  # (p, q) -> pq, then possibly (h, pq) -> hpq: each step drops an iterator
            c = next((c for c in found if c.stmt == name), None)
            if c is None or not foldable(kernel, c):
                break
            fused = _coalesce(kernel, found, c)
            if fused is None:
                break
            kernel, found = fused
    return kernel, found


def _group(kernel: Kernel, c: Contraction) -> list[Statement]:
    return [s for s in kernel.statements if s.name in c.folded]


def _span(kernel: Kernel, s: Statement, v: str) -> tuple[int, int] | None:
    """The extent of ``v`` in ``s``'s domain (a folded statement's domain is the reduction's box
    or its projection, so that it is a box: ``recognise`` checked it)."""
    return poly.extent(poly.domain(kernel, s), v)


def _expr(e: Expr, env: dict) -> Expr:
    if isinstance(e, Load):
        return replace(e, index=tuple(substitute(i, env) for i in e.index))
    if isinstance(e, BinOp):
        return replace(e, a=_expr(e.a, env), b=_expr(e.b, env))
    if isinstance(e, UnOp):
        return replace(e, a=_expr(e.a, env))
    return e


def _fused_name(kernel: Kernel, u: str, v: str) -> str:
    taken = {*kernel.sizes, *(a.name for a in kernel.args)}
    for s in kernel.statements:
        taken.update(s.iterators)
    name = f"{u}{v}"
    while name in taken:
        name += "_"
    return name


def _coalesce(
    kernel: Kernel, found: tuple[Contraction, ...], c: Contraction
) -> tuple[Kernel, tuple[Contraction, ...]] | None:
    """The kernel with ``c``'s columns fused with the outer iterator right above them in every
    access, and its contractions (``found``: those of ``kernel``), or None when there is none
    (or the result is not the contraction wanted)."""
    v = c.n
    ext = c.extent(v)
    if c.lo(v) != 0:  # the reduction's own columns (its box) do not start a row
        return None
    group = _group(kernel, c)
    la = c.linear("A")
    lins = []
    for s in group:
        if v not in s.iterators:
            return None
        for load in (s.target, *s.reads):
            lin = linearize(kernel, load)
            if lin is None:
                return None
            lins.append(lin)
    cands = [
        u
        for u in c.outer
        if la.coef(u) == 0
        and all(u in s.iterators for s in group)
        and all(lin.coef(u) == ext * lin.coef(v) for lin in lins)
    ]
    # the folded statements' domains are checked last (isl, where the test above is not)
    if not cands or any(_span(kernel, s, v) != (0, ext - 1) for s in group):
        return None
    # the outer iterator with the smallest stride in C: the one right above the columns
    u = min(cands, key=lambda x: abs(c.linear("C").coef(x)))
    fused = _fused_name(kernel, u, v)
    env = {
        u: IntOp(op="//", a=Var(name=fused), b=Int(value=ext)),
        v: IntOp(op="%", a=Var(name=fused), b=Int(value=ext)),
    }
    new = {}
    for s in group:
        new[s.name] = replace(
            s,
            iterators=tuple(fused if x == u else x for x in s.iterators if x != v),
            domain=poly.fuse_dims(s.domain, u, v, ext, fused),
            schedule=poly.fuse_dims(s.schedule, u, v, ext, fused),
            target=_expr(s.target, env),
            expr=_expr(s.expr, env),
        )
    out = replace(kernel, statements=tuple(new.get(s.name, s) for s in kernel.statements))
    out_found = refresh(kernel, found, out)
    c2 = next((x for x in out_found if x.stmt == c.stmt), None)
    if (
        c2 is None
        or c2.n != fused
        or (c2.init, c2.epilogue, c2.post is None) != (c.init, c.epilogue, c.post is None)
        or not foldable(out, c2)
    ):
        return None
    return out, out_found
