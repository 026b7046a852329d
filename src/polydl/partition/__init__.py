"""Graph partitioner for automatic model parallelism (ONNX / torch / built-in graphs -> devices).

``partition(model, devices=K, ...)`` returns a :class:`Plan`: the device of every node, per-stage
compute, communication and memory, the bottleneck stage time and a lower bound. See
``polydl partition --help`` for the command line. torch and matplotlib are imported lazily.
"""

from .graph import GraphBuilder, ModelGraph, from_networkx
from .models import BUILTIN, builtin
from .partitioner import load_model, make_devices, partition
from .placement import Plan
from .roofline import CostModel, Device, load_devices

__all__ = [
    "partition",
    "load_model",
    "make_devices",
    "Plan",
    "Device",
    "CostModel",
    "load_devices",
    "ModelGraph",
    "GraphBuilder",
    "from_networkx",
    "BUILTIN",
    "builtin",
]
