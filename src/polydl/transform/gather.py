"""Gather strided operands of contractions into dense scratch tensors: one pure pass, Kernel -> Kernel.

A microkernel vectorises the output's contiguous dimension (``n``), so it needs the operand that
shares that dimension to be contiguous along it too. A strided convolution written on NCHW reads
its input with the stride along the pixels (``I[n, c, 2*p, 2*q]``), so ``analysis/contraction``
finds no contraction and the nest would run on the plain path. This pass copies such an operand
once per call into a dense scratch tensor indexed by the iterators that read it, and lets the
contraction read the copy with unit strides; a padded one's guards become zeros in the copy::

    for n, k, p, q:                                            O[n, k, p, q] = 0      S0
        for c, r, s:
            if 0 <= 2*p + r - 3 < H and 0 <= 2*q + s - 3 < W:
                O[n, k, p, q] += I[n, c, 2*p + r - 3, 2*q + s - 3] * Wt[k, c, r, s]   S1

becomes (``I_g0`` a scratch tensor of the compiled function, ``[N, C, R, S, P, Q]``)::

    for n, c, r, s, p, q:               I_g0[n, c, r, s, p, q] = 0                       S1_z
    for n, c, r, s, p, q: if in bounds: I_g0[n, c, r, s, p, q] = I[n, c, 2*p + r - 3, ...]  S1_g
    for n, k, p, q:                                            O[n, k, p, q] = 0      S0
        for c, r, s: O[n, k, p, q] += I_g0[n, c, r, s, p, q] * Wt[k, c, r, s]         S1

The zeros are left out when the copy writes every point of its box (no guard: a strided 1x1's
subsample). ``transform/fuse_gather.py`` may then move both nests under the contraction's image
loop or its loop over blocks of output rows (the copy made where its calls read it).

The copy's dimensions are the operand's iterators: first the output iterators that are not the
call's columns (the image ``n``), then the reduction iterators in the operand's own order, then
the columns (the output's trailing run of iterators, here ``p, q``, which ``coalesce.py`` then
joins into one run of pixels). The reduction then covers its whole bounding box: a guard is
dropped only when it is exactly "the gathered element lies inside the operand" (the zeros add
nothing), and when the other operand and the output stay in bounds on the box.

When a gather pays (:func:`worth_gathering`): each gathered element must be read at least
``MIN_REUSE`` times by the contraction (a 1x1 stride-2 conv reads each one K times), so that
copying it once costs little against the BRGEMM calls it enables. The operand must be read-only
in the kernel, so the copy made before the nest sees what the nest would have read.

``guarded=True`` also gathers the unit-stride operand of a guarded contraction (a padded stride-1
conv: the copy is its im2col, the calls then cover every pixel of the image at once). That is
an alternative to index-set splitting (``split.py``), whose border cells make short calls on
small images; the pipeline lowers both and keeps the one the cost model prefers, counting the
copies with :func:`copy_cost`.
"""

from __future__ import annotations

import math
from dataclasses import replace

from ..analysis.contraction import factors, linearize
from ..ir import poly
from ..ir.nodes import BinOp, Expr, Int, IntOp, Kernel, Load, Num, Statement, TensorArg, Var

# A gathered element must be read this many times by the contraction for the copy to pay.
MIN_REUSE = 8


def gather_operands(kernel: Kernel, *, guarded: bool = False) -> Kernel:
    """``kernel`` with every contraction operand strided along the output's contiguous
    dimension read from a dense gathered copy (see the module docstring); ``guarded``: the
    operand of a guarded contraction too."""
    for name in [s.name for s in kernel.statements]:
        red = next(s for s in kernel.statements if s.name == name)
        if red.op == "+=" and red.micro is None:
            kernel = _gather(kernel, red, guarded) or kernel
    return kernel


def copy_cost(kernel: Kernel, before: Kernel, target) -> float:
    """The cost-model units (L1 bytes, ``optimize/cost.py``) of the copies that ``kernel`` has
    and ``before`` has not: every element of a copy read once from memory (an upper bound: an
    im2col reads each source element several times, from cache after the first) and written
    to the cache that holds the copy, twice when a guard zeroes the box first."""
    old = {t.name for t in before.temps}
    cost = 0.0
    for t in kernel.temps:
        if t.name not in old:
            writes = sum(1 for s in kernel.statements if s.target.tensor == t.name)
            cost += buffer_cost(kernel.nbytes(t.name), target, writes=writes)
    return cost


def buffer_cost(nbytes: int, target, *, writes: int = 1) -> float:
    """The cost-model units of one copy into a buffer of ``nbytes``: its elements read once
    from memory and written ``writes`` times to the cache that holds the buffer (the packing
    kernels of ``pd.nn`` are costed the same way)."""
    return nbytes * (writes * target.byte_cost(target.fit(nbytes)) + target.byte_cost(None))


def worth_gathering(work: int, gathered: int) -> bool:
    """Whether copying ``gathered`` elements pays for a contraction of ``work`` products."""
    return work >= MIN_REUSE * gathered


def _swap(e: Expr, old: Load, new: Load) -> Expr:
    if e == old:
        return new
    if isinstance(e, BinOp):
        return replace(e, a=_swap(e.a, old, new), b=_swap(e.b, old, new))
    return e


def _gather(kernel: Kernel, red: Statement, guarded: bool) -> Kernel | None:
    loads = [f for f in factors(red.expr) if isinstance(f, Load)]
    if len(loads) != 2 or any(ld.tensor == red.target.tensor for ld in loads):
        return None
    written = {s.target.tensor for s in kernel.statements}
    lc = linearize(kernel, red.target)
    if lc is None or kernel.arg(red.target.tensor).dtype != "f32":
        return None
    cols = [v for v in red.iterators if lc.coef(v) == 1]
    if not cols:
        return None
    q = cols[0]
    box = poly.extents(poly.domain(kernel, red), red.iterators)
    if box is None:
        return None
    is_box = poly.is_box(poly.domain(kernel, red), box)
    for x, y in ((loads[0], loads[1]), (loads[1], loads[0])):
        lx = linearize(kernel, x)
        if lx is None or x.tensor in written:
            continue
        if lx.coef(q) <= 1 and not (guarded and not is_box and lx.coef(q) == 1):
            continue
        if {kernel.arg(x.tensor).dtype, kernel.arg(y.tensor).dtype} not in ({"f32"}, {"bf16"}):
            continue  # the contraction's operand types (contraction.recognise)
        out = _rewrite(kernel, red, x, y, lc, lx, box)
        if out is not None:
            return out
    return None


def _dims(red: Statement, lc, lx, box) -> list[str]:
    """The gathered copy's dimensions (module docstring): leading output iterators, reduction
    iterators, then the output's trailing run of columns."""
    mine = [v for v in red.iterators if lx.coef(v)]
    outs = sorted((v for v in mine if lc.coef(v)), key=lambda v: -abs(lc.coef(v)))
    run: list[str] = []
    span = 1
    for v in reversed(outs):
        if lc.coef(v) != span:
            break
        run.insert(0, v)
        span *= box[v][1] - box[v][0] + 1
    lead = [v for v in outs if v not in run]
    red_iters = sorted((v for v in mine if not lc.coef(v)), key=lambda v: -abs(lx.coef(v)))
    return [*lead, *red_iters, *run]


def _rewrite(kernel: Kernel, red: Statement, x: Load, y: Load, lc, lx, box) -> Kernel | None:
    dom = poly.domain(kernel, red)
    whole = poly.box_set(dom, box)
    inside = poly.in_bounds(kernel, red, x, whole)
    # the guards must be exactly "x inside its tensor": then zeros in the copy replace them
    if not poly.is_equal(dom, inside):
        return None
    for ld in (y, red.target):
        if not poly.in_bounds_on(kernel, red, ld, whole):
            return None
    dims = _dims(red, lc, lx, box)
    shape = [box[v][1] - box[v][0] + 1 for v in dims]
    work = math.prod(hi - lo + 1 for lo, hi in box.values())
    if not worth_gathering(work, math.prod(shape)):
        return None
    taken = {*kernel.sizes, *(a.name for a in (*kernel.args, *kernel.temps))}
    g = next(f"{x.tensor}_g{i}" for i in range(len(taken) + 1) if f"{x.tensor}_g{i}" not in taken)
    temp = TensorArg(
        name=g, dtype=kernel.arg(x.tensor).dtype, shape=tuple(Int(value=n) for n in shape)
    )
    index = tuple(
        Var(name=v) if box[v][0] == 0 else IntOp(op="-", a=Var(name=v), b=Int(value=box[v][0]))
        for v in dims
    )
    gload = Load(tensor=g, index=index)

    pos = poly.top_position(kernel, red)
    if pos is None or any(poly.top_position(kernel, s) is None for s in kernel.statements):
        return None
    params = poly.params_text(kernel.sizes)
    in_box = " and ".join(f"{box[v][0]} <= {v} <= {box[v][1]}" for v in dims)
    shape_x = kernel.arg(x.tensor).shape  # type: ignore[union-attr]
    in_x = " and ".join(
        f"0 <= {poly.iexpr(e)} < {poly.iexpr(d)}" for e, d in zip(x.index, shape_x, strict=True)
    )
    ndim = max(2 * len(dims) + 1, *(poly.schedule_ndim(kernel, s) for s in kernel.statements))
    new: list[Statement] = []
    # zeros over the whole box, then the copy over its part inside x: two simple nests (the
    # border alone is a union of slabs, many small loops and parallel regions); measured on
    # 3x3 and 7x7 im2cols at 2 threads: 1.14-1.17x faster than zeroing the border only
    pieces = [("z", in_box, Num(value=0.0)), ("g", f"{in_box} and {in_x}", x)]
    # a copy writing every point of the box (no guard: a strided 1x1's subsample) needs no zeros
    box_set, copied = (
        poly.domain_text(
            kernel.sizes, kernel.bindings, f"{params} -> {{ T[{', '.join(dims)}] : {cons} }}"
        )
        for cons in (in_box, f"{in_box} and {in_x}")
    )
    if poly.is_equal(box_set, copied):
        pieces = pieces[1:]
    for tag, cons, expr in pieces:
        name = f"{red.name}_{tag}"
        domain = poly.simplify_set_text(f"{params} -> {{ {name}[{', '.join(dims)}] : {cons} }}")
        if poly.is_empty(poly.domain_text(kernel.sizes, kernel.bindings, domain)):
            continue
        at = pos + len(new)
        times = [str(at)] + [t for v in dims for t in (v, "0")]
        times += ["0"] * (ndim - len(times))
        new.append(
            Statement(
                name=name,
                iterators=tuple(dims),
                domain=domain,
                target=gload,
                op="=",
                expr=expr,
                schedule=f"{params} -> {{ {name}[{', '.join(dims)}] -> [{', '.join(times)}] }}",
                line=red.line,
                source=f"{gload} = {expr}  (gathered for `{red.source}`)",
            )
        )
    shift = len(new)
    out: list[Statement] = []
    for s in kernel.statements:
        p = poly.top_position(kernel, s)
        if p == pos and new and not any(t in out for t in new):
            out.extend(new)  # in list order too before red's nest (init folding reads order)
        sched = poly.pad_schedule(s.schedule, ndim)
        if p is not None and p >= pos:
            sched = poly.placed_schedule(sched, s.name, p + shift)
        if s.name == red.name:
            s = replace(s, expr=_swap(s.expr, x, gload), domain=poly.named_text(whole, s.name))
        out.append(replace(s, schedule=sched))
    return replace(kernel, statements=tuple(out), temps=(*kernel.temps, temp))
