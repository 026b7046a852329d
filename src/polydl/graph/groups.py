"""A graph as several kernels: one per contraction with the elementwise chain after it (or a
conv -> 1x1 conv pair the compiler may fuse), the kernels of identical groups compiled once.

Before (one graph, ResNet-50's 53 convs)::

    conv2d -> relu -> conv2d -> relu -> conv2d -> add(., x) -> relu -> conv2d -> ...

After (groups; ``signature`` equal where only the weights differ)::

    [conv2d, relu] [conv2d, relu, conv2d, add, relu] [conv2d, ...] ...

(the bottleneck's 3x3 conv and the 1x1 conv after it in one group: a conv -> conv pair).

A group starts at every node that is not elementwise or row-wise (a contraction, a pooling) and
at an elementwise or row-wise node (softmax) none of whose inputs the current group computes;
such a node reading a value of the current group joins it (where the compiler folds it into the
contraction's calls, or fuses its nests with the contraction's rows). A group's inputs are the values it reads from outside, its outputs the
values it computes that a later group or the graph returns. Parameters are arguments of the
kernel, so two groups of the same structure and shapes (a ResNet stage's repeated bottleneck
convs) run one compiled kernel with their own weights.

Compiling per group keeps the compiler's analyses (index-set splitting, dependences, the loop
tree) on one nest at a time: they grow faster than linearly with the nests of one kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from . import UNARY, VIEWS, Node, Value

ELEMENTWISE = frozenset({*UNARY, "add", "mul", "scale", "shift", "clip", "bias_add", "batch_norm"})
# what joins the group computing its input: elementwise nodes, and row-wise ones whose nests
# the compiler may fuse with the contraction's rows
JOINS = ELEMENTWISE | {"softmax", "layer_norm"}


def conv_pair(group: Sequence[Node], nd: Node, root: Callable[[Value], int]) -> bool:
    """Whether conv ``nd`` joins ``group`` (one conv and the elementwise nodes after it) as the
    second conv of a conv -> conv pair that ``transform/fuse_contractions.py`` may fuse: a 1x1
    conv of stride 1 without padding reading the group's last value. Such a pair fuses with no
    halo, image by image or block by block of rows (``transform/fuse_rows.py``); whether it
    does is the pass's legality and cost model's verdict, in the pair's kernel (unfused, the
    kernel runs the two nests one after the other, as two kernels would)."""
    if nd.op != "conv2d" or not group or group[0].op != "conv2d":
        return False
    if sum(x.op in ("conv2d", "linear", "matmul") for x in group) != 1:
        return False
    w = nd.params["w"]
    one = w.shape[2] == 1 and w.shape[3] == 1
    flat = nd.attrs.get("stride", 1) in (1, (1, 1)) and nd.attrs.get("padding", 0) in (0, (0, 0))
    single = nd.attrs.get("groups", 1) == 1 and nd.attrs.get("dilation", 1) in (1, (1, 1))
    return one and flat and single and root(nd.inputs[0]) == root(group[-1].out)


def contraction_groups(
    nodes: Sequence[Node],
    outputs: Sequence[Value],
    root: Callable[[Value], int],
    *,
    whole: bool = False,
    pairs: bool = False,
) -> list[tuple[list[Node], list[Value], list[Value]]]:
    """``(nodes, inputs, outputs)`` of each group, in order (values with their root ids, the
    inputs renamed ``in0, in1, ...``). A view (reshape) is a group of its own, run without a
    kernel: after the open group when it views that group's value (which it closes), before
    it otherwise. ``whole``: every run of nodes between views one group; ``pairs``: a 1x1
    conv reading a conv group's value joins it (:func:`conv_pair`)."""
    groups: list[list[Node]] = []
    produced: set[int] = set()
    for nd in nodes:
        if nd.op == "input":
            continue
        if nd.op in VIEWS and groups and groups[-1][0].op not in VIEWS:
            if not any(root(v) in produced for v in nd.inputs):
                # a view of an earlier value runs before the open group, which stays open
                groups.insert(len(groups) - 1, [nd])
                continue
        if whole:
            joins = groups and nd.op not in VIEWS and groups[-1][0].op not in VIEWS
        else:
            joins = (
                groups
                and nd.op in JOINS
                and groups[-1][0].op not in VIEWS
                and any(root(v) in produced for v in nd.inputs)
            ) or (pairs and bool(groups) and conv_pair(groups[-1], nd, root))
        if not joins:
            groups.append([])
            produced = set()
        groups[-1].append(nd)
        produced.add(root(nd.out))
    out_ids = {root(v) for v in outputs}
    read_later: list[set[int]] = [set() for _ in groups]  # ids read by the groups after each
    later: set[int] = set()
    for i in range(len(groups) - 1, -1, -1):
        read_later[i] = set(later)
        later |= {root(v) for nd in groups[i] for v in nd.inputs}
    result = []
    for i, grp in enumerate(groups):
        inside = {root(nd.out) for nd in grp}
        ins: dict[int, Value] = {}
        for nd in grp:
            for v in nd.inputs:
                if root(v) not in inside and root(v) not in ins:
                    ins[root(v)] = replace(v, id=root(v), name=f"in{len(ins)}")
        outs = [
            replace(nd.out, id=root(nd.out))
            for nd in grp
            if root(nd.out) in out_ids or root(nd.out) in read_later[i]
        ]
        outs = list({v.id: v for v in outs}.values())
        result.append((grp, list(ins.values()), outs))
    return result


def signature(
    nodes: Sequence[Node], inputs: Sequence[Value], outputs: Sequence[Value], root
) -> tuple:
    """What the kernel of a group depends on: its operators, how they connect, their shapes
    and attributes, the shapes (not the values) of their parameters."""
    local: dict[int, tuple[str, int]] = {v.id: ("in", i) for i, v in enumerate(inputs)}
    items: list = [tuple(v.shape for v in inputs)]
    for j, nd in enumerate(nodes):
        attrs = tuple(sorted((k, repr(a)) for k, a in nd.attrs.items() if k != "name"))
        params = tuple((k, p.shape) for k, p in nd.params.items())
        ins = tuple(local[root(v)] for v in nd.inputs)
        items.append((nd.op, ins, nd.out.shape, attrs, params))
        local[root(nd.out)] = ("node", j)
    items.append(tuple(local[v.id] for v in outputs))
    return tuple(items)
