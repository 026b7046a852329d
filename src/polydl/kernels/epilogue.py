"""What a BRGEMM kernel does to each C element at its final store: an elementwise expression.

After the last batch-reduce step of a C block the kernel holds ``acc = alpha*sum + beta*C``
for every element ``(i, j)`` of the block. An :class:`Epilogue` maps it to the value stored::

    C[i, j] = f(acc, in_0[i, j], in_1[i, j], ...)

where each operand ``in_t`` is a float32 tensor read *like the C block* (:class:`Operand`):
its element for row ``i`` and column ``j`` is at ``row_offset(i) + j*col`` from the pointer
the caller passes (``col`` 1: one value per column, contiguous like C; 0: one value per row),
``row_offset`` following the rows of the call (one run ``i*ld``, or the grouped rows of
:mod:`polydl.kernels.config`: ``(i // row_group)*ld_group + (i % row_group)*ld``).

``f`` is an expression tree of nested tuples, so that it is hashable (kernels are cached by
configuration) and printable:

==================  ======================================================
``("acc",)``        the finished element
``("in", t)``       operand ``t`` at this element
``("num", x)``      a float constant
``(fn, a)``         ``fn`` in :data:`UNARY` (``neg exp sqrt tanh sigmoid erf abs``)
``(op, a, b)``      ``op`` in :data:`BINARY` (``+ - * / max min``)
==================  ======================================================

Before (the fused statements of a kernel)::

    C[i, j] = C[i, j] * scale[j] + shift[j]
    C[i, j] = max(C[i, j] + R[i, j], 0.0)

After: ``Epilogue(operands=(scale: col, shift: col, R: row-major like C), expr=max(acc * in0 +
in1 + in2, 0.0))``. The microkernel templates lay the expression out at the store
(``microkernels/common/epilogue.ll.j2``, vector ``exp``/``tanh``/``erf`` in ``math.ll.j2``);
:func:`evaluate` is the NumPy twin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import PolyDLError

UNARY = ("neg", "exp", "sqrt", "tanh", "sigmoid", "erf", "abs")
BINARY = ("+", "-", "*", "/", "max", "min")

Expr = tuple  # see the module docstring

ACC: Expr = ("acc",)


@dataclass(frozen=True, kw_only=True)
class Operand:
    """A tensor the epilogue reads, indexed like the C block of the call."""

    ld: int  # elements from one row of the call to the next (0: the same for every row)
    col: int  # 1: contiguous along the columns like C; 0: one value per row (broadcast)
    ld_group: int | None = None  # grouped rows: offset between groups (None: row_group * ld)
    name: str = field(default="in", compare=False)  # for messages only

    def __post_init__(self) -> None:
        if self.col not in (0, 1):
            raise PolyDLError(f"epilogue operand {self.name}: col must be 0 or 1, got {self.col}")
        if not isinstance(self.ld, int) or self.ld < 0:
            raise PolyDLError(f"epilogue operand {self.name}: ld must be an int >= 0")
        if self.ld_group is not None and (not isinstance(self.ld_group, int) or self.ld_group < 0):
            raise PolyDLError(f"epilogue operand {self.name}: ld_group must be an int >= 0")

    def row_offset(self, i: int, row_group: int | None) -> int:
        """Element offset of row ``i`` of the call from the operand's pointer."""
        if row_group is None:
            return i * self.ld
        group = self.ld_group if self.ld_group is not None else row_group * self.ld
        return (i // row_group) * group + (i % row_group) * self.ld

    def extent(self, m: int, n: int, row_group: int | None) -> int:
        """Elements the call reads from the operand's pointer on."""
        rows = {0, m - 1, *(range(row_group - 1, m, row_group) if row_group else ())}
        return max(self.row_offset(i, row_group) for i in rows) + (n - 1) * self.col + 1


def _check(e: Expr, n_operands: int) -> None:
    if not isinstance(e, tuple) or not e:
        raise PolyDLError(f"epilogue expression node must be a non-empty tuple, got {e!r}")
    kind = e[0]
    if kind == "acc" and len(e) == 1:
        return
    if kind == "in" and len(e) == 2 and isinstance(e[1], int) and 0 <= e[1] < n_operands:
        return
    if kind == "num" and len(e) == 2 and isinstance(e[1], float):
        return
    if kind in UNARY and len(e) == 2:
        _check(e[1], n_operands)
        return
    if kind in BINARY and len(e) == 3:
        _check(e[1], n_operands)
        _check(e[2], n_operands)
        return
    raise PolyDLError(f"not an epilogue expression node: {e!r}")


@dataclass(frozen=True, kw_only=True)
class Epilogue:
    """``C[i, j] = expr(acc, operands...)`` at the final store of a BRGEMM call."""

    operands: tuple[Operand, ...] = ()
    expr: Expr = ACC

    def __post_init__(self) -> None:
        _check(self.expr, len(self.operands))

    @classmethod
    def of(cls, bias: str | None, relu: bool) -> Epilogue | None:
        """The epilogue of the classic options: a row or column bias, then a ReLU."""
        operands: tuple[Operand, ...] = ()
        expr: Expr = ACC
        if bias == "row":
            operands = (Operand(ld=1, col=0, name="bias"),)
        elif bias == "col":
            operands = (Operand(ld=0, col=1, name="bias"),)
        if operands:
            expr = ("+", expr, ("in", 0))
        if relu:
            expr = ("max", expr, ("num", 0.0))
        return cls(operands=operands, expr=expr) if expr != ACC else None

    @property
    def is_identity(self) -> bool:
        return self.expr == ACC

    def text(self) -> str:
        """The expression in the DSL's notation (``acc``, ``in0`` ...)."""
        return text(self.expr, [f"{o.name}" for o in self.operands])


def text(e: Expr, names: list[str]) -> str:
    kind = e[0]
    if kind == "acc":
        return "acc"
    if kind == "in":
        return names[e[1]]
    if kind == "num":
        return repr(e[1])
    if kind in UNARY:
        inner = text(e[1], names)
        return f"-{inner}" if kind == "neg" else f"{kind}({inner})"
    a, b = text(e[1], names), text(e[2], names)
    return f"{kind}({a}, {b})" if kind in ("max", "min") else f"({a} {kind} {b})"


def _erf(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return erf(x)


_UN = {
    "neg": np.negative,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "tanh": np.tanh,
    "sigmoid": lambda x: 0.5 * (1.0 + np.tanh(0.5 * x)),
    "erf": _erf,
    "abs": np.abs,
}
_BIN = {
    "+": np.add,
    "-": np.subtract,
    "*": np.multiply,
    "/": np.divide,
    "max": np.maximum,
    "min": np.minimum,
}


def evaluate(e: Expr, acc: np.ndarray, operands: list[np.ndarray]) -> np.ndarray:
    """The NumPy twin: ``e`` over float64 blocks (``acc`` and each operand's block)."""
    kind = e[0]
    if kind == "acc":
        return acc
    if kind == "in":
        return operands[e[1]]
    if kind == "num":
        return np.full_like(acc, e[1])
    with np.errstate(all="ignore"):
        if kind in _UN:
            return _UN[kind](evaluate(e[1], acc, operands))
        return _BIN[kind](evaluate(e[1], acc, operands), evaluate(e[2], acc, operands))


def compose(outer: Expr, inner: Expr) -> Expr:
    """``outer`` with ``acc`` replaced by ``inner`` (a statement applied after another)."""
    if outer == ACC:
        return inner
    if outer[0] in ("in", "num"):
        return outer
    return (outer[0], *(compose(x, inner) for x in outer[1:]))
