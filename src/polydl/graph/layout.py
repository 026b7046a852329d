"""Layout propagation: a graph's convolutions on the blocked layout, activations staying
blocked from one conv to the next.

Before (NCHW values)::

    x -> conv2d -> relu -> conv2d(3x3, pad 1) -> add(., x) -> relu -> max_pool2d

After (``[N, C/cb, H, W, cb]`` values between the convs; ``pack`` once where an NCHW value
enters, ``unpack`` where a blocked one leaves for another operator or the graph's outputs)::

    pack(x) -> conv2d[nchwc] -> relu -> repad(1) -> conv2d[nchwc] -> add(., pack(x)) -> relu
        -> unpack -> max_pool2d

A blocked conv reads its input with a zero border as wide as its padding (``pack`` writes one,
``repad`` copies a blocked value into one: their buffers keep their zero borders between calls,
or, scratch of a one-kernel graph, have them written each call);
its weights are packed to ``[K/kb, C/cb, R, S, cb, kb]`` here, once, and its bias to
``[K/kb, kb]``. Elementwise nodes on blocked values stay elementwise (per-channel parameters
blocked the same way), in the conv's nest. Grouped convolutions stay NCHW.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import Node, Value
from .groups import ELEMENTWISE


def channel_block(channels: int, block: int) -> int:
    from ..ops import channel_block as cb

    return cb(channels, block)


def blocked_layout(
    nodes: Sequence[Node], outputs: Sequence[Value], root, block: int
) -> tuple[list[Node], list[Value], dict[int, int]]:
    """(nodes, outputs, origin) of the graph with its convolutions blocked (module doc), the
    values with new ids (``root``: batch-norm folding's, applied here); ``origin``: the graph
    node each rewritten node computes (by value id)."""
    fresh = [max([v.id for nd in nodes for v in (nd.out, *nd.inputs)], default=0) + 1]
    new: list[Node] = []
    packed: dict[tuple[int, int], Value] = {}  # (NCHW value id, border) -> its blocked twin
    bordered: dict[tuple[int, int], Value] = {}  # (blocked value id, border) -> bordered twin
    plain: dict[int, Value] = {}  # value id (either layout) -> its NCHW value
    cur: dict[int, Value] = {}  # the graph's value id -> the value now computing it
    origin: dict[int, int] = {}  # a rewritten node's value id -> the graph node's it computes

    after: dict[int, list[Node]] = {}  # value id -> the conversions of it, run right after it

    def add(op: str, inputs, shape, attrs=None, params=None, like: Node | None = None) -> Value:
        """A node of the rewritten graph; a conversion (pack, repad, unpack) is placed right
        after what it converts, so that an elementwise node reading the conversion still
        follows the contraction whose output it updates (and joins its kernel)."""
        out = Value(id=fresh[0], shape=tuple(shape), name=f"{op}{fresh[0]}")
        fresh[0] += 1
        node = Node(
            op=op,
            inputs=tuple(inputs),
            out=out,
            attrs=dict(attrs or {}),
            params=dict(params or {}),
            line=like.line if like else 0,
            filename=like.filename if like else "<graph>",
        )
        if op in ("pack", "repad", "unpack"):
            after.setdefault(inputs[0].id, []).append(node)
        else:
            new.append(node)
        return out

    def is_blocked(v: Value) -> bool:
        return len(v.shape) == 5

    def to_blocked(v: Value, border: int, like: Node) -> Value:
        """``v`` blocked, with a zero border of ``border`` pixels."""
        if not is_blocked(v):
            if (v.id, border) not in packed:
                N, C, H, W = v.shape
                cb = channel_block(C, block)
                shape = (N, C // cb, H + 2 * border, W + 2 * border, cb)
                out = add("pack", (v,), shape, {"border": border, "block": block}, like=like)
                packed[v.id, border] = out
                if border == 0:
                    plain[out.id] = v
            return packed[v.id, border]
        if border == 0:
            return v
        if (v.id, border) not in bordered:
            N, CB, H, W, cb = v.shape
            shape = (N, CB, H + 2 * border, W + 2 * border, cb)
            bordered[v.id, border] = add("repad", (v,), shape, {"border": border}, like=like)
        return bordered[v.id, border]

    def to_plain(v: Value, like: Node | None) -> Value:
        if not is_blocked(v):
            return v
        if v.id not in plain:
            N, CB, H, W, cb = v.shape
            plain[v.id] = add("unpack", (v,), (N, CB * cb, H, W), {"block": block}, like=like)
        return plain[v.id]

    def channels(p: np.ndarray, kb: int) -> np.ndarray:
        return np.ascontiguousarray(p.reshape(-1, kb))

    for nd in nodes:
        if nd.op == "input":
            new.append(nd)
            cur[nd.out.id] = nd.out
            continue
        ins = [cur[root(v)] for v in nd.inputs]
        out: Value
        if (
            nd.op == "conv2d"
            and nd.attrs.get("groups", 1) == 1
            and nd.attrs.get("dilation", 1) in (1, (1, 1))
        ):
            from ..ops import _pair

            (x,) = ins
            N, C, H, W = nd.inputs[0].shape
            w = nd.params["w"]
            K, _, R, S = w.shape
            ph, pw = _pair(nd.attrs["padding"], "padding")
            if ph != pw:
                out = _keep(nd, [to_plain(x, nd)], add)
            else:
                xb = to_blocked(x, ph, nd)
                cv, kv = channel_block(C, block), channel_block(K, block)
                wp = w.reshape(K // kv, kv, C // cv, cv, R, S).transpose(0, 2, 4, 5, 3, 1)
                params = {"w": np.ascontiguousarray(wp)}
                if "b" in nd.params:
                    params["b"] = channels(nd.params["b"], kv)
                _, _, P, Q = nd.out.shape
                attrs = dict(nd.attrs, layout="nchwc", block=block, hw=(H, W))
                out = add("conv2d", (xb,), (N, K // kv, P, Q, kv), attrs, params, like=nd)
        elif nd.op in ELEMENTWISE and any(is_blocked(v) for v in ins):
            first = next(v for v in ins if is_blocked(v))
            ins = [v if is_blocked(v) else to_blocked(v, 0, nd) for v in ins]
            if any(v.shape != first.shape for v in ins):
                out = _keep(nd, [to_plain(v, nd) for v in ins], add)
            else:
                kv = first.shape[-1]
                params = {k: channels(p, kv) for k, p in nd.params.items()}
                out = add(nd.op, ins, first.shape, nd.attrs, params, like=nd)
        else:
            out = _keep(nd, [to_plain(v, nd) for v in ins], add)
        cur[nd.out.id] = out
        origin[out.id] = nd.out.id
    outs = [to_plain(cur[root(v)], None) for v in outputs]
    ordered: list[Node] = []

    def emit(nd: Node) -> None:
        ordered.append(nd)
        for conv in after.pop(nd.out.id, []):
            emit(conv)

    for nd in new:
        emit(nd)
    return ordered, outs, origin


def _keep(nd: Node, ins: list[Value], add) -> Value:
    """``nd`` itself on NCHW inputs (a new node of the rewritten graph)."""
    return add(nd.op, ins, nd.out.shape, nd.attrs, nd.params, like=nd)
