"""``pd.graph``: chains of operators built in Python, compiled into ONE fused polydl kernel.

::

    g = pd.graph.Graph()
    x = g.input("x", (1, 64, 56, 56))
    y = g.conv2d(x, w1, padding=1)                 # NCHW; weights are NumPy arrays
    y = g.batch_norm(y, mean, var, gamma, beta)     # folded into w1 and a bias at build time
    y = g.relu(y)
    y = g.conv2d(y, w2)                             # 1x1
    y = g.relu(g.add(y, x))                         # the residual, then ReLU
    g.output(y)
    f = g.compile(threads=2)                        # one kernel: f(x_array) -> y_array
    print(f.show("fusion")); print(f.show("loops"))

The graph becomes one DSL-level kernel (:mod:`polydl.graph.lower`): each contraction (conv,
linear, matmul) is the kernel of :mod:`polydl.ops`, each elementwise operator a statement
updating its input's elements in place (when nothing else reads them), intermediates scratch
tensors of the call. The compiler then folds the elementwise updates after a contraction into
its BRGEMM calls (bias, batch norm, residual add, activations) and fuses the other nests where
legal and profitable (softmax rows): :meth:`CompiledGraph.show` ``("fusion")`` says which.

Operators: ``conv2d`` (NCHW, stride, padding, dilation, groups: depthwise), ``linear``
(``x @ w (+ b)``, ``w`` of shape ``(in, out)``), ``matmul`` (2-D or batched 3-D),
``batch_norm`` (per channel, inference), ``bias_add``, ``relu``, ``gelu`` (erf or tanh),
``silu``, ``sigmoid``, ``tanh``, ``erf``, ``sqrt``, ``clip``, ``add``, ``mul``, ``scale``,
``shift``, ``softmax`` and ``layer_norm`` (last axis of a 2-D value), ``max_pool2d``,
``avg_pool2d``, ``global_avg_pool``, ``concat``, ``transpose`` and ``reshape`` (a view, no
kernel). Anything else raises :class:`GraphError` naming the operator.
``compile(kernels="contraction")``: a kernel per contraction and its elementwise chain,
identical ones compiled once (:mod:`polydl.graph.groups`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np

from ..errors import PolyDLError

UNARY = ("relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "erf", "sqrt")
OPERATORS = (
    "input",
    "output",
    "conv2d",
    "linear",
    "matmul",
    "batch_norm",
    "bias_add",
    "add",
    "mul",
    "scale",
    "shift",
    "clip",
    "softmax",
    "layer_norm",
    "max_pool2d",
    "avg_pool2d",
    "global_avg_pool",
    "concat",
    "reshape",
    "transpose",
    *UNARY,
)
VIEWS = ("reshape",)  # no kernel: the same elements under another shape


class GraphError(PolyDLError):
    """A graph that polydl cannot build: an unknown operator, mismatched shapes."""


@dataclass(frozen=True, kw_only=True)
class Value:
    """One tensor of the graph (float32): its producer's node index and its shape."""

    id: int
    shape: tuple[int, ...]
    name: str

    def __repr__(self) -> str:
        return f"<pd.graph value {self.name} {self.shape}>"


@dataclass(kw_only=True)
class Node:
    op: str
    inputs: tuple[Value, ...]
    out: Value
    attrs: dict = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    line: int = 0
    filename: str = "<graph>"


def _caller() -> tuple[str, int]:
    frame = inspect.currentframe()
    here = __file__
    while frame is not None and frame.f_code.co_filename == here:
        frame = frame.f_back
    if frame is None:
        return "<graph>", 0
    return frame.f_code.co_filename, frame.f_lineno


def _f32(a, what: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    if shape is not None and arr.shape != shape:
        raise GraphError(f"{what}: expected shape {shape}, got {arr.shape}")
    return arr


class Graph:
    """A builder of operator chains; :meth:`compile` makes one fused kernel of it."""

    def __init__(self, name: str = "graph"):
        self.name = name
        self.nodes: list[Node] = []
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.filename, self.line = _caller()

    def __getattr__(self, op: str):
        if op.startswith("_"):
            raise AttributeError(op)
        raise GraphError(
            f"pd.graph has no operator {op!r}; it supports {', '.join(sorted(set(OPERATORS)))} "
            "(pd.compile a DSL kernel of your own for anything else)"
        )

    # ------------------------------------------------------------ building
    def _add(self, op: str, inputs, shape, *, attrs=None, params=None) -> Value:
        filename, line = _caller()
        for v in inputs:
            if not isinstance(v, Value) or v.id >= len(self.nodes) or self.nodes[v.id].out != v:
                raise GraphError(f"{op} (line {line}): {v!r} is not a value of this graph")
        label = (attrs or {}).get("name", f"{op}{len(self.nodes)}")
        out = Value(id=len(self.nodes), shape=tuple(int(d) for d in shape), name=label)
        node = Node(
            op=op,
            inputs=tuple(inputs),
            out=out,
            attrs=dict(attrs or {}),
            params=dict(params or {}),
            line=line,
            filename=filename,
        )
        self.nodes.append(node)
        return out

    def input(self, name: str, shape: tuple[int, ...]) -> Value:
        if not name.isidentifier():
            raise GraphError(f"input name {name!r} is not an identifier")
        v = self._add("input", (), shape, attrs={"name": name})
        self.inputs.append(v)
        return v

    def output(self, *values: Value) -> None:
        for v in values:
            if not isinstance(v, Value):
                raise GraphError(f"output: {v!r} is not a value of this graph")
            self.outputs.append(v)

    def conv2d(
        self, x: Value, w, bias=None, *, stride=1, padding=0, dilation=1, groups: int = 1
    ) -> Value:
        """NCHW convolution: ``x`` of shape (N, C, H, W), ``w`` (K, C/groups, R, S)
        (``groups=C``: depthwise)."""
        from ..ops import conv_shape

        if len(x.shape) != 4:
            raise GraphError(f"conv2d: input {x.name} must be NCHW, got shape {x.shape}")
        w = _f32(w, "conv2d weight")
        N, C, H, W = x.shape
        if groups < 1 or C % groups or (w.ndim == 4 and w.shape[0] % groups):
            raise GraphError(
                f"conv2d: groups={groups} does not divide the {C} channels of {x.name} and the "
                f"filters of the weight {w.shape}"
            )
        if w.ndim != 4 or w.shape[1] * groups != C:
            raise GraphError(
                f"conv2d: weight of shape {w.shape} does not take {C} channels in {groups} group(s)"
            )
        K, _, R, S = w.shape
        try:
            P, Q = conv_shape(H, W, R, S, stride, padding, dilation)
        except ValueError as e:
            raise GraphError(f"{e} ({x.name})") from None
        params = {"w": w}
        if bias is not None:
            params["b"] = _f32(bias, "conv2d bias", (K,))
        attrs = {"stride": stride, "padding": padding}
        if dilation not in (1, (1, 1)):
            attrs["dilation"] = dilation
        if groups != 1:
            attrs["groups"] = int(groups)
        return self._add("conv2d", (x,), (N, K, P, Q), attrs=attrs, params=params)

    def linear(self, x: Value, w, bias=None) -> Value:
        """``x @ w (+ bias)``: ``x`` (M, K), ``w`` (K, N)."""
        w = _f32(w, "linear weight")
        if len(x.shape) != 2 or w.ndim != 2 or w.shape[0] != x.shape[1]:
            raise GraphError(f"linear: {x.name} {x.shape} @ weight {w.shape} does not multiply")
        params = {"w": w}
        if bias is not None:
            params["b"] = _f32(bias, "linear bias", (w.shape[1],))
        return self._add("linear", (x,), (x.shape[0], w.shape[1]), params=params)

    def matmul(self, a: Value, b: Value) -> Value:
        """``a @ b``: 2-D, or batched over the leading axes of 3-D values (B, M, K) @ (B, K, N)."""
        if (
            len(a.shape) != len(b.shape)
            or len(a.shape) not in (2, 3)
            or a.shape[:-2] != b.shape[:-2]
            or a.shape[-1] != b.shape[-2]
        ):
            raise GraphError(f"matmul: {a.name} {a.shape} @ {b.name} {b.shape} does not multiply")
        return self._add("matmul", (a, b), (*a.shape[:-1], b.shape[-1]))

    def batch_norm(self, x: Value, mean, var, gamma=None, beta=None, eps: float = 1e-5) -> Value:
        """Inference batch norm over the channel axis (1 of NCHW, the last of 2-D values)."""
        c = x.shape[1] if len(x.shape) == 4 else x.shape[-1]
        mean, var = _f32(mean, "batch_norm mean", (c,)), _f32(var, "batch_norm var", (c,))
        gamma = np.ones(c, np.float32) if gamma is None else _f32(gamma, "batch_norm gamma", (c,))
        beta = np.zeros(c, np.float32) if beta is None else _f32(beta, "batch_norm beta", (c,))
        scale = (gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)).astype(
            np.float32
        )
        shift = (beta - mean.astype(np.float64) * scale).astype(np.float32)
        return self._add("batch_norm", (x,), x.shape, params={"s": scale, "t": shift})

    def bias_add(self, x: Value, b) -> Value:
        c = x.shape[1] if len(x.shape) == 4 else x.shape[-1]
        return self._add("bias_add", (x,), x.shape, params={"b": _f32(b, "bias", (c,))})

    def add(self, a: Value, b: Value) -> Value:
        if a.shape != b.shape:
            raise GraphError(f"add: shapes {a.shape} and {b.shape} differ (no broadcasting)")
        return self._add("add", (a, b), a.shape)

    def mul(self, a: Value, b: Value) -> Value:
        if a.shape != b.shape:
            raise GraphError(f"mul: shapes {a.shape} and {b.shape} differ (no broadcasting)")
        return self._add("mul", (a, b), a.shape)

    def scale(self, x: Value, factor: float) -> Value:
        return self._add("scale", (x,), x.shape, attrs={"factor": float(factor)})

    def shift(self, x: Value, offset: float) -> Value:
        """``x + offset`` (a scalar)."""
        return self._add("shift", (x,), x.shape, attrs={"offset": float(offset)})

    def clip(self, x: Value, lo: float | None = None, hi: float | None = None) -> Value:
        """``x`` clamped to ``[lo, hi]`` (ReLU6: ``clip(x, 0, 6)``)."""
        lo = -3.0e38 if lo is None else float(lo)
        hi = 3.0e38 if hi is None else float(hi)
        return self._add("clip", (x,), x.shape, attrs={"lo": lo, "hi": hi})

    def softmax(self, x: Value) -> Value:
        if len(x.shape) != 2:
            raise GraphError(f"softmax: over the last axis of a 2-D value, got {x.shape}")
        return self._add("softmax", (x,), x.shape)

    def layer_norm(self, x: Value, gamma=None, beta=None, eps: float = 1e-5) -> Value:
        """Normalisation over the last axis of a 2-D value (rows of mean 0, variance 1), then
        ``* gamma + beta`` per column."""
        if len(x.shape) != 2:
            raise GraphError(f"layer_norm: over the last axis of a 2-D value, got {x.shape}")
        n = x.shape[1]
        gamma = np.ones(n, np.float32) if gamma is None else _f32(gamma, "layer_norm gamma", (n,))
        beta = np.zeros(n, np.float32) if beta is None else _f32(beta, "layer_norm beta", (n,))
        return self._add(
            "layer_norm", (x,), x.shape, attrs={"eps": float(eps)}, params={"g": gamma, "b": beta}
        )

    def reshape(self, x: Value, shape: tuple[int, ...]) -> Value:
        """The same elements (C order) under another shape: a view, no kernel."""
        shape = tuple(int(d) for d in shape)
        if int(np.prod(shape)) != int(np.prod(x.shape)) or min(shape, default=1) < 1:
            raise GraphError(f"reshape: {x.name} {x.shape} has no view of shape {shape}")
        if shape == x.shape:
            return x
        return self._add("reshape", (x,), shape)

    def transpose(self, x: Value, perm: tuple[int, ...]) -> Value:
        """Axes permuted: output axis ``d`` is input axis ``perm[d]`` (a copying kernel)."""
        perm = tuple(int(p) for p in perm)
        if sorted(perm) != list(range(len(x.shape))):
            raise GraphError(f"transpose: {perm} is not a permutation of the axes of {x.shape}")
        if perm == tuple(range(len(perm))):
            return x
        shape = tuple(x.shape[p] for p in perm)
        return self._add("transpose", (x,), shape, attrs={"perm": perm})

    def concat(self, values, axis: int = 1) -> Value:
        """The values joined along ``axis`` (their other extents equal)."""
        values = list(values)
        if not values:
            raise GraphError("concat: no values")
        rank = len(values[0].shape)
        axis = axis + rank if axis < 0 else axis
        rest = [v.shape[:axis] + v.shape[axis + 1 :] for v in values]
        if not 0 <= axis < rank or any(
            len(v.shape) != rank or r != rest[0] for v, r in zip(values, rest, strict=True)
        ):
            raise GraphError(
                f"concat: shapes {[v.shape for v in values]} do not join along axis {axis}"
            )
        shape = list(values[0].shape)
        shape[axis] = sum(v.shape[axis] for v in values)
        return self._add("concat", tuple(values), tuple(shape), attrs={"axis": axis})

    def max_pool2d(self, x: Value, kernel_size, *, stride=None, padding=0) -> Value:
        """NCHW max pooling (``stride`` defaults to ``kernel_size``; padding takes no part)."""
        from ..ops import _pair, conv_shape

        if len(x.shape) != 4:
            raise GraphError(f"max_pool2d: input {x.name} must be NCHW, got shape {x.shape}")
        R, S = _pair(kernel_size, "kernel_size")
        stride = (R, S) if stride is None else _pair(stride, "stride")
        N, C, H, W = x.shape
        P, Q = conv_shape(H, W, R, S, stride, padding)
        attrs = {"kernel": (R, S), "stride": stride, "padding": _pair(padding, "padding")}
        return self._add("max_pool2d", (x,), (N, C, P, Q), attrs=attrs)

    def avg_pool2d(
        self, x: Value, kernel_size, *, stride=None, padding=0, count_include_pad: bool = True
    ) -> Value:
        """NCHW average pooling; ``count_include_pad=False``: padding takes no part in the
        divisor (ONNX's default), True: it counts (torch's default)."""
        from ..ops import _pair, conv_shape

        if len(x.shape) != 4:
            raise GraphError(f"avg_pool2d: input {x.name} must be NCHW, got shape {x.shape}")
        R, S = _pair(kernel_size, "kernel_size")
        stride = (R, S) if stride is None else _pair(stride, "stride")
        ph, pw = _pair(padding, "padding")
        N, C, H, W = x.shape
        P, Q = conv_shape(H, W, R, S, stride, (ph, pw))
        # each output's divisor, computed here: the window's pixels inside the image (or all)
        rows = np.arange(P) * stride[0] - ph
        cols = np.arange(Q) * stride[1] - pw
        if count_include_pad:
            nr = np.minimum(rows + R, H + ph) - rows
            nc = np.minimum(cols + S, W + pw) - cols
        else:
            nr = np.minimum(rows + R, H) - np.maximum(rows, 0)
            nc = np.minimum(cols + S, W) - np.maximum(cols, 0)
        inv = (1.0 / (nr[:, None] * nc[None, :])).astype(np.float32)
        attrs = {"kernel": (R, S), "stride": stride, "padding": (ph, pw)}
        return self._add("avg_pool2d", (x,), (N, C, P, Q), attrs=attrs, params={"inv": inv})

    def global_avg_pool(self, x: Value) -> Value:
        """The mean over each channel's pixels: (N, C, H, W) -> (N, C)."""
        if len(x.shape) != 4:
            raise GraphError(f"global_avg_pool: input {x.name} must be NCHW, got {x.shape}")
        return self._add("global_avg_pool", (x,), x.shape[:2])

    def relu(self, x: Value) -> Value:
        return self._add("relu", (x,), x.shape)

    def gelu(self, x: Value, approximate: str = "none") -> Value:
        if approximate not in ("none", "tanh"):
            raise GraphError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
        return self._add("gelu_tanh" if approximate == "tanh" else "gelu", (x,), x.shape)

    def silu(self, x: Value) -> Value:
        return self._add("silu", (x,), x.shape)

    def sigmoid(self, x: Value) -> Value:
        return self._add("sigmoid", (x,), x.shape)

    def tanh(self, x: Value) -> Value:
        return self._add("tanh", (x,), x.shape)

    def erf(self, x: Value) -> Value:
        return self._add("erf", (x,), x.shape)

    def sqrt(self, x: Value) -> Value:
        return self._add("sqrt", (x,), x.shape)

    # ------------------------------------------------------------ compiling
    def compile(
        self,
        *,
        threads: int | None = None,
        target=None,
        fuse: bool | str = True,
        kernels: str = "one",
        cache: dict | None = None,
        layout: str = "nchw",
    ):
        """One kernel of the whole graph (:class:`polydl.graph.lower.CompiledGraph`);
        ``kernels="contraction"``: one per contraction and its elementwise chain, identical
        ones compiled once (:mod:`polydl.graph.groups`)."""
        from .lower import compile_graph

        if not self.outputs:
            raise GraphError(f"graph {self.name} has no output (call g.output(value))")
        return compile_graph(
            self,
            threads=threads,
            target=target,
            fuse=fuse,
            kernels=kernels,
            cache=cache,
            layout=layout,
        )


__all__ = ["Graph", "GraphError", "Value"]
