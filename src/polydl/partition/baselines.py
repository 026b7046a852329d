"""METIS baseline (pymetis, optional): k-way partition minimising edge cut under balance."""

from __future__ import annotations

import numpy as np

from ..errors import PartitionError
from .problem import Problem


def metis_available() -> bool:
    try:
        import pymetis  # noqa: F401
    except ImportError:
        return False
    return True


def metis_partition(p: Problem, *, imbalance: float = 0.03) -> np.ndarray:
    try:
        import pymetis
    except ImportError:
        raise PartitionError(
            "algorithm 'metis': the optional package pymetis is not installed"
        ) from None
    nbrs: list[dict[int, float]] = [{} for _ in range(p.n)]
    for u, v, b in zip(p.eu.tolist(), p.ev.tolist(), p.eb.tolist(), strict=True):
        nbrs[u][v] = nbrs[u].get(v, 0.0) + b
        nbrs[v][u] = nbrs[v].get(u, 0.0) + b
    xadj, adjncy, eweights = [0], [], []
    scale_e = 1e6 / max(1.0, float(p.eb.max()) if len(p.eb) else 1.0)
    for v in range(p.n):
        for u, b in sorted(nbrs[v].items()):
            adjncy.append(u)
            eweights.append(max(1, int(b * scale_e)))
        xadj.append(len(adjncy))
    t = p.times[0]
    vweights = [max(1, int(x)) for x in t * (1e6 / max(float(t.max()), 1e-300))]
    opts = pymetis.Options(ufactor=max(1, int(imbalance * 1000)))
    _, parts = pymetis.part_graph(
        p.k, pymetis.CSRAdjacency(xadj, adjncy), vweights=vweights, eweights=eweights, options=opts
    )
    return np.asarray(parts, dtype=np.int64)
