"""A plan's stages as modules compiled by polydl (``run_plan(..., backend="polydl")``).

The exported graph's nodes, in its topological order, are cut into stages: maximal runs of
consecutive nodes on one device (a pipeline plan gives one stage per device; a DAG plan may
give a device several). A stage reads the values made before it (the user's inputs or earlier
nodes) and returns those read after it (or the model's output), so running a stage at its
first node sees all its inputs, and the messages between devices are those of the node-by-node
walk. Each stage becomes a ``torch.fx.GraphModule`` (its weights as buffers) compiled by
:func:`polydl.compile_model` (ONNX export, polydl kernels, NumPy fallbacks).

Before (nodes, device)::

    linear 0 -> relu 0 -> linear_1 1 -> relu_1 1 -> linear_2 1

After (stages)::

    stage 0 on device 0: linear, relu                (input) -> relu
    stage 1 on device 1: linear_1, relu_1, linear_2  relu    -> linear_2
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import PartitionError


@dataclass(frozen=True, kw_only=True)
class Stage:
    """A run of consecutive nodes on one device."""

    device: int
    nodes: tuple[str, ...]
    inputs: tuple[str, ...]  # values made outside the stage that it reads, in order
    outputs: tuple[str, ...]  # its values read outside it (or the model's output), in order


def split_stages(ep: Any, assignment: dict[str, int]) -> list[Stage]:
    """The stages of exported program ``ep`` placed by ``assignment`` (node -> device)."""
    sig = ep.graph_signature
    lifted = {
        **sig.inputs_to_parameters,
        **sig.inputs_to_buffers,
        **getattr(sig, "inputs_to_lifted_tensor_constants", {}),
    }
    runs: list[list[Any]] = []
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        if runs and assignment[runs[-1][0].name] == assignment[node.name]:
            runs[-1].append(node)
        else:
            runs.append([node])
    stages = []
    for run in runs:
        names = {n.name for n in run}
        inputs: list[str] = []
        outputs: list[str] = []
        for n in run:
            for a in n.all_input_nodes:
                if a.name not in names and a.name not in lifted and a.name not in inputs:
                    inputs.append(a.name)
            if any(u.name not in names for u in n.users):  # includes the output node
                outputs.append(n.name)
        stages.append(
            Stage(
                device=assignment[run[0].name],
                nodes=tuple(n.name for n in run),
                inputs=tuple(inputs),
                outputs=tuple(outputs),
            )
        )
    return stages


def stage_module(ep: Any, stage: Stage) -> Any:
    """``stage`` of ``ep`` as a ``torch.fx.GraphModule``: its inputs are placeholders in
    ``stage.inputs`` order, the weights it reads buffers, it returns ``stage.outputs``."""
    import torch
    import torch.fx as fx

    sig = ep.graph_signature
    lifted = {
        **sig.inputs_to_parameters,
        **sig.inputs_to_buffers,
        **getattr(sig, "inputs_to_lifted_tensor_constants", {}),
    }
    state = {**ep.state_dict, **getattr(ep, "constants", {})}
    by_name = {n.name: n for n in ep.graph.nodes}
    graph = fx.Graph()
    root = torch.nn.Module()
    env: dict[str, Any] = {name: graph.placeholder(name) for name in stage.inputs}

    def value(a: Any) -> Any:
        if a.name not in env:  # a weight (the only values from outside not in inputs)
            t = state[lifted[a.name]]
            root.register_buffer(a.name, t.detach().clone() if isinstance(t, torch.Tensor) else t)
            env[a.name] = graph.get_attr(a.name)
        return env[a.name]

    for name in stage.nodes:
        env[name] = graph.node_copy(by_name[name], value)
    outs = [env[n] for n in stage.outputs]
    graph.output(outs[0] if len(outs) == 1 else tuple(outs))
    return fx.GraphModule(root, graph)


@dataclass
class CompiledStage:
    """A stage compiled by polydl; ``run(env)`` reads its inputs from ``env`` (value name ->
    tensor) and returns its outputs by name."""

    stage: Stage
    model: Any = field(repr=False)  # a polydl.model.torch_backend.TorchModel

    def run(self, env: dict[str, Any]) -> dict[str, Any]:
        out = self.model(*[env[n] for n in self.stage.inputs])
        outs = out if isinstance(out, tuple | list) else (out,)
        return dict(zip(self.stage.outputs, outs, strict=True))

    def summary(self) -> dict[str, Any]:
        """What ran: the stage's nodes, its polydl kernels and fallback nodes, the report."""
        compiled = self.model.compiled
        return {
            "device": self.stage.device,
            "nodes": list(self.stage.nodes),
            "kernels": compiled.kernel_count,
            "fallbacks": len(compiled.fallbacks),
            "report": compiled.report(),
        }


def compile_stage(ep: Any, stage: Stage, *, threads: int | None = 1) -> CompiledStage:
    """Compile ``stage`` of ``ep`` with polydl for the shapes the export recorded."""
    import torch

    from ..model import compile_model

    by_name = {n.name: n for n in ep.graph.nodes}
    examples = []
    for name in stage.inputs:
        val = by_name[name].meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise PartitionError(
                f"polydl stage {stage.nodes[0]}..{stage.nodes[-1]}: input {name!r} is not a "
                f"tensor ({type(val).__name__})"
            )
        examples.append(torch.zeros(tuple(val.shape), dtype=val.dtype))
    module = stage_module(ep, stage)
    try:
        model = compile_model(module, tuple(examples), threads=threads)
    except Exception as e:
        shapes = ", ".join(
            f"{n} {tuple(x.shape)}" for n, x in zip(stage.inputs, examples, strict=True)
        )
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PartitionError(
            f"polydl stage {stage.nodes[0]}..{stage.nodes[-1]} on device {stage.device} "
            f"(inputs {shapes}): compile failed: {why}"
        ) from None
    return CompiledStage(stage=stage, model=model)
