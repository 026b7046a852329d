"""The result of partitioning: a :class:`Plan` (the device of every node, per-stage compute,
communication and memory, the bottleneck and a proven lower bound) and :func:`make_plan`."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import PartitionError
from .problem import Problem, fmt_bytes, fmt_time, stage_costs


@dataclass(frozen=True, kw_only=True)
class Plan:
    """A partition of a model over devices, with its costs. ``to_json()`` gives the plan JSON."""

    model: str
    devices: int
    nodes: dict[str, dict[str, Any]]
    edges: list[dict[str, Any]]
    stages: list[dict[str, Any]]
    bottleneck_s: float
    lower_bound_s: float | None  # a proven bound on every partition (None: not computed)
    comm_bytes: int
    mode: str = "inference"
    algorithm: str = "pipeline"
    micro_batches: int = 1
    device_names: tuple[str, ...] = ()
    # the best bottleneck among contiguous plans (the pipeline optimum), when it was computed;
    # a bound for contiguous plans only, not part of the plan JSON
    contiguous_optimum_s: float | None = None
    problem: Problem | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "devices": self.devices,
            "nodes": self.nodes,
            "edges": self.edges,
            "stages": self.stages,
            "bottleneck_s": self.bottleneck_s,
            "lower_bound_s": self.lower_bound_s,
            "comm_bytes": self.comm_bytes,
        }

    def to_json(self, path: str | None = None, *, indent: int | None = 1) -> str:
        text = json.dumps(self.as_dict(), indent=indent)
        if path is not None:
            with open(path, "w") as f:
                f.write(text + "\n")
        return text

    def assignment(self) -> dict[str, int]:
        return {v: a["device"] for v, a in self.nodes.items()}

    def traffic(self) -> tuple[list[int], list[int]]:
        """Bytes sent and received by each device per micro-batch (forward direction)."""
        sent, recv = [0] * self.devices, [0] * self.devices
        for e in self.edges:
            if e["cut"]:
                sent[self.nodes[e["src"]]["device"]] += e["bytes"]
                recv[self.nodes[e["dst"]]["device"]] += e["bytes"]
        return sent, recv

    def table(self) -> str:
        """A text table, one row per device."""
        sent, recv = self.traffic()
        counts = [0] * self.devices
        for a in self.nodes.values():
            counts[a["device"]] += 1
        head = f"{'dev':>3} {'name':<10} {'nodes':>6} {'compute':>11} {'comm':>11} {'total':>11} {'peak mem':>10} {'sent':>10} {'recv':>10}"
        rows = [head, "-" * len(head)]
        for s in self.stages:
            d = s["device"]
            name = self.device_names[d] if d < len(self.device_names) else f"dev{d}"
            rows.append(
                f"{d:>3} {name[:10]:<10} {counts[d]:>6} {fmt_time(s['compute_s']):>11} "
                f"{fmt_time(s['comm_s']):>11} {fmt_time(s['compute_s'] + s['comm_s']):>11} "
                f"{fmt_bytes(s['peak_memory_bytes']):>10} {fmt_bytes(sent[d]):>10} {fmt_bytes(recv[d]):>10}"
            )
        lb = self.lower_bound_s
        if lb is None:
            bound = "lower bound not computed"
        else:
            gap = self.bottleneck_s / lb - 1 if lb > 0 else 0.0
            bound = f"lower bound {fmt_time(lb)} (+{gap:.1%})"
        rows.append(
            f"bottleneck {fmt_time(self.bottleneck_s)}, {bound}, communication "
            f"{fmt_bytes(self.comm_bytes)} per micro-batch, {self.mode}, {self.algorithm}"
        )
        return "\n".join(rows)


def make_plan(
    p: Problem,
    assign: Sequence[int] | np.ndarray,
    algorithm: str,
    *,
    lower_bound: float | None = None,
) -> Plan:
    """Evaluate an assignment (device of each position in ``p.order``) into a Plan;
    ``lower_bound``: a proven bound on every partition's bottleneck (``bounds.lower_bound``),
    computed by the caller (None: not computed)."""
    assign = np.asarray(assign, dtype=np.int64)
    if assign.shape != (p.n,) or (p.n and (assign.min() < 0 or assign.max() >= p.k)):
        raise PartitionError(f"model {p.model.name!r}: invalid assignment of nodes to devices")
    compute, comm, memory = stage_costs(p, assign)
    for d in range(p.k):
        if memory[d] > p.memory_limit(d) * (1 + 1e-12):
            raise PartitionError(
                f"model {p.model.name!r}: stage {d} on device {p.devices[d].name!r} needs "
                f"{fmt_bytes(memory[d])} but has {fmt_bytes(p.memory_limit(d))} ({algorithm} plan)"
            )
    g = p.model.graph
    nodes = {}
    for i, v in enumerate(p.order):
        a = g.nodes[v]
        nodes[v] = {
            "device": int(assign[i]),
            "flops": float(p.cost.flops(a)),
            "compute_s": float(p.times[assign[i], i]),
            "param_bytes": int(a["param_bytes"]),
            "out_bytes": int(a["out_bytes"]),
        }
    edges = []
    comm_bytes = 0
    for u, v, b in g.edges(data="bytes"):
        cut = nodes[u]["device"] != nodes[v]["device"]
        edges.append({"src": u, "dst": v, "bytes": int(b), "cut": bool(cut)})
        comm_bytes += int(b) if cut else 0
    stages = [
        {
            "device": d,
            "compute_s": float(compute[d]),
            "comm_s": float(comm[d]),
            "peak_memory_bytes": int(math.ceil(memory[d])),
        }
        for d in range(p.k)
    ]
    return Plan(
        model=p.model.name,
        devices=p.k,
        nodes=nodes,
        edges=edges,
        stages=stages,
        bottleneck_s=float((compute + comm).max()),
        lower_bound_s=lower_bound,
        comm_bytes=comm_bytes,
        mode=p.cost.mode,
        algorithm=algorithm,
        micro_batches=p.micro_batches,
        device_names=tuple(d.name for d in p.devices),
        problem=p,
    )
