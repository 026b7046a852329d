"""polydl: a polyhedral compiler for deep-learning primitives (public names of docs/API.md)."""

from . import graph, nn, ops
from .api import compile
from .codegen.compiled import CompiledKernel
from .dsl.intrinsics import erf, exp, sigmoid, sqrt, tanh
from .dsl.kernel import kernel
from .dsl.types import bf16, f32, f64
from .errors import BoundsError, DSLError, PolyDLError, TargetError, TuneError
from .memory import aligned, empty, from_bf16, to_bf16, zeros
from .model import compile_model
from .partition import partition
from .target import Target
from .tune import tune

__all__ = [
    "graph",
    "nn",
    "ops",
    "partition",
    "compile_model",
    "compile",
    "tune",
    "kernel",
    "empty",
    "zeros",
    "aligned",
    "f32",
    "f64",
    "bf16",
    "to_bf16",
    "from_bf16",
    "exp",
    "sqrt",
    "tanh",
    "sigmoid",
    "erf",
    "CompiledKernel",
    "Target",
    "PolyDLError",
    "DSLError",
    "BoundsError",
    "TargetError",
    "TuneError",
]
__version__ = "0.1.0"
