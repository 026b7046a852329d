"""torch's door: ``pd.compile_model(module, example_inputs)`` and ``torch.compile(module,
backend="polydl")``.

A module (or the FX graph torch.compile hands a backend) is exported to ONNX by torch's
TorchScript-based exporter (parameters and buffers become the model's constants) and compiled
by :func:`polydl.compile_model`; the callable takes and returns torch tensors. Inference only:
parameters are read once, when the graph is compiled. The backend is registered with torch
under ``"polydl"`` through the ``torch_dynamo_backends`` entry point of ``pyproject.toml``.
"""

from __future__ import annotations

import io
import warnings
from typing import Any


def _export(module, inputs: tuple) -> Any:
    """The ONNX ModelProto of ``module`` called on ``inputs`` (torch tensors)."""
    import onnx
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        torch.onnx.export(module, inputs, buf, dynamo=False, opset_version=17)
    return onnx.load_from_string(buf.getvalue())


class TorchModel:
    """A compiled module: torch tensors (or NumPy arrays) in, the same kind out."""

    def __init__(self, compiled, structure: str):
        self.compiled = compiled
        self.structure = structure  # "tensor" | "tuple" | "list"

    def __call__(self, *args):
        import numpy as np
        import torch

        as_torch = any(isinstance(a, torch.Tensor) for a in args)
        arrays = [
            a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a) for a in args
        ]
        out = self.compiled(*arrays)
        outs = out if isinstance(out, tuple) else (out,)
        if as_torch:
            outs = tuple(torch.from_numpy(np.ascontiguousarray(o)) for o in outs)
        if self.structure == "tensor":
            return outs[0]
        return list(outs) if self.structure == "list" else tuple(outs)

    def report(self) -> str:
        return self.compiled.report()


def compile_module(
    module, example_inputs, *, threads=None, target=None, layout: str = "auto"
) -> TorchModel:
    """A ``torch.nn.Module`` (evaluation mode) as polydl kernels, for ``example_inputs``'s
    shapes."""
    import torch

    from . import compile_model

    inputs = (
        tuple(example_inputs) if isinstance(example_inputs, list | tuple) else (example_inputs,)
    )
    module = module.eval()
    with torch.no_grad():
        sample = module(*inputs)
    structure = "tensor" if isinstance(sample, torch.Tensor) else type(sample).__name__
    compiled = compile_model(_export(module, inputs), threads=threads, target=target, layout=layout)
    return TorchModel(compiled, structure)


class _Frozen:
    """An FX graph with its parameter inputs bound (torch.compile lifts them into inputs)."""

    def __new__(cls, gm, example_inputs):
        import torch

        fixed = {i: t for i, t in enumerate(example_inputs) if isinstance(t, torch.nn.Parameter)}

        class Frozen(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.gm = gm
                for i, t in fixed.items():
                    self.register_buffer(f"p{i}", t.detach().clone())

            def forward(self, *free):
                it = iter(free)
                args = [
                    getattr(self, f"p{i}") if i in fixed else next(it)
                    for i in range(len(example_inputs))
                ]
                return self.gm(*args)

        return Frozen(), [t for i, t in enumerate(example_inputs) if i not in fixed], set(fixed)


def polydl_backend(gm, example_inputs):
    """The ``torch.compile`` backend: the FX graph as polydl kernels (parameters frozen)."""
    frozen, free, fixed = _Frozen(gm, example_inputs)
    model = compile_module(frozen, free)
    n = len(example_inputs)

    def run(*args):
        return model(*[a for i, a in enumerate(args) if i not in fixed][: n - len(fixed)])

    return run


def register() -> None:
    """Register ``"polydl"`` with torch.compile (the entry point does it when installed)."""
    from torch._dynamo import list_backends, register_backend

    if "polydl" not in list_backends(exclude_tags=()):
        register_backend(polydl_backend, name="polydl")
