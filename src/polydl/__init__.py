"""polydl: a polyhedral compiler for deep-learning primitives (public names of shared/spec/API.md)."""

from .errors import BoundsError, DSLError, PolyDLError, TargetError

__all__ = ["PolyDLError", "DSLError", "BoundsError", "TargetError"]
__version__ = "0.1.0"
