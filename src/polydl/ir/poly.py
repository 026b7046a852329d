"""The only module that imports islpy. It speaks dimension *names*, never positions.

Everything polyhedral the rest of polydl needs goes through here: parsing the IR's isl texts
(domains, schedules) into isl objects with the kernel's size parameters fixed, access relations,
sample points and extents, dataflow (``compute_flow``), lexicographic checks in schedule space,
and the isl AST of a schedule, returned as the plain loop tree of ``ir/loops.py``.

isl contexts are not thread-safe: callers compile under one lock (``pd.compile`` does).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import islpy as isl

from . import loops as L
from .nodes import Int, IntOp, Kernel, Load, Statement, Var

Set = isl.Set
Map = isl.Map
UnionMap = isl.UnionMap
UnionSet = isl.UnionSet

_SET = isl.dim_type.set
_IN = isl.dim_type.in_
_OUT = isl.dim_type.out
_PARAM = isl.dim_type.param


# ---------------------------------------------------------------- texts


def iexpr(e) -> str:
    """isl text of an index expression (``//`` is ``floor(a/c)``, ``%`` is ``a mod c``)."""
    if isinstance(e, Int):
        return str(e.value)
    if isinstance(e, Var):
        return e.name
    a, b = iexpr(e.a), iexpr(e.b)
    match e.op:
        case "+" | "-" | "*":
            return f"({a} {e.op} {b})"
        case "//":
            return f"floor(({a})/({b}))"
        case "%":
            return f"(({a}) mod ({b}))"
        case "min" | "max":
            return f"{e.op}({a}, {b})"
    raise ValueError(f"unknown integer op {e.op!r}")


def params_text(sizes: Iterable[str]) -> str:
    return "[" + ", ".join(sizes) + "]"


def context(kernel: Kernel) -> Set:
    """The parameter context: sizes fixed to their bindings, or only positive if unbound."""
    ps = params_text(kernel.sizes)
    if kernel.bindings:
        cons = " and ".join(f"{n} = {v}" for n, v in kernel.bindings)
    else:
        cons = " and ".join(f"{n} > 0" for n in kernel.sizes)
    return Set(f"{ps} -> {{ : {cons} }}" if cons else "{ : }")


def _with_context(obj, kernel: Kernel):
    ctx = context(kernel)
    obj = obj.align_params(ctx.get_space())
    return obj.intersect_params(ctx)


# ---------------------------------------------------------------- statements and accesses


def domain(kernel: Kernel, stmt: Statement) -> Set:
    """The statement's iteration domain, sizes fixed as the kernel binds them."""
    return _with_context(Set(stmt.domain), kernel)


def schedule(kernel: Kernel, stmt: Statement) -> Map:
    """The statement's schedule restricted to its domain."""
    return _with_context(Map(stmt.schedule), kernel).intersect_domain(domain(kernel, stmt))


def access(kernel: Kernel, stmt: Statement, load: Load) -> Map:
    """``{ S[iters] -> T[index] }`` restricted to the statement's domain."""
    idx = ", ".join(iexpr(e) for e in load.index)
    text = (
        f"{params_text(kernel.sizes)} -> {{ {stmt.name}[{', '.join(stmt.iterators)}] -> "
        f"{load.tensor}[{idx}] }}"
    )
    return _with_context(Map(text), kernel).intersect_domain(domain(kernel, stmt))


def tensor_box(kernel: Kernel, tensor: str) -> Set:
    """``{ T[d0, ...] : 0 <= d0 < shape0 and ... }``: the tensor's valid indices."""
    shape = kernel.arg(tensor).shape  # type: ignore[union-attr]
    dims = [f"d{i}" for i in range(len(shape))]
    cons = " and ".join(f"0 <= {d} < {iexpr(s)}" for d, s in zip(dims, shape, strict=True))
    text = f"{params_text(kernel.sizes)} -> {{ {tensor}[{', '.join(dims)}] : {cons or '0 = 0'} }}"
    return _with_context(Set(text), kernel)


def union(objs: Iterable) -> UnionMap:
    """The union of isl maps (an empty union map if there are none)."""
    out = None
    for o in objs:
        u = UnionMap.from_map(o) if isinstance(o, Map) else o
        out = u if out is None else out.union(u)
    return out if out is not None else UnionMap("{ }")


def union_set(objs: Iterable) -> UnionSet:
    out = None
    for o in objs:
        u = UnionSet.from_set(o) if isinstance(o, Set) else o
        out = u if out is None else out.union(u)
    return out if out is not None else UnionSet("{ }")


# ---------------------------------------------------------------- points, names, extents


def names(obj, kind: str = "set") -> list[str]:
    """Dimension names of a set (``kind="set"``) or of a map's ``"in"``/``"out"`` side."""
    dt = {"set": _SET, "in": _IN, "out": _OUT, "param": _PARAM}[kind]
    return [obj.get_dim_name(dt, i) or f"_{i}" for i in range(obj.dim(dt))]


def tuple_name(obj, kind: str = "set") -> str | None:
    """The tuple name of a set, or of a map's ``"in"``/``"out"`` side."""
    if kind == "set":
        return obj.get_tuple_name()
    dt = {"in": _IN, "out": _OUT}[kind]
    return obj.get_tuple_name(dt)


def sample(s: Set) -> dict[str, int] | None:
    """One point of ``s`` as ``{dim name: value}``, or None if ``s`` is empty."""
    if s.is_empty():
        return None
    pt = s.sample_point()
    return {
        n: pt.get_coordinate_val(_SET, i).to_python() for i, n in enumerate(names(s, "set"))
    }


def sample_pair(m: Map) -> tuple[dict[str, int], dict[str, int]] | None:
    """One pair of ``m`` as two ``{dim name: value}`` dicts (input side, output side)."""
    if m.is_empty():
        return None
    n_in = m.dim(_IN)
    flat = m.wrap().sample_point()
    vals = [flat.get_coordinate_val(_SET, i).to_python() for i in range(flat.get_space().dim(_SET))]
    return dict(zip(names(m, "in"), vals[:n_in], strict=True)), dict(
        zip(names(m, "out"), vals[n_in:], strict=True)
    )


def extent(s: Set, dim: str) -> tuple[int, int] | None:
    """Smallest and largest value of dimension ``dim`` over ``s`` (parameters must be fixed).

    None if ``s`` is empty; exact for dense (convex, gap-free) footprints.
    """
    if s.is_empty():
        return None
    i = names(s, "set").index(dim)
    lo = s.dim_min(i)
    hi = s.dim_max(i)
    return _pw_aff_const(lo, "min", dim), _pw_aff_const(hi, "max", dim)


def _pw_aff_const(pa, which: str, dim: str) -> int:
    vals: list[int] = []

    def piece(_set, aff):
        if not aff.is_cst():
            raise ValueError(f"{which} of {dim} depends on unbound parameters: bind the sizes")
        vals.append(aff.get_constant_val().to_python())

    pa.foreach_piece(piece)
    if not vals:
        raise ValueError(f"{which} of {dim} is unbounded")
    return min(vals) if which == "min" else max(vals)


def box_size(s: Set) -> int:
    """Number of points of the bounding box of ``s`` (sizes fixed): a footprint's extent."""
    total = 1
    for d in names(s, "set"):
        ext = extent(s, d)
        if ext is None:
            return 0
        total *= ext[1] - ext[0] + 1
    return total


def count(s: Set) -> int:
    """Exact number of points by enumeration (small, parameter-free sets only)."""
    if s.dim(_PARAM):
        s = s.project_out(_PARAM, 0, s.dim(_PARAM))
    return s.count_val().to_python()


# ---------------------------------------------------------------- dataflow and order


def flow(
    sink: UnionMap, must_source: UnionMap, may_source: UnionMap, sched: UnionMap
) -> tuple[UnionMap, UnionMap]:
    """isl ``compute_flow``: (must dependences, may dependences) ``{ source -> sink }``."""
    info = isl.UnionAccessInfo.from_sink(sink)
    info = info.set_must_source(must_source).set_may_source(may_source)
    info = info.set_schedule_map(sched)
    res = info.compute_flow()
    return res.get_must_dependence(), res.get_may_dependence()


def in_schedule_space(deps: UnionMap, sched: UnionMap) -> UnionMap:
    """Dependences ``{ S[i] -> T[j] }`` as pairs of schedule points ``{ [t] -> [t'] }``."""
    return deps.apply_domain(sched).apply_range(sched)


def not_after(rel: UnionMap) -> UnionMap:
    """The pairs ``t -> t'`` of a schedule-space relation where ``t'`` is not after ``t``.

    For dependences mapped into a new schedule, these are the violated ones.
    """
    out = UnionMap("{ }")
    for m in _maps(rel):
        ge = Map.lex_ge(m.get_space().domain())
        ge = ge.align_params(m.get_space())
        out = out.union(UnionMap.from_map(m.intersect(ge)))
    return out


def _maps(u: UnionMap) -> list[Map]:
    out: list[Map] = []
    u.foreach_map(out.append)
    return out


def maps(u: UnionMap) -> list[Map]:
    """The maps of a union map (one per pair of tuple names)."""
    return _maps(u)


def carried_dims(rel: UnionMap, ndim: int) -> set[int]:
    """Schedule dimensions that carry some pair of ``rel`` (pairs already in schedule space)."""
    carried: set[int] = set()
    for m in _maps(rel):
        for d in range(ndim):
            eq = m
            for e in range(d):
                eq = eq.equate(_IN, e, _OUT, e)
            if eq.is_empty():
                break
            neq = eq.order_lt(_IN, d, _OUT, d).union(eq.order_gt(_IN, d, _OUT, d))
            if not neq.is_empty():
                carried.add(d)
    return carried


# ---------------------------------------------------------------- AST


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
    build = isl.AstBuild.from_context(ctx)
    node = build.node_from_schedule_map(sched)
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


def fix_names(sizes: Mapping[str, int]) -> str:
    return " and ".join(f"{k} = {v}" for k, v in sizes.items())


# ---- lead: shapes of domains (contraction recognition)


def schedule_ndim(kernel: Kernel, s: Statement) -> int:
    """Number of output dimensions of the statement's schedule."""
    return Map(s.schedule).dim(_OUT)


def schedule_dim_extent(kernel: Kernel, s: Statement, i: int) -> tuple[int, int] | None:
    """Smallest and largest value of schedule output dimension ``i`` over the domain."""
    rng = schedule(kernel, s).range()
    rng = rng.set_dim_name(_SET, i, "_t")
    return extent(rng, "_t")


def is_box(dom: Set, ext: Mapping[str, tuple[int, int]]) -> bool:
    """Whether ``dom`` is exactly the box of the given inclusive extents."""
    cons = " and ".join(f"{lo} <= {v} <= {hi}" for v, (lo, hi) in ext.items()) or "0 = 0"
    name = tuple_name(dom) or ""
    box = Set(f"{{ {name}[{', '.join(names(dom))}] : {cons} }}")
    box = box.align_params(dom.get_space()).intersect_params(dom.params())
    return dom.is_equal(box)


def is_projection(kernel: Kernel, s: Statement, red: Statement) -> bool:
    """Whether ``s``'s domain is ``red``'s domain projected onto ``s``'s iterators."""
    m = Map(
        f"{params_text(kernel.sizes)} -> {{ {red.name}[{', '.join(red.iterators)}] -> "
        f"{s.name}[{', '.join(s.iterators)}] }}"
    )
    proj = domain(kernel, red).apply(_with_context(m, kernel))
    return proj.is_equal(domain(kernel, s))

