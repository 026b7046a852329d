"""The model graph the partitioner works on: a networkx DAG with per-node cost attributes.

Every node carries ``op`` (an op type such as ``Conv``, ``MatMul``), ``flops`` (forward FLOPs of
one micro-batch), ``param_bytes`` (weights owned by the node), ``out_bytes`` (bytes of the
tensors it produces) and ``in_bytes`` (activation bytes it reads). Every edge carries ``bytes``:
the size of the tensors flowing along it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import networkx as nx

from ..errors import PartitionError

F32 = 4


def numel(shape: Iterable[int]) -> int:
    return math.prod(int(d) for d in shape)


@dataclass(frozen=True, kw_only=True)
class ModelGraph:
    """A named dataflow graph of one network (one micro-batch)."""

    name: str
    graph: nx.DiGraph = field(repr=False)

    @property
    def num_nodes(self) -> int:
        return self.graph.number_of_nodes()

    def topological_order(self) -> list[str]:
        """A topological order that keeps the insertion order wherever it is already valid."""
        check_acyclic(self.graph, self.name)
        index = {n: i for i, n in enumerate(self.graph.nodes)}
        return list(nx.lexicographical_topological_sort(self.graph, key=index.__getitem__))

    def total_flops(self) -> float:
        return float(sum(a["flops"] for _, a in self.graph.nodes(data=True)))

    def total_param_bytes(self) -> int:
        return int(sum(a["param_bytes"] for _, a in self.graph.nodes(data=True)))


def check_acyclic(g: nx.DiGraph, name: str) -> None:
    if g.number_of_nodes() == 0:
        raise PartitionError(f"model {name!r}: the graph has no nodes")
    if not nx.is_directed_acyclic_graph(g):
        cycle = nx.find_cycle(g)
        path = " -> ".join(str(u) for u, _ in cycle) + f" -> {cycle[0][0]}"
        raise PartitionError(f"model {name!r}: the graph has a cycle: {path}")


def from_networkx(g: nx.DiGraph, name: str = "graph") -> ModelGraph:
    """Wrap a user's networkx DiGraph, filling missing attributes with defaults.

    Nodes may carry ``op``, ``flops``, ``param_bytes``, ``out_bytes``, ``in_bytes``; edges may
    carry ``bytes`` (default: the source's ``out_bytes``).
    """
    if not isinstance(g, nx.DiGraph) or g.is_multigraph():
        raise PartitionError(f"model {name!r}: expected a networkx.DiGraph, got {type(g).__name__}")
    h = nx.DiGraph()
    for n, a in g.nodes(data=True):
        attrs = {
            "op": str(a.get("op", "Unknown")),
            "flops": float(a.get("flops", 0.0)),
            "param_bytes": int(a.get("param_bytes", 0)),
            "out_bytes": int(a.get("out_bytes", 0)),
            "in_bytes": int(a.get("in_bytes", 0)),
        }
        for key in ("flops", "param_bytes", "out_bytes", "in_bytes"):
            value = attrs[key]
            if not math.isfinite(value) or value < 0:
                raise PartitionError(f"model {name!r}: node {n!r} has invalid {key}={value!r}")
        h.add_node(str(n), **attrs)
    for u, v, a in g.edges(data=True):
        b = int(a.get("bytes", h.nodes[str(u)]["out_bytes"]))
        if b < 0:
            raise PartitionError(f"model {name!r}: edge {u!r} -> {v!r} has negative bytes")
        h.add_edge(str(u), str(v), bytes=b)
    check_acyclic(h, name)
    return ModelGraph(name=name, graph=h)


class GraphBuilder:
    """Builds a ModelGraph node by node from tensor shapes (used by the built-in models)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.g = nx.DiGraph()
        self._count: dict[str, int] = {}
        self.shape: dict[str, tuple[int, ...]] = {}

    def add(
        self,
        name: str,
        op: str,
        inputs: Sequence[str],
        out_shape: Sequence[int],
        *,
        flops: float,
        params: int = 0,
        extra_in_bytes: int = 0,
    ) -> str:
        if name in self.g:
            raise PartitionError(f"model {self.name!r}: duplicate node name {name!r}")
        out_bytes = numel(out_shape) * F32
        in_bytes = extra_in_bytes + sum(numel(self.shape[i]) * F32 for i in inputs)
        self.g.add_node(
            name,
            op=op,
            flops=float(flops),
            param_bytes=int(params) * F32,
            out_bytes=out_bytes,
            in_bytes=in_bytes,
        )
        self.shape[name] = tuple(int(d) for d in out_shape)
        for i in inputs:
            self.g.add_edge(i, name, bytes=numel(self.shape[i]) * F32)
        return name

    def build(self) -> ModelGraph:
        check_acyclic(self.g, self.name)
        return ModelGraph(name=self.name, graph=self.g)
