"""The partitioning problem: graph, devices and cost model in arrays indexed by position in a
topological order, and what an assignment of positions to devices costs. A leaf of the
partitioner: every algorithm and bound imports it, it imports none of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import PartitionError
from .graph import ModelGraph
from .roofline import CostModel, Device

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


def node_times(p: Problem) -> np.ndarray:
    """``t(v)``: each node's compute time on its fastest device."""
    return p.times.min(axis=0)


def edge_costs(p: Problem) -> np.ndarray:
    """``c(e)``: the cheapest charge of each edge, when cut, to one of its devices."""
    lat = np.array([d.link_latency for d in p.devices])
    bw = np.array([d.link_bandwidth for d in p.devices])
    per_dev = lat[:, None] + p.eb[None, :] / bw[:, None]
    return p.cost.transfers * per_dev.min(axis=0) if len(p.eb) else np.zeros(0)
