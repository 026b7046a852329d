"""The search strategy: the cost model's ranking first, then model-guided evolution.

1. Seeds. The untuned pick (what ``pd.compile`` runs without a tuned record) and the cost
   model's next ranked variants (``top_k`` in all) are measured first, in rank order: the
   analytic model is within a few per cent of the best of its own variants on most layers, so
   its top ranks are where the good points are, and trial 0 measures the baseline the result
   is compared with.
2. Microkernel sweep. The fastest seed with one microkernel knob changed at a time (k unroll,
   non-temporal stores, wider calls, prefetch, the widest register tile of each vector count;
   ``micro_sweep`` points at most, :meth:`KernelSpace.micro_neighbours`): the analytic model
   does not see most of these knobs, so they are measured directly, and the residual then has
   measurements that vary them. Then the combination: the seed with every change that
   measured faster, merged, and with the two fastest (the knobs' gains mostly add up: k
   unroll and non-temporal stores, a register tile and non-temporal stores).
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

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass

from .database import Trial
from .model import CostModel
from .space import KernelSpace, Point


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
        micro_sweep: int = 8,
    ) -> None:
        self.space, self.model = space, model
        self.rng = random.Random(seed)
        self.seeds = space.seeds(top_k)
        self.population, self.children = population, children
        self.explore, self.cross = explore, cross
        self.micro_sweep = micro_sweep
        self._sweep: list[tuple[Point, str]] | None = None  # made once the seeds are measured
        self._swept: Point | None = None  # the seed the sweep is around
        self._combos: list[tuple[Point, str]] | None = None  # made once the sweep is measured

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
            if sweep is None:  # a seed is still being measured: the sweep waits for it
                return out
            for p, origin in sweep:
                if len(out) < n and p not in taken:
                    take(p, origin)
        if len(out) < n and self._sweep:
            combos = self._combinations(history, taken)
            if combos is None:  # a sweep point is still being measured: they wait for it
                return out
            for p, origin in combos:
                if len(out) < n and p not in taken:
                    take(p, origin)
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
        """The microkernel sweep (module docstring, 2.), around the fastest seed once every
        seed is measured (None before, while a seed is pending; nothing when no seed
        succeeded)."""
        if self._sweep is None:
            seeds = [p for p, _ in self.seeds]
            if any(p not in history for p in seeds):
                return None if any(p in taken for p in seeds) else []
            ok = [(history[p].seconds, i, p) for i, p in enumerate(seeds) if history[p].ok]
            if not ok:
                self._sweep = []
                return []
            best = self._swept = min(ok)[2]
            near = self.space.micro_neighbours(best)[: self.micro_sweep]
            self._sweep = [(p, f"microkernel sweep: {why}") for p, why in near]
        return [(p, o) for p, o in self._sweep if p not in taken]

    def _combinations(self, history: Mapping[Point, Trial], taken: set[Point]):
        """Once the sweep is measured: the swept seed with every one-knob change that measured
        faster than it, merged (the fastest change first; a change that makes the point
        illegal, or sets a knob a faster change set, is left out), then the two fastest
        changes alone, when that is another point (module docstring, 2.). None while a sweep
        point is pending."""
        if self._combos is None:
            points = [p for p, _ in self._sweep]
            if any(p not in history for p in points):
                return None if any(p in taken for p in points) else []
            best = self._swept
            if best not in history or not history[best].ok:
                self._combos = []
                return []
            faster = sorted(
                (history[p].seconds, i, p, why.split(": ", 1)[-1])
                for i, (p, why) in enumerate(self._sweep)
                if history[p].ok and history[p].seconds < history[best].seconds
            )
            combos: list[tuple[Point, str]] = []
            for group in (faster, faster[:2]):
                point, names = self._merge(best, [(p, why) for _, _, p, why in group])
                if len(names) >= 2 and point not in (c for c, _ in combos):
                    combos.append((point, "sweep combination: " + " + ".join(names)))
            self._combos = combos
        return [(p, o) for p, o in self._combos if p not in taken]

    def _merge(self, base: Point, changes: list[tuple[Point, str]]) -> tuple[Point, list[str]]:
        """``base`` with the knobs each of ``changes`` (one-knob neighbours of it) changed."""
        point, names, fixed = base, [], set()
        for p, why in changes:
            knobs = list(point.knobs)
            diff = []
            for i, (kn, b) in enumerate(zip(p.knobs, base.knobs, strict=True)):
                for f in dataclasses.fields(kn):
                    if getattr(kn, f.name) != getattr(b, f.name):
                        diff.append((i, f.name, getattr(kn, f.name)))
            if not diff or any((i, name) in fixed for i, name, _ in diff):
                continue
            for i, name, value in diff:
                knobs[i] = dataclasses.replace(knobs[i], **{name: value})
            merged = dataclasses.replace(point, knobs=tuple(knobs))
            if self.space.problem(merged) is None:
                point = merged
                names.append(why)
                fixed |= {(i, name) for i, name, _ in diff}
        return point, names

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
