"""Replace a contraction's inner loops by BRGEMM calls: one pure pass, Kernel -> Kernel.

Before (a GEMM with its zero initialisation)::

    for i: for j: C[i, j] = 0                      S0
    for i: for k: for j: C[i, j] += A[i, k] * B[k, j]   S1

After, with blocks bm x bn and the whole reduction in one batch-reduce call per C block::

    for i in range(0, M, bm): for j in range(0, N, bn):
        brgemm(m=bm, n=bn, k=bk, batch=K/bk, beta=0; C@(i*N + j) += A@(i*K) x B@(j))   S1_mk0

Full and partial blocks become separate statements (``_mk0`` .. ``_mk3``), each calling a kernel
compiled for its exact block, so no scalar remainder loop is left on the hot path. The folded
statements (init, reduction, epilogue) must fill the top-level nests they are in.

Reduction tiling: when the plan has a loop over ``k`` (its last one stepping by ``kc``, a multiple
of ``bk`` dividing the k extent), one call covers ``kc`` of the reduction and the k loop steps the
origin. A loop over one batch iterator instead (stepping by a divisor of its extent: a conv's
input-channel blocks) leaves the rest of that iterator out of the call: a shorter B panel per
call. The k domain is split like the blocks of m and n: the first tile (``beta=0`` when the zero
init is folded), the middle tiles (``beta=1``, no epilogue), the last tile (the folded
epilogue); fewer pieces when they coincide. The k loop carries the reduction: never parallel.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from ..analysis.contraction import Contraction, fills
from ..ir import poly
from ..ir.nodes import Int, Kernel, Micro, Statement


@dataclass(frozen=True, kw_only=True)
class BlockPlan:
    """How a contraction is blocked: microkernel block sizes and the loops around the call.

    ``loops`` are ``(iterator, block)`` pairs, outermost first (as in ``analysis/reuse.py``):
    the last loop of each iterator steps by its microkernel block (1 for the outer iterators,
    ``bm`` for rows, ``bn`` for columns); an earlier one is a tile loop stepping by a multiple.
    """

    bm: int
    bn: int
    bk: int  # reduction block (divides the k extent; 1 when the contraction has no k)
    loops: tuple[tuple[str, int], ...]
    # the microkernel's knobs (``ir.nodes.Micro``; defaults: the blocking rule's, no
    # non-temporal stores, B prefetched for the next call where transform/prefetch.py would)
    register_tile: tuple[int, int] | None = None
    k_unroll: int | None = None
    nontemporal: bool = False
    prefetch: int = 1

    def __post_init__(self) -> None:
        if min(self.bm, self.bn, self.bk) < 1:
            raise ValueError(f"block sizes must be positive: {self}")

    def block(self, v: str) -> int | None:
        """The step of the innermost loop over ``v`` (None: no loop scans ``v``)."""
        out = None
        for u, b in self.loops:
            if u == v:
                out = b
        return out

    @property
    def order(self) -> tuple[str, ...]:
        """The iterators in the order of their innermost (point) loops."""
        last = {v: i for i, (v, _) in enumerate(self.loops)}
        return tuple(v for i, (v, _) in enumerate(self.loops) if last[v] == i)

    @classmethod
    def simple(cls, *, bm: int, bn: int, bk: int, order: tuple[str, ...], m: str, n: str):
        """One point loop per iterator, in ``order``."""
        block = {m: bm, n: bn}
        return cls(bm=bm, bn=bn, bk=bk, loops=tuple((v, block.get(v, 1)) for v in order))


def _nest_position(kernel: Kernel, s: Statement) -> int:
    pos = poly.top_position(kernel, s)
    if pos is None:
        raise ValueError(f"statement {s.name} has no constant top-level position")
    return pos


def foldable(kernel: Kernel, c: Contraction) -> bool:
    """Whether the folded statements fill the top-level nests they are in (nothing else in
    them): the calls then replace those nests whole."""
    return fills(kernel, c.folded)


def lower(kernel: Kernel, c: Contraction, plan: BlockPlan) -> Kernel:
    """The kernel with ``c`` (and its folded init/epilogue) computed by BRGEMM calls."""
    red = kernel.statement(c.stmt)
    scanned = {*c.outer, c.m, c.n}
    # a loop over k (reduction tiling) or over one batch iterator (one value per call)
    red_loops = [v for v in plan.order if v == c.k or v in c.batch]
    if len(red_loops) > 1:
        raise ValueError(f"loops {plan.loops}: at most one reduction loop, got {red_loops}")
    split = red_loops[0] if red_loops else None
    scanned.update(red_loops)
    if set(plan.order) != scanned:
        raise ValueError(f"loops {plan.loops} must scan exactly {sorted(scanned)}")
    ext_k = c.extent(c.k) if c.k else 1
    if ext_k % plan.bk:
        raise ValueError(f"bk={plan.bk} must divide the k extent {ext_k}")
    if c.b_vnni and plan.bk % 2:
        raise ValueError(f"bk={plan.bk}: B {c.b!r} holds k in VNNI-2 pairs, bk must be even")
    kc = plan.block(c.k) if split == c.k and split is not None else ext_k
    if kc % plan.bk or ext_k % kc:
        raise ValueError(
            f"kc={kc} must be a multiple of bk={plan.bk} dividing the k extent {ext_k}"
        )
    chunk: dict[str, int] = {}  # the reduction loop's iterator -> its extent in one call
    if split is not None:
        chunk[split] = kc if split == c.k else plan.block(split)
        if c.extent(split) % chunk[split]:
            raise ValueError(f"a loop over {split} must step by a divisor of its extent")
    lc, la, lb = c.linear("C"), c.linear("A"), c.linear("B")
    reduction = [v for v in red.iterators if v not in plan.order and v != c.m_inner]
    covered = [*reduction, *([c.m_inner] if c.m_inner else [])]  # inside one call
    at_lo = {v: Int(value=c.lo(v)) for v in covered}

    # batch offsets, relative to the block origin (reduction iterators at their lower bounds)
    ranges = []
    for v in [*reduction, *chunk]:
        step = plan.bk if v == c.k else 1
        span = chunk.get(v, kc if v == c.k else c.extent(v))
        ranges.append([(v, x) for x in range(0, span, step)])
    a_offs, b_offs = [], []
    for combo in itertools.product(*ranges):
        a_offs.append(sum(la.coef(v) * x for v, x in combo))
        b_offs.append(sum(lb.coef(v) * x for v, x in combo))

    c_dtype = kernel.arg(c.c).dtype
    if c_dtype == "bf16" and split is not None and chunk[split] < c.extent(split):
        raise ValueError(
            f"contraction {red.source!r} (line {red.line}) into the bf16 tensor {c.c!r}: the "
            f"plan loops over its reduction ({', '.join(plan.order)}); a bf16 C is rounded "
            "once, so one call must cover each element's whole reduction"
        )
    pos = _nest_position(kernel, red)
    ndim = max(poly.schedule_ndim(kernel, s) for s in kernel.statements)
    ndim = max(ndim, len(plan.loops) + 2)
    last = {v: i for i, (v, _) in enumerate(plan.loops)}
    loop_dims = [v if last[v] == i else f"floor({v}/{b})" for i, (v, b) in enumerate(plan.loops)]
    ordered = list(plan.order)
    new: list[Statement] = []
    k_pieces = _k_pieces(c, split, chunk[split]) if split else [(True, True, "")]
    pieces = itertools.product(_pieces(c, c.m, plan.bm), _pieces(c, c.n, plan.bn), k_pieces)
    for (m_size, m_cons), (n_size, n_cons), (first, last, k_cons) in pieces:
        name = f"{red.name}_mk{len(new)}"
        cons = [f"{c.lo(v)} <= {v} <= {c.lo(v) + c.extent(v) - 1}" for v in c.outer]
        cons += [x for x in (m_cons, n_cons, k_cons) if x]
        domain = (
            f"{poly.params_text(kernel.sizes)} -> {{ {name}[{', '.join(ordered)}] : "
            f"{' and '.join(cons)} }}"
        )
        dims = [str(pos), *loop_dims, str(len(new))]
        dims += ["0"] * (ndim - len(dims))
        sched = (
            f"{poly.params_text(kernel.sizes)} -> {{ {name}[{', '.join(ordered)}] -> "
            f"[{', '.join(dims)}] }}"
        )
        micro = Micro(
            m=m_size * c.rows_per_m,
            n=n_size,
            k=plan.bk,
            lda=la.coef(c.row),
            ldb=lb.coef(c.k) if c.k else n_size,
            ldc=lc.coef(c.row),
            beta=0 if c.init and first else 1,
            alpha=c.alpha,
            alpha_arg=c.alpha_arg,
            ab_dtype=kernel.arg(c.a).dtype,
            c_dtype=c_dtype,
            b_vnni=c.b_vnni,
            a=c.a,
            b=c.b,
            c=c.c,
            a_origin=la.expr(at_lo),
            b_origin=lb.expr(at_lo),
            c_origin=lc.expr(at_lo),
            a_offsets=tuple(a_offs),
            b_offsets=tuple(b_offs),
            epilogue=c.post if last else None,
            operands=tuple((t, lin.expr(at_lo)) for t, lin in c.inputs) if last else (),
            **c.row_groups(),
            register_tile=plan.register_tile,
            k_unroll=plan.k_unroll,
            # non-temporal stores where C is written once: the first tile zeroes it (beta = 0)
            # and the last finishes it (the whole reduction in this call)
            nontemporal=plan.nontemporal and bool(c.init) and first and last and c_dtype == "f32",
            prefetch=plan.prefetch,
        )
        texts = [kernel.statement(s).source for s in c.folded]
        new.append(
            replace(
                red,
                name=name,
                iterators=tuple(ordered),
                domain=domain,
                schedule=sched,
                source="; ".join(texts),
                micro=micro,
            )
        )
    folded = set(c.folded)
    out: list[Statement] = []
    for s in kernel.statements:
        if s.name == c.stmt:
            out.extend(new)
        elif s.name not in folded:
            out.append(replace(s, schedule=poly.pad_schedule(s.schedule, ndim)))
    return replace(kernel, statements=tuple(out))


def _pieces(c: Contraction, v: str, block: int) -> list[tuple[int, str]]:
    """(block size, domain constraint) of the full blocks of ``v`` and of its partial block."""
    return block_pieces(v, c.lo(v), c.extent(v), block)


def block_pieces(v: str, lo: int, ext: int, block: int) -> list[tuple[int, str]]:
    """(block size, domain constraint) of the full blocks of iterator ``v`` (``ext`` values
    from ``lo``, blocks of ``block``) and of its partial block (also transform/transpose.py)."""
    block = min(block, ext)
    hi = lo + ext - 1
    stride = f"exists (e_{v}: {v} = {lo} + {block}*e_{v})"
    out = []
    if ext // block:
        out.append((block, f"{lo} <= {v} <= {hi - block + 1} and {stride}"))
    if ext % block:
        out.append((ext % block, f"{v} = {lo + (ext // block) * block}"))
    return out


def _k_pieces(c: Contraction, k: str, kc: int) -> list[tuple[bool, bool, str]]:
    """(first tile?, last tile?, domain constraint) of the tiles of ``kc`` (dividing the extent)
    of the reduction iterator ``k``: the first, the middle and the last tiles, fewer when they
    coincide."""
    lo, n = c.lo(k), c.extent(k) // kc
    last = lo + (n - 1) * kc
    if n == 1:
        return [(True, True, f"{k} = {lo}")]
    out = [(True, False, f"{k} = {lo}")]
    if n > 2:
        stride = f"exists (e_{k}: {k} = {lo} + {kc}*e_{k})"
        out.append((False, False, f"{lo + kc} <= {k} <= {last - kc} and {stride}"))
    out.append((False, True, f"{k} = {last}"))
    return out
