"""Cost model: devices, links, per-node compute time, communication and memory.

Compute time of a node on a device is a roofline: ``max(flops / (peak * efficiency[op]),
bytes / memory_bandwidth)``, with per-op-type efficiencies. A ``kernel_time`` hook may replace
that estimate (for example with polydl's own cost model or measured kernel times of conv and
matmul on the host): it is called as ``kernel_time(op, attrs, device, mode)`` and returns seconds,
or ``None`` to keep the roofline estimate.

Communication of one cut edge, charged to both of its devices: ``latency + bytes / bandwidth`` of
that device's link (in training, activations go forward and gradients come back: twice).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from ..errors import PartitionError

Mode = Literal["inference", "training"]

DEFAULT_EFFICIENCY: Mapping[str, float] = MappingProxyType(
    {
        "Conv": 0.70,
        "ConvTranspose": 0.60,
        "MatMul": 0.80,
        "Gemm": 0.80,
        "default": 0.50,
    }
)

# Bytes of optimizer state per byte of parameters in training (Adam: two moments).
OPTIMIZER_STATE = {"sgd": 0.0, "momentum": 1.0, "adam": 2.0}

_UNITS = {
    "": 1,
    "k": 1e3,
    "m": 1e6,
    "g": 1e9,
    "t": 1e12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def parse_quantity(text: str | float | int, what: str, unit: str) -> float:
    """Parse ``16GB``, ``25GB/s``, ``10TFLOPS``, ``512MiB`` or a plain number."""
    if isinstance(text, int | float):
        value = float(text)
    else:
        m = re.fullmatch(
            r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGtT]i?)?\s*(" + unit + r")?\s*",
            str(text),
        )
        if not m:
            raise PartitionError(
                f"{what}: cannot read {text!r} (expected e.g. 16{unit.split('|')[0]})"
            )
        value = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    if not math.isfinite(value) or value <= 0:
        raise PartitionError(f"{what}: must be positive, got {text!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class Device:
    """One device: compute peak, memory, and its link to the other devices."""

    name: str = "cpu"
    peak_flops: float = 2.0e12
    mem_bandwidth: float = 100e9
    memory_bytes: float = math.inf
    link_bandwidth: float = 25e9
    link_latency: float = 5e-6
    efficiency: Mapping[str, float] = field(default_factory=lambda: DEFAULT_EFFICIENCY)

    def eff(self, op: str) -> float:
        return self.efficiency.get(op, self.efficiency.get("default", 0.5))

    def comm_time(self, nbytes: float, transfers: int = 1) -> float:
        return transfers * self.link_latency + nbytes / self.link_bandwidth

    def cost_key(self) -> tuple:
        """Devices with the same key have the same compute and link costs."""
        return (
            self.peak_flops,
            self.mem_bandwidth,
            self.link_bandwidth,
            self.link_latency,
            tuple(sorted(self.efficiency.items())),
        )


def identical_devices(k: int, **overrides: Any) -> tuple[Device, ...]:
    if not isinstance(k, int) or k < 1:
        raise PartitionError(f"devices: expected a positive number of devices, got {k!r}")
    return tuple(Device(**{"name": f"dev{i}", **overrides}) for i in range(k))


def load_devices(source: str | Path | Mapping[str, Any]) -> tuple[Device, ...]:
    """Devices from a JSON description (a path or an already parsed mapping)::

        {"devices": [{"name": "gpu0", "peak_flops": "15TFLOPS", "memory": "16GB",
                      "mem_bandwidth": "900GB/s", "link_bandwidth": "25GB/s",
                      "link_latency": 5e-6, "efficiency": {"Conv": 0.6}, "count": 2}, ...]}

    Every field but ``name`` is optional; ``count`` repeats a device.
    """
    if isinstance(source, Mapping):
        data, where = source, "device description"
    else:
        where = str(source)
        try:
            data = json.loads(Path(source).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise PartitionError(f"device description {where}: {e}") from None
    entries = data.get("devices") if isinstance(data, Mapping) else data
    if not isinstance(entries, list) or not entries:
        raise PartitionError(f"{where}: expected a non-empty list under 'devices'")
    known = {
        "name",
        "peak_flops",
        "memory",
        "mem_bandwidth",
        "link_bandwidth",
        "link_latency",
        "efficiency",
        "count",
    }
    out: list[Device] = []
    for i, e in enumerate(entries):
        if not isinstance(e, Mapping):
            raise PartitionError(f"{where}: device #{i} is not an object")
        unknown = set(e) - known
        if unknown:
            raise PartitionError(f"{where}: device #{i} has unknown fields {sorted(unknown)}")
        name = str(e.get("name", f"dev{len(out)}"))
        d = Device()
        eff = dict(DEFAULT_EFFICIENCY)
        for op, v in dict(e.get("efficiency", {})).items():
            if not isinstance(v, int | float) or not 0 < v <= 1:
                raise PartitionError(
                    f"{where}: device {name!r}: efficiency of {op} must be in (0, 1]"
                )
            eff[op] = float(v)
        kw = dict(
            name=name,
            peak_flops=parse_quantity(
                e.get("peak_flops", d.peak_flops),
                f"{where}: {name}.peak_flops",
                "FLOPS|FLOP/s|flops",
            ),
            mem_bandwidth=parse_quantity(
                e.get("mem_bandwidth", d.mem_bandwidth), f"{where}: {name}.mem_bandwidth", "B/s"
            ),
            memory_bytes=parse_quantity(e["memory"], f"{where}: {name}.memory", "B")
            if "memory" in e
            else math.inf,
            link_bandwidth=parse_quantity(
                e.get("link_bandwidth", d.link_bandwidth), f"{where}: {name}.link_bandwidth", "B/s"
            ),
            link_latency=float(e.get("link_latency", d.link_latency)),
            efficiency=MappingProxyType(eff),
        )
        count = e.get("count", 1)
        if not isinstance(count, int) or count < 1:
            raise PartitionError(f"{where}: device {name!r}: count must be a positive int")
        for c in range(count):
            out.append(Device(**{**kw, "name": name if count == 1 else f"{name}.{c}"}))
    return tuple(out)


KernelTime = Callable[[str, Mapping[str, Any], Device, str], "float | None"]


@dataclass(frozen=True, kw_only=True)
class CostModel:
    """How node compute time, transfers and memory are counted."""

    mode: Mode = "inference"
    optimizer: str = "adam"
    kernel_time: KernelTime | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("inference", "training"):
            raise PartitionError(f"mode: expected 'inference' or 'training', got {self.mode!r}")
        if self.optimizer not in OPTIMIZER_STATE:
            raise PartitionError(
                f"optimizer: expected one of {sorted(OPTIMIZER_STATE)}, got {self.optimizer!r}"
            )

    @property
    def training(self) -> bool:
        return self.mode == "training"

    @property
    def transfers(self) -> int:
        """Transfers per cut edge and micro-batch (activation forward, gradient backward)."""
        return 2 if self.training else 1

    def flops(self, attrs: Mapping[str, Any]) -> float:
        """Forward FLOPs, or forward+backward in training (3x with weights, 2x without)."""
        f = float(attrs["flops"])
        if self.training:
            f *= 3.0 if attrs["param_bytes"] else 2.0
        return f

    def node_time(self, attrs: Mapping[str, Any], device: Device) -> float:
        if self.kernel_time is not None:
            t = self.kernel_time(attrs["op"], attrs, device, self.mode)
            if t is not None:
                return float(t)
        moved = attrs["in_bytes"] + attrs["out_bytes"] + attrs["param_bytes"]
        if self.training:
            moved *= 3
        return max(
            self.flops(attrs) / (device.peak_flops * device.eff(attrs["op"])),
            moved / device.mem_bandwidth,
        )

    @property
    def param_factor(self) -> float:
        """Resident bytes per parameter byte: weights (+ gradients + optimizer state in training)."""
        return 2.0 + OPTIMIZER_STATE[self.optimizer] if self.training else 1.0
