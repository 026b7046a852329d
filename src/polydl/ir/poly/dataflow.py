"""Dataflow and order: compute_flow dependences, squeezed schedule spaces, the lexicographic checks of legality and carried dimensions."""

from __future__ import annotations

import islpy as isl

from ._base import _IN, _OUT, Map, UnionMap, names, union


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


def keeps_equal(rel_text: str, dim: str) -> bool:
    """Whether every pair of the self-relation ``{ S[..] -> S[..] }`` has equal ``dim``."""
    m = Map(rel_text)
    i = names(m, "in").index(dim)
    return m.order_lt(_IN, i, _OUT, i).is_empty() and m.order_gt(_IN, i, _OUT, i).is_empty()


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
