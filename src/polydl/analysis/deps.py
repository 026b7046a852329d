"""Dependences (RAW, WAR, WAW), reductions, legality of a schedule and parallel dimensions.

Dependences are computed per tensor with isl's ``compute_flow`` (``poly.flow``) on the
statements' schedules:

- RAW: sinks are the reads, sources the writes;
- WAR: sinks are the writes, (may) sources the reads;
- WAW: sinks are the writes, sources the writes.

``dependences(kernel)`` gives exact dataflow (a later write kills an earlier one);
``dependences(kernel, memory=True)`` every ordered pair touching the same element, which is what
legality and parallelism are checked against (it stays correct when reduction dependences are
dropped, since every pair with the init and epilogue statements is kept directly).

A *reduction* statement updates ``T[f(i)]`` with ``+=``, ``-=``, ``*=`` or ``T[x] = T[x] + e``
(``*``, ``max``, ``min``; ``T[x] - e``) where ``e`` reads no element of ``T``. Its self-dependences
on ``T`` are reduction dependences: :func:`check_schedule` may ignore them (reassociation is
allowed), :func:`parallel_dims` never does (they forbid running the loop in parallel).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import DependenceError, where
from ..ir import poly
from ..ir.nodes import BinOp, Expr, Kernel, Load, Statement, loads

KINDS = ("RAW", "WAR", "WAW")


@dataclass(frozen=True, kw_only=True)
class Dep:
    """Instances of ``sink`` that must run after instances of ``source`` (``relation_text``)."""

    source: str  # statement name
    sink: str
    kind: str  # "RAW" | "WAR" | "WAW"
    tensor: str
    relation_text: str  # isl map text { S[i] -> T[j] }
    reduction: bool  # a self-dependence of a reduction statement on its reduced tensor


@dataclass(frozen=True, kw_only=True)
class Dependences:
    raw: tuple[Dep, ...]
    war: tuple[Dep, ...]
    waw: tuple[Dep, ...]

    @property
    def all(self) -> tuple[Dep, ...]:
        return (*self.raw, *self.war, *self.waw)


def reduction_tensor(stmt: Statement) -> str | None:
    """The tensor ``stmt`` reduces into, or None if it is not a reduction statement."""
    t = stmt.target
    if stmt.op in ("+=", "-=", "*=", "/="):  # x / a / b = x / b / a, up to rounding
        return None if _reads(stmt.expr, t.tensor) else t.tensor
    e = stmt.expr
    if stmt.op == "=" and isinstance(e, BinOp) and e.op in ("+", "*", "max", "min", "-"):
        if e.a == t and not _reads(e.b, t.tensor):
            return t.tensor
        if e.op != "-" and e.b == t and not _reads(e.a, t.tensor):
            return t.tensor
    return None


def _reads(e: Expr, tensor: str) -> bool:
    return any(ld.tensor == tensor for ld in loads(e))


def dependences(kernel: Kernel, *, memory: bool = False) -> Dependences:
    """Every dependence of ``kernel`` under its current schedules (see the module doc)."""
    out: dict[str, list[Dep]] = {k: [] for k in KINDS}
    for dep, _ in _dependences(kernel, memory=memory):
        out[dep.kind].append(dep)
    return Dependences(raw=tuple(out["RAW"]), war=tuple(out["WAR"]), waw=tuple(out["WAW"]))


@functools.lru_cache(maxsize=64)
def _dependences(kernel: Kernel, *, memory: bool) -> tuple[tuple[Dep, poly.Map], ...]:
    """(dependence, its isl map) pairs; cached per kernel (kernels are immutable)."""
    stmts = {s.name: s for s in kernel.statements}
    sched = poly.union(poly.schedule(kernel, s) for s in kernel.statements)
    empty = poly.union([])
    result: list[tuple[Dep, poly.Map]] = []
    tensors = dict.fromkeys(s.target.tensor for s in kernel.statements)
    for t in tensors:
        writes = poly.union(
            poly.access_map(kernel, s, s.target) for s in kernel.statements if s.target.tensor == t
        )
        reads = poly.union(
            poly.access_map(kernel, s, ld)
            for s in kernel.statements
            for ld in dict.fromkeys(s.reads)
            if ld.tensor == t
        )
        cases = (
            ("RAW", reads, writes),  # sink, source
            ("WAR", writes, None),
            ("WAW", writes, writes),
        )
        for kind, sink, source in cases:
            if kind == "WAR":
                _, rel = poly.flow(sink, empty, reads, sched)
            elif memory:
                _, rel = poly.flow(sink, empty, source, sched)
            else:
                _, rel = poly.flow(sink, source, empty, sched)
            for m in poly.maps(rel):
                if poly.is_empty(m):
                    continue
                src = poly.tuple_name(m, "in")
                snk = poly.tuple_name(m, "out")
                red = src == snk and reduction_tensor(stmts[src]) == t
                dep = Dep(
                    source=src,
                    sink=snk,
                    kind=kind,
                    tensor=t,
                    relation_text=poly.to_text(m),
                    reduction=red,
                )
                result.append((dep, m))
    return tuple(result)


def check_schedule(
    kernel: Kernel, schedules: Mapping[str, str], *, relax_reductions: bool = True
) -> None:
    """Raise :class:`DependenceError` if the proposed schedules violate a dependence.

    ``schedules`` maps statement names to isl map texts (same output dimension count for every
    statement); statements not named keep their current schedule. With ``relax_reductions``
    the self-dependences of reduction statements are ignored (float reductions may be
    reassociated). The error names one violated pair: both statements with their source
    lines and texts, the tensor, the kind and a witness pair of iterations.
    """
    unknown = set(schedules) - {s.name for s in kernel.statements}
    if unknown:
        raise KeyError(f"schedules for unknown statements {sorted(unknown)}")
    new = {
        s.name: poly.schedule_from_text(kernel, s, schedules.get(s.name, s.schedule))
        for s in kernel.statements
    }
    for dep, rel in _dependences(kernel, memory=True):
        if relax_reductions and dep.reduction:
            continue
        bad = poly.order_violations(rel, new[dep.source], new[dep.sink])
        pair = poly.sample_pair(bad)
        if pair is not None:
            raise DependenceError(_violation(kernel, dep, pair))


def _violation(kernel: Kernel, dep: Dep, pair: tuple[dict, dict]) -> str:
    src, snk = kernel.statement(dep.source), kernel.statement(dep.sink)
    a = _point(src, pair[0])
    b = _point(snk, pair[1])
    what = {"RAW": "read after write", "WAR": "write after read", "WAW": "write after write"}
    return (
        f"{where(kernel.filename, snk.line)} the schedule violates the {dep.kind} dependence "
        f"({what[dep.kind]}) on tensor `{dep.tensor}`"
        f"{' (a reduction dependence)' if dep.reduction else ''}: "
        f"{src.name} `{src.source}` ({where(kernel.filename, src.line)}) at {a} must run before "
        f"{snk.name} `{snk.source}` ({where(kernel.filename, snk.line)}) at {b}, "
        "but would not"
    )


def _point(stmt: Statement, values: dict) -> str:
    vals = list(values.values())
    return ", ".join(f"{n}={v}" for n, v in zip(stmt.iterators, vals, strict=False)) or "(once)"


def parallel_dims(kernel: Kernel, schedules: Mapping[str, str] | None = None) -> frozenset[int]:
    """Schedule dimensions that carry no dependence, reduction dependences included.

    Uses the statements' current schedules, or ``schedules`` (name -> isl map text) where given.
    A loop scanning such a dimension may run its iterations in parallel.
    """
    schedules = schedules or {}
    new = [
        poly.schedule_from_text(kernel, s, schedules.get(s.name, s.schedule))
        for s in kernel.statements
    ]
    if not new:
        return frozenset()
    ndim = poly.map_text_info(
        schedules.get(kernel.statements[0].name, kernel.statements[0].schedule)
    )[2]
    rel = poly.union(m for _, m in _dependences(kernel, memory=True))
    carried = poly.carried_dims(poly.in_schedule_space(rel, poly.union(new)), ndim)
    return frozenset(range(ndim)) - frozenset(carried)


def is_reduction_access(stmt: Statement, load: Load) -> bool:
    """Whether ``load`` is the reduced element of a reduction statement."""
    return load == stmt.target and reduction_tensor(stmt) == load.tensor
