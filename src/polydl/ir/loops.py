"""The loop tree that code generation walks: isl's AST turned into plain frozen dataclasses.

``ir/poly/`` builds it from a schedule; ``codegen/llvm.py`` emits LLVM IR from it and
``show("loops")`` prints it as C-like text. Iterators are named ``c0, c1, ...`` after the
schedule dimension they scan (``For.dim``); a :class:`Call` gives the values of a statement's
own iterators as expressions of those.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .nodes import IExpr, Int, IntOp, Var


@dataclass(frozen=True, kw_only=True)
class Cmp:
    op: str  # "<" "<=" ">" ">=" "=="
    a: IExpr
    b: IExpr

    def __str__(self) -> str:
        return f"{self.a} {self.op} {self.b}"


@dataclass(frozen=True, kw_only=True)
class BoolOp:
    op: str  # "and" | "or"
    a: Cond
    b: Cond

    def __str__(self) -> str:
        sym = "&&" if self.op == "and" else "||"
        return f"({self.a} {sym} {self.b})"


Cond = Cmp | BoolOp


@dataclass(frozen=True, kw_only=True)
class Call:
    """Run statement ``stmt`` at iteration ``args`` (its iterators, in order).

    ``packed_b``: for a BRGEMM statement whose B blocks were copied by a :class:`Copy` nest
    (``transform/pack.py``), the buffer and the element offset of this call's block in it; the
    block is then dense (``ldb = n``, batch element ``b`` at ``b * k * n``); ``packed_vnni``:
    the copy holds VNNI-2 pairs of rows (``kernels/config.py``; batch element ``b`` at
    ``b * 2*ceil(k/2) * n``). ``prefetch_b``: the element distance from this call's B rows to the
    next call's, which the microkernel prefetches while it reads them
    (``transform/prefetch.py``; 0: none).
    """

    stmt: str
    args: tuple[IExpr, ...]
    packed_b: tuple[str, IExpr] | None = None
    packed_vnni: bool = False
    prefetch_b: int = 0


@dataclass(frozen=True, kw_only=True)
class Buffer:
    """A scratch array of ``elems`` elements owned by the function that runs this node (one per
    thread inside a parallel loop); it lives until that function returns."""

    name: str
    elems: int
    dtype: str


@dataclass(frozen=True, kw_only=True)
class Copy:
    """``buf[dst : dst + count] = tensor[src : src + count]`` (element offsets), by ``kind``:

    * ``"rows"``: that one run of ``count`` elements;
    * ``"pairs"``: two rows, at ``src`` and ``src + ld``, interleaved element by element into
      ``2 * count`` (``buf[dst + 2*j + h] = tensor[src + h*ld + j]``: a VNNI-2 pair row);
    * ``"last"``: the unpaired last row of an odd ``k``, interleaved with zeros.
    """

    buf: str
    dst: IExpr
    tensor: str
    src: IExpr
    count: int
    kind: str = "rows"
    ld: int = 0


@dataclass(frozen=True, kw_only=True)
class For:
    var: str
    dim: int  # the schedule dimension this loop scans
    init: IExpr
    cond: Cond  # tested before each iteration, in terms of ``var``
    step: int
    body: tuple[Node, ...]
    parallel: bool = False  # no dependence is carried by this loop
    threaded: bool = False  # runs as a parallel region (transform/threads.py decides)

    def upper(self) -> IExpr | None:
        """The exclusive upper bound when ``cond`` is ``var < e`` or ``var <= e``, else None."""
        c = self.cond
        if isinstance(c, Cmp) and c.a == Var(name=self.var):
            if c.op == "<":
                return c.b
            if c.op == "<=":
                return IntOp(op="+", a=c.b, b=Int(value=1))
        return None


@dataclass(frozen=True, kw_only=True)
class If:
    cond: Cond
    then: tuple[Node, ...]
    orelse: tuple[Node, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Assign:
    """``var = value`` for the nodes that follow (made by collapsing loops)."""

    var: str
    value: IExpr


Node = For | If | Call | Assign | Buffer | Copy


def collapse(outer: For, inner: For, trips_outer: int, trips_inner: int) -> For:
    """One loop over ``outer x inner`` (a perfect nest of constant trip counts): its iterator
    ``t`` runs over ``trips_outer * trips_inner`` and the two iterators are recomputed from it.

    Before: ``for i in [lo1, ...) step s1: for j in [lo2, ...) step s2: body``
    After:  ``for t in [0, T1*T2): i = lo1 + (t // T2)*s1; j = lo2 + (t % T2)*s2; body``
    """
    t = Var(name=f"{outer.var}_{inner.var}")
    mul = lambda e, k: e if k == 1 else IntOp(op="*", a=e, b=Int(value=k))  # noqa: E731
    i = IntOp(
        op="+", a=outer.init, b=mul(IntOp(op="//", a=t, b=Int(value=trips_inner)), outer.step)
    )
    j = IntOp(op="+", a=inner.init, b=mul(IntOp(op="%", a=t, b=Int(value=trips_inner)), inner.step))
    return For(
        var=t.name,
        dim=outer.dim,
        init=Int(value=0),
        cond=Cmp(op="<", a=t, b=Int(value=trips_outer * trips_inner)),
        step=1,
        body=(Assign(var=outer.var, value=i), Assign(var=inner.var, value=j), *inner.body),
        parallel=True,
    )


def walk(nodes: tuple[Node, ...]) -> Iterator[Node]:
    """Every node, depth first."""
    for n in nodes:
        yield n
        if isinstance(n, For):
            yield from walk(n.body)
        elif isinstance(n, If):
            yield from walk(n.then)
            yield from walk(n.orelse)


def to_c(nodes: tuple[Node, ...], stmt_text: dict[str, str] | None = None, indent: int = 0) -> str:
    """C-like text of a loop tree; ``stmt_text`` maps a statement name to its source text."""
    pad = "  " * indent
    out: list[str] = []
    for n in nodes:
        if isinstance(n, For):
            if n.threaded:
                out.append(f"{pad}#pragma omp parallel for")
            step = f"{n.var} += {n.step}" if n.step != 1 else f"{n.var}++"
            out.append(f"{pad}for (int {n.var} = {n.init}; {n.cond}; {step}) {{")
            out.append(to_c(n.body, stmt_text, indent + 1))
            out.append(f"{pad}}}")
        elif isinstance(n, If):
            out.append(f"{pad}if ({n.cond}) {{")
            out.append(to_c(n.then, stmt_text, indent + 1))
            if n.orelse:
                out.append(f"{pad}}} else {{")
                out.append(to_c(n.orelse, stmt_text, indent + 1))
            out.append(f"{pad}}}")
        elif isinstance(n, Assign):
            out.append(f"{pad}int {n.var} = {n.value};")
        elif isinstance(n, Buffer):
            out.append(f"{pad}{n.dtype} {n.name}[{n.elems}];  // scratch")
        elif isinstance(n, Copy):
            if n.kind == "pairs":
                out.append(
                    f"{pad}copy_pairs({n.buf} + {n.dst}, {n.tensor} + {n.src}, {n.ld}, {n.count});"
                    "  // VNNI-2: rows src, src + ld interleaved"
                )
            elif n.kind == "last":
                out.append(
                    f"{pad}copy_pairs({n.buf} + {n.dst}, {n.tensor} + {n.src}, zeros, {n.count});"
                    "  // VNNI-2: the odd last row, zero partner"
                )
            else:
                out.append(
                    f"{pad}copy({n.buf} + {n.dst}, {n.tensor} + {n.src}, {n.count});  // packs operand rows"
                )
        else:
            call = f"{n.stmt}({', '.join(map(str, n.args))});"
            if stmt_text and n.stmt in stmt_text:
                call += f"  // {stmt_text[n.stmt]}"
            if n.packed_b is not None:
                vnni = ", VNNI-2" if n.packed_vnni else ""
                call += f"  [B from {n.packed_b[0]} + {n.packed_b[1]}{vnni}]"
            if n.prefetch_b:
                call += f"  [prefetch B {n.prefetch_b:+d}]"
            out.append(pad + call)
    return "\n".join(line for line in out if line)
