"""Partitioner benchmark: bottleneck of polydl's plans (``auto``: the exact contiguous plan and the
multilevel DAG partition, improved by local search) against the lower bound and the baselines
(METIS via pymetis if installed, DeepSpeed-style ``uniform`` and ``parameters``).

    PYTHONPATH=src python benchmarks/partition.py [--models resnet50,bert-base] [--ks 2,4,8]

Columns: LB = the proven lower bound for every partition (``bounds``: the largest of the work
bound, the window-cut bound, the configuration (Lagrangian) bound and the MILP dual bound),
W/K = the work-only part max(W/K, heaviest node), CONF = the configuration bound (``-`` when
skipped: more than ``lagrange.MAX_NODES`` nodes or a wide frontier), MILP = HiGHS's dual bound on
the exact mixed-integer program (``-`` when skipped: more than ``milp.MAX_NODES`` nodes, or CONF
already equals a plan's bottleneck), ours = the auto plan; then bottleneck / LB for each method
(``pipeline`` is the optimum among contiguous plans), partitioning times (the bounds are computed
first and timed apart, t_LB); ok = auto no worse than every other.
``--milp-seconds`` / ``--lp-seconds`` set the time limits per problem of the MILP (default:
``POLYDL_MILP_SECONDS`` or 2) and of the configuration bound's search (``POLYDL_LP_SECONDS`` or 3).
"""

from __future__ import annotations

import argparse
import os
import time

from polydl.partition.baselines import metis_available
from polydl.partition.bounds import bounds
from polydl.partition.models import builtin
from polydl.partition.partitioner import solve
from polydl.partition.problem import build_problem
from polydl.partition.roofline import CostModel, identical_devices


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,bert-base,gpt2-small,random-dag-10000")
    ap.add_argument("--ks", default="2,4,8")
    ap.add_argument("--modes", default="inference,training")
    ap.add_argument("--milp-seconds", type=float, default=None)
    ap.add_argument("--lp-seconds", type=float, default=None)
    args = ap.parse_args()
    if args.milp_seconds is not None:
        os.environ["POLYDL_MILP_SECONDS"] = str(args.milp_seconds)
    if args.lp_seconds is not None:
        os.environ["POLYDL_LP_SECONDS"] = str(args.lp_seconds)
    metis = metis_available()
    methods = ["pipeline", "auto", "uniform", "parameters"] + (["metis"] if metis else [])
    head = (
        f"{'model':<17}{'mode':<10}{'K':>2} {'LB ms':>9} {'W/K ms':>9} {'CONF ms':>9}"
        f" {'MILP ms':>9} {'ours ms':>9}"
        + "".join(f"{m:>11}" for m in methods)
        + f" {'t_LB s':>7} {'t_pipe s':>9} {'t_auto s':>9}  ok"
    )
    print(head)
    print("-" * len(head))
    for name in args.models.split(","):
        graph = builtin(name)
        for mode in args.modes.split(","):
            for k in (int(x) for x in args.ks.split(",")):
                p = build_problem(graph, identical_devices(k), CostModel(mode=mode))
                t0 = time.perf_counter()
                got = bounds(p)  # cached on the problem: the plans below reuse it
                t_lb = time.perf_counter() - t0
                milp, conf = (
                    f"{got[b] * 1e3:>9.3f}" if got[b] is not None else f"{'-':>9}"
                    for b in ("milp", "configuration")
                )
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
                    f"{name:<17}{mode:<10}{k:>2} {lb * 1e3:>9.3f} {got['work'] * 1e3:>9.3f}"
                    f" {conf} {milp} {res['auto'].bottleneck_s * 1e3:>9.3f}{cols} {t_lb:>7.2f}"
                    f" {times['pipeline']:>9.3f} {times['auto']:>9.3f}  {'yes' if ok else 'NO'}"
                )
    if not metis:
        print("(pymetis not installed: METIS column skipped)")


if __name__ == "__main__":
    main()
