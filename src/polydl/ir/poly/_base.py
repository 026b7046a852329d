"""Texts and caching: the isl types, index expressions and parameter lists as isl text, the kernel's context (sizes fixed), texts parsed once, names and tuple names."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

import islpy as isl

from ..nodes import Int, Kernel, Var

Set = isl.Set


Map = isl.Map


UnionMap = isl.UnionMap


UnionSet = isl.UnionSet


_SET = isl.dim_type.set


_IN = isl.dim_type.in_


_OUT = isl.dim_type.out


_PARAM = isl.dim_type.param


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


def union(objs: Iterable) -> UnionMap:
    """The union of isl maps (an empty union map if there are none)."""
    return _union(objs, Map, UnionMap.from_map, UnionMap)


def union_set(objs: Iterable) -> UnionSet:
    """The union of isl sets (an empty union set if there are none)."""
    return _union(objs, Set, UnionSet.from_set, UnionSet)


def _union(objs: Iterable, single, lift, united):
    out = None
    for o in objs:
        u = lift(o) if isinstance(o, single) else o
        out = u if out is None else out.union(u)
    return out if out is not None else united("{ }")


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


def fix_names(sizes: Mapping[str, int]) -> str:
    return " and ".join(f"{k} = {v}" for k, v in sizes.items())


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


def is_empty(obj) -> bool:
    return obj.is_empty()


def to_text(obj) -> str:
    return obj.to_str()


# Aliases kept for the front end and analyses: ``iexpr`` and ``access`` handle ``//``, ``%``.
isl_iexpr = iexpr
