"""The partitioning problem (graph + devices + cost model, in arrays) and the resulting Plan."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import PartitionError
from .cost import CostModel, Device
from .graph import ModelGraph

SCHEDULES = ("1f1b", "gpipe")


@dataclass(frozen=True, kw_only=True)
class Problem:
    """Everything the algorithms need, indexed by position in a topological order."""

    model: ModelGraph
    devices: tuple[Device, ...]
    cost: CostModel
    micro_batches: int
    schedule: str
    order: tuple[str, ...]
    times: np.ndarray  # (K, n) compute seconds of node at position p on device d
    params: np.ndarray  # (n,) parameter bytes
    outs: np.ndarray  # (n,) output bytes
    live: np.ndarray  # (n,) bytes live in the whole model while position p runs
    eu: np.ndarray  # (E,) source position of each edge
    ev: np.ndarray  # (E,) destination position
    eb: np.ndarray  # (E,) tensor bytes of each edge
    pos: dict[str, int] = field(repr=False)
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def k(self) -> int:
        return len(self.devices)

    @property
    def n(self) -> int:
        return len(self.order)

    def inflight(self, stage: int) -> int:
        """Micro-batches whose activations a stage keeps for the backward pass."""
        if not self.cost.training:
            return 0
        if self.schedule == "gpipe":
            return self.micro_batches
        return min(self.micro_batches, self.k - stage)

    def memory_limit(self, d: int) -> float:
        return self.devices[d].memory_bytes


def build_problem(
    model: ModelGraph,
    devices: Sequence[Device],
    cost: CostModel,
    *,
    micro_batches: int = 1,
    schedule: str = "1f1b",
) -> Problem:
    if schedule not in SCHEDULES:
        raise PartitionError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
    if not isinstance(micro_batches, int) or micro_batches < 1:
        raise PartitionError(f"micro_batches: expected a positive int, got {micro_batches!r}")
    devices = tuple(devices)
    if not devices:
        raise PartitionError("devices: need at least one device")
    order = tuple(model.topological_order())
    n = len(order)
    if len(devices) > n:
        raise PartitionError(
            f"model {model.name!r}: cannot split {n} node(s) over {len(devices)} devices "
            f"(K={len(devices)} is larger than the number of nodes)"
        )
    g = model.graph
    pos = {v: i for i, v in enumerate(order)}
    attrs = [g.nodes[v] for v in order]
    times = np.empty((len(devices), n))
    cache: dict[tuple, np.ndarray] = {}
    for d, dev in enumerate(devices):
        key = dev.cost_key() if cost.kernel_time is None else (d,)
        if key not in cache:
            cache[key] = np.array([cost.node_time(a, dev) for a in attrs], dtype=float)
        times[d] = cache[key]
    params = np.array([a["param_bytes"] for a in attrs], dtype=float)
    outs = np.array([a["out_bytes"] for a in attrs], dtype=float)
    edges = [(pos[u], pos[v], b) for u, v, b in g.edges(data="bytes")]
    eu = np.array([e[0] for e in edges], dtype=np.int64)
    ev = np.array([e[1] for e in edges], dtype=np.int64)
    eb = np.array([e[2] for e in edges], dtype=float)
    # live(p) = out(p) + every tensor produced before p and still needed at or after p
    last = np.arange(n)
    if len(edges):
        np.maximum.at(last, eu, ev)
    diff = np.zeros(n + 1)
    np.add.at(diff, np.arange(n) + 1, outs)
    np.add.at(diff, last + 1, -outs)
    live = np.cumsum(diff)[:n] + outs
    return Problem(
        model=model,
        devices=devices,
        cost=cost,
        micro_batches=micro_batches,
        schedule=schedule,
        order=order,
        times=times,
        params=params,
        outs=outs,
        live=live,
        eu=eu,
        ev=ev,
        eb=eb,
        pos=pos,
    )


def lower_bound(p: Problem) -> float:
    """A proven lower bound on the bottleneck of every partition of ``p`` (see ``bounds``)."""
    from .bounds import lower_bound as bound

    return bound(p)


@dataclass(frozen=True, kw_only=True)
class Plan:
    """A partition of a model over devices, with its costs. ``to_json()`` gives the plan JSON."""

    model: str
    devices: int
    nodes: dict[str, dict[str, Any]]
    edges: list[dict[str, Any]]
    stages: list[dict[str, Any]]
    bottleneck_s: float
    lower_bound_s: float
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
        gap = self.bottleneck_s / self.lower_bound_s - 1 if self.lower_bound_s > 0 else 0.0
        rows.append(
            f"bottleneck {fmt_time(self.bottleneck_s)}, lower bound {fmt_time(self.lower_bound_s)} "
            f"(+{gap:.1%}), communication {fmt_bytes(self.comm_bytes)} per micro-batch, "
            f"{self.mode}, {self.algorithm}"
        )
        return "\n".join(rows)


def fmt_time(s: float) -> str:
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.1f} us"


def fmt_bytes(b: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= size:
            return f"{b / size:.2f} {unit}"
    return f"{int(b)} B"


def stage_costs(p: Problem, assign: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compute seconds, communication seconds and peak memory bytes of each device."""
    k, tr = p.k, p.cost.transfers
    compute = np.zeros(k)
    np.add.at(compute, assign, p.times[assign, np.arange(p.n)])
    du, dv = assign[p.eu], assign[p.ev]
    cut = du != dv
    nbytes = np.zeros(k)
    ncut = np.zeros(k)
    for side in (du, dv):
        np.add.at(nbytes, side[cut], p.eb[cut])
        np.add.at(ncut, side[cut], 1)
    lat = np.array([d.link_latency for d in p.devices])
    bw = np.array([d.link_bandwidth for d in p.devices])
    comm = tr * (ncut * lat + nbytes / bw)
    pbytes = np.zeros(k)
    np.add.at(pbytes, assign, p.params)
    act = np.zeros(k)
    np.add.at(act, assign, p.outs)
    peak_live = np.zeros(k)
    np.maximum.at(peak_live, assign, p.live)
    infl = np.array([p.inflight(s) for s in range(k)])
    memory = p.cost.param_factor * pbytes + infl * act + peak_live
    return compute, comm, memory


def make_plan(p: Problem, assign: Sequence[int] | np.ndarray, algorithm: str) -> Plan:
    """Evaluate an assignment (device of each position in ``p.order``) into a Plan."""
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
        lower_bound_s=lower_bound(p),
        comm_bytes=comm_bytes,
        mode=p.cost.mode,
        algorithm=algorithm,
        micro_batches=p.micro_batches,
        device_names=tuple(d.name for d in p.devices),
        problem=p,
    )
