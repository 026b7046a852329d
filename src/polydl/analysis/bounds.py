"""Bounds proof: every access of every statement stays inside its tensor, for the bound sizes.

For each access ``{ S[iters] -> T[index] }`` (restricted to the statement's domain) isl checks
that its image lies in ``T``'s box ``0 <= d < shape``; otherwise :class:`BoundsError` names the
access, its source line, the tensor and its shape, and one offending iteration (an isl sample).
"""

from __future__ import annotations

from ..errors import BoundsError, where
from ..ir import poly
from ..ir.nodes import IExpr, Int, IntOp, Kernel, Load, Statement, Var


def check_bounds(kernel: Kernel) -> None:
    """Raise :class:`BoundsError` for the first access that may leave its tensor."""
    for stmt in kernel.statements:
        seen: set[Load] = set()
        for load in (stmt.target, *stmt.reads):
            if load in seen:
                continue
            seen.add(load)
            bad = poly.outside(kernel, stmt, load)
            if bad is not None:
                raise BoundsError(_message(kernel, stmt, load, load is stmt.target, *bad))


def _message(kernel: Kernel, stmt: Statement, load: Load, write: bool, it: dict, idx: dict) -> str:
    tensor = kernel.arg(load.tensor)
    if kernel.bindings:
        shape = str(kernel.shape_of(load.tensor))
    else:
        shape = "[" + ", ".join(map(str, tensor.shape)) + "]"  # type: ignore[union-attr]
    point = ", ".join(f"{k}={v}" for k, v in it.items()) or "its only instance"
    element = f"{load.tensor}[{', '.join(str(v) for v in idx.values())}]"
    sizes = ", ".join(f"{k}={v}" for k, v in kernel.bindings)
    kind = "writes" if write else "reads"
    return (
        f"{where(kernel.filename, stmt.line)} access `{format_load(load)}` in `{stmt.source}` "
        f"{kind} {element}, outside tensor `{load.tensor}` of shape {shape}"
        f"{f' ({sizes})' if sizes else ''}, at iteration {point}"
    )


def format_load(load: Load) -> str:
    """``A[i + 1, k]``: an access as it reads in the source (minimal parentheses)."""
    return f"{load.tensor}[{', '.join(format_index(e) for e in load.index)}]"


_PREC = {"+": 1, "-": 1, "*": 2, "//": 2, "%": 2}


def format_index(e: IExpr, parent: int = 0, right: bool = False) -> str:
    """An index expression in Python syntax with only the parentheses it needs."""
    if isinstance(e, Int | Var):
        return str(e)
    assert isinstance(e, IntOp)
    if e.op in ("min", "max"):
        return f"{e.op}({format_index(e.a)}, {format_index(e.b)})"
    if e.op == "-" and e.a == Int(value=0):
        return f"-{format_index(e.b, 3)}"
    p = _PREC[e.op]
    text = f"{format_index(e.a, p)} {e.op} {format_index(e.b, p, right=True)}"
    return f"({text})" if p < parent or (p == parent and right) else text
