"""Conv -> conv fusion: two contraction nests, the second reading the first's output, computed
image by image under their shared batch loop, the intermediate kept in a per-thread scratch
buffer of one image. Legality (:func:`legality`) apart from scoring (:func:`score`).

Before (a 1x1 conv feeding a 3x3 conv, as ``pd.graph`` writes them; ``T`` a scratch tensor)::

    for n: for k: for pq: T[n, k, pq] = relu(sum_c W1[k, c] * X[n, c, pq] + b1[k])   nest 0
    for n: for k: for p: for q: O[n, k, p, q] = sum_{c,r,s} W2[..] * T[n, c, p+r-1, q+s-1]  nest 1

After (both nests under one batch loop; ``T`` holds one image, one copy per thread)::

    for n:                                   (the parallel loop: one image per iteration)
        brgemm calls of nest 0 writing T[0, ...]
        brgemm calls of nest 1 reading T[0, ...]

The tile is one image of the consumer's outermost loop: the producer computes exactly the
image the consumer reads (no halo, no recompute). Both contractions are still lowered to
BRGEMM calls (``transform/brgemm.py``) with their own ranked plans, the batch loop taken out
of them and put first (:func:`batch_first`); :func:`nest` then shares it (``ir/poly``'s
``nested_schedule``) and contracts the intermediate to one image (:func:`contract`).

Three steps of ``pipeline.py`` use this module:

* step 3, :func:`offer`: each pair of consecutive contraction nests sharing a tensor, with the
  verdict of :func:`legality` (no dependence reversed by the fused schedule, checked with
  ``analysis/deps.check_schedule``; the batch loop carries none; each statement's batch
  iterator its outermost loop) and, when legal, the traffic terms :func:`score` needs;
* step 5, :func:`score` in ``pipeline.lower_contractions``: the cost model's ranked costs of
  the group's contractions against the intermediate's traffic: fused when the bytes saved
  (the intermediate written and read at the level its whole size fits, against the level one
  image per core fits) outweigh the threads left idle by running whole images in parallel;
* step 5 again, :func:`nest` and :func:`contract` on the lowered kernel.

Illegal pairs name the dependence; unprofitable ones the working sets and costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..analysis.reuse import fmt_bytes
from ..ir import poly
from ..ir.nodes import BinOp, Expr, Int, Kernel, Load, Statement, UnOp, Var, substitute
from ..target import Target
from . import fuse_rows
from .fuse import Candidate, fused_schedules, spine
from .fuse import legality as loop_legality


@dataclass(frozen=True, kw_only=True)
class Group:
    """A legal pair of contraction nests and what scoring needs of it."""

    first: tuple[str, ...]  # the producer nest's statements (names before lowering)
    second: tuple[str, ...]  # the consumer nest's
    tensor: str  # the intermediate
    scratch: bool  # a scratch tensor contracted to one image per thread (else an argument)
    batch: int  # iterations of the shared batch loop (images)
    whole: int  # bytes of the intermediate
    unfused_level: str  # where the whole intermediate lives between the nests
    fused_level: str  # where one image of it lives per core
    saved: float  # cost-model units of intermediate traffic fusion saves (slowest core)
    forced: bool = False  # fused wherever legal (``fuse="always"``: cost-model studies)
    rows: bool = False  # one image: fused block by block of output rows (transform/fuse_rows.py)

    def candidate(self, fused: bool, verdict: str, reason: str) -> Candidate:
        return Candidate(
            first=self.first,
            second=self.second,
            depth=1,
            fused=fused,
            verdict=verdict,
            reason=reason,
        )


# ---------------------------------------------------------------- legality


def _reductions(nest: list[Statement]) -> list[Statement]:
    """The statements of a nest accumulating a product of two tensors (its contractions)."""
    from ..analysis.contraction import factors

    return [
        s for s in nest if s.op == "+=" and sum(isinstance(f, Load) for f in factors(s.expr)) >= 2
    ]


def intermediate(first: list[Statement], second: list[Statement]) -> str | None:
    """The tensor a contraction of ``first`` writes and one of ``second`` multiplies."""
    from ..analysis.contraction import factors

    written = {s.target.tensor for s in _reductions(first)}
    for s in _reductions(second):
        for f in factors(s.expr):
            if isinstance(f, Load) and f.tensor in written:
                return f.tensor
    return None


def _accesses(s: Statement) -> list[Load]:
    return [s.target, *s.reads]


def legality(
    kernel: Kernel, first: list[Statement], second: list[Statement], threads: int = 1
) -> str | None:
    """None when the two nests may run image by image under their outer loop, else why not:
    no common outer loop, one image, a dependence the fused schedule would reverse (named by
    ``check_schedule``), a statement whose outermost loop is not its batch iterator, or a
    batch loop that carries a dependence once fused (threads would race)."""
    sa, sb = spine(kernel, first), spine(kernel, second)
    if not sa or not sb or sa[0] != sb[0]:
        return "no outer loop over the same range"
    lo, hi = sa[0]
    if hi - lo < 1:
        return "the outer loop has one iteration (one image: its tile would be all of it)"
    for s in (*first, *second):
        if poly.dim_iterator(kernel, s, 1) is None:
            return f"{s.name}'s outermost loop is not one of its iterators"
    broken = loop_legality(kernel, first, second, 1)
    if broken is not None:
        return broken
    if threads > 1:
        from ..analysis.deps import parallel_dims

        view = replace(kernel, statements=(*first, *second))
        fused = fused_schedules(view, first, second, 1)
        if 1 not in parallel_dims(view, fused):
            return "the shared outer loop carries a dependence (its images cannot run in parallel)"
    return None


def private(kernel: Kernel, group: list[Statement], tensor: str) -> bool:
    """Whether ``tensor`` can hold one image only: a scratch tensor that only ``group`` touches,
    each access indexing its first dimension by the statement's outermost (batch) iterator."""
    if tensor not in {t.name for t in kernel.temps}:
        return False
    names = {s.name for s in group}
    for s in kernel.statements:
        loads = [ld for ld in _accesses(s) if ld.tensor == tensor]
        if not loads:
            continue
        if s.name not in names:
            return False
        it = poly.dim_iterator(kernel, s, 1)
        if it is None or any(ld.index[0] != Var(name=it) for ld in loads):
            return False
    return True


# ---------------------------------------------------------------- scoring


def traffic(
    kernel: Kernel, tensor: str, batch: int, scratch: bool, target: Target, threads: int
) -> tuple[float, str, str]:
    """(cost units saved on the slowest core, where the intermediate lives unfused, where one
    image of it lives fused): the bytes of its share a core writes and reads again (reads
    only when it is an argument: its stores still reach memory), at the byte cost of the
    level its whole share fits against the level one image fits."""
    whole = kernel.nbytes(tensor)
    share = whole / max(1, min(threads, batch))
    unfused = target.fit(int(share), threads)
    fused = target.fit(int(whole / batch), threads)
    passes = 2 if scratch else 1
    saved = passes * share * (target.byte_cost(unfused) - target.byte_cost(fused))
    return saved, _where(unfused), _where(fused)


def _where(c) -> str:
    return f"L{c.level}" if c is not None else "memory"


def balance(batch: int, threads: int) -> float:
    """The slowest thread's images over the average when whole images run in parallel."""
    if threads <= 1:
        return 1.0
    return math.ceil(batch / threads) * threads / batch


def score(group: Group, contraction_cost: float, threads: int) -> tuple[bool, str, float]:
    """(whether fusion pays, why, the predicted fused cost): the group's contractions as ranked (``contraction_cost``,
    cost-model units on the slowest core) plus the intermediate's traffic unfused, against
    the same contractions run image by image (slowed by :func:`balance` when the images do not
    split evenly over the threads) without that traffic."""
    lost = contraction_cost * (balance(group.batch, threads) - 1.0)
    fused = contraction_cost + lost - group.saved
    where = (
        f"{group.tensor} {fmt_bytes(group.whole)} between the nests ({group.unfused_level}), "
        f"{fmt_bytes(group.whole // group.batch)} per image fused ({group.fused_level}"
        f"{', one copy per thread' if group.scratch else ''}); no recompute (whole images)"
    )
    costs = f"predicted {fused:.3g} fused vs {contraction_cost:.3g} unfused"
    if group.forced:
        return True, f"{where}: {costs} (forced: fuse='always')", fused
    if group.saved <= 0:
        return False, f"{where}: no cache level saved; {costs}", fused
    if fused >= contraction_cost:
        split = f"{group.batch} images over {threads} threads"
        return False, f"{where}: {costs} ({split})", fused
    return True, f"{where}: {costs}", fused


# ---------------------------------------------------------------- step 3: the offers


def offer(
    kernel: Kernel, target: Target, *, threads: int = 1
) -> tuple[tuple[Group, ...], tuple[Candidate, ...]]:
    """Every pair of consecutive contraction nests where the second multiplies the first's
    output: the legal ones as :class:`Group` s (scored in step 5), the others' verdicts."""
    from .fuse import _nests

    nests = _nests(kernel)
    if nests is None:
        return (), ()
    groups: list[Group] = []
    refused: list[Candidate] = []
    for a, b in zip(nests, nests[1:], strict=False):
        if not _reductions(a) or not _reductions(b):
            continue
        tensor = intermediate(a, b)
        if tensor is None:
            continue
        names_a, names_b = tuple(s.name for s in a), tuple(s.name for s in b)
        if groups and set(groups[-1].second) & set(names_a):
            why = "its producer is already fused with the contraction before it"
            refused.append(
                Candidate(
                    first=names_a,
                    second=names_b,
                    depth=1,
                    fused=False,
                    verdict="not fusable",
                    reason=why,
                )
            )
            continue
        lo, hi = spine(kernel, a)[0] if spine(kernel, a) else (0, 0)
        rows = hi == lo and spine(kernel, a)[:1] == spine(kernel, b)[:1]
        # one image: block by block of output rows instead (transform/fuse_rows.py)
        why = fuse_rows.legality(kernel, a, b, threads) if rows else legality(kernel, a, b, threads)
        if why is not None:
            verdict = "illegal" if "dependence" in why or "reverse" in why else "not fusable"
            refused.append(
                Candidate(
                    first=names_a,
                    second=names_b,
                    depth=1,
                    fused=False,
                    verdict=verdict,
                    reason=f"{tensor}: {why}",
                )
            )
            continue
        batch = hi - lo + 1
        scratch = private(kernel, [*a, *b], tensor)
        saved, unfused, fused = traffic(kernel, tensor, batch, scratch, target, threads)
        groups.append(
            Group(
                first=names_a,
                second=names_b,
                tensor=tensor,
                scratch=scratch,
                batch=batch,
                whole=kernel.nbytes(tensor),
                unfused_level=unfused,
                fused_level=fused,
                saved=saved,
                rows=rows,
            )
        )
    return tuple(groups), tuple(refused)


def verdicts(loop: tuple[Candidate, ...], pairs: tuple[Candidate, ...]) -> tuple[Candidate, ...]:
    """One verdict per pair of nests: loop fusion's (``transform/fuse.py``), except for the
    pairs of contraction nests this pass decided, whose verdict replaces it in place."""
    mine = {(c.first, c.second): c for c in pairs}
    out = [mine.pop((c.first, c.second), c) for c in loop]
    return (*out, *mine.values())


# ---------------------------------------------------------------- step 5: the rewrite


def members(kernel: Kernel, group: Group) -> tuple[int, int] | None:
    """The top-level positions (first, last) of the nests that came of the group's statements
    (split cells are named ``<statement>_c<i>``, calls ``<statement>_mk<i>``); the nests between
    them (an operand gathered for the consumer) belong to the group too."""
    names = (*group.first, *group.second)
    pos = [
        poly.top_position(kernel, s)
        for s in kernel.statements
        if any(s.name == n or s.name.startswith(f"{n}_") for n in names)
    ]
    if not pos or None in pos:
        return None
    return min(pos), max(pos)  # type: ignore[type-var]


def batch_first(loops: tuple[tuple[str, int], ...], batch: str) -> tuple[tuple[str, int], ...]:
    """A plan's loops with the batch iterator's loop (its tiles dropped) outermost."""
    return ((batch, 1), *((v, b) for v, b in loops if v != batch))


def nest(
    kernel: Kernel, span: tuple[int, int], *, iterator: bool = True
) -> tuple[Kernel, frozenset[str]] | None:
    """The lowered kernel with the nests at positions ``span`` sharing their outermost loop
    (each nest in order at every iteration), and the statements moved; None when a statement
    there has no iterator for its outermost schedule dimension (``iterator=False``: a loop
    over blocks of rows, ``floor(p/B)``, is fine)."""
    lo, hi = span
    moved: dict[str, str] = {}
    for s in kernel.statements:
        pos = poly.top_position(kernel, s)
        if pos is None or not lo <= pos <= hi:
            continue
        if iterator and poly.dim_iterator(kernel, s, 1) is None:
            return None
        moved[s.name] = poly.nested_schedule(s.schedule, lo, pos - lo)
    stmts = [replace(s, schedule=moved.get(s.name, s.schedule)) for s in kernel.statements]
    ndim = max(poly.map_ndim(s.schedule) for s in stmts)
    stmts = [replace(s, schedule=poly.pad_schedule(s.schedule, ndim)) for s in stmts]
    return replace(kernel, statements=tuple(stmts)), frozenset(moved)


def contract(kernel: Kernel, tensor: str, stmts: frozenset[str]) -> Kernel:
    """``tensor`` (a scratch tensor indexed by each statement's outermost iterator, touched by
    ``stmts`` only) holding one image, one copy per thread: its first index becomes 0, in the
    statements' accesses and in their BRGEMM calls' origins."""
    out = []
    for s in kernel.statements:
        if s.name not in stmts:
            out.append(s)
            continue
        it = poly.dim_iterator(kernel, s, 1)
        zero = {it: Int(value=0)} if it is not None else {}
        mk = s.micro
        if mk is not None:
            mk = replace(
                mk,
                a_origin=substitute(mk.a_origin, zero) if mk.a == tensor else mk.a_origin,
                b_origin=substitute(mk.b_origin, zero) if mk.b == tensor else mk.b_origin,
                c_origin=substitute(mk.c_origin, zero) if mk.c == tensor else mk.c_origin,
                operands=tuple(
                    (t, substitute(o, zero) if t == tensor else o) for t, o in mk.operands
                ),
            )
        out.append(
            replace(
                s, target=_first_zero(s.target, tensor), expr=_first_zero(s.expr, tensor), micro=mk
            )
        )
    temps = tuple(
        replace(t, shape=(Int(value=1), *t.shape[1:]), per_thread=True) if t.name == tensor else t
        for t in kernel.temps
    )
    return replace(kernel, statements=tuple(out), temps=temps)


def _first_zero(e: Expr, tensor: str) -> Expr:
    if isinstance(e, Load):
        if e.tensor != tensor:
            return e
        return replace(e, index=(Int(value=0), *e.index[1:]))
    if isinstance(e, BinOp):
        return replace(e, a=_first_zero(e.a, tensor), b=_first_zero(e.b, tensor))
    if isinstance(e, UnOp):
        return replace(e, a=_first_zero(e.a, tensor))
    return e
