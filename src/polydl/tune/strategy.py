"""The search strategy: the cost model's ranking first, then model-guided evolution.

1. Seeds. The untuned pick (what ``pd.compile`` runs without a tuned record) and the cost
   model's next ranked variants (``top_k`` in all) are measured first, in rank order: the
   analytic model is within a few per cent of the best of its own variants on most layers, so
   its top ranks are where the good points are, and trial 0 measures the baseline the result
   is compared with.
2. The sweep: a coordinate descent from the fastest seed, one group of knobs at a time
   (:data:`~polydl.tune.space.SWEEP`: the stores, with the whole reduction in one call where a
   reduction loop keeps non-temporal stores off; packing; narrower or wider calls; the
   register tile (a mid-size one-vector tile among them); the k unroll; the prefetch; the
   reduction block;
   :meth:`KernelSpace.sweep_group`). Each group's values are measured around the incumbent,
   and the fastest becomes the incumbent when it measured more than :data:`ADOPT` faster, so
   the next groups are measured on top of it: the knobs' gains mostly add up (the whole
   reduction per call and non-temporal stores, packing off and a one-vector register tile),
   and the analytic model does not see most of these knobs, so they are measured rather than
   predicted, the likeliest winners first (15 trials at most after the seeds on GEMM and the
   NCHW ResNet-50 layers: the best the descent finds is in by trial 20). The next group waits for the last of the group before.
3. Evolution. The ``population`` fastest measured points are the parents. Each round breeds
   ``children`` legal, unmeasured points: a parent chosen by rank (the fastest most often),
   crossed with another now and then (blocks from one, the nest from the other), then one to
   three mutations (a block to a neighbouring value, another reduction chunking, a tile added,
   changed or dropped, loops swapped or moved, the parallel count, packing, the microkernel's
   register tile, k unroll, prefetch or non-temporal stores). The cost model
   (analytic plus the residual learned from every measurement so far) ranks the children and
   the predicted fastest is measured; with probability ``explore`` a random child is measured
   instead, so that the model's blind spots get measurements too.
4. When the neighbourhood of the parents is exhausted, random legal points keep the search
   going until the budget ends.

Why evolution and not a bandit: the knobs interact (a tile size is good or bad with a given
loop order and block; ``kc`` matters only with a k loop, packing only with some orders), so
per-knob bandit arms, which score each value on its own, learn a marginal that hides the
combinations; a bandit over whole points has too many arms to try each once. Mutation keeps
the structure of good points and changes one decision at a time, which is what a small budget
(tens of trials, each a compile and a measurement) can afford, and the model filters the
children for free (an analytic cost takes milliseconds; a trial a second).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from .database import Trial
from .model import CostModel
from .space import SWEEP, KernelSpace, Point

ADOPT = 0.005  # how much faster than the incumbent a sweep value must measure to replace it


@dataclass(frozen=True, kw_only=True)
class Proposal:
    """A point to measure, where it came from and what the model predicted (seconds)."""

    point: Point
    origin: str
    predicted: float | None = None


class Evolution:
    """Seeded, model-guided evolutionary search over a :class:`KernelSpace`."""

    def __init__(
        self,
        space: KernelSpace,
        model: CostModel,
        *,
        seed: int = 0,
        top_k: int = 8,
        population: int = 8,
        children: int = 32,
        explore: float = 0.2,
        cross: float = 0.2,
        sweep: bool = True,
    ) -> None:
        self.space, self.model = space, model
        self.rng = random.Random(seed)
        self.seeds = space.seeds(top_k)
        self.population, self.children = population, children
        self.explore, self.cross = explore, cross
        self._groups: list[str] | None = None  # the sweep's groups to come (once seeds are in)
        self._group: list[tuple[Point, str]] = []  # the group being measured
        self.incumbent: Point | None = None  # the sweep's fastest point so far
        self._sweep_groups = list(SWEEP) if sweep else []

    def propose(
        self, n: int, history: Mapping[Point, Trial], pending: frozenset[Point] = frozenset()
    ) -> list[Proposal]:
        """Up to ``n`` points to measure next, none measured or pending (fewer when no
        legal unmeasured point could be found, or when the sweep waits for a pending seed)."""
        taken = set(history) | set(pending)
        out: list[Proposal] = []

        def take(p: Point, origin: str) -> None:
            taken.add(p)
            out.append(Proposal(point=p, origin=origin, predicted=self.model.seconds(p)))

        for p, origin in self.seeds:
            if len(out) < n and p not in taken:
                take(p, origin)
        if len(out) < n:
            sweep = self._sweep_points(history, taken)
            if sweep is None:  # a seed or the group before is still being measured: wait
                return out
            for p, origin in sweep:
                if len(out) < n and p not in taken:
                    take(p, origin)
            if len(out) < n and sweep:  # the rest of this group is proposed, not yet measured
                return out
        if len(out) < n:
            pool = self._breed(history, taken)
            while len(out) < n and pool:
                cands = list(pool)
                if self.rng.random() < self.explore:
                    p = self.rng.choice(cands)
                    origin = f"{pool[p]}, explored"
                else:
                    pred = self.model.predict(cands)
                    p = cands[int(pred.argmin())]
                    origin = f"{pool[p]}, the model's pick"
                del pool[p]
                take(p, origin)
        tries = 0
        while len(out) < n and tries < 50 * n:
            tries += 1
            p = self.space.random(self.rng)
            if p not in taken and self.space.problem(p) is None:
                take(p, "random")
        return out

    def _sweep_points(self, history: Mapping[Point, Trial], taken: set[Point]):
        """The sweep's points to propose now (module docstring, 2.): the current group's not
        yet taken; None while a seed or a point of the group is pending (the next group is
        around the incumbent after it); nothing once the sweep is done (or no seed
        succeeded)."""
        if self._groups is None:
            seeds = [p for p, _ in self.seeds]
            if any(p not in history for p in seeds):
                return None if any(p in taken for p in seeds) else []
            ok = [(history[p].seconds, i, p) for i, p in enumerate(seeds) if history[p].ok]
            self._groups = list(self._sweep_groups) if ok else []
            self.incumbent = min(ok)[2] if ok else None
        while True:
            left = [(p, o) for p, o in self._group if p not in taken]
            if left:
                return left
            if any(p not in history for p, _ in self._group):
                return None
            self._adopt(history)
            if not self._groups:
                self._group = []
                return []
            name = self._groups.pop(0)
            self._group = [
                (p, f"sweep: {why}") for p, why in self.space.sweep_group(name, self.incumbent)
            ]

    def _adopt(self, history: Mapping[Point, Trial]) -> None:
        """The measured group's fastest point becomes the incumbent when it measured more than
        :data:`ADOPT` faster than it."""
        ok = [(history[p].seconds, i, p) for i, (p, _) in enumerate(self._group) if history[p].ok]
        if ok and self.incumbent is not None:
            seconds, _, p = min(ok)
            if seconds < (1.0 - ADOPT) * history[self.incumbent].seconds:
                self.incumbent = p

    def _breed(self, history: Mapping[Point, Trial], taken: set[Point]) -> dict[Point, str]:
        """Legal, unmeasured children of the fastest measured points: point -> how made."""
        ok = sorted((t.seconds, i, p) for i, (p, t) in enumerate(history.items()) if t.ok)
        parents = [p for _, _, p in ok[: self.population]]
        if not parents:
            parents = [p for p, _ in self.seeds]
        weights = [1.0 / (i + 1) for i in range(len(parents))]
        pool: dict[Point, str] = {}
        for _ in range(4 * self.children):
            if len(pool) >= self.children:
                break
            child = self.rng.choices(parents, weights=weights)[0]
            how = "mutation"
            if len(parents) > 1 and self.rng.random() < self.cross:
                child = self.space.cross(child, self.rng.choice(parents), self.rng)
                how = "crossover + mutation"
            for _ in range(1 + (self.rng.random() < 0.5) + (self.rng.random() < 0.25)):
                child = self.space.mutate(child, self.rng)
            if child in taken or child in pool or self.space.problem(child) is not None:
                continue
            pool[child] = how
        return pool
