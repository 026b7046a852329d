"""Simulated pipeline timelines (GPipe and 1F1B with m micro-batches) and their pictures."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PartitionError
from .placement import Plan


@dataclass(frozen=True, kw_only=True)
class Timeline:
    schedule: str
    micro_batches: int
    ops: tuple[tuple[int, str, int, float, float], ...]  # (stage, "F"|"B", micro-batch, start, end)
    makespan: float
    bubble: float  # idle fraction of stage-time: 1 - busy / (stages * makespan)


def _order(schedule: str, s: int, k: int, m: int, training: bool) -> list[tuple[str, int]]:
    if not training:
        return [("F", i) for i in range(m)]
    if schedule == "gpipe":
        return [("F", i) for i in range(m)] + [("B", i) for i in reversed(range(m))]
    warm = min(k - s - 1, m)
    ops = [("F", i) for i in range(warm)]
    for i in range(m - warm):
        ops += [("F", warm + i), ("B", i)]
    return ops + [("B", i) for i in range(m - warm, m)]


def simulate(plan: Plan, micro_batches: int, schedule: str = "1f1b") -> Timeline:
    """Event simulation of the plan's stages (in device order) over ``micro_batches``.

    Each stage's time per micro-batch is its compute plus communication; in training the forward
    pass takes one third and the backward pass two thirds of it.
    """
    if schedule not in ("gpipe", "1f1b"):
        raise PartitionError(f"schedule: expected 'gpipe' or '1f1b', got {schedule!r}")
    if micro_batches < 1:
        raise PartitionError(f"micro_batches: expected a positive int, got {micro_batches}")
    k, m = plan.devices, micro_batches
    training = plan.mode == "training"
    total = [s["compute_s"] + s["comm_s"] for s in plan.stages]
    dur = {"F": [t / 3 if training else t for t in total], "B": [2 * t / 3 for t in total]}
    queues = [_order(schedule, s, k, m, training) for s in range(k)]
    done: dict[tuple[str, int, int], float] = {}
    free = [0.0] * k
    ptr = [0] * k
    ops = []
    remaining = sum(len(q) for q in queues)
    while remaining:
        progressed = False
        for s in range(k):
            while ptr[s] < len(queues[s]):
                kind, i = queues[s][ptr[s]]
                if kind == "F":
                    dep = [("F", s - 1, i)] if s > 0 else []
                else:
                    dep = [("F", s, i)] + ([("B", s + 1, i)] if s < k - 1 else [])
                if any(d not in done for d in dep):
                    break
                start = max([free[s]] + [done[d] for d in dep])
                end = start + dur[kind][s]
                done[(kind, s, i)] = end
                free[s] = end
                ops.append((s, kind, i, start, end))
                ptr[s] += 1
                remaining -= 1
                progressed = True
        if not progressed:  # pragma: no cover - the schedules above cannot deadlock
            raise PartitionError(f"schedule {schedule}: deadlock in the simulation")
    makespan = max(free)
    busy = sum(e - b for _, _, _, b, e in ops)
    bubble = 1 - busy / (k * makespan) if makespan > 0 else 0.0
    return Timeline(
        schedule=schedule, micro_batches=m, ops=tuple(ops), makespan=makespan, bubble=bubble
    )


def draw_timeline(plan: Plan, micro_batches: int, path: str) -> list[Timeline]:
    """Draw the GPipe and 1F1B timelines of a plan into one picture (.svg or .png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sims = [simulate(plan, micro_batches, s) for s in ("gpipe", "1f1b")]
    fig, axes = plt.subplots(2, 1, figsize=(12, 1.2 + 0.45 * plan.devices * 2), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, sim in zip(axes[:, 0], sims, strict=True):
        for s, kind, i, start, end in sim.ops:
            color = cmap((2 * i) % 20 + (1 if kind == "B" else 0))
            ax.broken_barh(
                [(start * 1e3, (end - start) * 1e3)],
                (s - 0.4, 0.8),
                facecolors=color,
                edgecolors="k",
                linewidth=0.3,
            )
            if end - start > sim.makespan * 0.02:
                ax.text(
                    (start + end) / 2 * 1e3, s, f"{kind}{i}", ha="center", va="center", fontsize=6
                )
        ax.set_yticks(range(plan.devices))
        ax.set_yticklabels([f"stage {d}" for d in range(plan.devices)])
        ax.invert_yaxis()
        ax.set_xlabel("time (ms)")
        ax.set_title(
            f"{plan.model} {plan.mode}: {sim.schedule}, m={micro_batches}, makespan {sim.makespan * 1e3:.2f} ms, bubble {sim.bubble:.1%}",
            fontsize=9,
        )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return sims
