"""The exceptions of polydl's public contract (docs/API.md, section 6)."""

from __future__ import annotations


class PolyDLError(Exception):
    """Root of every error polydl raises on purpose."""


class DSLError(PolyDLError):
    """The kernel's source is outside the DSL; the message starts with ``file:line:``."""


class BoundsError(PolyDLError):
    """An access may leave its tensor for the bound sizes; names the access and a witness."""


class TargetError(PolyDLError):
    """The requested target cannot be compiled for, or cannot run on this host."""


class DependenceError(PolyDLError):
    """A proposed schedule violates a dependence; names one violated pair."""


class TuneError(PolyDLError):
    """Tuning cannot proceed as asked (no contraction to tune, a reference that cannot be
    computed, a runner that cannot start); names the kernel or what failed."""


class PartitionError(PolyDLError):
    """A model graph cannot be partitioned as asked (bad input, infeasible memory, ...)."""


def where(filename: str, line: int) -> str:
    """The ``file:line:`` prefix every user-facing error starts with."""
    return f"{filename}:{line}:"
