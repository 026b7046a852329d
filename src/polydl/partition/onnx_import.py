"""ONNX import: nodes, tensor shapes from ONNX shape inference, FLOPs per op type.

Ops the cost model does not know are estimated from their tensor sizes (one FLOP per element
read or written) with one :class:`UnknownOpWarning` per op type, never an error.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import networkx as nx

from ..errors import PartitionError
from .graph import ModelGraph, check_acyclic


class UnknownOpWarning(UserWarning):
    """An op type the cost model does not know; its cost was estimated from tensor sizes."""


ELEMENTWISE = {
    "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Relu": 1, "LeakyRelu": 2, "PRelu": 2, "Clip": 2,
    "Max": 1, "Min": 1, "Neg": 1, "Abs": 1, "Sqrt": 4, "Reciprocal": 1, "Pow": 8, "Exp": 8,
    "Log": 8, "Erf": 8, "Tanh": 8, "Sigmoid": 8, "HardSigmoid": 3, "HardSwish": 4, "Gelu": 8,
    "Elu": 8, "Selu": 8, "Softplus": 8, "Mish": 12, "Where": 1, "Equal": 1, "Less": 1,
    "Greater": 1, "Not": 1, "And": 1, "Or": 1, "Cast": 1, "Dropout": 1, "Sign": 1, "Ceil": 1,
    "Floor": 1, "Round": 1, "Sin": 8, "Cos": 8, "BiasGelu": 9, "FastGelu": 9,
}  # fmt: skip
NORMS = {"BatchNormalization": 4, "LayerNormalization": 8, "InstanceNormalization": 8,
         "GroupNormalization": 8, "LpNormalization": 4, "Softmax": 6, "LogSoftmax": 7,
         "SkipLayerNormalization": 9}  # fmt: skip
REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2",
          "ReduceSumSquare", "ReduceLogSumExp", "GlobalAveragePool", "GlobalMaxPool",
          "ArgMax", "ArgMin", "CumSum"}  # fmt: skip
MOVEMENT = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Slice",
            "Gather", "GatherElements", "GatherND", "Split", "Identity", "Shape", "Expand",
            "Pad", "Tile", "ConstantOfShape", "Range", "Size", "ScatterND", "DepthToSpace",
            "SpaceToDepth", "Resize", "Upsample", "NonZero", "TopK", "Trilu", "OneHot"}  # fmt: skip


KNOWN = {"Conv", "ConvTranspose", "MatMul", "MatMulInteger", "FusedMatMul", "Gemm", "Einsum",
         "MaxPool", "AveragePool", "LpPool", "Constant"} | set(ELEMENTWISE) | set(NORMS) | REDUCE | MOVEMENT  # fmt: skip


def _numel(shape: Sequence[int] | None) -> int:
    return math.prod(shape) if shape is not None else 0


def node_flops(op: str, attrs: dict[str, Any], ins: list, outs: list) -> float | None:
    """Forward FLOPs of one ONNX node from its input/output shapes; None if the op is unknown."""
    out = _numel(outs[0]) if outs else 0
    if op == "Conv" and len(ins) > 1 and ins[1] is not None:
        w = ins[1]
        return 2.0 * out * _numel(w[1:]) + (out if len(ins) > 2 else 0)
    if op == "ConvTranspose" and len(ins) > 1 and ins[0] is not None and ins[1] is not None:
        return 2.0 * _numel(ins[0]) * _numel(ins[1][1:]) * attrs.get("group", 1)
    if op in ("MatMul", "MatMulInteger", "FusedMatMul") and ins[0] is not None and ins[0]:
        return 2.0 * out * ins[0][-1]
    if op == "Gemm" and ins[0] is not None:
        k = ins[0][0] if attrs.get("transA", 0) else ins[0][-1]
        return 2.0 * out * k + (out if len(ins) > 2 else 0)
    if op == "Einsum" and ins and all(s is not None for s in ins):
        return 2.0 * max(out, max(_numel(s) for s in ins))
    if op in ELEMENTWISE:
        return float(ELEMENTWISE[op] * out)
    if op in NORMS:
        return float(NORMS[op] * out)
    if op in REDUCE:
        return float(_numel(ins[0]) if ins and ins[0] is not None else out)
    if op in ("MaxPool", "AveragePool", "LpPool"):
        return float(out * math.prod(attrs.get("kernel_shape", [1])))
    if op in MOVEMENT or op == "Constant":
        return 0.0
    return None


def _attrs(node) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def load_onnx(path: str | Path, name: str | None = None) -> ModelGraph:
    """Import an ONNX file (or an in-memory ``onnx.ModelProto``)."""
    import onnx
    from onnx import helper, shape_inference

    if isinstance(path, onnx.ModelProto):
        model, where = path, name or path.graph.name or "onnx-model"
    else:
        where = str(path)
        try:
            model = onnx.load(where)
        except FileNotFoundError:
            raise PartitionError(f"ONNX file {where}: no such file") from None
        except Exception as e:  # protobuf decode errors of truncated or malformed files
            raise PartitionError(
                f"ONNX file {where}: cannot be read (malformed or truncated): {e}"
            ) from None
    graph = model.graph
    if not graph.node:
        raise PartitionError(f"ONNX model {where}: the graph has no nodes")
    names: list[str] = []
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        nm = node.name or f"{node.op_type}_{i}"
        while nm in seen:
            nm = f"{nm}_{i}"
        seen.add(nm)
        names.append(nm)
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for t in node.output:
            if t:
                producer[t] = i
    raw = nx.DiGraph()
    raw.add_nodes_from(names)
    for i, node in enumerate(graph.node):
        for t in node.input:
            if t in producer:
                raw.add_edge(names[producer[t]], names[i])
    check_acyclic(raw, Path(where).name)
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise PartitionError(f"ONNX model {where}: invalid: {str(e).splitlines()[0]}") from None
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as e:
        raise PartitionError(
            f"ONNX model {where}: shape inference failed: {str(e).splitlines()[0]}"
        ) from None

    shapes: dict[str, tuple[list[int], int]] = {}

    def record(vi) -> None:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            return
        dims = [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tt.shape.dim
        ]
        try:
            size = helper.tensor_dtype_to_np_dtype(tt.elem_type).itemsize
        except Exception:
            size = 4
        shapes[vi.name] = (dims, size)

    g2 = inferred.graph
    for vi in [*g2.input, *g2.value_info, *g2.output]:
        record(vi)
    params: dict[str, int] = {}
    for init in graph.initializer:
        size = helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        shapes[init.name] = (list(init.dims), size)
        params[init.name] = math.prod(init.dims) * size
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            a = _attrs(node)
            value = a.get("value")
            if value is not None:
                size = helper.tensor_dtype_to_np_dtype(value.data_type).itemsize
                shapes[node.output[0]] = (list(value.dims), size)
                params[node.output[0]] = math.prod(value.dims) * size

    def nbytes(t: str) -> int:
        if t not in shapes:
            return 0
        dims, size = shapes[t]
        return math.prod(dims) * size

    g = nx.DiGraph()
    unknown: dict[str, int] = {}
    used_params: set[str] = set()
    keep = [i for i, node in enumerate(graph.node) if node.op_type != "Constant"]
    for i in keep:
        node = graph.node[i]
        ins = [shapes[t][0] if t in shapes else None for t in node.input]
        outs = [shapes[t][0] if t in shapes else None for t in node.output]
        flops = node_flops(node.op_type, _attrs(node), ins, outs)
        in_act = sum(nbytes(t) for t in node.input if t and t not in params)
        out_bytes = sum(nbytes(t) for t in node.output if t)
        if flops is None:
            if node.op_type not in KNOWN:
                unknown[node.op_type] = unknown.get(node.op_type, 0) + 1
            flops = float(sum(_numel(s) for s in ins + outs if s is not None))
        pbytes = 0
        for t in node.input:
            if t in params and t not in used_params:
                used_params.add(t)
                pbytes += params[t]
        g.add_node(
            names[i],
            op=node.op_type,
            flops=float(flops),
            param_bytes=int(pbytes),
            out_bytes=int(out_bytes),
            in_bytes=int(in_act),
        )
    for i in keep:
        node = graph.node[i]
        for t in node.input:
            j = producer.get(t)
            if j is None or graph.node[j].op_type == "Constant":
                continue
            u, v = names[j], names[i]
            if g.has_edge(u, v):
                continue  # the same tensor read twice is sent once
            g.add_edge(
                u, v, bytes=sum(nbytes(x) for x in graph.node[j].output if x in set(node.input))
            )
    for op, count in sorted(unknown.items()):
        warnings.warn(
            f"ONNX model {where}: op type {op!r} ({count} node(s)) is not in the cost model; "
            "its cost is estimated from its tensor sizes",
            UnknownOpWarning,
            stacklevel=2,
        )
    label = name or Path(where).stem
    check_acyclic(g, label)
    return ModelGraph(name=label, graph=g)
