"""The DSL's elementwise functions (``pd.exp``, ...), working on NumPy scalars and arrays.

Inside a kernel the parser recognises them by name; ``reference`` runs them as written here.
The result keeps the argument's floating dtype (float32 stays float32).
"""

from __future__ import annotations

import numpy as np

NAMES = ("exp", "sqrt", "tanh", "sigmoid", "erf")


def exp(x):
    """``e**x``."""
    return np.exp(x)


def sqrt(x):
    """The square root (NaN for negative input, like NumPy)."""
    return np.sqrt(x)


def tanh(x):
    """The hyperbolic tangent."""
    return np.tanh(x)


def erf(x):
    """The error function (GELU is ``0.5 * x * (1 + pd.erf(x / sqrt(2)))``)."""
    from scipy.special import erf as _erf

    x = np.asarray(x)
    out = _erf(x).astype(x.dtype if x.dtype.kind == "f" else np.float64)
    return out[()] if out.ndim == 0 else out


def sigmoid(x):
    """``1 / (1 + exp(-x))``, computed without overflow for large ``|x|``."""
    e = np.exp(-np.abs(x))
    out = np.where(np.asarray(x) >= 0, 1 / (1 + e), e / (1 + e))
    return out[()] if out.ndim == 0 else out
