"""Helpers shared by the front-end and analysis tests (collected by pytest, holds no tests)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from polydl.ir import poly
from polydl.ir.nodes import Kernel


def line_of(path: str, marker: str) -> int:
    """The 1-based line of ``path`` holding the comment ``# <marker>``."""
    for n, text in enumerate(Path(path).read_text().splitlines(), 1):
        if re.search(rf"# {re.escape(marker)}(\s|$)", text):
            return n
    raise AssertionError(f"marker {marker!r} not found in {path}")


def assert_error_at(err: Exception, path: str, marker: str, *names: str) -> None:
    """``err``'s message starts with ``path:line:`` of the marker and names each of ``names``."""
    msg = str(err)
    prefix = f"{path}:{line_of(path, marker)}:"
    assert msg.startswith(prefix), f"{msg!r} does not start with {prefix!r}"
    for n in names:
        assert n in msg, f"{n!r} not named in {msg!r}"


def points_text(name: str, pts) -> str:
    body = "; ".join(f"{name}[{', '.join(map(str, p))}]" for p in pts)
    return "{ " + body + " }"


def assert_domain_points(kernel: Kernel, stmt: str, pts, **sizes: int) -> None:
    """The statement's domain, with ``sizes`` bound, is exactly the points ``pts``."""
    k = kernel.bind(sizes)
    s = k.statement(stmt)
    dom = poly.domain(k, s).project_out(poly._PARAM, 0, len(k.sizes))
    want = poly.Set(points_text(s.name, sorted(set(pts)))) if pts else None
    if want is None:
        assert dom.is_empty(), f"{stmt}: {dom} should be empty"
    else:
        assert dom.is_equal(want), f"{stmt}: {dom} != {want}"


def product(*ranges):
    return list(itertools.product(*ranges))


def witness(msg: str) -> dict[str, int]:
    """``i=3, k=0`` at the end of a message → ``{"i": 3, "k": 0}``."""
    tail = msg.rsplit(" at iteration ", 1)[-1]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", tail)}
