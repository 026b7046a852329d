"""``pd.compile_model``: an ONNX model as fused polydl kernels, the rest run by NumPy.

The model's nodes are taken in order (those of constant inputs folded at compile time). Each
run of nodes polydl supports (:mod:`polydl.model.onnx_ops`) becomes one
:class:`polydl.graph.Graph` compiled a kernel per contraction and the elementwise chain after it
(BatchNormalization folded into the conv or linear before it), identical kernels compiled once
for the whole model; any other node runs on its own through ONNX's reference implementation
(NumPy), and ends the run. ``CompiledModel.report()`` lists every node: which kernel it is in
(and its partners), a view, or that it fell back, with each kernel's time at the last call.

    m = pd.compile_model("model.onnx", threads=2)
    y = m(x)
    print(m.report())
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PolyDLError
from .onnx_lower import Fallback, Segment, plan_steps


class ModelError(PolyDLError):
    """A model polydl cannot take (not an ONNX model, dynamic shapes, bad inputs)."""


@dataclass
class CompiledModel:
    """A model as steps: fused polydl kernels and NumPy fallback nodes, run in order."""

    inputs: list[str]
    outputs: list[str]
    steps: list[Segment | Fallback]
    constants: dict[str, np.ndarray]
    seconds: list[float] = field(default_factory=list)

    def __call__(self, *arrays: np.ndarray):
        if len(arrays) != len(self.inputs):
            raise ModelError(
                f"the model takes {len(self.inputs)} input(s) {self.inputs}, got {len(arrays)}"
            )
        env: dict[str, Any] = dict(self.constants)
        for name, a in zip(self.inputs, arrays, strict=True):
            env[name] = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
        self.seconds = []
        for step in self.steps:
            t0 = time.perf_counter()
            for name, value in step.run(env).items():
                env[name] = value
            self.seconds.append(time.perf_counter() - t0)
        out = [env[n] for n in self.outputs]
        return out[0] if len(out) == 1 else tuple(out)

    @property
    def fallbacks(self) -> list[Fallback]:
        return [s for s in self.steps if isinstance(s, Fallback)]

    @property
    def kernel_count(self) -> int:
        """The number of polydl kernels a call runs (a kernel compiled once and run twice
        counts twice)."""
        return sum(
            ck is not None
            for s in self.steps
            if isinstance(s, Segment)
            for ck, *_ in s.compiled.parts
        )

    @property
    def polydl_share(self) -> float:
        """The fraction of the last call's time spent in polydl kernels (not fallbacks)."""
        total = sum(self.seconds)
        ours = sum(
            t for t, s in zip(self.seconds, self.steps, strict=False) if isinstance(s, Segment)
        )
        return ours / total if total else 0.0

    def report(self) -> str:
        """One line per node: its kernel (its fused partners) or its fallback, each kernel's
        and fallback's time at the last call and its share of the whole."""
        lines = []
        total = sum(self.seconds) or 1.0
        distinct = set()

        def share(t: float) -> str:
            return f"{1000 * t:9.3f} ms {100 * t / total:5.1f}%"

        for i, step in enumerate(self.steps):
            if isinstance(step, Fallback):
                t = self.seconds[i] if i < len(self.seconds) else float("nan")
                head = f"{step.node:<28} fallback (NumPy, ONNX reference)"
                lines.append(f"{head:<72} {share(t)}  {step.why}")
                continue
            cg = step.compiled
            real = [j for j, (ck, *_) in enumerate(cg.parts) if ck is not None]
            distinct |= {id(cg.parts[j][0]) for j in real}
            members: dict[int, list[str]] = {}
            for node in step.nodes:
                for j in step.kernels_of(node):
                    members.setdefault(j, []).append(node)
            first_of = {id(cg.parts[j][0]): j for j in reversed(real)}
            for node in step.nodes:
                mine = [j for j in step.kernels_of(node) if cg.parts[j][0] is not None]
                if not mine:
                    lines.append(f"{node:<28} a view (no kernel, no copy)")
                    continue
                for j in mine:
                    names = members[j]
                    again = first_of[id(cg.parts[j][0])]
                    code = f", the code of kernel {i}.{again}" if again != j else ""
                    partners = ", ".join(n for n in names if n != node) or "nothing"
                    head = f"{node:<28} kernel {i}.{j} (fused with {partners}{code})"
                    if names[0] == node:  # the kernel's time, on its first node's line
                        t = cg.seconds[j] if j < len(cg.seconds) else float("nan")
                        head = f"{head:<72} {share(t)}"
                    lines.append(head)
            for j in real:  # kernels of no node: layout conversions (pack, repad, unpack)
                if j not in members:
                    t = cg.seconds[j] if j < len(cg.seconds) else float("nan")
                    what = ", ".join(cg.part_ops[j]) if j < len(cg.part_ops) else "?"
                    head = f"{'(layout)':<28} kernel {i}.{j} ({what})"
                    lines.append(f"{head:<72} {share(t)}")
        n_fb = len(self.fallbacks)
        head = (
            f"// {self.kernel_count} polydl kernel(s) ({len(distinct)} compiled), {n_fb} fallback "
            f"node(s); {100 * self.polydl_share:.1f}% of the last call in polydl kernels"
        )
        return "\n".join([head, *lines])


def compile_model(
    model, example_inputs=None, *, threads: int | None = None, target=None, layout: str = "auto"
):
    """``model``: an ONNX file path or ``onnx.ModelProto`` with static input shapes (or
    ``example_inputs`` giving them), returning a :class:`CompiledModel` (NumPy in and out); or
    a ``torch.nn.Module`` with ``example_inputs`` (exported to ONNX by torch), or the name of a
    built-in one (``"resnet50"``, ``"mobilenet"``, ``"bert"``: :mod:`polydl.model.zoo`, random
    weights), returning a callable on torch tensors (:mod:`polydl.model.torch_backend`).
    ``layout="blocked"``: convolutions on the blocked layout, activations kept blocked between
    them (:mod:`polydl.graph.layout`); ``"nchw"``: every conv on NCHW; ``"auto"`` (the
    default): blocked for a run of convs none of which is grouped, else NCHW."""
    import sys

    import onnx

    if layout not in ("nchw", "blocked", "auto"):
        raise ModelError(
            f"compile_model: layout must be 'nchw', 'blocked' or 'auto', got {layout!r}"
        )
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        from .torch_backend import compile_module

        if example_inputs is None:
            raise ModelError("compile_model of a torch module needs example_inputs")
        return compile_module(model, example_inputs, threads=threads, target=target, layout=layout)

    if isinstance(model, str) and not Path(model).exists():
        from .zoo import MODELS, build

        if model in MODELS or not model.endswith(".onnx"):
            if example_inputs is None:
                raise ModelError(f"compile_model of the built-in {model!r} needs example_inputs")
            from .torch_backend import compile_module

            return compile_module(
                build(model), example_inputs, threads=threads, target=target, layout=layout
            )
    if isinstance(model, str | Path):
        model = onnx.load(str(model))
    if not isinstance(model, onnx.ModelProto):
        raise ModelError(
            f"compile_model takes an ONNX model or its path, got {type(model).__name__}"
        )
    shapes = {}
    if example_inputs is not None:
        names = [
            i.name
            for i in model.graph.input
            if i.name not in {t.name for t in model.graph.initializer}
        ]
        examples = example_inputs if isinstance(example_inputs, list | tuple) else [example_inputs]
        shapes = {n: tuple(np.asarray(x).shape) for n, x in zip(names, examples, strict=False)}
    try:
        inputs, outputs, steps, constants = plan_steps(
            model, shapes, threads=threads, target=target, layout=layout
        )
    except ValueError as e:
        raise ModelError(str(e)) from None
    return CompiledModel(inputs=inputs, outputs=outputs, steps=steps, constants=constants)


__all__ = ["CompiledModel", "ModelError", "compile_model"]
