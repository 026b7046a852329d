"""torch import through ``torch.export`` (torch is optional and imported lazily)."""

from __future__ import annotations

import math
from typing import Any

import networkx as nx

from ..errors import PartitionError
from .graph import ModelGraph, check_acyclic

_MATMUL = {"mm", "bmm", "matmul", "linear", "addmm", "baddbmm"}


def _bytes(val: Any) -> int:
    try:
        return int(math.prod(val.shape)) * val.element_size()
    except AttributeError:
        if isinstance(val, list | tuple):
            return sum(_bytes(v) for v in val)
        return 0


def _flops(name: str, node, ins: list, out) -> float:
    shape = getattr(out, "shape", None)
    numel = math.prod(shape) if shape is not None else 0
    if name in _MATMUL and ins and hasattr(ins[0], "shape") and len(ins[0].shape):
        k = ins[-1].shape[-1] if name == "linear" else ins[0].shape[-1]
        if name == "linear" and len(ins) > 1 and hasattr(ins[1], "shape"):
            k = ins[1].shape[-1]
        return 2.0 * numel * int(k)
    if name.startswith("conv") and len(ins) > 1 and hasattr(ins[1], "shape"):
        return 2.0 * numel * math.prod(ins[1].shape[1:])
    if name in (
        "view",
        "reshape",
        "permute",
        "transpose",
        "t",
        "expand",
        "slice",
        "select",
        "unsqueeze",
        "squeeze",
        "flatten",
        "clone",
        "contiguous",
    ):
        return 0.0
    return float(numel)


def export(module: Any, example_inputs: tuple) -> Any:
    try:
        import torch
    except ImportError:
        raise PartitionError("torch import: torch is not installed (pip install torch)") from None
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    try:
        return torch.export.export(module, example_inputs)
    except Exception as e:
        raise PartitionError(
            f"torch module {type(module).__name__}: torch.export failed: {str(e).splitlines()[0]}"
        ) from None


def from_torch(module: Any, example_inputs: tuple, name: str | None = None) -> ModelGraph:
    """Import a torch module: one node per ``call_function`` of its exported graph; parameters
    are charged to the first node that reads them."""
    ep = export(module, example_inputs)
    return from_exported(ep, name or type(module).__name__)


def from_exported(ep: Any, name: str) -> ModelGraph:
    sig = ep.graph_signature
    weights = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    state = ep.state_dict
    g = nx.DiGraph()
    charged: set[str] = set()
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        ins = [a.meta.get("val") for a in node.all_input_nodes]
        out = node.meta.get("val")
        op = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        pbytes = 0
        act = 0
        for a in node.all_input_nodes:
            if a.op == "placeholder" and a.name in weights:
                if a.name not in charged and weights[a.name] in state:
                    charged.add(a.name)
                    t = state[weights[a.name]]
                    pbytes += t.numel() * t.element_size()
            else:
                act += _bytes(a.meta.get("val"))
        g.add_node(
            node.name,
            op=op,
            flops=_flops(op, node, ins, out),
            param_bytes=pbytes,
            out_bytes=_bytes(out),
            in_bytes=act,
        )
        for a in node.all_input_nodes:
            if a.name in g:
                g.add_edge(a.name, node.name, bytes=_bytes(a.meta.get("val")))
    if g.number_of_nodes() == 0:
        raise PartitionError(f"torch module {name}: the exported graph has no operations")
    check_acyclic(g, name)
    return ModelGraph(name=name, graph=g)
