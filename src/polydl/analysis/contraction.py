"""Recognise a contraction (GEMM, batched matmul, convolution) from a statement's accesses.

A statement ``C[fc] += s * X[fx] * Y[fy]`` (``s`` a product of literals, possibly empty) whose
indices are affine and whose domain is a box is a contraction. Each access is *linearised*: the
flat element offset into its (row-major, bound-shape) tensor is ``sum(coef[v] * v) + const``.
Iterators then play roles read off the coefficients:

==========  ==========  ==========  ==========  =====================================
role        coef in C   coef in A   coef in B   becomes
==========  ==========  ==========  ==========  =====================================
``n``       1           0           1           microkernel columns (vector dimension)
``m``       != 0        != 0        0           microkernel rows (``ldc``, ``lda``)
``k``       0           1           != 0        microkernel reduction (``ldb``)
batch       0           any         any         batch-reduce offsets
outer       != 0        any         any         loops around the call
==========  ==========  ==========  ==========  =====================================

Columns that run on into the next row (a 1x1 stride-1 NCHW convolution's ``p, q``) are one
iterator by the time this runs (``transform/coalesce.py`` writes them ``pq // Q``, ``pq % Q``,
which :func:`linearize` reads as ``pq``); rows that do so are fused here (``m_inner``), and so
are rows that do not (a blocked conv's output rows over strided or padded input rows): they
become the grouped rows of the microkernel (:meth:`Contraction.row_groups`).

A zero initialisation just before the reduction (``C[fc] = 0``) folds into ``beta = 0``; the
statements just after it that update the same elements elementwise (``C[fc] = max(C[fc] *
s[..] + t[..], 0)``, ``C[fc] += R[fc]``, ``C[fc] = pd.tanh(C[fc])`` ..., in the reduction's nest
or in nests of their own) fold into the microkernel's final store as one
:class:`~polydl.kernels.epilogue.Epilogue`, reading tensors indexed like C (per row, per
column, or like C itself). Nothing here changes the IR: it only reads it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from ..ir import poly
from ..ir.nodes import (
    Arg,
    BinOp,
    Expr,
    IExpr,
    Int,
    IntOp,
    Kernel,
    Load,
    Num,
    Statement,
    UnOp,
    Var,
    affine,
)
from ..kernels.epilogue import ACC, Epilogue, Operand, compose


@dataclass(frozen=True, kw_only=True)
class Linear:
    """A flat element offset ``sum(coefs[v] * v) + const`` (iterators only, sizes folded).

    ``pair``: an iterator ``i`` that indexes VNNI-2 pairs (``i // 2`` and ``i % 2``, the latter
    of stride 1: a bf16 B in the layout ``kernels/config.py`` calls ``b_vnni``); its
    coefficient is then half the stride of ``i // 2`` (the row stride ``ldb``), so the offset is
    exact at even values of ``i`` only (the origins of calls whose ``k`` covers whole pairs)."""

    coefs: tuple[tuple[str, int], ...]
    const: int
    pair: str | None = None

    def coef(self, v: str) -> int:
        return dict(self.coefs).get(v, 0)

    def expr(self, origin: Mapping[str, IExpr] | None = None) -> IExpr:
        """The offset as an index expression; iterators replaced by ``origin`` where given."""
        out: IExpr = Int(value=self.const)
        for v, c in self.coefs:
            term: IExpr = (origin or {}).get(v, Var(name=v))
            if c != 1:
                term = IntOp(op="*", a=term, b=Int(value=c))
            out = IntOp(op="+", a=out, b=term)
        return out


def _pseudo(e: IExpr, sizes: Mapping[str, int]) -> IExpr:
    """``e`` with every ``i // E`` and ``i % E`` (``i`` an iterator) named as a variable of its
    own, ``"i//E"`` and ``"i%E"``, so that :func:`affine` takes the rest."""
    if not isinstance(e, IntOp):
        return e
    if (
        e.op in ("//", "%")
        and isinstance(e.a, Var)
        and e.a.name not in sizes
        and isinstance(e.b, Int)
        and e.b.value > 0
    ):
        return Var(name=f"{e.a.name}{e.op}{e.b.value}")
    return replace(e, a=_pseudo(e.a, sizes), b=_pseudo(e.b, sizes))


def linearize(kernel: Kernel, load: Load, *, pairs: bool = False) -> Linear | None:
    """The flat offset of ``load`` (None if it is not affine in the iterators: min/max, or
    ``//`` and ``%`` other than the two halves ``i // E``, ``i % E`` of an iterator indexing
    two dimensions of strides ``E*s`` and ``s``, which add up to ``s*i``). With ``pairs``, also
    one iterator in VNNI-2 pairs: ``i // 2`` of an even stride ``2*ldb`` and ``i % 2`` of
    stride 1 (``Linear.pair``)."""
    shape = kernel.shape_of(load.tensor)
    sizes = kernel.size_values
    coefs: dict[str, int] = {}
    const = 0
    stride = 1
    for e, extent in reversed(list(zip(load.index, shape, strict=True))):
        aff = affine(_pseudo(e, sizes), sizes)
        if aff is None:
            return None
        for v, x in aff[0].items():
            coefs[v] = coefs.get(v, 0) + x * stride
        const += aff[1] * stride
        stride *= extent
    # a coalesced iterator (transform/coalesce.py): ``E*(i // E) + i % E`` is ``i``
    pair = None
    for v in [v for v in coefs if "//" in v]:
        i, e = v.split("//")
        div, mod = coefs.pop(v), coefs.pop(f"{i}%{e}", 0)
        if div == int(e) * mod:
            coefs[i] = coefs.get(i, 0) + mod
        elif pairs and pair is None and e == "2" and mod == 1 and div > 0 and div % 2 == 0:
            if coefs.get(i, 0):
                return None  # the pair iterator indexes another dimension too
            pair, coefs[i] = i, div // 2
        else:
            return None
    if any("%" in v for v in coefs):
        return None
    return Linear(
        coefs=tuple(sorted((v, x) for v, x in coefs.items() if x)), const=const, pair=pair
    )


@dataclass(frozen=True, kw_only=True)
class Contraction:
    """A statement (plus folded init and epilogue) that one BRGEMM per C block computes."""

    stmt: str  # the reduction statement
    init: str | None  # folded zero initialisation (beta = 0), or None (beta = 1)
    c: str
    a: str
    b: str
    lin: tuple[tuple[str, Linear], ...]  # "C", "A", "B" -> flat offsets
    m: str  # the row iterator the loops step through (by whole rows of m_inner if any)
    n: str
    k: str | None  # None: rank-1 products (k = 1), every reduction iterator in the batch
    batch: tuple[str, ...]
    outer: tuple[str, ...]
    extents: tuple[tuple[str, tuple[int, int]], ...]  # iterator -> (lo, hi) inclusive
    alpha: float
    alpha_arg: str | None  # a scalar argument multiplying the products (run-time alpha)
    # the folded statements after the reduction, in order, and what they compute at the store:
    # ``post`` over the finished element and ``inputs`` (each operand's tensor and flat offset)
    epilogue: tuple[str, ...] = ()
    post: Epilogue | None = None
    inputs: tuple[tuple[str, Linear], ...] = ()
    # rows coalesced: every iteration of ``m`` covers all of ``m_inner`` (e.g. the output rows p
    # and columns q of a 1x1 stride-1 convolution are one run of P*Q rows with one stride)
    m_inner: str | None = None

    @property
    def folded(self) -> tuple[str, ...]:
        """The statements one BRGEMM call per C block computes: init, reduction, epilogue."""
        return (*([self.init] if self.init else []), self.stmt, *self.epilogue)

    @property
    def row(self) -> str:
        """The iterator whose coefficients are the row strides (``ldc``, ``lda``)."""
        return self.m_inner or self.m

    def row_groups(self) -> dict:
        """``row_group``/``lda_group``/``ldc_group`` of the calls (kernels/config.py): the
        coalesced rows' group structure, empty for one run of rows."""
        if not self.m_inner:
            return {}
        lc, la = self.linear("C"), self.linear("A")
        rows = self.extent(self.m_inner)
        if lc.coef(self.m) == rows * lc.coef(self.m_inner) and la.coef(self.m) == rows * la.coef(
            self.m_inner
        ):
            return {}
        return {"row_group": rows, "lda_group": la.coef(self.m), "ldc_group": lc.coef(self.m)}

    @property
    def rows_per_m(self) -> int:
        """Microkernel rows per iteration of ``m``."""
        return self.extent(self.m_inner) if self.m_inner else 1

    @property
    def out_iters(self) -> set[str]:
        return {self.m, self.n, *self.outer, *([self.m_inner] if self.m_inner else [])}

    def linear(self, role: str) -> Linear:
        return dict(self.lin)[role]

    @property
    def b_vnni(self) -> bool:
        """Whether B holds its reduction rows in VNNI-2 pairs (``Linear.pair``, bf16 only)."""
        return self.linear("B").pair is not None

    def extent(self, v: str) -> int:
        lo, hi = dict(self.extents)[v]
        return hi - lo + 1

    def lo(self, v: str) -> int:
        return dict(self.extents)[v][0]


def factors(e: Expr) -> list[Expr]:
    """The factors of a product ``a * b * ...`` (``[e]`` for anything else)."""
    if isinstance(e, BinOp) and e.op == "*":
        return factors(e.a) + factors(e.b)
    return [e]


def _box(kernel: Kernel, s: Statement) -> dict[str, tuple[int, int]] | None:
    """The extent of every iterator of ``s`` when its domain is a box (else None)."""
    box = _box_of(kernel.sizes, kernel.bindings, s.domain, s.iterators)
    return None if box is None else dict(box)


@functools.lru_cache(maxsize=4096)
def _box_of(sizes, bindings, text: str, iterators: tuple[str, ...]):
    dom = poly.domain_text(sizes, bindings, text)
    ext = {}
    for v in iterators:
        e = poly.extent(dom, v)
        if e is None:
            return None
        ext[v] = e
    return tuple(ext.items()) if poly.is_box(dom, ext) else None


def _same_element(kernel: Kernel, s: Statement, red: Statement, out_iters: set[str]) -> bool:
    """``s`` writes exactly C[fc] over the output iterators of the reduction's box."""
    if s.target != red.target or set(s.iterators) != out_iters:
        return False
    return poly.is_projection(kernel, s, red)


def recognise(kernel: Kernel, red: Statement) -> Contraction | None:
    """The contraction ``red`` computes in ``kernel``, or None if it is not one (module doc).

    A question about one statement: the pipeline asks it of every statement once
    (:func:`find_all`), and again only where a pass changed the kernel (:func:`refresh`);
    ``transform/split.py`` asks it of the trial kernels it builds (is this cell a contraction?).
    It reads ``red``, the statement before it (an init), the statements after it that may fold
    (the epilogue chain) and those sharing their nests (:func:`_read_by`), and the kernel's
    tensors and sizes."""
    if red.op != "+=":
        return None
    terms = factors(red.expr)
    loads = [f for f in terms if isinstance(f, Load)]
    nums = [f for f in terms if isinstance(f, Num)]
    args = [f for f in terms if isinstance(f, Arg)]
    if len(loads) != 2 or len(args) > 1 or len(loads) + len(nums) + len(args) != len(terms):
        return None
    if any(ld.tensor == red.target.tensor for ld in loads):
        return None
    # f32 everywhere, or bf16 A and B accumulated in f32 into an f32 C or a bf16 one (rounded
    # once, see bf16_accumulated)
    ab = {kernel.arg(x.tensor).dtype for x in loads}
    c_dtype = kernel.arg(red.target.tensor).dtype
    if ab not in ({"f32"}, {"bf16"}) or c_dtype not in ("f32", *(["bf16"] * (ab == {"bf16"}))):
        return None
    alpha = 1.0
    for f in nums:
        alpha *= f.value
    alpha_arg = args[0].name if args else None
    box = _box(kernel, red)
    if box is None:
        return None
    lc = linearize(kernel, red.target)
    # a bf16 B may come in VNNI-2 pairs of its reduction rows (Linear.pair)
    paired = ab == {"bf16"}
    lx, ly = (linearize(kernel, ld, pairs=paired) for ld in loads)
    if lc is None or lx is None or ly is None:
        return None
    for (la, a), (lb, b) in (((lx, loads[0]), (ly, loads[1])), ((ly, loads[1]), (lx, loads[0]))):
        roles = _roles(red.iterators, lc, la, lb, box)
        if roles is None or la.pair is not None:
            continue
        m, n, k, batch, outer = roles
        if lb.pair is not None and not _whole_pairs(lb.pair, k, box):
            continue
        found = Contraction(
            stmt=red.name,
            init=None,
            c=red.target.tensor,
            a=a.tensor,
            b=b.tensor,
            lin=(("C", lc), ("A", la), ("B", lb)),
            m=m,
            n=n,
            k=k,
            batch=batch,
            outer=outer,
            extents=tuple(box.items()),
            alpha=alpha,
            alpha_arg=alpha_arg,
        )
        found = _fold(kernel, red, _coalesce_rows(found))
        if c_dtype == "bf16" and not _owns(kernel, found):
            return None
        return found
    return None


def _owns(kernel: Kernel, c: Contraction) -> bool:
    """Whether the statements ``c`` folds are the only ones of ``kernel`` reading or writing
    its C (a bf16 C is then held in f32 from the zero to the last update: one rounding)."""
    folded = set(c.folded)
    for s in kernel.statements:
        if s.name in folded:
            continue
        if s.target.tensor == c.c or any(ld.tensor == c.c for ld in s.reads):
            return False
    return True


def bf16_accumulated(kernel: Kernel) -> frozenset[str]:
    """The ``pd.bf16`` tensors of ``kernel`` (sizes bound) that are the C of a contraction: a
    ``+=`` of a product of two bf16 tensors, with its zero initialisation and the elementwise
    updates after it that fold into its store, these being the only statements reading or
    writing C. Such a C accumulates in float32 and is rounded to bf16 once per element, after
    its last update (the rule of API.md section 1, which the reference follows too); every other
    store to a bf16 tensor rounds."""
    return frozenset(c.c for c in find_all(kernel) if kernel.arg(c.c).dtype == "bf16")


def _whole_pairs(pair: str, k: str | None, box) -> bool:
    """Whether the iterator ``pair`` of a VNNI-2 B is the reduction ``k`` over whole pairs (an
    even extent from an even start): the calls' k origins are then even."""
    lo, hi = box[pair]
    return pair == k and lo % 2 == 0 and (hi - lo + 1) % 2 == 0


def _roles(iters, lc: Linear, la: Linear, lb: Linear, box):
    col = 2 if lb.pair is not None else 1  # a VNNI-2 B's columns are pairs apart
    n = [v for v in iters if lc.coef(v) == 1 and lb.coef(v) == col and la.coef(v) == 0]
    if not n:
        return None
    n_it = n[0]
    ms = [v for v in iters if lc.coef(v) and la.coef(v) and not lb.coef(v)]
    if not ms:
        return None
    # rows: the candidate with the smallest stride in C (then the most iterations)
    m_it = min(ms, key=lambda v: (abs(lc.coef(v)), -(box[v][1] - box[v][0])))
    red = [v for v in iters if lc.coef(v) == 0]
    if any(la.coef(v) == 0 and lb.coef(v) == 0 for v in red):
        return None
    ks = [v for v in red if la.coef(v) == 1 and lb.coef(v)]
    k_it = max(ks, key=lambda v: box[v][1] - box[v][0]) if ks else None
    batch = tuple(v for v in red if v != k_it)
    outer = tuple(v for v in iters if lc.coef(v) and v not in (m_it, n_it))
    return m_it, n_it, k_it, batch, outer


# rows one call covers when rows are joined (optimize/plan.py): about this many
CALL_ROWS = 112


def _coalesce_rows(c: Contraction) -> Contraction:
    """Fuse an outer row iterator ``u`` above ``m`` (``u`` not in B): into one run of rows when
    ``coef(u) == extent(m) * coef(m)`` in both C and A, else into grouped rows (one group of
    ``extent(m)`` rows per value of ``u``, kernels/config.py) when the strides are positive and
    C's groups do not overlap; among several candidates the one nearest in C (the next row).
    Rows more than :data:`CALL_ROWS` long are left alone: a call has rows enough, and joining
    them would make one call per ``u`` (a whole 1-D signal), leaving ``m`` no loop to tile or
    run in parallel."""
    lc, la, lb = c.linear("C"), c.linear("A"), c.linear("B")
    ext = c.extent(c.m)
    if c.lo(c.m) != 0 or ext > CALL_ROWS:
        return c
    run, grouped = [], []
    for u in c.outer:
        if lb.coef(u) != 0 or lc.coef(u) == 0 or la.coef(u) == 0:
            continue
        if lc.coef(u) == ext * lc.coef(c.m) and la.coef(u) == ext * la.coef(c.m):
            run.append(u)
        elif min(lc.coef(u), la.coef(u), lc.coef(c.m), la.coef(c.m)) > 0 and lc.coef(u) >= (
            ext - 1
        ) * lc.coef(c.m) + c.extent(c.n):
            grouped.append(u)
    for found in (run, grouped):
        if found:
            u = min(found, key=lambda v: lc.coef(v))
            outer = tuple(v for v in c.outer if v != u)
            return replace(c, m=u, m_inner=c.m, outer=outer)
    return c


def _fold(kernel: Kernel, red: Statement, c: Contraction) -> Contraction:
    stmts = list(kernel.statements)
    i = stmts.index(red)
    out_iters = c.out_iters
    init = stmts[i - 1] if i > 0 else None
    if (
        init is not None
        and init.op == "="
        and init.expr == Num(value=0.0)
        and _same_element(kernel, init, red, out_iters)
    ):
        c = replace(c, init=init.name)
    # the elementwise updates of the same elements that follow, as long as each one folds;
    # a nest of their own folds whole or not at all (what stays behind must keep its nest)
    chain: list[str] = []
    expr = ACC
    inputs: list[tuple[str, Linear, Operand]] = []
    best = (0, expr, 0)
    for s in stmts[i + 1 :]:
        if s.micro is not None or not _same_element(kernel, s, red, out_iters):
            break
        step = _update(kernel, s, c, red.target, inputs)
        if step is None:
            break
        expr = compose(step, expr)
        chain.append(s.name)
        if fills(kernel, [n for n in (c.init, red.name, *chain) if n], besides=red.name):
            best = (len(chain), expr, len(inputs))
    n, expr, n_in = best
    if n:
        post = Epilogue(operands=tuple(o for _, _, o in inputs[:n_in]), expr=expr)
        c = replace(
            c,
            epilogue=tuple(chain[:n]),
            post=None if post.is_identity else post,
            inputs=tuple((t, lin) for t, lin, _ in inputs[:n_in]),
        )
    return c


def fills(kernel: Kernel, names, *, besides: str | None = None) -> bool:
    """Whether the statements ``names`` fill the top-level nests they are in (no other
    statement there), leaving out the nest of ``besides``."""
    folded = set(names)
    skip = poly.top_position(kernel, kernel.statement(besides)) if besides else None
    nests = {poly.top_position(kernel, kernel.statement(n)) for n in folded} - {skip}
    if None in nests:
        return False
    return not any(
        s.name not in folded and s.micro is None and poly.top_position(kernel, s) in nests
        for s in kernel.statements
    )


_AUGMENTED = {"+=": "+", "-=": "-", "*=": "*", "/=": "/"}


def _update(
    kernel: Kernel, s: Statement, c: Contraction, target: Load, inputs: list
) -> tuple | None:
    """What ``s`` (writing the reduction's element) stores, as an epilogue expression of the
    element before it (``acc``); None when it is not elementwise on tensors read like C.
    ``inputs`` collects the operands, each tensor and offset once."""
    value = _post_expr(kernel, s.expr, c, target, inputs)
    if value is None:
        return None
    if s.op == "=":
        return value
    return (_AUGMENTED[s.op], ACC, value)


def _post_expr(kernel: Kernel, e: Expr, c: Contraction, target: Load, inputs: list):
    if isinstance(e, Num):
        return ("num", float(e.value))
    if isinstance(e, Load):
        if e.tensor == target.tensor:
            return ACC if e == target else None
        operand = _operand(kernel, e, c)
        if operand is None:
            return None
        lin, op = operand
        for t, (tensor, other, _) in enumerate(inputs):
            if tensor == e.tensor and other == lin:
                return ("in", t)
        inputs.append((e.tensor, lin, op))
        return ("in", len(inputs) - 1)
    if isinstance(e, BinOp):
        a = _post_expr(kernel, e.a, c, target, inputs)
        b = _post_expr(kernel, e.b, c, target, inputs) if a is not None else None
        return None if b is None else (e.op, a, b)
    if isinstance(e, UnOp):
        a = _post_expr(kernel, e.a, c, target, inputs)
        return None if a is None else (e.op, a)
    return None  # a scalar argument: the microkernel takes none in its epilogue


def _operand(kernel: Kernel, ld: Load, c: Contraction) -> tuple[Linear, Operand] | None:
    """How the call's rows and columns step through ``ld``: one value per column (like C or
    broadcast over rows), per row, or both; None if another iterator moves it within a call."""
    if kernel.arg(ld.tensor).dtype != "f32":
        return None
    lin = linearize(kernel, ld)
    if lin is None or not set(dict(lin.coefs)) <= c.out_iters:
        return None
    col = lin.coef(c.n)
    if col not in (0, 1) or lin.const < 0 or any(x < 0 for _, x in lin.coefs):
        return None
    if c.m_inner is None:
        return lin, Operand(ld=lin.coef(c.m), col=col, name=ld.tensor)
    ld_row, ld_group = lin.coef(c.m_inner), lin.coef(c.m)
    if not c.row_groups() and ld_group != c.extent(c.m_inner) * ld_row:
        return None  # C's rows are one run, this tensor's are not
    return lin, Operand(ld=ld_row, col=col, ld_group=ld_group, name=ld.tensor)


def find_all(kernel: Kernel) -> tuple[Contraction, ...]:
    """Every contraction of ``kernel``, in statement order."""
    out = (recognise(kernel, s) for s in kernel.statements)
    return tuple(c for c in out if c is not None)


def _read_by(kernel: Kernel, c: Contraction) -> tuple[Statement, ...]:
    """What :func:`recognise` read to find ``c``: its folded statements, the statements right
    before and after them (an init or a longer chain could join), and every statement in the
    nests they are in (:func:`fills` decided by those)."""
    stmts = kernel.statements
    at = [i for i, s in enumerate(stmts) if s.name in c.folded]
    if len(at) != len(c.folded):
        return ()  # a pass renamed or dropped one
    near = [stmts[i] for i in (at[0] - 1, at[-1] + 1) if 0 <= i < len(stmts)]
    nests = {poly.top_position(kernel, stmts[i]) for i in at}
    mates = [s for s in stmts if poly.top_position(kernel, s) in nests]
    return (*(stmts[i] for i in at), *near, *mates)


def refresh(before: Kernel, found: Sequence[Contraction], after: Kernel) -> tuple[Contraction, ...]:
    """The contractions of ``after``, a pass's result on ``before`` whose contractions are
    ``found``: one is kept when what :func:`recognise` read for it is as it was
    (:func:`_read_by`), recognised anew where a pass changed that, and every other statement
    is asked again only if it changed (whether a statement is a reduction of a product on a
    box is its own property); every one anew when the tensors or sizes differ."""
    if replace(before, statements=()) != replace(after, statements=()):
        return find_all(after)
    kept = {c.stmt: c for c in found}
    old = {s.name: s for s in before.statements}
    out = []
    for s in after.statements:
        c = kept.get(s.name)
        if c is not None and _read_by(before, c) == _read_by(after, c):
            out.append(c)
        elif c is not None or old.get(s.name) != s:
            c = recognise(after, s)
            if c is not None:
                out.append(c)
    return tuple(out)
