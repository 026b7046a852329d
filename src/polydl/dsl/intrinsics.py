"""The DSL's elementwise functions (``pd.exp``, ...), working on NumPy scalars and arrays.

Inside a kernel the parser recognises them by name; ``reference`` runs them as written here.
The result keeps the argument's floating dtype (float32 stays float32).
"""

from __future__ import annotations

import numpy as np

NAMES = ("exp", "sqrt", "tanh", "sigmoid")


def exp(x):
    """``e**x``."""
    return np.exp(x)


def sqrt(x):
    """The square root (NaN for negative input, like NumPy)."""
    return np.sqrt(x)


def tanh(x):
    """The hyperbolic tangent."""
    return np.tanh(x)


def sigmoid(x):
    """``1 / (1 + exp(-x))``, computed without overflow for large ``|x|``."""
    e = np.exp(-np.abs(x))
    out = np.where(np.asarray(x) >= 0, 1 / (1 + e), e / (1 + e))
    return out[()] if out.ndim == 0 else out
