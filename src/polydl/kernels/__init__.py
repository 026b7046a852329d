"""BRGEMM microkernels: f32 batch-reduce GEMM generated per ISA from ``microkernels/`` templates.

``C = beta*C + alpha * sum_b A_b @ B_b`` (+ bias, ReLU at the store), row-major, n contiguous;
see :mod:`polydl.kernels.config` for the layout contract, :mod:`polydl.kernels.isa` for the ISA
selection and blocking rules, :mod:`polydl.kernels.generator` for the IR signatures.
"""

from . import amx
from .config import FORMS, BrgemmConfig
from .generator import KernelIR, generate, merge_declarations
from .isa import FAMILIES, Blocking, IsaFamily, TileGroup, isa_for_cpu, plan, select_isa
from .reference import reference
from .registry import (
    BrgemmKernel,
    KernelSpec,
    cache_info,
    clear_cache,
    compile_brgemm,
    emit_asm,
    spec,
    symbol_for,
)

__all__ = [
    "FORMS",
    "amx",
    "FAMILIES",
    "Blocking",
    "BrgemmConfig",
    "BrgemmKernel",
    "IsaFamily",
    "KernelIR",
    "KernelSpec",
    "TileGroup",
    "cache_info",
    "clear_cache",
    "compile_brgemm",
    "emit_asm",
    "generate",
    "isa_for_cpu",
    "merge_declarations",
    "plan",
    "reference",
    "select_isa",
    "spec",
    "symbol_for",
]
