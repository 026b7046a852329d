"""A :class:`~polydl.graph.Graph` as one ``ir.Kernel``, compiled by the ordinary pipeline.

Before (a graph)::

    y = conv2d(x, w1); y = batch_norm(y, ...); y = relu(y); z = linear(...); ...

After (one kernel, each node's statements a nest of their own, in graph order)::

    O1[n, k, p, q] = 0; O1 += Wt1[k, c, r, s] * I[n, c, ...]       conv2d (pd.ops.conv2d)
    O1[n, k, p, q] = O1[n, k, p, q] + b1[k]                          the folded batch norm
    O1[n, k, p, q] = max(O1[n, k, p, q], 0.0)                        relu, in place

Build-time rewrites: a batch norm right after a conv or linear (its only reader) is folded
into that node's weights and bias. Buffers: graph inputs, parameters and outputs are the
kernel's arguments; every other value is a scratch tensor of the call (``Kernel.temps``); an
elementwise node writes its input's buffer in place when nothing else reads that value (and
the value is not an input or output of the graph), so that its statement follows the
producer's on the same elements, where the compiler folds it into the BRGEMM store. A pack or
repad (the blocked layout's bordered conv inputs) writing a scratch tensor also writes its zero
border, every call (scratch is allocated uninitialised); one writing a kernel's output leaves
the border to the caller (:class:`CompiledGraph` keeps that buffer, zeroed once).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from .. import ops
from ..ir import poly
from ..ir.nodes import (
    BinOp,
    Expr,
    IExpr,
    Int,
    IntOp,
    Kernel,
    Load,
    Num,
    Statement,
    TensorArg,
    UnOp,
    Var,
)
from ..transform.fuse import fused_schedules, spine
from . import VIEWS, Graph, GraphError, Node, Value
from .compiled import CompiledGraph

# as pd.ops.conv2d, pd.ops.matmul and pd.ops.batch_matmul name them (other ranks: a0, a1, ...)
# (5-D: the blocked layout's [N, K/kb, P, Q, kb], as pd.ops.conv2d(layout="nchwc") names them)
ITERATORS = {
    5: ("n", "kb", "p", "q", "kv"),
    4: ("n", "k", "p", "q"),
    3: ("b", "i", "j"),
    2: ("i", "j"),
    1: ("i",),
}


def iterators(rank: int) -> tuple[str, ...]:
    return ITERATORS.get(rank) or tuple(f"a{d}" for d in range(rank))


@dataclass(frozen=True, kw_only=True)
class Form:
    """How the statements over a value's elements name them: their iterators (outer first),
    the element's index in those iterators and each iterator's extent. A linear on blocked
    weights writes its ``[M, N]`` output as ``C[i, jb * nb + jv]`` over ``(i, jb, jv)``; the
    elementwise statements after it (bias, activation, residual) use the same form, so that
    they update the contraction's elements as it names them and fold into its calls."""

    iterators: tuple[str, ...]
    index: tuple[IExpr, ...]
    extents: tuple[int, ...]

    @staticmethod
    def plain(shape: tuple[int, ...]) -> Form:
        its = iterators(len(shape))
        return Form(iterators=its, index=tuple(Var(name=v) for v in its), extents=tuple(shape))

    @staticmethod
    def column_blocked(M: int, N: int, nb: int) -> Form:
        col = IntOp(op="+", a=IntOp(op="*", a=Var(name="jb"), b=Int(value=nb)), b=Var(name="jv"))
        return Form(
            iterators=("i", "jb", "jv"), index=(Var(name="i"), col), extents=(M, N // nb, nb)
        )


# False: every linear's weights kept [K, N] (benchmarks/fusion.py --blocked-ab compares)
BLOCKED_WEIGHTS = True


def linear_block(N: int) -> int | None:
    """Columns per block of a linear's weights laid out ``[N/nb][K][nb]`` at build time
    (:func:`polydl.ops.linear_blocked`): the largest divisor of ``N`` up to four vectors of f32
    (the microkernel's widest column tile), None (the weights kept ``[K, N]``, their blocks
    copied at call time where the compiler finds that pays) when it is under two vectors."""
    from ..ops import channel_block, default_block

    if not BLOCKED_WEIGHTS:
        return None
    nb = channel_block(N, 2 * default_block())
    return nb if nb >= default_block() else None


CONTRACTIONS = ("conv2d", "linear", "matmul")


# ---------------------------------------------------------------- build-time rewrites


def fold_batch_norms(
    nodes: list[Node], outputs: Sequence[Value]
) -> tuple[list[Node], dict[int, int]]:
    """The nodes with every batch norm that only follows a conv or linear folded into its
    weights (``w * s`` per output channel, bias ``b * s + t``), and which values became which."""
    readers: dict[int, int] = {}
    for nd in nodes:
        for v in nd.inputs:
            readers[v.id] = readers.get(v.id, 0) + 1
    out_ids = {v.id for v in outputs}
    at: dict[int, int] = {}  # value id -> index in ``kept`` of its producer
    same: dict[int, int] = {}
    kept: list[Node] = []
    for nd in nodes:
        if nd.op == "batch_norm":
            (x,) = nd.inputs
            i = at.get(same.get(x.id, x.id))
            prod = kept[i] if i is not None else None
            if (
                prod is not None
                and prod.op in ("conv2d", "linear")
                and readers.get(x.id) == 1
                and x.id not in out_ids
            ):
                s, t = nd.params["s"], nd.params["t"]
                w = prod.params["w"]
                w = w * (s[:, None, None, None] if prod.op == "conv2d" else s[None, :])
                b = prod.params.get("b", np.zeros_like(s))
                params = {"w": w.astype(np.float32), "b": (b * s + t).astype(np.float32)}
                kept[i] = replace(prod, params=params)  # the graph's own node stays as built
                same[nd.out.id] = same.get(x.id, x.id)
                continue
        at[nd.out.id] = len(kept)
        kept.append(nd)
    return kept, same


# ---------------------------------------------------------------- statements


class _Builder:
    """Statements of one kernel, numbered in order, each node's nest at the next position.

    An elementwise node in place on the output of the contraction just built goes into that
    contraction's nest, after it on the same elements (the way ``pd.ops.conv2d`` writes its
    bias); a further one in place on the same elements merges into that statement (its
    expression applied to the previous one's). The compiler then folds it into the calls."""

    def __init__(self, name: str):
        self.name = name
        self.statements: list[Statement] = []
        self.pos = 0
        self.tail: tuple[str, list[Statement]] | None = None  # (buffer, contraction statements)

    def fresh(self) -> str:
        return f"S{len(self.statements)}"

    def part(self, kern: Kernel, tensors: dict[str, str], node: Node, *, out: str) -> None:
        """The statements of a pd.ops kernel, its tensors renamed, placed after the others."""
        tops, new_stmts = [], []
        for s in kern.statements:
            new = self.fresh()
            top = poly.top_position(kern, s)
            tops.append(top)
            stmt = replace(
                s,
                name=new,
                domain=poly.named_text(poly.domain(kern, s), new),
                schedule=poly.placed_schedule(s.schedule, new, self.pos + top),
                target=_rename(s.target, tensors),
                expr=_rename(s.expr, tensors),
                line=node.line,
                source=f"{node.op}: {s.source}",
            )
            self.statements.append(stmt)
            new_stmts.append(stmt)
        self.pos += max(tops) + 1
        self.tail = (out, new_stmts) if node.op in CONTRACTIONS else None

    def elementwise(self, node: Node, out: str, value: Expr, form: Form, *, in_place: bool) -> None:
        """``out[...] = value`` over the elements of ``form``: merged into the statement before
        it or placed in the contraction's nest (see the class doc), else a nest of its own."""
        its = form.iterators
        target = Load(tensor=out, index=form.index)
        prev = self.statements[-1] if self.statements else None
        if (
            in_place
            and prev is not None
            and prev.target == target
            and prev.op == "="
            and prev.micro is None
            and prev.iterators == its
        ):
            merged = _substitute(value, target, prev.expr)
            self.statements[-1] = replace(prev, expr=merged, source=f"{prev.source}; {node.op}")
            return
        stmt = self.box(node, target, value, its, form.extents)
        new = stmt.name
        if in_place and self.tail is not None and self.tail[0] == out:
            part = self.tail[1]
            view = Kernel(
                name=self.name, args=(), sizes=(), statements=(*part, stmt), filename="", line=0
            )
            depth = len(spine(view, part))
            if depth:
                stmt = replace(stmt, schedule=fused_schedules(view, part, [stmt], depth)[new])
                self.statements.append(stmt)
                self.tail = None
                return
        self.statements.append(stmt)
        self.pos += 1
        self.tail = None

    def copy(self, node: Node, target: Load, value: Expr, shape: tuple[int, ...]) -> None:
        """``target = value`` over ``shape`` (iterators ``a0, a1, ...``): a nest of its own."""
        its = tuple(f"a{d}" for d in range(len(shape)))
        self.statements.append(self.box(node, target, value, its, shape))
        self.pos += 1
        self.tail = None

    def border(self, node: Node, out: str, shape: tuple[int, ...], width: int) -> None:
        """Zeros in the border ``width`` pixels wide around the rows and columns (axes 2 and
        3) of the blocked ``out``: a nest of its own, the interior left to the pack or repad."""
        its = tuple(f"a{d}" for d in range(len(shape)))
        (h, H), (w, W) = (its[2], shape[2]), (its[3], shape[3])
        rim = f"({h} < {width} or {h} >= {H - width} or {w} < {width} or {w} >= {W - width})"
        target = Load(tensor=out, index=tuple(Var(name=v) for v in its))
        self.statements.append(self.box(node, target, Num(value=0.0), its, shape, where=rim))
        self.pos += 1
        self.tail = None

    def box(self, node: Node, target: Load, value: Expr, its, shape, where: str = "") -> Statement:
        """A fresh statement ``target = value`` over the box ``0 <= its < shape`` (and the
        constraint ``where``), in a nest of its own at the next top-level position."""
        new = self.fresh()
        dom = " and ".join(f"0 <= {v} < {d}" for v, d in zip(its, shape, strict=True))
        dom = f"{dom} and {where}" if where else dom
        dims = [str(self.pos)] + [x for v in its for x in (v, "0")]
        return Statement(
            name=new,
            iterators=its,
            domain=f"{{ {new}[{', '.join(its)}] : {dom} }}",
            target=target,
            op="=",
            expr=value,
            schedule=f"{{ {new}[{', '.join(its)}] -> [{', '.join(dims)}] }}",
            line=node.line,
            source=f"{node.op}: {target} = {value}",
        )


def _substitute(e: Expr, old: Load, new: Expr) -> Expr:
    """``e`` with every read of the element ``old`` replaced by the expression ``new``."""
    if e == old:
        return new
    if isinstance(e, BinOp):
        return replace(e, a=_substitute(e.a, old, new), b=_substitute(e.b, old, new))
    if isinstance(e, UnOp):
        return replace(e, a=_substitute(e.a, old, new))
    return e


def _rename(e, tensors: dict[str, str]):
    if isinstance(e, Load):
        return replace(e, tensor=tensors.get(e.tensor, e.tensor))
    if isinstance(e, BinOp):
        return replace(e, a=_rename(e.a, tensors), b=_rename(e.b, tensors))
    if isinstance(e, UnOp):
        return replace(e, a=_rename(e.a, tensors))
    return e


def _value(op: str, x: Load, other: Load | None, channel: Load | None, attrs: dict) -> Expr:
    """The elementwise expression of ``op`` on the element ``x``."""

    def b(o, a, c):
        return BinOp(op=o, a=a, b=c)

    def n(v: float) -> Num:
        return Num(value=float(v))

    match op:
        case "relu":
            return b("max", x, n(0.0))
        case "gelu":
            return b(
                "*",
                b("*", n(0.5), x),
                b("+", n(1.0), UnOp(op="erf", a=b("*", x, n(0.7071067811865476)))),
            )
        case "gelu_tanh":
            inner = b(
                "*", n(0.7978845608028654), b("+", x, b("*", n(0.044715), b("*", x, b("*", x, x))))
            )
            return b("*", b("*", n(0.5), x), b("+", n(1.0), UnOp(op="tanh", a=inner)))
        case "silu":
            return b("*", x, UnOp(op="sigmoid", a=x))
        case "sigmoid" | "tanh" | "erf" | "sqrt":
            return UnOp(op=op, a=x)
        case "clip":
            return b("max", b("min", x, n(attrs["hi"])), n(attrs["lo"]))
        case "shift":
            return b("+", x, n(attrs["offset"]))
        case "add":
            return b("+", x, other)
        case "mul":
            return b("*", x, other)
        case "scale":
            return b("*", x, n(attrs["factor"]))
        case "bias_add":
            return b("+", x, channel[0])
        case "batch_norm":
            return b("+", b("*", x, channel[0]), channel[1])
    raise GraphError(f"pd.graph cannot lower operator {op!r}")  # pragma: no cover


# ---------------------------------------------------------------- the kernel


def lower(
    name: str,
    nodes: Sequence[Node],
    inputs: Sequence[Value],
    outputs: Sequence[Value],
    filename: str,
    line: int,
    same: dict[int, int] | None = None,
) -> tuple[Kernel, list[tuple[str, np.ndarray]]]:
    """The kernel computing ``outputs`` from ``inputs`` by ``nodes`` (in order), and the
    parameter arrays it takes after the inputs (before the outputs), by argument name."""
    same = dict(same or {})
    root = lambda v: same.get(v.id, v.id)  # noqa: E731
    readers: dict[int, int] = {}
    for nd in nodes:
        for v in nd.inputs:
            readers[root(v)] = readers.get(root(v), 0) + 1
    in_ids, out_ids = {root(v) for v in inputs}, [root(v) for v in outputs]
    if len(set(out_ids)) != len(out_ids) or set(out_ids) & in_ids:
        raise GraphError(f"graph {name}: an output is an input or another output")
    buffer: dict[int, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for i, v in enumerate(inputs):
        buffer[root(v)] = v.name if v.name.isidentifier() else f"in{i}"
        shapes[buffer[root(v)]] = v.shape
    params: list[tuple[str, np.ndarray]] = []
    temps: list[str] = []
    b = _Builder(name)

    forms: dict[str, Form] = {}  # buffer -> the form its elementwise statements use

    def form_of(nm: str, shape: tuple[int, ...]) -> Form:
        return forms.get(nm) or Form.plain(shape)

    def new_buffer(v: Value, hint: str) -> str:
        vid = root(v)
        if vid in out_ids:
            nm = f"out{out_ids.index(vid)}"
        else:
            nm = f"t{len(temps)}_{hint}"
            temps.append(nm)
        buffer[vid] = nm
        shapes[nm] = v.shape
        return nm

    def param(nd: Node, key: str, array: np.ndarray | None = None) -> str:
        """The parameter ``key`` of ``nd`` as an argument (``array``: in its place, the
        parameter laid out as the kernel reads it)."""
        nm = f"{nd.op}{nd.out.id}_{key}"
        array = nd.params[key] if array is None else array
        params.append((nm, array))
        shapes[nm] = array.shape
        return nm

    def in_place(v: Value) -> bool:
        vid = root(v)
        return vid not in in_ids and vid not in out_ids and readers.get(vid) == 1

    for nd in nodes:
        if nd.op == "input":
            continue
        ins = [buffer[root(v)] for v in nd.inputs]
        if nd.op in VIEWS:
            raise GraphError(f"graph {name}: a view ({nd.op}) inside one kernel")
        if nd.op in ("max_pool2d", "avg_pool2d", "global_avg_pool"):
            out = new_buffer(nd.out, nd.op)
            N, C, H, W = nd.inputs[0].shape
            tensors = {"O": out, "I": ins[0]}
            if nd.op == "global_avg_pool":
                kern = ops.global_avg_pool(N, C, H, W)
            else:
                (R, S), st, pad = nd.attrs["kernel"], nd.attrs["stride"], nd.attrs["padding"]
                pool = ops.max_pool2d if nd.op == "max_pool2d" else ops.avg_pool2d
                kern = pool(N, C, H, W, R, S, stride=st, padding=pad)
                if nd.op == "avg_pool2d":
                    tensors["inv"] = param(nd, "inv")
            b.part(kern.ir, tensors, nd, out=out)
            continue
        if nd.op in ("pack", "unpack"):
            out = new_buffer(nd.out, nd.op)
            if nd.op == "pack":
                N, C, H, W = nd.inputs[0].shape
                border = nd.attrs["border"]
                kern = ops.pack_input(N, C, H, W, padding=border, block=nd.attrs["block"])
                tensors = {"Xp": out, "X": ins[0]}
            else:
                N, K, P, Q = nd.out.shape
                kern = ops.unpack_output(N, K, P, Q, block=nd.attrs["block"])
                tensors = {"Y": out, "Op": ins[0]}
            b.part(kern.ir, tensors, nd, out=out)
            if nd.op == "pack" and out in temps and border:
                b.border(nd, out, nd.out.shape, border)
            continue
        if nd.op == "repad":
            out = new_buffer(nd.out, nd.op)
            its = [Var(name=f"a{d}") for d in range(5)]
            at = [
                IntOp(op="+", a=v, b=Int(value=nd.attrs["border"])) if d in (2, 3) else v
                for d, v in enumerate(its)
            ]
            value = Load(tensor=ins[0], index=tuple(its))
            b.copy(nd, Load(tensor=out, index=tuple(at)), value, nd.inputs[0].shape)
            if out in temps:
                b.border(nd, out, nd.out.shape, nd.attrs["border"])
            continue
        if nd.op in ("transpose", "concat"):
            out = new_buffer(nd.out, nd.op)
            its = [Var(name=f"a{d}") for d in range(len(nd.out.shape))]
            if nd.op == "transpose":
                # output axis d is input axis perm[d]: input index at axis perm[d] is a_d
                src = [None] * len(its)
                for d, p in enumerate(nd.attrs["perm"]):
                    src[p] = its[d]
                value = Load(tensor=ins[0], index=tuple(src))
                b.copy(nd, Load(tensor=out, index=tuple(its)), value, nd.out.shape)
            else:
                axis, offset = nd.attrs["axis"], 0
                for v, src_name in zip(nd.inputs, ins, strict=True):
                    idx = list(its)
                    if offset:
                        idx[axis] = IntOp(op="+", a=its[axis], b=Int(value=offset))
                    b.copy(
                        nd,
                        Load(tensor=out, index=tuple(idx)),
                        Load(tensor=src_name, index=tuple(its)),
                        v.shape,
                    )
                    offset += v.shape[axis]
            continue
        if nd.op in CONTRACTIONS or nd.op in ("softmax", "layer_norm"):
            out = new_buffer(nd.out, nd.op)
            if nd.op == "conv2d" and nd.attrs.get("layout") == "nchwc":
                N, _, _, _, _ = nd.inputs[0].shape
                KB, CB, R, S, CV, KV = nd.params["w"].shape
                H, W = nd.attrs["hw"]
                kern = ops.conv2d(
                    N,
                    CB * CV,
                    KB * KV,
                    H,
                    W,
                    R,
                    S,
                    stride=nd.attrs["stride"],
                    padding=nd.attrs["padding"],
                    layout="nchwc",
                    block=nd.attrs["block"],
                )
                b.part(kern.ir, {"O": out, "I": ins[0], "Wt": param(nd, "w")}, nd, out=out)
            elif nd.op == "conv2d":
                N, C, H, W = nd.inputs[0].shape
                K, _, R, S = nd.params["w"].shape
                kw = dict(
                    stride=nd.attrs["stride"],
                    padding=nd.attrs["padding"],
                    dilation=nd.attrs.get("dilation", 1),
                )
                if nd.attrs.get("groups", 1) != 1:
                    kern = ops.grouped_conv2d(N, C, K, H, W, R, S, groups=nd.attrs["groups"], **kw)
                else:
                    kern = ops.conv2d(N, C, K, H, W, R, S, **kw)
                b.part(kern.ir, {"O": out, "I": ins[0], "Wt": param(nd, "w")}, nd, out=out)
            elif nd.op in ("softmax", "layer_norm"):
                M, N = nd.out.shape
                keys = "ms" if nd.op == "softmax" else "mv"
                m, s = (f"t{len(temps) + i}_{nd.op}_{w}" for i, w in enumerate(keys))
                temps.extend([m, s])
                shapes[m] = shapes[s] = (M,)
                if nd.op == "softmax":
                    tensors = {"Y": out, "X": ins[0], "m": m, "s": s}
                    kern = ops.softmax(M, N)
                else:
                    tensors = {"Y": out, "X": ins[0], "m": m, "v": s}
                    tensors |= {"g": param(nd, "g"), "b": param(nd, "b")}
                    kern = ops.layer_norm(M, N, nd.attrs["eps"])
                b.part(kern.ir, tensors, nd, out=out)
                continue
            elif len(nd.out.shape) == 3:
                (B, M, K), N = nd.inputs[0].shape, nd.out.shape[2]
                kern = ops.batch_matmul(B, M, N, K)
                b.part(kern.ir, {"C": out, "A": ins[0], "Bm": ins[1]}, nd, out=out)
            elif nd.op == "linear" and (nb := linear_block(nd.out.shape[1])):
                # the weights [K, N] laid out [N/nb][K][nb] here, once: each column block's
                # rows read contiguously by its calls, no copy at call time
                (M, K), N = nd.inputs[0].shape, nd.out.shape[1]
                w = nd.params["w"].reshape(K, N // nb, nb).transpose(1, 0, 2)
                tensors = {"C": out, "A": ins[0], "Bp": param(nd, "w", np.ascontiguousarray(w))}
                b.part(ops.linear_blocked(M, N, K, nb).ir, tensors, nd, out=out)
                forms[out] = Form.column_blocked(M, N, nb)
            else:
                (M, K), N = nd.inputs[0].shape, nd.out.shape[1]
                rhs = param(nd, "w") if nd.op == "linear" else ins[1]
                b.part(ops.matmul(M, N, K).ir, {"C": out, "A": ins[0], "B": rhs}, nd, out=out)
            if "b" in nd.params:  # a bias (or a folded batch norm's shift) after the contraction
                form = form_of(out, nd.out.shape)
                x = _element(out, form)
                bias = _channel(param(nd, "b"), nd.out.shape, form)
                value = BinOp(op="+", a=x, b=bias)
                b.elementwise(replace(nd, op="bias_add"), out, value, form, in_place=True)
            continue
        # elementwise: in place on its first (or, commutative, second) input when possible
        order = list(range(len(nd.inputs)))
        if nd.op in ("add", "mul") and not in_place(nd.inputs[0]) and in_place(nd.inputs[1]):
            order = [1, 0]
        first = nd.inputs[order[0]]
        inplace = in_place(first)
        form = form_of(buffer[root(first)], nd.out.shape)  # the elements as its producer names them
        if inplace:
            out = buffer[root(first)]
            buffer[root(nd.out)] = out
        else:
            out = new_buffer(nd.out, nd.op)
            forms[out] = form
        x = _element(buffer[root(first)], form)
        other = _element(buffer[root(nd.inputs[order[1]])], form) if len(order) > 1 else None
        channel = None
        if nd.op in ("bias_add", "batch_norm"):
            keys = ("b",) if nd.op == "bias_add" else ("s", "t")
            channel = [_channel(param(nd, k), nd.out.shape, form) for k in keys]
        value = _value(nd.op, x, other, channel, nd.attrs)
        b.elementwise(nd, out, value, form, in_place=inplace)

    # an output computed in place on a scratch buffer (conv -> relu -> output): the buffer is
    # the output argument
    ren = {}
    for i, vid in enumerate(out_ids):
        if buffer[vid] != f"out{i}":
            ren[buffer[vid]] = f"out{i}"
            shapes[f"out{i}"] = shapes[buffer[vid]]
    temps = [t for t in temps if t not in ren]
    ndim = max(poly.map_ndim(s.schedule) for s in b.statements)
    stmts = tuple(
        replace(
            s,
            schedule=poly.pad_schedule(s.schedule, ndim),
            target=_rename(s.target, ren),
            expr=_rename(s.expr, ren),
        )
        for s in b.statements
    )

    def arg(nm: str) -> TensorArg:
        return TensorArg(name=nm, dtype="f32", shape=tuple(Int(value=d) for d in shapes[nm]))

    args = [arg(buffer[root(v)]) for v in inputs]
    args += [arg(nm) for nm, _ in params]
    args += [arg(f"out{i}") for i in range(len(outputs))]
    kernel = Kernel(
        name=name,
        args=tuple(args),
        sizes=(),
        statements=stmts,
        filename=filename,
        line=line,
        temps=tuple(arg(nm) for nm in temps),
    )
    return kernel, params


def _element(tensor: str, form: Form) -> Load:
    return Load(tensor=tensor, index=form.index)


def _channel(tensor: str, shape: tuple[int, ...], form: Form) -> Load:
    """A per-channel vector read at the element: axis 1 of NCHW, the last axis of 2-D."""
    at = form.index
    if len(shape) == 5:  # blocked: the parameter blocked too, [K/kb, kb]
        return Load(tensor=tensor, index=(at[1], at[4]))
    return Load(tensor=tensor, index=(at[1] if len(shape) == 4 else at[-1],))


# ---------------------------------------------------------------- compiling


@functools.cache
def _jit_thread():
    """One thread JIT-compiling the kernels of a graph behind its compilation."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="polydl-jit")


def compile_graph(
    graph: Graph,
    *,
    threads=None,
    target=None,
    fuse: bool | str = True,
    kernels: str = "one",
    cache: dict | None = None,
    layout: str = "nchw",
) -> CompiledGraph:
    """The graph as one fused kernel; ``kernels="contraction"``: one kernel per contraction
    and the elementwise chain after it (:mod:`polydl.graph.groups`), groups of the same
    structure compiling once (``cache``, shared between graphs, keeps the kernels by
    signature); ``fuse=False``: one kernel per operator, each value materialised (the unfused
    baseline); ``fuse="always"``: conv -> conv fusion wherever legal."""
    from ..pipeline import compile_kernel
    from .groups import contraction_groups, signature

    if kernels not in ("one", "contraction"):
        raise GraphError(f"compile: kernels must be 'one' or 'contraction', got {kernels!r}")
    if layout not in ("nchw", "blocked", "auto"):
        raise GraphError(f"compile: layout must be 'nchw', 'blocked' or 'auto', got {layout!r}")
    if layout == "auto":
        # blocked where it was measured faster: convs none of which is grouped (ResNet-50:
        # 1.1-1.2x NCHW); a depthwise conv stays NCHW, and the conversions around it cost more
        # than the blocked convs gain (a MobileNet-style net: 0.74x)
        convs = [nd for nd in graph.nodes if nd.op == "conv2d"]
        grouped = any(nd.attrs.get("groups", 1) != 1 for nd in convs)
        layout = "blocked" if convs and not grouped and kernels == "contraction" else "nchw"
    nodes, same = fold_batch_norms(list(graph.nodes), graph.outputs)
    same_of = lambda v: same.get(v.id, v.id)  # noqa: E731
    outputs = [replace(v, id=same_of(v)) for v in graph.outputs]
    folded, origin = same, {}
    if layout == "blocked":
        from ..ops import default_block
        from .layout import blocked_layout

        nodes, outputs, origin = blocked_layout(nodes, outputs, same_of, 2 * default_block())
        same = {}
        same_of = lambda v: v.id  # noqa: E731
    if not fuse:
        groups = []
        for nd in nodes:
            if nd.op == "input":
                continue
            ins = [replace(v, id=same_of(v)) for v in dict.fromkeys(nd.inputs)]
            groups.append(
                (
                    f"{graph.name}_{nd.op}{nd.out.id}",
                    [nd],
                    ins,
                    [replace(nd.out, id=same_of(nd.out))],
                )
            )
    elif kernels == "contraction" or any(nd.op in VIEWS for nd in nodes):
        split = contraction_groups(
            nodes, outputs, same_of, whole=kernels == "one", pairs=kernels == "contraction"
        )
        groups = [(f"{graph.name}_{i}", nds, ins, outs) for i, (nds, ins, outs) in enumerate(split)]
    else:
        groups = [(graph.name, nodes, list(graph.inputs), outputs)]
    cache = {} if cache is None else cache
    parts, jitted = [], []
    for name, nds, ins, outs in groups:
        if nds[0].op in VIEWS:  # no kernel: the array under the new shape
            parts.append((None, [v.id for v in ins], [], [(v.id, v.shape) for v in outs]))
            continue
        kernel, params = lower(name, nds, ins, outs, graph.filename, graph.line, same)
        key = (signature(nds, ins, outs, same_of), threads, repr(target), fuse)
        ck = cache.get(key) if kernels == "contraction" else None
        if ck is None:
            ck = compile_kernel(kernel, {}, threads=threads, target=target, fuse=fuse)
            # LLVM (which lets go of the GIL) builds it while the next group is compiled
            jitted.append(_jit_thread().submit(ck.load))
            if kernels == "contraction":
                cache[key] = ck
        parts.append((ck, [v.id for v in ins], params, [(v.id, v.shape) for v in outs]))
    for done in jitted:
        done.result()
    part_of = {nd.out.id: i for i, (_, nds, _, _) in enumerate(groups) for nd in nds}
    part_of |= {origin[v]: i for v, i in part_of.items() if v in origin}
    bordered = {nd.out.id for _, nds, _, _ in groups for nd in nds if nd.op in ("pack", "repad")}
    cg = CompiledGraph(graph, parts, outputs, folded, part_of, bordered)
    cg.part_ops = [[nd.op for nd in nds] for _, nds, _, _ in groups]
    return cg
