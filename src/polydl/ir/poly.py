"""The only module that imports islpy. It speaks dimension *names*, never positions.

Everything polyhedral the rest of polydl needs goes through here: parsing the IR's isl texts
(domains, schedules) into isl objects with the kernel's size parameters fixed, access relations,
sample points and extents, dataflow (``compute_flow``), lexicographic checks in schedule space,
and the isl AST of a schedule, returned as the plain loop tree of ``ir/loops.py``.

isl contexts are not thread-safe: callers compile under one lock (``pd.compile`` does).
"""

from __future__ import annotations

import functools
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
    """isl text of an index expression (``//`` is ``floor(a/c)``, ``%`` is ``a mod c``).

    The divisor of ``//`` and ``%`` is a positive int constant (the DSL guarantees it).
    """
    if isinstance(e, Int):
        return str(e.value)
    if isinstance(e, Var):
        return e.name
    a, b = iexpr(e.a), iexpr(e.b)
    match e.op:
        case "+" | "-" | "*":
            return f"({a} {e.op} {b})"
        case "//":  # isl wants a bare integer divisor
            return f"floor(({a})/{b})"
        case "%":
            return f"(({a}) mod {b})"
        case "min" | "max":
            return f"{e.op}({a}, {b})"
    raise ValueError(f"unknown integer op {e.op!r}")


def params_text(sizes: Iterable[str]) -> str:
    return "[" + ", ".join(sizes) + "]"


def context(kernel: Kernel) -> Set:
    """The parameter context: sizes fixed to their bindings, or only positive if unbound."""
    return _context(kernel.sizes, kernel.bindings)


@functools.lru_cache(maxsize=256)
def _context(sizes: tuple[str, ...], bindings: tuple[tuple[str, int], ...]) -> Set:
    ps = params_text(sizes)
    if bindings:
        cons = " and ".join(f"{n} = {v}" for n, v in bindings)
    else:
        cons = " and ".join(f"{n} > 0" for n in sizes)
    return Set(f"{ps} -> {{ : {cons} }}" if cons else "{ : }")


def _with_context(obj, kernel: Kernel):
    ctx = context(kernel)
    obj = obj.align_params(ctx.get_space())
    return obj.intersect_params(ctx)


# ---------------------------------------------------------------- statements and accesses


def domain(kernel: Kernel, stmt: Statement) -> Set:
    """The statement's iteration domain, sizes fixed as the kernel binds them."""
    return _domain(kernel.sizes, kernel.bindings, stmt.domain)


def domain_text(sizes: tuple[str, ...], bindings: tuple[tuple[str, int], ...], text: str) -> Set:
    """The domain ``text`` with sizes fixed as ``bindings`` (cached by text)."""
    return _domain(sizes, bindings, text)


@functools.lru_cache(maxsize=4096)
def _domain(sizes, bindings, text: str) -> Set:
    ctx = _context(sizes, bindings)
    return Set(text).align_params(ctx.get_space()).intersect_params(ctx)


def schedule(kernel: Kernel, stmt: Statement) -> Map:
    """The statement's schedule restricted to its domain."""
    return _schedule_on(kernel.sizes, kernel.bindings, stmt.schedule, stmt.domain)


def access(kernel: Kernel, stmt: Statement, load: Load) -> Map:
    """``{ S[iters] -> T[index] }`` restricted to the statement's domain."""
    idx = ", ".join(iexpr(e) for e in load.index)
    text = (
        f"{params_text(kernel.sizes)} -> {{ {stmt.name}[{', '.join(stmt.iterators)}] -> "
        f"{load.tensor}[{idx}] }}"
    )
    return _schedule_on(kernel.sizes, kernel.bindings, text, stmt.domain)


def _access_on(kernel: Kernel, stmt: Statement, load: Load, points: Set) -> Map:
    """``{ S[iters] -> T[index] }`` on ``points`` (a set of ``stmt``'s instances)."""
    idx = ", ".join(iexpr(e) for e in load.index)
    text = (
        f"{params_text(kernel.sizes)} -> {{ {stmt.name}[{', '.join(stmt.iterators)}] -> "
        f"{load.tensor}[{idx}] }}"
    )
    m = _with_context(Map(text), kernel)
    return m.intersect_domain(points.align_params(m.get_space()))


def in_bounds(kernel: Kernel, stmt: Statement, load: Load, points: Set) -> Set:
    """The instances among ``points`` whose ``load`` lies inside its tensor."""
    m = _access_on(kernel, stmt, load, points)
    return m.intersect_range(tensor_box(kernel, load.tensor)).domain()


def in_bounds_on(kernel: Kernel, stmt: Statement, load: Load, points: Set) -> bool:
    """Whether ``load`` stays inside its tensor on every instance of ``points``."""
    return in_bounds(kernel, stmt, load, points).is_equal(points)


def is_equal(a: Set, b: Set) -> bool:
    return a.is_equal(b.align_params(a.get_space()))


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
    return {n: pt.get_coordinate_val(_SET, i).to_python() for i, n in enumerate(names(s, "set"))}


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
    return _dim_bounds(s, names(s, "set").index(dim), dim)


def _dim_bounds(s: Set, i: int, dim: str) -> tuple[int, int] | None:
    if _params_fixed(s):  # two integer optima, much cheaper than the piecewise bounds
        lo, hi = s.dim_min_val(i), s.dim_max_val(i)
        if lo.is_int() and hi.is_int():
            return lo.to_python(), hi.to_python()
    if s.is_empty():
        return None
    return _pw_aff_const(s.dim_min(i), "min", dim), _pw_aff_const(s.dim_max(i), "max", dim)


def _params_fixed(s: Set) -> bool:
    """Whether every parameter of ``s`` is fixed to a value by an equality (sizes bound)."""
    return all(not s.plain_get_val_if_fixed(_PARAM, i).is_nan() for i in range(s.dim(_PARAM)))


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
    """isl ``compute_flow``: (must dependences, may dependences) ``{ source -> sink }``.

    Schedule dimensions that every statement fixes to one and the same constant (the padding
    and the constant separators of 2d+1 schedules) order nothing and are dropped first: isl's
    cost grows with the number of schedule dimensions."""
    info = isl.UnionAccessInfo.from_sink(sink)
    info = info.set_must_source(must_source).set_may_source(may_source)
    info = info.set_schedule_map(union(squeeze(_maps(sched))[0]))
    res = info.compute_flow()
    return res.get_must_dependence(), res.get_may_dependence()


def _fixed_out(m: Map, i: int) -> int | None:
    v = m.plain_get_val_if_fixed(_OUT, i)
    return None if v.is_nan() else v.to_python()


def squeeze(ms: list[Map], *, tail: bool = False) -> tuple[list[Map], list[int]]:
    """The schedule maps ``ms`` without the output dimensions that all of them fix to one and
    the same constant (such a dimension orders no pair of points), and the original positions
    of the dimensions kept. ``tail``: only those at the end, after the first of them (isl's AST
    generator may separate a domain's pieces at that one). Maps of different output dimension
    counts are returned as given."""
    counts = {m.dim(_OUT) for m in ms}
    if len(counts) != 1:
        return ms, list(range(max(counts, default=0)))
    n = counts.pop()
    common = []
    for i in reversed(range(n)) if tail else range(n):
        vals = {_fixed_out(m, i) for m in ms}
        if len(vals) == 1 and None not in vals:
            common.append(i)
        elif tail:
            break
    drop = sorted(common)[1:] if tail else common
    if not drop:
        return ms, list(range(n))
    out = []
    for m in ms:
        for i in sorted(drop, reverse=True):
            m = m.project_out(_OUT, i, 1)
        out.append(m)
    return out, [i for i in range(n) if i not in drop]


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


def fix_names(sizes: Mapping[str, int]) -> str:
    return " and ".join(f"{k} = {v}" for k, v in sizes.items())


# ---- lead: shapes of domains (contraction recognition)


@functools.lru_cache(maxsize=4096)
def pad_schedule(text: str, ndim: int) -> str:
    """A schedule map text with zero output dimensions appended up to ``ndim``."""
    m = Map(text)
    extra = ndim - m.dim(_OUT)
    if extra <= 0:
        return text
    m = m.add_dims(_OUT, extra)
    for i in range(ndim - extra, ndim):
        m = m.fix_val(_OUT, i, 0)
    return m.to_str()


def schedule_ndim(kernel: Kernel, s: Statement) -> int:
    """Number of output dimensions of the statement's schedule."""
    return map_ndim(s.schedule)


def schedule_dim_extent(kernel: Kernel, s: Statement, i: int) -> tuple[int, int] | None:
    """Smallest and largest value of schedule output dimension ``i`` over the domain."""
    return _schedule_dim_extent(kernel.sizes, kernel.bindings, s.schedule, s.domain, i)


@functools.lru_cache(maxsize=4096)
def _schedule_dim_extent(sizes, bindings, sched: str, dom: str, i: int):
    ctx = _context(sizes, bindings)
    dset = _domain(sizes, bindings, dom)
    m = Map(sched).align_params(ctx.get_space()).intersect_params(ctx)
    rng = m.intersect_domain(dset).range()
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


# ---- optimiser helpers


def restrict(s: Set, box: Mapping[str, tuple[int, int]]) -> Set:
    """``s`` with each named dimension ``v`` of ``box`` limited to ``lo <= v < hi``."""
    if not box:
        return s
    dims = names(s, "set")
    cons = " and ".join(f"{lo} <= {v} < {hi}" for v, (lo, hi) in box.items())
    tname = tuple_name(s) or ""
    params = names(s, "param")
    text = f"{params_text(params)} -> {{ {tname}[{', '.join(dims)}] : {cons} }}"
    return s.intersect(Set(text).align_params(s.get_space()))


def coupled(s: Set) -> list[frozenset[str]]:
    """Dimensions of ``s`` grouped by the constraints linking them (a partition of the names).

    Two dimensions are in one group when some constraint of ``s`` (or an integer division it
    uses) involves both; a box is all singletons.
    """
    dims = names(s, "set")
    parent = {d: d for d in dims}

    def find(d: str) -> str:
        while parent[d] != d:
            parent[d] = parent[parent[d]]
            d = parent[d]
        return d

    def join(group: set[str]) -> None:
        g = sorted(group)
        for d in g[1:]:
            parent[find(d)] = find(g[0])

    for bs in s.get_basic_sets():
        n_div = bs.dim(isl.dim_type.div)
        div_dims = []
        for j in range(n_div):
            aff = bs.get_div(j)
            div_dims.append(
                {dims[i] for i in range(len(dims)) if not aff.get_coefficient_val(_IN, i).is_zero()}
            )
        for c in bs.get_constraints():
            used = {
                dims[i] for i in range(len(dims)) if not c.get_coefficient_val(_SET, i).is_zero()
            }
            for j in range(n_div):
                if not c.get_coefficient_val(isl.dim_type.div, j).is_zero():
                    used |= set().union(*div_dims) if div_dims else set()
            if len(used) > 1:
                join(used)
    groups: dict[str, set[str]] = {}
    for d in dims:
        groups.setdefault(find(d), set()).add(d)
    return [frozenset(g) for g in groups.values()]


def image(m: Map, points: Set) -> Set:
    """The image of ``points`` (a subset of ``m``'s domain) under ``m``."""
    return m.intersect_domain(points).range()


def footprint_size(images: Iterable[Set]) -> int:
    """Points of the union of ``images`` (one tensor's footprints), counted by extents.

    One image counts its bounding box (``dim_min``/``dim_max``: exact for dense footprints).
    Several are unioned, split into disjoint pieces, and each piece counts its bounding box, so
    overlapping reads of one tensor are not counted twice.
    """
    sets = [s for s in images if not s.is_empty()]
    if not sets:
        return 0
    if len(sets) == 1:
        return box_size(sets[0])
    u = sets[0]
    for s in sets[1:]:
        u = u.union(s)
    u = u.coalesce()
    if u.n_basic_set() == 1:
        return box_size(u)
    return sum(box_size(Set.from_basic_set(b)) for b in u.make_disjoint().get_basic_sets())


def output_dims(m: Map) -> list[Map]:
    """``m`` split by output dimension: for each, ``m`` with only that output dimension."""
    n = m.dim(_OUT)
    return [m.project_out(_OUT, d + 1, n - d - 1).project_out(_OUT, 0, d) for d in range(n)]


def range_extent(m: Map, points: Set) -> tuple[int, int] | None:
    """Smallest and largest value of ``m``'s single output dimension over ``points``."""
    return _dim_bounds(m.intersect_domain(points).range(), 0, "_0")


def embed_schedule(text: str, prefix: Iterable[int], ndim: int) -> str:
    """Schedule map ``text`` with the constant dimensions ``prefix`` in front and zeros after,
    to ``ndim`` output dimensions (so that several statements' schedules can be compared)."""
    m = Map(text)
    n = m.dim(_OUT)
    pre = [str(int(c)) for c in prefix]
    if len(pre) + n > ndim:
        raise ValueError(f"schedule with {n} dimensions does not fit {ndim} after {pre}")
    outs = [f"o{i}" for i in range(n)]
    dims = pre + outs + ["0"] * (ndim - len(pre) - n)
    emb = Map(f"{{ [{', '.join(outs)}] -> [{', '.join(dims)}] }}").align_params(m.get_space())
    return str(m.apply_range(emb))


@functools.lru_cache(maxsize=4096)
def map_ndim(text: str) -> int:
    """Number of output dimensions of the map ``text``."""
    return Map(text).dim(_OUT)


def keeps_equal(rel_text: str, dim: str) -> bool:
    """Whether every pair of the self-relation ``{ S[..] -> S[..] }`` has equal ``dim``."""
    m = Map(rel_text)
    i = names(m, "in").index(dim)
    return m.order_lt(_IN, i, _OUT, i).is_empty() and m.order_gt(_IN, i, _OUT, i).is_empty()


# ---- front end / analysis helpers (dsl/parse, analysis/bounds, analysis/deps, ir/verify)


def simplify_set_text(text: str) -> str:
    """The isl text of a set, coalesced (a shorter equivalent; dimension names kept)."""
    try:
        return Set(text).coalesce().to_str()
    except isl.Error as e:
        raise ValueError(f"isl cannot parse {text!r}: {e}") from None


def set_text_info(text: str) -> tuple[str | None, list[str], list[str]]:
    """(tuple name, dimension names, parameter names) of an isl set text (parses it)."""
    s = Set(text)
    return s.get_tuple_name(), names(s, "set"), names(s, "param")


def map_text_info(text: str) -> tuple[str | None, list[str], int, list[str]]:
    """(input tuple name, input dimension names, output dimension count, parameter names)."""
    m = Map(text)
    return m.get_tuple_name(_IN), names(m, "in"), m.dim(_OUT), names(m, "param")


def outside(kernel: Kernel, stmt: Statement, load: Load) -> tuple[dict, dict] | None:
    """One (iteration, index) pair of the access ``load`` that leaves its tensor, or None."""
    acc = access_map(kernel, stmt, load)
    bad = acc.subtract_range(tensor_box(kernel, load.tensor))
    return sample_pair(bad)


def schedule_from_text(kernel: Kernel, stmt: Statement, text: str) -> Map:
    """A proposed schedule text for ``stmt``, restricted to its domain (sizes as bound)."""
    m = _PIECEWISE.get(text)
    if m is not None:  # printed by piecewise_schedule a moment ago
        return _with_context(m, kernel).intersect_domain(domain(kernel, stmt))
    return _schedule_on(kernel.sizes, kernel.bindings, text, stmt.domain)


@functools.lru_cache(maxsize=4096)
def _schedule_on(sizes, bindings, text: str, dom: str) -> Map:
    """The map ``text`` (a schedule or an access) with sizes fixed, on the domain ``dom``."""
    ctx = _context(sizes, bindings)
    m = Map(text).align_params(ctx.get_space()).intersect_params(ctx)
    return m.intersect_domain(_domain(sizes, bindings, dom))


def order_violations(dep: Map, src_sched: Map, sink_sched: Map) -> Map:
    """The pairs of ``dep`` (``{ S[i] -> T[j] }``) whose sink is not scheduled after the source."""
    # usually there are none: find that out in schedule space, where the dimensions both
    # schedules fix to the same constant are dropped (cheaper than the pairs' own space)
    (src, snk), _ = squeeze([src_sched, sink_sched])
    pairs = dep.apply_domain(src).apply_range(snk)
    if pairs.intersect(Map.lex_ge(pairs.get_space().domain())).is_empty():
        return Map.empty(dep.get_space())
    ge = Map.lex_ge(src_sched.get_space().range()).align_params(src_sched.get_space())
    order = src_sched.apply_range(ge).apply_range(sink_sched.reverse())
    return dep.intersect(order)


def is_empty(obj) -> bool:
    return obj.is_empty()


def to_text(obj) -> str:
    return obj.to_str()


# Aliases kept for the front end and analyses: ``iexpr`` and ``access`` handle ``//``, ``%``.
isl_iexpr = iexpr
access_map = access


# ---- index-set splitting (transform/split.py)


def box_set(like: Set, box: Mapping[str, tuple[int, int]]) -> Set:
    """The box of inclusive extents ``box`` (every dimension of ``like``) in ``like``'s space."""
    cons = " and ".join(f"{lo} <= {v} <= {hi}" for v, (lo, hi) in box.items()) or "0 = 0"
    text = f"{{ {tuple_name(like) or ''}[{', '.join(names(like))}] : {cons} }}"
    return Set(text).align_params(like.get_space()).intersect_params(like.params())


def project_onto(s: Set, keep: Iterable[str]) -> Set:
    """``s`` projected onto the dimensions named in ``keep`` (their order kept, tuple name too)."""
    keep = set(keep)
    out = s
    for i, d in reversed(list(enumerate(names(s)))):
        if d not in keep:
            out = out.project_out(_SET, i, 1)
    return out.set_tuple_name(tuple_name(s)) if tuple_name(s) else out


def full_slices(dom: Set, box: Mapping[str, tuple[int, int]], keep: Iterable[str]) -> Set:
    """The points of the ``keep`` dimensions whose whole slice of the bounding ``box`` of ``dom``
    lies in ``dom`` (no guard cuts it): proj(box) minus proj(box minus dom)."""
    whole = box_set(dom, box)
    return project_onto(whole, keep).subtract(project_onto(whole.subtract(dom), keep))


def subtract(a: Set, b: Set) -> Set:
    return a.subtract(b)


def unite(a: Set, b: Set) -> Set:
    return a.union(b)


def is_disjoint(a: Set, b: Set) -> bool:
    return a.is_disjoint(b)


def writers(kernel: Kernel, stmt: Statement, elements: Set) -> Set:
    """The instances of ``stmt`` whose target element lies in ``elements``."""
    return access(kernel, stmt, stmt.target).intersect_range(elements).domain()


def named_text(s: Set, name: str) -> str:
    """The isl text of ``s`` (coalesced) with its tuple named ``name``."""
    return s.set_tuple_name(name).coalesce().to_str()


@functools.lru_cache(maxsize=4096)
def placed_schedule(text: str, name: str, first: int) -> str:
    """Schedule map ``text`` with its input tuple named ``name`` and output dimension 0 (the
    top-level position of the statement's nest) replaced by the constant ``first``."""
    m = Map(text).set_tuple_name(_IN, name).project_out(_OUT, 0, 1)
    return _printed(_PLACED, m.insert_dims(_OUT, 0, 1).fix_val(_OUT, 0, first))


# Maps whose text was just printed here and that the checks read back (parsing costs isl time):
# placed schedules (read by piecewise_schedule) and piecewise ones (read by check_schedule).
# Only the dependence checks read them, never the AST generator.
_PLACED: dict[str, Map] = {}
_PIECEWISE: dict[str, Map] = {}


def _printed(kept: dict[str, Map], m: Map) -> str:
    text = m.to_str()
    if len(kept) >= 4096:
        kept.clear()
    kept[text] = m
    return text


def piecewise_schedule(pieces: Iterable[tuple[Set, str]]) -> str:
    """One schedule map text from the (domain piece, schedule text) pairs of one statement."""
    out = None
    for dom, text in pieces:
        m = _PLACED.get(text)
        m = (Map(text) if m is None else m).align_params(dom.get_space())
        m = m.intersect_domain(dom.align_params(m.get_space()))
        out = m if out is None else out.union(m)
    if out is None:
        raise ValueError("a piecewise schedule needs at least one piece")
    return _printed(_PIECEWISE, out.coalesce())


@functools.lru_cache(maxsize=4096)
def fuse_dims(text: str, outer: str, inner: str, extent: int, fused: str) -> str:
    """A set text, or a map text's domain, re-indexed: the dimensions ``outer`` and ``inner``
    (``0 <= inner < extent`` on every point) become one dimension ``fused = extent*outer +
    inner`` at the place of ``outer`` (loop coalescing; the points themselves are unchanged)."""
    is_map = "->" in text.split("{", 1)[1]
    obj = Map(text) if is_map else Set(text)
    dims = names(obj, "in" if is_map else "set")
    name = tuple_name(obj, "in" if is_map else "set") or ""
    new = [fused if d == outer else d for d in dims if d != inner]
    fuse = Map(
        f"{{ {name}[{', '.join(dims)}] -> {name}[{', '.join(new)}] : "
        f"{fused} = {extent}*{outer} + {inner} and 0 <= {inner} < {extent} }}"
    ).align_params(obj.get_space())
    out = obj.apply_domain(fuse) if is_map else obj.apply(fuse)
    for i, d in enumerate(new):
        out = out.set_dim_name(_IN if is_map else _SET, i, d)
    return out.coalesce().to_str()
