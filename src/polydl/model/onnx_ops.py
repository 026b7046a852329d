"""ONNX operators as :mod:`polydl.graph` nodes: :func:`lower_node` adds one ONNX node to a
graph, or says why it cannot (the node then falls back to NumPy).

Values keep the shape their producer gives them, which may differ from the ONNX shape with the
same elements in the same order (a linear layer on ``(B, S, D)`` computes ``(B*S, F)``); a
consumer that needs another shape takes a view (``g.reshape``, no kernel, no copy):

    MatMul (B, S, D) x const (D, F)  ->  view (B*S, D), linear               (B*S, F)
    MatMul (B, H, S, D) x (B, H, D, T) -> views (B*H, S, D), (B*H, D, T), batched matmul
    Softmax / LayerNormalization over the last axis -> view (rows, last), the row-wise node
    Reshape, Flatten, Squeeze, Unsqueeze -> a view of the ONNX output shape
    Transpose, Concat -> a copying kernel on the ONNX shapes
    Add / Mul / Sub / Div with a scalar constant -> shift / scale; with one value per channel
    (axis 1 of NCHW, else the last axis) -> bias_add (Add, Sub)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..graph import Graph, Value

UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Erf": "erf", "Sqrt": "sqrt"}
VIEW_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


def attrs_of(node) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def channel_vector(c: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """``c`` as one value per channel (axis 1 of NCHW, else the last axis) if it broadcasts
    so over a value of ONNX shape ``shape``."""
    chans = shape[1] if len(shape) == 4 else shape[-1]
    if c.size != chans or c.ndim > len(shape):
        return None
    lead = (1,) * (len(shape) - c.ndim) + c.shape
    want = [1] * len(shape)
    want[1 if len(shape) == 4 else -1] = chans
    if list(lead) != want:
        return None
    return np.ascontiguousarray(c.reshape(chans), dtype=np.float32)


def _pads(a: dict) -> tuple[int, int] | None:
    pads = a.get("pads", [0, 0, 0, 0])
    if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
        return None
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        return None
    return pads[0], pads[1]


def lower_node(g: Graph, node, vals: dict, consts: dict, shapes: dict) -> str | None:
    """Add ``node`` to ``g`` (its output's value into ``vals``); the reason it cannot, else
    None. ``shapes``: every ONNX value's static shape."""
    op, a = node.op_type, attrs_of(node)
    ins = list(node.input)
    onnx_shape = lambda i: shapes[ins[i]]  # noqa: E731

    def val(i) -> Value | None:
        return vals.get(ins[i]) if i < len(ins) and ins[i] else None

    def const(i) -> np.ndarray | None:
        return consts.get(ins[i]) if i < len(ins) and ins[i] else None

    def view(v: Value, shape) -> Value:
        return g.reshape(v, tuple(shape))

    def rows(v: Value, shape) -> Value:  # (elements / last, last): the last ONNX axis a row
        return view(v, (math.prod(shape[:-1]), shape[-1]))

    out_shape = shapes[node.output[0]]
    x = val(0)
    if op in ("Add", "Mul", "Sub", "Div"):
        out = _binary(g, op, ins, vals, consts, shapes)
        if isinstance(out, str):
            return out
    elif x is None:
        return "its input is not a float tensor of this kernel"
    elif op == "Conv":
        w = const(1)
        pads = _pads(a)
        if w is None:
            return "weights not constant"
        if pads is None or len(onnx_shape(0)) != 4:
            return "not a 2-D convolution with symmetric explicit padding"
        out = g.conv2d(
            view(x, onnx_shape(0)),
            w,
            const(2),
            stride=tuple(a.get("strides", [1, 1])),
            padding=pads,
            dilation=tuple(a.get("dilations", [1, 1])),
            groups=a.get("group", 1),
        )
    elif op == "Gemm":
        w, c = const(1), const(2)
        if w is None or a.get("transA", 0) or a.get("alpha", 1.0) != 1.0:
            return "B not constant, transA or alpha"
        w = w.T if a.get("transB", 0) else w
        if c is not None and (c.size != w.shape[1] or a.get("beta", 1.0) != 1.0):
            return "C is not one bias per column, or beta"
        out = g.linear(
            view(x, onnx_shape(0)), np.ascontiguousarray(w), None if c is None else c.reshape(-1)
        )
    elif op == "MatMul":
        sa = onnx_shape(0)
        b_const, b_val = const(1), val(1)
        if len(sa) < 2:
            return "a matmul of a vector"
        if b_const is not None and b_const.ndim == 2:
            out = g.linear(rows(x, sa), b_const)
        elif (
            b_val is not None and len(shapes[ins[1]]) == len(sa) and shapes[ins[1]][:-2] == sa[:-2]
        ):
            sb = shapes[ins[1]]
            if len(sa) == 2:
                out = g.matmul(view(x, sa), view(b_val, sb))
            else:
                batch = math.prod(sa[:-2])
                out = g.matmul(view(x, (batch, *sa[-2:])), view(b_val, (batch, *sb[-2:])))
        else:
            return "B is neither a 2-D constant nor a value of the same batch shape"
    elif op in UNARY:
        out = getattr(g, UNARY[op])(x)
    elif op == "Clip":
        lo, hi = const(1), const(2)
        if (len(ins) > 1 and ins[1] and lo is None) or (len(ins) > 2 and ins[2] and hi is None):
            return "bounds not constant"
        lo = a.get("min") if lo is None else float(lo.reshape(-1)[0])
        hi = a.get("max") if hi is None else float(hi.reshape(-1)[0])
        out = g.clip(x, lo, hi)
    elif op == "BatchNormalization":
        s, b, m, v = (const(i) for i in range(1, 5))
        if any(t is None for t in (s, b, m, v)):
            return "statistics not constant"
        out = g.batch_norm(x, m, v, s, b, eps=a.get("epsilon", 1e-5))
    elif op in ("Softmax", "LayerNormalization"):
        sa = onnx_shape(0)
        if a.get("axis", -1) not in (-1, len(sa) - 1):
            return f"{op} other than over the last axis"
        if op == "Softmax":
            out = g.softmax(rows(x, sa))
        else:
            scale, bias = const(1), const(2)
            if scale is None or (len(ins) > 2 and ins[2] and bias is None) or len(node.output) > 1:
                return "scale or bias not constant, or its statistics read"
            out = g.layer_norm(
                rows(x, sa),
                scale.reshape(-1),
                None if bias is None else bias.reshape(-1),
                eps=a.get("epsilon", 1e-5),
            )
    elif op in ("MaxPool", "AveragePool"):
        pads = _pads(a)
        if pads is None or a.get("ceil_mode", 0) or set(a.get("dilations", [1, 1])) != {1}:
            return "asymmetric padding, ceil_mode or dilation"
        ks = tuple(a["kernel_shape"])
        kw = dict(stride=tuple(a.get("strides", ks)), padding=pads)
        x4 = view(x, onnx_shape(0))
        if op == "MaxPool":
            if len(node.output) > 1:
                return "its indices read"
            out = g.max_pool2d(x4, ks, **kw)
        else:
            out = g.avg_pool2d(x4, ks, count_include_pad=bool(a.get("count_include_pad", 0)), **kw)
    elif op == "GlobalAveragePool":
        out = g.global_avg_pool(view(x, onnx_shape(0)))  # (N, C): (N, C, 1, 1) in ONNX
    elif op in VIEW_OPS:
        out = view(x, out_shape)
    elif op == "Transpose":
        perm = a.get("perm", list(range(len(onnx_shape(0))))[::-1])
        out = g.transpose(view(x, onnx_shape(0)), tuple(perm))
    elif op == "Concat":
        parts = [val(i) for i in range(len(ins))]
        if any(p is None for p in parts):
            return "an input is not a value of this kernel"
        out = g.concat([view(p, onnx_shape(i)) for i, p in enumerate(parts)], axis=a["axis"])
    elif op in ("Identity", "Dropout"):
        out = x
    else:
        return f"operator {op} is not one polydl compiles"
    vals[node.output[0]] = out
    return None


def _binary(g: Graph, op: str, ins, vals, consts, shapes) -> Value | str:
    """Add / Mul / Sub / Div of two values of one shape, or of a value and a scalar or a
    per-channel constant (either side of a commutative one)."""
    a, b = (vals.get(n) if n else None for n in ins[:2])
    ca, cb = (consts.get(n) if n else None for n in ins[:2])
    if a is not None and b is not None:
        if shapes[ins[0]] != shapes[ins[1]]:
            return "broadcasting between two values"
        # one shape for both: the view taken of the operand that is the kernel's input (the
        # other, a contraction's output, keeps its shape and the add folds into its calls)
        if g.nodes[a.id].op == "input" and g.nodes[b.id].op != "input":
            a = g.reshape(a, b.shape)
        else:
            b = g.reshape(b, a.shape)
        if op == "Add":
            return g.add(a, b)
        if op == "Mul":
            return g.mul(a, b)
        if op == "Sub":
            return g.add(a, g.scale(b, -1.0))
        return "a division of two values"
    if a is None and b is not None and op in ("Add", "Mul"):  # constant first: commute
        a, ca, cb, ins = b, None, ca, [ins[1], ins[0]]
    if a is None or cb is None:
        return "its input is not a float tensor of this kernel"
    shape = shapes[ins[0]]
    if cb.size == 1:
        c = float(cb.reshape(-1)[0])
        if op == "Add":
            return g.shift(a, c)
        if op == "Sub":
            return g.shift(a, -c)
        if op == "Mul":
            return g.scale(a, c)
        return g.scale(a, 1.0 / c) if c != 0 else "a division by zero"
    vec = channel_vector(cb, shape)
    if vec is not None and op in ("Add", "Sub"):
        # the graph's channel axis: 1 of a 4-D value, else the last
        a = g.reshape(a, shape if len(shape) == 4 else (math.prod(shape[:-1]), shape[-1]))
        return g.bias_add(a, vec if op == "Add" else -vec)
    return "broadcasting other than a per-channel bias or a scalar"
