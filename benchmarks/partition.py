"""Partitioner benchmark: bottleneck of polydl's plans (``auto``: the exact contiguous plan and the
multilevel DAG partition, improved by local search) against the lower bound and the baselines
(METIS via pymetis if installed, DeepSpeed-style ``uniform`` and ``parameters``).

    PYTHONPATH=src python benchmarks/partition.py [--models resnet50,bert-base] [--ks 2,4,8]

Columns: LB = the proven lower bound for every partition (``bounds``), W/K = its work-only part
max(W/K, heaviest node), ours = the auto plan; then bottleneck / LB for each method (``pipeline``
is the optimum among contiguous plans), partitioning times; ok = auto no worse than every other.
"""

from __future__ import annotations

import argparse
import time

from polydl.partition.api import solve
from polydl.partition.baselines import metis_available
from polydl.partition.bounds import work_bound
from polydl.partition.cost import CostModel, identical_devices
from polydl.partition.models import builtin
from polydl.partition.plan import build_problem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,bert-base,gpt2-small,random-dag-10000")
    ap.add_argument("--ks", default="2,4,8")
    ap.add_argument("--modes", default="inference,training")
    args = ap.parse_args()
    metis = metis_available()
    methods = ["pipeline", "auto", "uniform", "parameters"] + (["metis"] if metis else [])
    head = (
        f"{'model':<17}{'mode':<10}{'K':>2} {'LB ms':>9} {'W/K ms':>9} {'ours ms':>9}"
        + "".join(f"{m:>11}" for m in methods)
        + f" {'t_pipe s':>9} {'t_auto s':>9}  ok"
    )
    print(head)
    print("-" * len(head))
    for name in args.models.split(","):
        graph = builtin(name)
        for mode in args.modes.split(","):
            for k in (int(x) for x in args.ks.split(",")):
                p = build_problem(graph, identical_devices(k), CostModel(mode=mode))
                res, times = {}, {}
                for m in methods:
                    t0 = time.perf_counter()
                    res[m] = solve(p, m)
                    times[m] = time.perf_counter() - t0
                lb = res["auto"].lower_bound_s
                ok = all(
                    res["auto"].bottleneck_s <= r.bottleneck_s * (1 + 1e-9) for r in res.values()
                )
                cols = "".join(f"{res[m].bottleneck_s / lb:>11.4f}" for m in methods)
                print(
                    f"{name:<17}{mode:<10}{k:>2} {lb * 1e3:>9.3f} {work_bound(p) * 1e3:>9.3f}"
                    f" {res['auto'].bottleneck_s * 1e3:>9.3f}{cols}"
                    f" {times['pipeline']:>9.3f} {times['auto']:>9.3f}  {'yes' if ok else 'NO'}"
                )
    if not metis:
        print("(pymetis not installed: METIS column skipped)")


if __name__ == "__main__":
    main()
