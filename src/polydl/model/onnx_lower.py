"""ONNX nodes as steps: runs of supported nodes as :mod:`polydl.graph` kernels, every other
node a NumPy fallback (ONNX's reference implementation of that one node).

Before (ONNX)::

    Conv -> BatchNormalization -> Relu -> Conv -> Add -> Relu -> TopK -> Gemm

After (steps)::

    Segment 0: kernel 0.0  conv2d, batch_norm (folded), relu      a kernel per contraction
               kernel 0.1  conv2d, add, relu                      and its elementwise chain
    Fallback:  TopK                                               NumPy
    Segment 2: kernel 2.0  linear

Shapes come from the model's static input shapes (or the example inputs) through ONNX shape
inference; constants are the initializers, Constant nodes and the outputs of nodes whose inputs
are all constants (folded once, here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..graph import Graph, GraphError
from .onnx_ops import attrs_of, lower_node


@dataclass
class Segment:
    """A run of nodes compiled as one polydl graph."""

    nodes: list[str]
    inputs: list[str]  # ONNX value names the kernel takes, in order
    outputs: list[str]  # ONNX value names it returns, in order
    compiled: Any = field(repr=False, default=None)
    shapes: list[tuple[int, ...]] = field(default_factory=list)  # the outputs' ONNX shapes
    graph_nodes: dict[str, list[int]] = field(default_factory=dict)  # ONNX node -> pd.graph ids

    def kernels_of(self, node: str) -> list[int]:
        """The kernels (indices into ``compiled.parts``) computing ONNX node ``node``."""
        parts = {self.compiled.part_of(i) for i in self.graph_nodes.get(node, ())}
        return sorted(p for p in parts if p is not None)

    def run(self, env: dict) -> dict:
        out = self.compiled(*[env[n] for n in self.inputs])
        out = out if isinstance(out, tuple) else (out,)
        # same elements, ONNX's shape (a global pooling's (N, C) is (N, C, 1, 1) there)
        out = [o.reshape(s) if s else o for o, s in zip(out, self.shapes, strict=True)]
        return dict(zip(self.outputs, out, strict=True))


@dataclass
class Fallback:
    """One node run by ONNX's reference implementation (NumPy)."""

    node: str
    why: str
    inputs: list[str]
    outputs: list[str]
    session: Any = field(repr=False, default=None)

    def run(self, env: dict) -> dict:
        feeds = {n: env[n] for n in self.inputs if n}
        res = self.session.run(None, feeds)
        return {
            n: np.ascontiguousarray(np.asarray(v, dtype=np.float32))
            if np.asarray(v).dtype.kind == "f"
            else np.asarray(v)
            for n, v in zip(self.outputs, res, strict=True)
        }


def plan_steps(model, shapes: dict, *, threads=None, target=None, layout: str = "auto"):
    """(input names, output names, steps, constants) of ``model``. Each run of supported
    nodes is compiled a kernel per contraction (and its elementwise chain), the kernels of
    identical groups (and of identical runs) compiled once."""
    import onnx
    from onnx import numpy_helper, shape_inference
    from onnx.reference import ReferenceEvaluator

    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(attrs_of(n)["value"])
    inputs = [i.name for i in model.graph.input if i.name not in consts]
    for i in model.graph.input:
        if i.name in inputs and i.name not in shapes:
            dims = [d.dim_value for d in i.type.tensor_type.shape.dim]
            if not dims or any(d <= 0 for d in dims):
                raise ValueError(f"input {i.name} has no static shape: pass example_inputs")
            shapes[i.name] = tuple(dims)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for i in model.graph.input:
        if i.name in shapes:
            t = i.type.tensor_type
            del t.shape.dim[:]
            for d in shapes[i.name]:
                t.shape.dim.add().dim_value = d
    inferred = shape_inference.infer_shapes(model)
    for vi in (*inferred.graph.value_info, *inferred.graph.output):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if dims and all(d > 0 for d in dims):
            shapes.setdefault(vi.name, tuple(dims))
    floats = {
        vi.name
        for vi in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    outputs = [o.name for o in model.graph.output]
    nodes = fold_constants([n for n in model.graph.node if n.op_type != "Constant"], consts, model)
    consumers: dict[str, set[int]] = {}
    for k, n in enumerate(nodes):
        for x in n.input:
            consumers.setdefault(x, set()).add(k)

    steps: list = []
    seg: dict | None = None
    kernels: dict = {}  # compiled kernels by group signature, shared by the runs

    def close(upto: int) -> None:
        nonlocal seg
        if seg is None:
            return
        g, vals, members = seg["graph"], seg["vals"], seg["members"]
        outs = [
            v
            for v in seg["produced"]
            if v in outputs or any(c not in members for c in consumers.get(v, ()))
        ]
        if outs:
            g.output(*[vals[v] for v in outs])
            compiled = g.compile(
                threads=threads, target=target, kernels="contraction", cache=kernels, layout=layout
            )
            steps.append(
                Segment(
                    nodes=seg["names"],
                    inputs=seg["inputs"],
                    outputs=outs,
                    compiled=compiled,
                    shapes=[shapes.get(v, ()) for v in outs],
                    graph_nodes=seg["ids"],
                )
            )
        seg = None

    for k, node in enumerate(nodes):
        name = node.name or f"{node.op_type}_{k}"
        if seg is None:
            seg = {
                "graph": Graph(f"onnx_{len(steps)}"),
                "vals": {},
                "inputs": [],
                "produced": [],
                "members": set(),
                "names": [],
                "ids": {},
            }
        g, vals = seg["graph"], seg["vals"]
        snapshot = (len(g.nodes), dict(vals), len(g.inputs), list(seg["inputs"]))
        # the node's float inputs from outside the run enter as inputs of its kernel
        for x in node.input:
            if x and x not in vals and x not in consts and x in shapes and x in floats:
                vals[x] = g.input(f"in{len(seg['inputs'])}", shapes[x])
                seg["inputs"].append(x)
        try:
            why = (
                lower_node(g, node, vals, consts, shapes)
                if node.output[0] in shapes
                else "no static output shape"
            )
        except GraphError as e:  # a shape pd.graph does not take
            why = str(e)
        if why is None:
            seg["produced"].append(node.output[0])
            seg["members"].add(k)
            seg["names"].append(name)
            # its pd.graph nodes (none for a view: the node of the value it passes on)
            seg["ids"][name] = list(range(snapshot[0], len(g.nodes))) or [vals[node.output[0]].id]
            continue
        # undo what the failed node added, close the run, run the node by NumPy
        del g.nodes[snapshot[0] :]
        seg["vals"], seg["inputs"] = snapshot[1], snapshot[3]
        del g.inputs[snapshot[2] :]
        close(k)
        one = onnx.helper.make_model(
            onnx.helper.make_graph(
                [node],
                name,
                [
                    onnx.helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None)
                    for x in node.input
                    if x and x not in consts
                ],
                [
                    onnx.helper.make_tensor_value_info(y, onnx.TensorProto.UNDEFINED, None)
                    for y in node.output
                ],
                [numpy_helper.from_array(consts[x], x) for x in node.input if x in consts],
            ),
            opset_imports=model.opset_import,
        )
        steps.append(
            Fallback(
                node=name,
                why=why,
                inputs=[x for x in node.input if x and x not in consts],
                outputs=list(node.output),
                session=ReferenceEvaluator(one),
            )
        )
    close(len(nodes))
    return inputs, outputs, steps, {}


def fold_constants(nodes: list, consts: dict, model) -> list:
    """The nodes left once every node whose inputs are all constants (a shape computation,
    ``Pow`` of two numbers, an ``Identity`` of a weight) has been run, once, by ONNX's
    reference implementation; their outputs join ``consts``."""
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    kept = []
    for node in nodes:
        ins = [x for x in node.input if x]
        if not ins or not all(x in consts for x in ins) or node.op_type in ("RandomNormal",):
            kept.append(node)
            continue
        one = onnx.helper.make_model(
            onnx.helper.make_graph(
                [node],
                "fold",
                [],
                [
                    onnx.helper.make_tensor_value_info(y, onnx.TensorProto.UNDEFINED, None)
                    for y in node.output
                ],
                [numpy_helper.from_array(np.asarray(consts[x]), x) for x in ins],
            ),
            opset_imports=model.opset_import,
        )
        for y, v in zip(node.output, ReferenceEvaluator(one).run(None, {}), strict=True):
            consts[y] = np.asarray(v)
    return kept
