"""``pd.partition``: load a model, build the cost problem, run an algorithm, return a Plan."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from ..errors import PartitionError
from .contiguous import parameters_partition, pipeline_partition, uniform_partition
from .graph import ModelGraph, from_networkx
from .placement import Plan
from .placement import make_plan as _make_plan
from .problem import Problem, build_problem
from .roofline import CostModel, Device, KernelTime, identical_devices, load_devices, parse_quantity

ALGORITHMS = ("pipeline", "dag", "auto", "uniform", "parameters", "metis")


def load_model(source: Any, *, batch: int | None = None, example_inputs: Any = None) -> ModelGraph:
    """A ModelGraph from a ModelGraph, a networkx DiGraph, an ``.onnx`` path, a built-in model
    name, or a torch module (with ``example_inputs``)."""
    if isinstance(source, ModelGraph):
        return source
    if isinstance(source, nx.DiGraph):
        return from_networkx(source, name=str(source.graph.get("name", "graph")))
    if isinstance(source, str | os.PathLike):
        text = os.fspath(source)
        if text.lower().endswith(".onnx") or Path(text).is_file():
            from .onnx_import import load_onnx

            return load_onnx(text)
        from .models import builtin

        return builtin(text, batch=batch)
    if type(source).__module__.startswith("torch") or hasattr(source, "forward"):
        from .torch_import import from_torch

        if example_inputs is None:
            raise PartitionError(
                f"torch module {type(source).__name__}: pass example_inputs=(tensor, ...)"
            )
        return from_torch(source, example_inputs)
    raise PartitionError(
        f"cannot partition a {type(source).__name__}: expected a path, a name, a graph or a module"
    )


def make_devices(
    devices: int | Sequence[Device] | str | os.PathLike | Mapping[str, Any],
    *,
    memory: str | float | None = None,
    bandwidth: str | float | None = None,
    latency: float | None = None,
    peak_flops: str | float | None = None,
) -> tuple[Device, ...]:
    """K identical devices, a device list, or a JSON description; overrides apply to all."""
    if isinstance(devices, bool):
        raise PartitionError(f"devices: expected a count or a description, got {devices!r}")
    if isinstance(devices, int):
        devs = identical_devices(devices)
    elif isinstance(devices, str | os.PathLike | Mapping):
        devs = load_devices(devices)
    else:
        devs = tuple(devices)
        if not devs or not all(isinstance(d, Device) for d in devs):
            raise PartitionError("devices: expected a non-empty sequence of Device")
    over: dict[str, float] = {}
    if memory is not None:
        over["memory_bytes"] = parse_quantity(memory, "memory", "B")
    if bandwidth is not None:
        over["link_bandwidth"] = parse_quantity(bandwidth, "bandwidth", "B/s")
    if latency is not None:
        if latency < 0:
            raise PartitionError(f"latency: must be >= 0, got {latency!r}")
        over["link_latency"] = float(latency)
    if peak_flops is not None:
        over["peak_flops"] = parse_quantity(peak_flops, "peak_flops", "FLOPS|FLOP/s|flops")
    if over:
        from dataclasses import replace

        devs = tuple(replace(d, **over) for d in devs)
    return devs


def solve(
    p: Problem,
    algorithm: str,
    *,
    imbalance: float = 0.03,
    progress: Callable[[int, int], None] | None = None,
) -> Plan:
    """Run one algorithm on a built problem (its plan carries the proven lower bound)."""
    from .bounds import lower_bound

    bound = lower_bound(p)
    return _solve(p, algorithm, bound, imbalance=imbalance, progress=progress)


def _solve(p: Problem, algorithm: str, bound: float, *, imbalance: float, progress) -> Plan:
    def make_plan(p, assign, name):
        return _make_plan(p, assign, name, lower_bound=bound)

    if algorithm == "pipeline":
        plan = make_plan(p, pipeline_partition(p, progress), "pipeline")
        return replace(plan, contiguous_optimum_s=plan.bottleneck_s)
    if algorithm == "uniform":
        return make_plan(p, uniform_partition(p), "uniform")
    if algorithm == "parameters":
        return make_plan(p, parameters_partition(p), "parameters")
    if algorithm == "metis":
        from .baselines import metis_partition

        return make_plan(p, metis_partition(p, imbalance=imbalance), "metis")
    if algorithm == "dag":
        from .dag import dag_partition

        return make_plan(p, dag_partition(p, imbalance=imbalance), "dag")
    if algorithm == "auto":
        # the exact contiguous plan and the multilevel DAG partition (seeded with it), each
        # improved by the bottleneck-aimed local search; the best of them
        from .dag import dag_partition
        from .refine import refine

        pipe = _solve(p, "pipeline", bound, imbalance=imbalance, progress=progress)
        start = np.array([pipe.nodes[v]["device"] for v in p.order], dtype=np.int64)
        plans = [pipe, make_plan(p, refine(p, start), "auto")]
        try:
            dag = dag_partition(p, imbalance=imbalance, seed=pipe.assignment())
            plans.append(make_plan(p, refine(p, dag), "auto"))
        except PartitionError:
            pass
        best = min(plans, key=lambda q: q.bottleneck_s)
        return replace(best, algorithm="auto", contiguous_optimum_s=pipe.bottleneck_s)
    raise PartitionError(f"algorithm: expected one of {ALGORITHMS}, got {algorithm!r}")


def partition(
    model: Any,
    devices: int | Sequence[Device] | str | os.PathLike | Mapping[str, Any] = 2,
    *,
    mode: str = "inference",
    algorithm: str = "pipeline",
    memory: str | float | None = None,
    bandwidth: str | float | None = None,
    latency: float | None = None,
    peak_flops: str | float | None = None,
    micro_batches: int = 1,
    schedule: str = "1f1b",
    batch: int | None = None,
    example_inputs: Any = None,
    optimizer: str = "adam",
    imbalance: float = 0.03,
    kernel_time: KernelTime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Plan:
    """Partition ``model`` over ``devices`` and return a :class:`Plan`.

    ``model``: a built-in name (``resnet50``, ``bert-base``, ``gpt2-small``, ``mlp3``,
    ``random-dag-N``), an ``.onnx`` path, a networkx DiGraph, a ModelGraph, or a torch module
    with ``example_inputs``. ``devices``: a count of identical devices, a list of
    :class:`Device`, or a JSON description (path or mapping). ``algorithm``: ``pipeline``
    (exact contiguous stages, default), ``dag`` (multilevel, minimum communication under a
    balance bound), ``auto`` (the better of both), or a baseline (``uniform``, ``parameters``,
    ``metis``). ``memory`` / ``bandwidth`` / ``latency`` / ``peak_flops`` override every device.
    Raises :class:`polydl.errors.PartitionError` for bad input or infeasible memory.
    """
    if not 0 <= imbalance < 1:
        raise PartitionError(f"imbalance: expected a fraction in [0, 1), got {imbalance!r}")
    graph = load_model(model, batch=batch, example_inputs=example_inputs)
    devs = make_devices(
        devices, memory=memory, bandwidth=bandwidth, latency=latency, peak_flops=peak_flops
    )
    cost = CostModel(mode=mode, optimizer=optimizer, kernel_time=kernel_time)  # type: ignore[arg-type]
    p = build_problem(graph, devs, cost, micro_batches=micro_batches, schedule=schedule)
    return solve(p, algorithm, imbalance=imbalance, progress=progress)


def assignment_array(p: Problem, assignment: Mapping[str, int]) -> np.ndarray:
    """An assignment {node: device} as an array over ``p.order``."""
    missing = [v for v in p.order if v not in assignment]
    if missing:
        raise PartitionError(f"model {p.model.name!r}: node {missing[0]!r} has no device")
    return np.array([assignment[v] for v in p.order], dtype=np.int64)
