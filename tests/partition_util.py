"""Helpers shared by the partition test files (not collected by pytest)."""

from __future__ import annotations

import itertools

import numpy as np

from polydl.partition.problem import stage_costs


def general_optimum(p) -> float:
    """Best bottleneck over every assignment of nodes to devices (any shape, empty devices too)."""
    best = np.inf
    for assign in itertools.product(range(p.k), repeat=p.n):
        compute, comm, _ = stage_costs(p, np.array(assign, dtype=np.int64))
        best = min(best, float((compute + comm).max()))
    return best
