"""The polyhedral IR: frozen, keyword-only dataclasses. Change them with ``dataclasses.replace``.

A :class:`Kernel` is a list of :class:`Statement` s. Each statement carries its iteration domain
(isl set text over the kernel's size parameters, iterators named like the source loop
variables), the tensor element it writes, the expression it computes, its place in the schedule
(an isl map text from the statement's iterators to a common schedule space; the parser gives the
original 2d+1 schedule) and its source line. Index expressions are small integer trees
(:class:`Var`, :class:`Int`, :class:`IntOp`), float expressions are :class:`Num`, :class:`Arg`,
:class:`Load`, :class:`BinOp`, :class:`UnOp`. ``ir/poly/`` turns all of this into isl objects.

For ``C[i, j] += A[i, k] * B[k, j]`` the parser gives (abbreviated)::

    Statement(name="S0", iterators=("i", "j", "k"),
              domain="[M, N, K] -> { S0[i, j, k] : 0 <= i < M and 0 <= j < N and 0 <= k < K }",
              target=Load(tensor="C", index=(Var(name="i"), Var(name="j"))), op="+=",
              expr=BinOp(op="*", a=<A[i, k]>, b=<B[k, j]>),
              schedule="[M, N, K] -> { S0[i, j, k] -> [0, i, 0, j, 0, k, 0] }", line=..., source=...)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

from ..kernels.epilogue import Epilogue
from ..kernels.epilogue import text as epilogue_text

# ---------------------------------------------------------------- integer (index) expressions


@dataclass(frozen=True, kw_only=True)
class Var:
    """A loop iterator or a size parameter, by name."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, kw_only=True)
class Int:
    value: int

    def __str__(self) -> str:
        return str(self.value)


INT_OPS = ("+", "-", "*", "//", "%", "min", "max")


@dataclass(frozen=True, kw_only=True)
class IntOp:
    """``a op b``; ``//`` and ``%`` are Python's (floor) with a positive constant ``b``."""

    op: str
    a: IExpr
    b: IExpr

    def __str__(self) -> str:
        if self.op in ("min", "max"):
            return f"{self.op}({self.a}, {self.b})"
        return f"({self.a} {self.op} {self.b})"


IExpr = Var | Int | IntOp


# ---------------------------------------------------------------- float expressions


@dataclass(frozen=True, kw_only=True)
class Num:
    """A float literal."""

    value: float

    def __str__(self) -> str:
        return repr(float(self.value))


@dataclass(frozen=True, kw_only=True)
class Arg:
    """A scalar argument of the kernel."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, kw_only=True)
class Load:
    """``tensor[index...]``: a read, or (as a statement's target) the element written."""

    tensor: str
    index: tuple[IExpr, ...]

    def __str__(self) -> str:
        return f"{self.tensor}[{', '.join(map(str, self.index))}]"


FLOAT_BINOPS = ("+", "-", "*", "/", "max", "min")


@dataclass(frozen=True, kw_only=True)
class BinOp:
    op: str
    a: Expr
    b: Expr

    def __str__(self) -> str:
        if self.op in ("max", "min"):
            return f"{self.op}({self.a}, {self.b})"
        return f"({self.a} {self.op} {self.b})"


FLOAT_UNOPS = ("neg", "exp", "sqrt", "tanh", "sigmoid", "erf")


@dataclass(frozen=True, kw_only=True)
class UnOp:
    op: str
    a: Expr

    def __str__(self) -> str:
        return f"-{self.a}" if self.op == "neg" else f"{self.op}({self.a})"


Expr = Num | Arg | Load | BinOp | UnOp


def loads(e: Expr) -> Iterator[Load]:
    """Every tensor read in ``e``, left to right."""
    if isinstance(e, Load):
        yield e
    elif isinstance(e, BinOp):
        yield from loads(e.a)
        yield from loads(e.b)
    elif isinstance(e, UnOp):
        yield from loads(e.a)


def int_vars(e: IExpr) -> Iterator[str]:
    if isinstance(e, Var):
        yield e.name
    elif isinstance(e, IntOp):
        yield from int_vars(e.a)
        yield from int_vars(e.b)


# ---------------------------------------------------------------- kernel structure

DTYPE_BYTES = {"f32": 4, "f64": 8, "bf16": 2}
STATEMENT_OPS = ("=", "+=", "-=", "*=", "/=")
DTYPES = ("f32", "f64", "bf16")


@dataclass(frozen=True, kw_only=True)
class TensorArg:
    name: str
    dtype: str  # "f32" | "f64"
    shape: tuple[IExpr, ...]  # Var (a size parameter) or Int per dimension
    # a scratch tensor (Kernel.temps) of which each thread of a parallel region has a copy of
    # its own (transform/fuse_contractions.py: an intermediate contracted to one image)
    per_thread: bool = False


@dataclass(frozen=True, kw_only=True)
class ScalarArg:
    name: str
    dtype: str


@dataclass(frozen=True, kw_only=True)
class Micro:
    """A statement instance that is one BRGEMM call (``kernels/config.py`` layout convention).

    At each instance the C block at flat offset ``c_origin`` (an expression of the statement's
    iterators) becomes ``beta*C + alpha * sum_b A[a_origin + a_offsets[b]] @ B[b_origin +
    b_offsets[b]]``, mapped at the store by ``epilogue`` (``kernels/epilogue.py``: an
    elementwise expression of the element and of ``operands``, each a tensor and the flat offset
    of its element at the block's origin).
    """

    m: int
    n: int
    k: int
    lda: int
    ldb: int
    ldc: int
    beta: int
    alpha: float
    a: str
    b: str
    c: str
    a_origin: IExpr
    b_origin: IExpr
    c_origin: IExpr
    a_offsets: tuple[int, ...]
    b_offsets: tuple[int, ...]
    epilogue: Epilogue | None = None
    operands: tuple[tuple[str, IExpr], ...] = ()  # the epilogue's tensors and their origins
    alpha_arg: str | None = None  # scalar argument multiplying the products, at run time
    ab_dtype: str = "f32"  # A and B elements ("bf16": products accumulated in f32)
    c_dtype: str = "f32"  # C elements ("bf16": the store rounds to nearest even)
    # B's rows in VNNI-2 pairs in the tensor itself (kernels/config.py ``b_vnni``, ``ldb`` the
    # row stride: a pair row is ``2*ldb`` elements), as the contraction analysis found them
    b_vnni: bool = False
    # grouped rows (kernels/config.py): groups of ``row_group`` rows, ``lda_group``/``ldc_group``
    # from one group's first row to the next one's (None: one run of rows)
    row_group: int | None = None
    lda_group: int | None = None
    ldc_group: int | None = None
    # the schedule record's microkernel knobs (schedule.ContractionSchedule, the auto-tuner's):
    # register tile (rows, vectors) and k unroll instead of kernels/isa.plan's (None: its),
    # non-temporal stores of C (only set on a beta = 0 call that holds the whole reduction),
    # B prefetched for the call this many calls ahead (transform/prefetch.py; 0: never)
    register_tile: tuple[int, int] | None = None
    k_unroll: int | None = None
    nontemporal: bool = False
    prefetch: int = 1

    def __str__(self) -> str:
        epi = ""
        if self.epilogue is not None:
            names = [t for t, _ in self.operands]
            epi = f", then {epilogue_text(self.epilogue.expr, names)}"
        rows = f" in groups of {self.row_group}" if self.row_group else ""
        knobs = ""
        if self.register_tile is not None:
            knobs += f", tile={self.register_tile[0]}x{self.register_tile[1]}v"
        if self.k_unroll is not None:
            knobs += f", unroll={self.k_unroll}"
        if self.nontemporal:
            knobs += ", nt"
        return (
            f"brgemm(m={self.m}{rows}, n={self.n}, k={self.k}, batch={len(self.a_offsets)}, "
            f"beta={self.beta}{knobs}{epi}; {self.c}@{self.c_origin} "
            f"+= {self.a}@{self.a_origin} x {self.b}@{self.b_origin}"
            f"{' (VNNI-2)' if self.b_vnni else ''})"
        )


@dataclass(frozen=True, kw_only=True)
class Transpose:
    """A statement instance that is one tile transpose (``kernels/transpose.py``): for
    ``i < rows``, ``j < cols``, ``dst[dst_origin + j*ldd + i] = src[src_origin + i*lds + j]``
    (flat element offsets; the origins expressions of the statement's iterators; ``dtype``
    the element type of both tensors, ``"f32"`` or ``"bf16"``: 16-bit elements moved as bits)."""

    rows: int
    cols: int
    lds: int
    ldd: int
    src: str
    dst: str
    src_origin: IExpr
    dst_origin: IExpr
    prefetch: int = 0  # each source row prefetched this many elements on (0: never)
    nontemporal: bool = False  # full-vector stores bypass the caches where dst is aligned
    dtype: str = "f32"

    def __str__(self) -> str:
        knobs = (f", prefetch={self.prefetch}" if self.prefetch else "") + (
            ", nt" if self.nontemporal else ""
        )
        knobs += f", {self.dtype}" if self.dtype != "f32" else ""
        return (
            f"transpose({self.rows}x{self.cols}, lds={self.lds}, ldd={self.ldd}{knobs}; "
            f"{self.dst}@{self.dst_origin} = {self.src}@{self.src_origin}^T)"
        )


@dataclass(frozen=True, kw_only=True)
class Statement:
    name: str  # "S0", "S1", ...: unique within the kernel, the isl tuple name
    iterators: tuple[str, ...]  # enclosing loop variables, outermost first
    domain: str  # isl set text: "[M, N] -> { S0[i, j] : ... }"
    target: Load  # the element written
    op: str  # one of STATEMENT_OPS
    expr: Expr
    schedule: str  # isl map text: "[M, N] -> { S0[i, j] -> [0, i, 0, j, 0] }"
    line: int
    source: str  # the statement's source text, for messages
    micro: Micro | None = None  # set when each instance is a BRGEMM call (transform/brgemm.py)
    # set when each instance is a tile transpose (transform/transpose.py)
    transpose: Transpose | None = None

    @property
    def reads(self) -> tuple[Load, ...]:
        """Elements read: the right-hand side, plus the target for an update (``+=`` ...)."""
        rhs = tuple(loads(self.expr))
        return rhs if self.op == "=" else (self.target, *rhs)


@dataclass(frozen=True, kw_only=True)
class Kernel:
    name: str
    args: tuple[TensorArg | ScalarArg, ...]  # in call order
    sizes: tuple[str, ...]  # size-parameter names, the isl parameters of every domain
    statements: tuple[Statement, ...]
    filename: str
    line: int  # the line of ``def``
    bindings: tuple[tuple[str, int], ...] = ()  # sizes bound to ints (empty: symbolic)
    constants: tuple[tuple[str, int], ...] = field(default=())  # module ints used, for show()
    # scratch tensors of the compiled function (a gathered operand, transform/gather.py): not
    # arguments; allocated 64-byte aligned, uninitialised, for the duration of one call
    temps: tuple[TensorArg, ...] = ()

    @property
    def tensors(self) -> tuple[TensorArg, ...]:
        return tuple(a for a in self.args if isinstance(a, TensorArg))

    @property
    def scalars(self) -> tuple[ScalarArg, ...]:
        return tuple(a for a in self.args if isinstance(a, ScalarArg))

    @property
    def free_sizes(self) -> tuple[str, ...]:
        """Sizes that shape no tensor (used only in loop bounds, conditions or indices): no
        array's shape implies them, so a call must name them (``kern(A, B, T=10)``)."""
        shaped = {d.name for t in self.tensors for d in t.shape if isinstance(d, Var)}
        return tuple(s for s in self.sizes if s not in shaped)

    @property
    def all_tensors(self) -> tuple[TensorArg, ...]:
        """The tensor arguments, then the scratch tensors (``temps``)."""
        return (*self.tensors, *self.temps)

    def arg(self, name: str) -> TensorArg | ScalarArg:
        """The argument or scratch tensor called ``name``."""
        for a in (*self.args, *self.temps):
            if a.name == name:
                return a
        raise KeyError(name)

    def statement(self, name: str) -> Statement:
        for s in self.statements:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def size_values(self) -> dict[str, int]:
        return dict(self.bindings)

    def nbytes(self, tensor: str) -> int:
        """Bytes of a tensor (argument or scratch) at the bound sizes."""
        t = self.arg(tensor)
        return math.prod(self.shape_of(tensor)) * DTYPE_BYTES[t.dtype]  # type: ignore[union-attr]

    def shape_of(self, tensor: str) -> tuple[int, ...]:
        """The bound shape of a tensor (needs bindings for symbolic dimensions)."""
        env = self.size_values
        return tuple(eval_int(d, env) for d in self.arg(tensor).shape)  # type: ignore[union-attr]

    def bind(self, sizes: Mapping[str, int]) -> Kernel:
        return replace(self, bindings=tuple((s, int(sizes[s])) for s in self.sizes))


def eval_int(e: IExpr, env: Mapping[str, int]) -> int:
    """Evaluate an index expression with Python semantics (``//`` and ``%`` floor)."""
    if isinstance(e, Int):
        return e.value
    if isinstance(e, Var):
        return env[e.name]
    a, b = eval_int(e.a, env), eval_int(e.b, env)
    match e.op:
        case "+":
            return a + b
        case "-":
            return a - b
        case "*":
            return a * b
        case "//":
            return a // b
        case "%":
            return a % b
        case "min":
            return min(a, b)
        case "max":
            return max(a, b)
    raise ValueError(f"unknown integer op {e.op!r}")


def substitute(e: IExpr, env: Mapping[str, IExpr]) -> IExpr:
    """``e`` with the variables named in ``env`` replaced by their expressions."""
    if isinstance(e, Var):
        return env.get(e.name, e)
    if isinstance(e, IntOp):
        return replace(e, a=substitute(e.a, env), b=substitute(e.b, env))
    return e


def affine(e: IExpr, sizes: Mapping[str, int]) -> tuple[dict[str, int], int] | None:
    """``e`` as ``sum(coefs[v] * v) + const`` with the sizes folded (None: ``//``, ``%``,
    ``min``, ``max`` or a product of two variables)."""
    if isinstance(e, Int):
        return {}, e.value
    if isinstance(e, Var):
        return ({}, sizes[e.name]) if e.name in sizes else ({e.name: 1}, 0)
    if e.op not in ("+", "-", "*"):
        return None
    a, b = affine(e.a, sizes), affine(e.b, sizes)
    if a is None or b is None:
        return None
    if e.op == "*":
        if a[0] and b[0]:
            return None
        (coefs, c), k = (a, b[1]) if not b[0] else (b, a[1])
        return {v: x * k for v, x in coefs.items() if x * k}, c * k
    sign = 1 if e.op == "+" else -1
    coefs = dict(a[0])
    for v, x in b[0].items():
        coefs[v] = coefs.get(v, 0) + sign * x
    return {v: x for v, x in coefs.items() if x}, a[1] + sign * b[1]
