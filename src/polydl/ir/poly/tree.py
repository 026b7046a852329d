"""The isl AST of a schedule, returned as the plain loop tree of ir/loops.py."""

from __future__ import annotations

from collections.abc import Mapping

import islpy as isl

from .. import loops as L
from ..nodes import Int, IntOp, Var
from ._base import Set, UnionMap, union
from .dataflow import _maps, squeeze


def ast(sched: UnionMap, ctx: Set, parallel=frozenset()) -> tuple:
    """The isl AST of ``sched`` (within ``ctx``) as a tuple of loop-tree nodes.

    ``parallel`` says which schedule dimensions carry no dependence: a set of dimensions valid
    for every statement, or a mapping statement name -> set. A ``For`` scanning dimension ``d``
    is marked parallel when ``d`` is allowed for every statement it encloses.
    """
    if isinstance(parallel, Mapping):
        allowed = lambda stmt, d: d in parallel.get(stmt, ())  # noqa: E731
    else:
        allowed = lambda stmt, d: d in parallel  # noqa: E731
    # the zero padding of lowered schedules makes no loop but costs isl time: dimensions past
    # the first of those every statement fixes to the same constant are dropped (loops keep
    # their names ``c<d>``, which ``parallel`` refers to)
    ms, _ = squeeze(_maps(sched), tail=True)
    build = isl.AstBuild.from_context(ctx)
    node = build.node_from_schedule_map(union(ms) if ms else sched)
    return _nodes(node, allowed)


def _nodes(node, allowed) -> tuple:
    t = node.get_type()
    if t == isl.ast_node_type.block:
        children = node.block_get_children()
        out: list = []
        for i in range(children.n_ast_node()):
            out.extend(_nodes(children.get_at(i), allowed))
        return tuple(out)
    if t == isl.ast_node_type.for_:
        var = node.for_get_iterator().get_id().get_name()
        dim = int(var[1:]) if var.startswith("c") and var[1:].isdigit() else -1
        inc = node.for_get_inc().get_val().to_python()
        body = _nodes(node.for_get_body(), allowed)
        stmts = {n.stmt for n in L.walk(body) if isinstance(n, L.Call)}
        return (
            L.For(
                var=var,
                dim=dim,
                init=_iexpr(node.for_get_init()),
                cond=_cond(node.for_get_cond()),
                step=inc,
                body=body,
                parallel=bool(stmts) and all(allowed(s, dim) for s in stmts),
            ),
        )
    if t == isl.ast_node_type.if_:
        orelse = _nodes(node.if_get_else_node(), allowed) if node.if_has_else_node() else ()
        return (
            L.If(
                cond=_cond(node.if_get_cond()),
                then=_nodes(node.if_get_then_node(), allowed),
                orelse=orelse,
            ),
        )
    if t == isl.ast_node_type.user:
        e = node.user_get_expr()
        name = e.op_get_arg(0).get_id().get_name()
        args = tuple(_iexpr(e.op_get_arg(i)) for i in range(1, e.op_get_n_arg()))
        return (L.Call(stmt=name, args=args),)
    if t == isl.ast_node_type.mark:
        return _nodes(node.mark_get_node(), allowed)
    raise NotImplementedError(f"isl AST node type {t}")


_OP = isl.ast_expr_op_type


_CMP = {_OP.lt: "<", _OP.le: "<=", _OP.gt: ">", _OP.ge: ">=", _OP.eq: "=="}


_BOOL = {_OP.and_: "and", _OP.and_then: "and", _OP.or_: "or", _OP.or_else: "or"}


_ARITH = {
    _OP.add: "+",
    _OP.sub: "-",
    _OP.mul: "*",
    _OP.div: "//",
    _OP.fdiv_q: "//",
    _OP.pdiv_q: "//",
    _OP.pdiv_r: "%",
    _OP.zdiv_r: "%",
    _OP.min: "min",
    _OP.max: "max",
}


def _iexpr(e):
    t = e.get_type()
    if t == isl.ast_expr_type.int:
        return Int(value=e.get_val().to_python())
    if t == isl.ast_expr_type.id:
        return Var(name=e.get_id().get_name())
    op = e.op_get_type()
    args = [_iexpr(e.op_get_arg(i)) for i in range(e.op_get_n_arg())]
    if op == _OP.minus:
        return IntOp(op="-", a=Int(value=0), b=args[0])
    if op in _ARITH:
        out = args[0]
        for b in args[1:]:
            out = IntOp(op=_ARITH[op], a=out, b=b)
        return out
    raise NotImplementedError(f"isl AST expression {e.to_C_str()}")


def _cond(e):
    op = e.op_get_type()
    if op in _CMP:
        return L.Cmp(op=_CMP[op], a=_iexpr(e.op_get_arg(0)), b=_iexpr(e.op_get_arg(1)))
    if op in _BOOL:
        out = _cond(e.op_get_arg(0))
        for i in range(1, e.op_get_n_arg()):
            out = L.BoolOp(op=_BOOL[op], a=out, b=_cond(e.op_get_arg(i)))
        return out
    raise NotImplementedError(f"isl AST condition {e.to_C_str()}")
