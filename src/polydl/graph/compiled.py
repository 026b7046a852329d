"""A compiled graph: its kernels run in order on the caller's arrays (:class:`CompiledGraph`,
what :meth:`polydl.graph.Graph.compile` returns; :mod:`polydl.graph.lower` builds it).

Buffers: each call returns new output arrays. A large new array costs its pages: glibc maps a
block of several MiB afresh for each allocation, and the kernel zeroes every page at its first
touch (a res4 chain at batch 8, its 6.4 MB output: 2-5% of the call). So a call keeps, per
thread, the buffers it wrote (outputs and the intermediates between its kernels) and writes
the same ones at the next call when nothing else refers to them any more: the caller dropped
the array it got, and every view of it (a NumPy view, a torch tensor sharing its memory, a
memoryview refers to it or to its memory's owner, which the count sees). An array still held
is never written again; its buffer is then replaced by a new one.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence

import numpy as np

from . import Graph, GraphError, Value


class CompiledGraph:
    """A graph compiled into kernels: ``f(*inputs) -> output`` (a tuple for several);
    ``seconds``: each kernel's time at the last call."""

    def __init__(
        self,
        graph: Graph,
        parts: list[tuple],
        outputs: Sequence[Value],
        same: dict[int, int] | None = None,
        part_of: dict[int, int] | None = None,
        bordered: set[int] | frozenset[int] = frozenset(),
    ):
        self.graph = graph
        self.parts = parts  # (compiled kernel, input value ids, params, output value ids)
        self._kernels = list({id(p[0]): p[0] for p in parts if p[0] is not None}.values())
        self.output_shapes = [v.shape for v in outputs]
        self._outputs = [v.id for v in outputs]
        self.seconds: list[float] = []
        self.part_ops: list[list[str]] = []  # the operators of each kernel
        self._part_of = dict(part_of or {})  # node id -> index of its kernel
        self._same = dict(same or {})
        # values written inside a zero border that must stay zero (blocked conv inputs): kept
        # between calls, one buffer per thread, zeroed once
        self._bordered = frozenset(bordered)
        self._tls = threading.local()

    @property
    def kernel(self):
        """The compiled kernel (the fused graph is one)."""
        return self.parts[0][0]

    def part_of(self, node_id: int) -> int | None:
        """The index of the kernel computing graph node ``node_id`` (a folded batch norm: its
        conv's), or None (an input, or a value computed in place of another)."""
        return self._part_of.get(self._same.get(node_id, node_id))

    def __call__(self, *inputs: np.ndarray):
        import time

        g = self.graph
        if len(inputs) != len(g.inputs):
            raise GraphError(f"graph {g.name} takes {len(g.inputs)} input(s), got {len(inputs)}")
        values: dict[int, np.ndarray] = {}
        for v, a in zip(g.inputs, inputs, strict=True):
            arr = np.asarray(a)
            if arr.shape != v.shape or arr.dtype != np.float32:
                raise GraphError(
                    f"input {v.name}: expected float32 {v.shape}, got {arr.dtype} {arr.shape}"
                )
            values[v.id] = np.ascontiguousarray(arr)
        seconds = []
        for ck, ins, params, outs in self.parts:
            t0 = time.perf_counter()
            if ck is None:  # a view
                for vid, shape in outs:
                    values[vid] = values[ins[0]].reshape(shape)
                seconds.append(time.perf_counter() - t0)
                continue
            out_arrays = [
                self._kept(vid, shape) if vid in self._bordered else self._buffer(vid, shape)
                for vid, shape in outs
            ]
            ck(*[values[i] for i in ins], *(p for _, p in params), *out_arrays)
            for (vid, _), arr in zip(outs, out_arrays, strict=True):
                values[vid] = arr
            seconds.append(time.perf_counter() - t0)
        self.seconds = seconds
        res = [values[i] for i in self._outputs]
        return res[0] if len(res) == 1 else tuple(res)

    def _buffer(self, vid: int, shape) -> np.ndarray:
        """The array this call writes value ``vid`` into: the one this thread wrote at its last
        call when nothing else refers to it (module doc), else a new one, kept for the next."""
        from ..memory import empty

        last = getattr(self._tls, "last", None)
        if last is None:
            last = self._tls.last = {}
        arr = last.get(vid)
        # nothing else refers to it: three references to it (``last``, ``arr`` and getrefcount's
        # argument) and those of the kernels' argument caches, two to the owner of its memory
        # (``empty`` returns a view: ``arr.base`` and the argument; a NumPy view of ``arr``
        # refers to the owner, not to ``arr``)
        if arr is not None and sys.getrefcount(arr.base) == 2:
            held = 0
            for ck in self._kernels:
                held += ck.holds(arr)
            if sys.getrefcount(arr) == 3 + held:
                return arr
        arr = last[vid] = empty(shape)
        return arr

    def _kept(self, vid: int, shape) -> np.ndarray:
        from ..memory import zeros

        kept = getattr(self._tls, "kept", None)
        if kept is None:
            kept = self._tls.kept = {}
        if vid not in kept:
            kept[vid] = zeros(shape)
        return kept[vid]

    def show(self, what: str = "loops") -> str:
        return "\n".join(ck.show(what) for ck, *_ in self.parts if ck is not None)
