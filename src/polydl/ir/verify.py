"""IR verifier, run between passes (in tests): the invariants every :class:`Kernel` keeps.

- argument names unique, dtypes known, tensor dimensions are ints or declared sizes;
- statement names unique; each domain is an isl set ``S[iterators]`` and each schedule an isl
  map ``S[iterators] -> [...]`` over (a subset of) the kernel's sizes; every schedule has the same
  output dimension count;
- targets and reads name tensor arguments with the right rank; index variables are the
  statement's iterators or sizes; scalar reads name scalar arguments; every operator is valid;
- bindings, if any, bind exactly the kernel's sizes to positive ints.
"""

from __future__ import annotations

from ..errors import PolyDLError
from . import poly
from .nodes import (
    DTYPES,
    FLOAT_BINOPS,
    FLOAT_UNOPS,
    INT_OPS,
    STATEMENT_OPS,
    Arg,
    BinOp,
    Expr,
    IExpr,
    Int,
    IntOp,
    Kernel,
    Load,
    Num,
    ScalarArg,
    Statement,
    TensorArg,
    UnOp,
    Var,
    int_vars,
)


class IRError(PolyDLError, AssertionError):
    """A kernel breaks an IR invariant (a compiler bug, not a user error)."""


def verify(kernel: Kernel) -> None:
    """Raise :class:`IRError` naming the first broken invariant of ``kernel``."""
    _signature(kernel)
    names: set[str] = set()
    ndim: tuple[str, int] | None = None
    for s in kernel.statements:
        if s.name in names:
            _fail(kernel, s, f"duplicate statement name {s.name!r}")
        names.add(s.name)
        n = _statement(kernel, s)
        if ndim is None:
            ndim = (s.name, n)
        elif n != ndim[1]:
            _fail(
                kernel,
                s,
                f"schedule has {n} output dimensions but {ndim[0]}'s has {ndim[1]}: every "
                "schedule must map into the same space",
            )


def _fail(kernel: Kernel, s: Statement | None, msg: str) -> None:
    where = f"{kernel.name}.{s.name} (line {s.line}, `{s.source}`)" if s else kernel.name
    raise IRError(f"IR verifier: {where}: {msg}")


def _signature(kernel: Kernel) -> None:
    if len(set(kernel.sizes)) != len(kernel.sizes):
        _fail(kernel, None, f"duplicate size names {list(kernel.sizes)}")
    seen: set[str] = set()
    for a in (*kernel.args, *kernel.temps):
        if a in kernel.temps and not isinstance(a, TensorArg):
            _fail(kernel, None, f"scratch {a!r} is not a TensorArg")
        if a.name in seen or a.name in kernel.sizes:
            _fail(kernel, None, f"argument name {a.name!r} is used twice (or is a size)")
        seen.add(a.name)
        if a.dtype not in DTYPES:
            _fail(kernel, None, f"argument {a.name!r} has unknown dtype {a.dtype!r}")
        if isinstance(a, TensorArg):
            for d in a.shape:
                ok = (isinstance(d, Int) and d.value > 0) or (
                    isinstance(d, Var) and d.name in kernel.sizes
                )
                if not ok:
                    _fail(kernel, None, f"tensor {a.name!r} has dimension {d} (not a size or int)")
        elif not isinstance(a, ScalarArg):
            _fail(kernel, None, f"argument {a!r} is neither a TensorArg nor a ScalarArg")
    if kernel.bindings:
        bound = dict(kernel.bindings)
        if sorted(bound) != sorted(kernel.sizes):
            _fail(kernel, None, f"bindings {bound} do not bind exactly the sizes {kernel.sizes}")
        bad = {k: v for k, v in bound.items() if not isinstance(v, int) or v <= 0}
        if bad:
            _fail(kernel, None, f"bindings {bad} are not positive ints")


def _statement(kernel: Kernel, s: Statement) -> int:
    iters = list(s.iterators)
    if len(set(iters)) != len(iters):
        _fail(kernel, s, f"duplicate iterators {iters}")
    try:
        name, dims, params = poly.set_text_info(s.domain)
    except Exception as e:  # noqa: BLE001 - isl's parse error, reported with the text
        _fail(kernel, s, f"domain {s.domain!r} is not an isl set: {e}")
    if name != s.name or dims != iters:
        _fail(kernel, s, f"domain tuple {name}{dims} is not {s.name}{iters}: {s.domain!r}")
    if not set(params) <= set(kernel.sizes):
        _fail(kernel, s, f"domain parameters {params} are not among the sizes {kernel.sizes}")
    try:
        mname, mdims, nout, mparams = poly.map_text_info(s.schedule)
    except Exception as e:  # noqa: BLE001
        _fail(kernel, s, f"schedule {s.schedule!r} is not an isl map: {e}")
    if mname != s.name or mdims != iters:
        _fail(kernel, s, f"schedule input {mname}{mdims} is not {s.name}{iters}: {s.schedule!r}")
    if not set(mparams) <= set(kernel.sizes):
        _fail(kernel, s, f"schedule parameters {mparams} are not among the sizes {kernel.sizes}")
    if s.op not in STATEMENT_OPS:
        _fail(kernel, s, f"statement op {s.op!r} is not one of {STATEMENT_OPS}")
    if not isinstance(s.target, Load):
        _fail(kernel, s, f"target {s.target!r} is not a Load")
    scope = set(iters) | set(kernel.sizes)
    if s.micro is not None:  # a BRGEMM call: its fields, not the folded source statement
        _micro(kernel, s, scope)
        return nout
    if s.transpose is not None:  # a tile transpose: its fields
        _transpose(kernel, s, scope)
        return nout
    _load(kernel, s, s.target, scope)
    _expr(kernel, s, s.expr, scope)
    return nout


def _micro(kernel: Kernel, s: Statement, scope: set[str]) -> None:
    mk = s.micro
    assert mk is not None
    if min(mk.m, mk.n, mk.k) < 1 or mk.beta not in (0, 1) or mk.ldc < mk.n:
        _fail(kernel, s, f"BRGEMM block m={mk.m} n={mk.n} k={mk.k} beta={mk.beta} ldc={mk.ldc}")
    if mk.row_group is not None and (
        mk.row_group < 1
        or mk.lda_group is None
        or mk.ldc_group is None
        or (mk.m > mk.row_group and mk.ldc_group < (mk.row_group - 1) * mk.ldc + mk.n)
    ):
        _fail(kernel, s, f"BRGEMM row groups {mk.row_group}/{mk.lda_group}/{mk.ldc_group} overlap")
    if len(mk.a_offsets) != len(mk.b_offsets) or min((*mk.a_offsets, *mk.b_offsets, 0)) < 0:
        _fail(kernel, s, "BRGEMM offset tables differ in length or hold negative offsets")
    roles = [(mk.a, mk.a_origin), (mk.b, mk.b_origin), (mk.c, mk.c_origin)]
    n_in = len(mk.epilogue.operands) if mk.epilogue is not None else 0
    if len(mk.operands) != n_in:
        _fail(
            kernel,
            s,
            f"BRGEMM epilogue reads {n_in} operand(s), the call passes {len(mk.operands)}",
        )
    roles += list(mk.operands)
    if mk.ab_dtype not in ("f32", "bf16") or mk.c_dtype not in ("f32", "bf16"):
        _fail(kernel, s, f"BRGEMM operands of type {mk.ab_dtype!r}, C {mk.c_dtype!r}")
    for i, (tensor, origin) in enumerate(roles):
        t = kernel.arg(tensor) if tensor in {a.name for a in kernel.all_tensors} else None
        # A, B and C as the call says; the epilogue's operands f32
        want = mk.ab_dtype if i < 2 else mk.c_dtype if i == 2 else "f32"
        if not isinstance(t, TensorArg) or t.dtype != want:
            _fail(kernel, s, f"BRGEMM operand {tensor!r} is not a {want} tensor argument")
        unknown = set(int_vars(origin)) - scope
        if unknown:
            _fail(kernel, s, f"BRGEMM origin of {tensor} uses {sorted(unknown)}")
    if mk.alpha_arg is not None and not isinstance(
        next((a for a in kernel.args if a.name == mk.alpha_arg), None), ScalarArg
    ):
        _fail(kernel, s, f"BRGEMM alpha {mk.alpha_arg!r} is not a scalar argument")


def _transpose(kernel: Kernel, s: Statement, scope: set[str]) -> None:
    tr = s.transpose
    assert tr is not None
    if min(tr.rows, tr.cols) < 1 or tr.lds < tr.cols or tr.ldd < tr.rows:
        _fail(kernel, s, f"transpose tile {tr.rows}x{tr.cols} lds={tr.lds} ldd={tr.ldd}")
    if s.micro is not None:
        _fail(kernel, s, "a statement is a BRGEMM call or a transpose, not both")
    for tensor, origin in ((tr.src, tr.src_origin), (tr.dst, tr.dst_origin)):
        t = kernel.arg(tensor) if tensor in {a.name for a in kernel.all_tensors} else None
        if not isinstance(t, TensorArg) or t.dtype != tr.dtype:
            _fail(kernel, s, f"transpose operand {tensor!r} is not a {tr.dtype} tensor")
        unknown = set(int_vars(origin)) - scope
        if unknown:
            _fail(kernel, s, f"transpose origin of {tensor} uses {sorted(unknown)}")


def _load(kernel: Kernel, s: Statement, ld: Load, scope: set[str]) -> None:
    try:
        t = kernel.arg(ld.tensor)
    except KeyError:
        _fail(kernel, s, f"`{ld}` names no argument {ld.tensor!r}")
    if not isinstance(t, TensorArg):
        _fail(kernel, s, f"`{ld}` indexes scalar argument {ld.tensor!r}")
    if len(ld.index) != len(t.shape):
        _fail(
            kernel, s, f"`{ld}` has {len(ld.index)} indices, tensor {t.name!r} rank {len(t.shape)}"
        )
    for e in ld.index:
        _iexpr(kernel, s, e, scope, ld)


def _iexpr(kernel: Kernel, s: Statement, e: IExpr, scope: set[str], ld: Load) -> None:
    if isinstance(e, Int):
        return
    if isinstance(e, Var):
        if e.name not in scope:
            _fail(kernel, s, f"`{ld}` uses {e.name!r}, not an iterator of {s.name} or a size")
        return
    if not isinstance(e, IntOp) or e.op not in INT_OPS:
        _fail(kernel, s, f"`{ld}` has an invalid index node {e!r}")
    if e.op in ("//", "%") and not (isinstance(e.b, Int) and e.b.value > 0):
        _fail(kernel, s, f"`{ld}`: {e.op} by {e.b}, not a positive int constant")
    _iexpr(kernel, s, e.a, scope, ld)
    _iexpr(kernel, s, e.b, scope, ld)


def _expr(kernel: Kernel, s: Statement, e: Expr, scope: set[str]) -> None:
    if isinstance(e, Num):
        return
    if isinstance(e, Arg):
        if not any(isinstance(a, ScalarArg) and a.name == e.name for a in kernel.args):
            _fail(kernel, s, f"scalar read {e.name!r} is not a scalar argument")
    elif isinstance(e, Load):
        _load(kernel, s, e, scope)
    elif isinstance(e, BinOp):
        if e.op not in FLOAT_BINOPS:
            _fail(kernel, s, f"invalid binary op {e.op!r} in `{e}`")
        _expr(kernel, s, e.a, scope)
        _expr(kernel, s, e.b, scope)
    elif isinstance(e, UnOp):
        if e.op not in FLOAT_UNOPS:
            _fail(kernel, s, f"invalid unary op {e.op!r} in `{e}`")
        _expr(kernel, s, e.a, scope)
    else:
        _fail(kernel, s, f"invalid expression node {e!r}")
