"""ONNX nodes as steps: runs of supported nodes as fused :mod:`polydl.graph` kernels, every other
node a NumPy fallback (ONNX's reference implementation of that one node).

Before (ONNX)::

    Conv -> BatchNormalization -> Relu -> Conv -> Add -> Relu -> GlobalAveragePool -> Flatten -> Gemm

After (steps)::

    Segment 0: conv2d, batch_norm (folded), relu, conv2d, add, relu     one fused kernel
    Fallback:  GlobalAveragePool                                          NumPy
    Fallback:  Flatten                                                    NumPy
    Segment 1: linear                                                     one kernel

Shapes come from the model's static input shapes (or the example inputs) through ONNX shape
inference; constants are the initializers (and Constant nodes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..graph import Graph, GraphError


@dataclass
class Segment:
    """A run of nodes compiled as one polydl graph."""

    nodes: list[str]
    inputs: list[str]  # ONNX value names the kernel takes, in order
    outputs: list[str]  # ONNX value names it returns, in order
    compiled: Any = field(repr=False, default=None)
    shapes: list[tuple[int, ...]] = field(default_factory=list)  # the outputs' ONNX shapes

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


def _attrs(node) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _channel_vector(c: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """``c`` as one value per channel (axis 1 of NCHW, the last of 2-D) if it broadcasts so."""
    chans = shape[1] if len(shape) == 4 else shape[-1]
    if c.size != chans:
        return None
    if len(shape) == 4 and c.ndim in (3, 4) and c.shape[-2:] != (1, 1):
        return None
    if len(shape) == 2 and c.ndim == 2 and c.shape[0] != 1:
        return None
    return np.ascontiguousarray(c.reshape(chans), dtype=np.float32)


def _lower_node(g: Graph, node, vals: dict, consts: dict, shapes: dict) -> str | None:
    """Add ``node`` to ``g`` (its outputs into ``vals``); the reason it cannot, else None."""
    op, a = node.op_type, _attrs(node)
    ins = list(node.input)

    def val(i):
        return vals.get(ins[i]) if i < len(ins) and ins[i] else None

    def const(i):
        return consts.get(ins[i]) if i < len(ins) and ins[i] else None

    x = val(0)
    if x is None and op not in ("MatMul",):
        return "its input is not a float tensor of this kernel"
    out = None
    if op == "Conv":
        w = const(1)
        pads = a.get("pads", [0, 0, 0, 0])
        if w is None or a.get("group", 1) != 1 or set(a.get("dilations", [1, 1])) != {1}:
            return "weights not constant, groups or dilation"
        if (
            len(pads) != 4
            or pads[0] != pads[2]
            or pads[1] != pads[3]
            or a.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET")
        ):
            return "asymmetric or automatic padding"
        out = g.conv2d(
            x, w, const(2), stride=tuple(a.get("strides", [1, 1])), padding=(pads[0], pads[1])
        )
    elif op == "Gemm":
        w, c = const(1), const(2)
        if (
            w is None
            or a.get("transA", 0)
            or a.get("alpha", 1.0) != 1.0
            or a.get("beta", 1.0) != 1.0
        ):
            return "B not constant, transA, alpha or beta"
        w = w.T if a.get("transB", 0) else w
        if c is not None and c.size != w.shape[1]:
            return "C is not one bias per column"
        out = g.linear(x, np.ascontiguousarray(w), None if c is None else c.reshape(-1))
    elif op == "MatMul":
        b_const, b_val = const(1), val(1)
        if x is None or len(x.shape) != 2:
            return "not a 2-D matmul of this kernel's values"
        if b_const is not None and b_const.ndim == 2:
            out = g.linear(x, b_const)
        elif b_val is not None and len(b_val.shape) == 2:
            out = g.matmul(x, b_val)
        else:
            return "B is neither a 2-D constant nor a 2-D value"
    elif op in ("Add", "Mul"):
        y, cy = val(1), const(1)
        if y is not None and y.shape == x.shape:
            out = g.add(x, y) if op == "Add" else g.mul(x, y)
        elif cy is not None and op == "Add" and _channel_vector(cy, x.shape) is not None:
            out = g.bias_add(x, _channel_vector(cy, x.shape))
        elif cy is not None and op == "Mul" and cy.size == 1:
            out = g.scale(x, float(cy.reshape(-1)[0]))
        else:
            return "broadcasting other than a per-channel bias or a scalar factor"
    elif op in ("Relu", "Sigmoid", "Tanh"):
        out = getattr(g, op.lower())(x)
    elif op == "BatchNormalization":
        s, b, m, v = (const(i) for i in range(1, 5))
        if any(t is None for t in (s, b, m, v)):
            return "statistics not constant"
        out = g.batch_norm(x, m, v, s, b, eps=a.get("epsilon", 1e-5))
    elif op == "Softmax":
        if len(x.shape) != 2 or a.get("axis", -1) not in (-1, 1):
            return "softmax other than over the last axis of a 2-D value"
        out = g.softmax(x)
    elif op == "MaxPool":
        pads = a.get("pads", [0, 0, 0, 0])
        if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3] or a.get("ceil_mode", 0):
            return "asymmetric padding or ceil_mode"
        if set(a.get("dilations", [1, 1])) != {1}:
            return "dilation"
        ks = tuple(a["kernel_shape"])
        out = g.max_pool2d(x, ks, stride=tuple(a.get("strides", ks)), padding=(pads[0], pads[1]))
    elif op == "GlobalAveragePool":
        if len(x.shape) != 4:
            return "not NCHW"
        out = g.global_avg_pool(x)
        vals[node.output[0]] = out
        # (N, C, 1, 1) in ONNX: a Flatten right after it reads the same (N, C) elements
        return None
    elif op == "Flatten":
        prod = g.nodes[x.id]
        if prod.op != "global_avg_pool" or a.get("axis", 1) != 1:
            return "a flatten other than of a global pooling's (N, C, 1, 1)"
        out = x
    elif op in ("Identity", "Dropout"):
        out = x
    else:
        return f"operator {op} is not one polydl compiles"
    vals[node.output[0]] = out
    return None


def plan_steps(model, shapes: dict, *, threads=None, target=None):
    """(input names, output names, steps, constants) of ``model``."""
    import onnx
    from onnx import numpy_helper, shape_inference
    from onnx.reference import ReferenceEvaluator

    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(_attrs(n)["value"])
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
    outputs = [o.name for o in model.graph.output]
    nodes = [n for n in model.graph.node if n.op_type != "Constant"]
    consumers: dict[str, set[int]] = {}
    for k, n in enumerate(nodes):
        for x in n.input:
            consumers.setdefault(x, set()).add(k)

    steps: list = []
    seg: dict | None = None

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
            compiled = g.compile(threads=threads, target=target)
            steps.append(
                Segment(
                    nodes=seg["names"],
                    inputs=seg["inputs"],
                    outputs=outs,
                    compiled=compiled,
                    shapes=[shapes.get(v, ()) for v in outs],
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
            }
        g, vals = seg["graph"], seg["vals"]
        snapshot = (len(g.nodes), dict(vals), len(g.inputs), list(seg["inputs"]))
        # the node's float inputs from outside the run enter as inputs of its kernel
        for x in node.input:
            if x and x not in vals and x not in consts and x in shapes and len(shapes[x]) in (2, 4):
                vals[x] = g.input(f"in{len(seg['inputs'])}", shapes[x])
                seg["inputs"].append(x)
        try:
            why = (
                _lower_node(g, node, vals, consts, shapes)
                if node.output[0] in shapes
                else "no static output shape"
            )
        except GraphError as e:  # a shape pd.graph does not take
            why = str(e)
        if why is None:
            seg["produced"].append(node.output[0])
            seg["members"].add(k)
            seg["names"].append(name)
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
