"""Auto-tuning (pd.tune): how much better than the cost model's pick, how fast it gets there.

    python benchmarks/tune.py [--trials 64] [--layers gemm resnet_03 ...] [--nchw-batch 8]
                              [--blocked resnet_03 ...] [--rounds 15]

One thread; the measuring worker is pinned to one CPU, the builder to the other
(polydl/tune/runner.py). Workloads, by default: GEMM 1024^3 and the kernels ``pd.nn.conv2d``
compiles for NCHW arrays of ResNet-50 layers 03, 09, 12, 01, 05, 06, 07, 14, 17 at batch
``--nchw-batch`` (``nn.conv2d_kernels``: the rows kernel, or the direct NCHW conv of a strided
layer; named ``resnet_14/8``; what ``polydl tune --model resnet50 --layout nchw`` tunes):
the cost model has a choice on every one of them (10 ranked variants). ``--blocked`` adds
layers in the blocked layout at batch 1 (as in benchmarks/conv.py), where the cost model's
pick already runs near the core's peak. Each is tuned from scratch into a fresh database
(``--db`` keeps one). Then what ``pd.tune`` returns after 0 (the cost model's pick, untuned),
8, 20 and ``--trials`` trials (:func:`polydl.tune.tuner.choose` over the first N trials: the
fastest few confirmed against the untuned pick, as ``pd.tune(trials=N)`` ends) are timed
again against each other (``runner.compare``: one sample of each per round, the order
rotating, ``--rounds`` rounds; GFLOPS from the medians, ratios the medians of per-round
ratios), so that the comparison is not the search's own measurements.

Columns: ``choice`` the cost model's ranked variants (1: it had no choice); GFLOPS at 0, 8,
20, N trials; ``fastest`` the fastest trial's record among all N (no confirmation);
``wall`` the tuning time of ``pd.tune(trials=N)`` (search and confirmation); ``tuned/0`` the
tuned pick (N trials) over the untuned one; ``@20 %`` the pick after 20 trials as a % of the
best of the row (the median of per-round ratios, like ``tuned/0``); last, where the tuned
pick came from (the trial's origin) and its microkernel knobs. Goals (issue 14): @20 >= 95%,
< 1 minute per operator, tuned/0 geomean >= 1.05 over the workloads where the cost model has
a choice.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import geomean, resnet50_layers  # noqa: E402

import polydl as pd  # noqa: E402
from polydl.tune import LocalRunner, Measure  # noqa: E402
from polydl.tune.builder import Workload  # noqa: E402
from polydl.tune.runner import Job  # noqa: E402
from polydl.tune.space import KernelSpace  # noqa: E402
from polydl.tune.tuner import CONFIRM_RECORDS, choose  # noqa: E402

LAYERS = ["resnet_03", "resnet_09", "resnet_12", "resnet_01", "resnet_05", "resnet_06"]
LAYERS += ["resnet_07", "resnet_14", "resnet_17"]


def workloads(names, nchw=(), batch=8):
    rows = {r["name"]: r for r in resnet50_layers()}
    out = []
    for name in names:
        if name == "gemm":
            out.append(("gemm 1024^3", pd.ops.matmul(1024, 1024, 1024)))
            continue
        r = rows[name]
        kern = pd.ops.conv2d(
            1, r["C"], r["K"], r["H"], r["W"], r["R"], r["S"],
            stride=r["stride"], padding=r["pad"], layout="nchwc",
        )  # fmt: skip
        out.append((name, kern))
    for name in nchw:
        r = rows[name]
        x_shape, w_shape = (batch, r["C"], r["H"], r["W"]), (r["K"], r["C"], r["R"], r["S"])
        (kern,) = pd.nn.conv2d_kernels(x_shape, w_shape, r["stride"], r["pad"], threads=1)
        out.append((f"{name}/{batch}", kern))
    return out


def ranked_variants(kern) -> int:
    k = pd.compile(kern, threads=1, tuned=False)
    return max((len(alts) for _, alts in k.schedule.alternatives), default=1)


def how_found(r) -> str:
    """Where the tuned pick came from (its trial's origin) and its microkernel knobs."""
    if r.best is None:
        return "untuned pick kept"
    best = r.best.choices()
    origin = next((t.origin for t in r.trials if t.record.choices() == best), "?")
    micro = "; ".join(c.micro for c in best.contractions if c.micro)
    return origin + (f" [{micro}]" if micro else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--layers", nargs="*", default=["gemm"], help="gemm, blocked batch-1 layers")
    ap.add_argument("--blocked", nargs="*", default=[], help="more blocked batch-1 layers")
    ap.add_argument("--nchw", nargs="*", default=LAYERS, help="layers as pd.nn.conv2d runs them")
    ap.add_argument("--nchw-batch", type=int, default=8, help="the batch of the --nchw layers")
    ap.add_argument("--rounds", type=int, default=21, help="rounds of the comparison")
    ap.add_argument("--db", default=None, help="a database to keep (default: a fresh temp one)")
    args = ap.parse_args()
    marks = sorted({0, 8, 20, args.trials})
    tmp = tempfile.TemporaryDirectory()
    db = args.db or str(Path(tmp.name) / "tune.sqlite")
    protocol = Measure(warmup=0.1, min_time=0.05)
    print(
        f"threads=1, worker pinned; {args.trials} trials per workload; comparison: medians of"
        f" {args.rounds} rounds of one sample each; database {db}"
    )
    head = f"{'workload':<12} {'choice':>6} " + " ".join(f"{'@' + str(m):>7}" for m in marks)
    print(f"{head} {'fastest':>7} {'wall s':>7} {'tuned/0':>8} {'@20 %':>6}   (GFLOPS)", flush=True)
    ratios, ratios_choice, at20, walls = [], [], [], []
    names = [*args.layers, *args.blocked]
    for name, kern in workloads(names, args.nchw, args.nchw_batch):
        choice = ranked_variants(kern)
        r = pd.tune(kern, trials=args.trials, db=db, threads=1, progress=False)
        workload = Workload.of(kern, {})
        space = KernelSpace(workload, threads=1)
        with LocalRunner() as runner:
            runner.start(Job(workload=workload, threads=1, measure=Measure()))
            picks = {0: r.baseline, args.trials: r.best or r.baseline}
            for m in marks[1:-1]:  # what pd.tune(trials=m) returns: confirmed, the fallback
                picks[m] = (
                    choose(space, runner, r.trials[:m], confirm=CONFIRM_RECORDS)[0] or r.baseline
                )
            ok = [t for t in r.trials if t.ok]
            picks["fastest"] = min(ok, key=lambda t: t.seconds).record.choices()
            distinct = list({p.to_json(): p for p in picks.values()}.values())
            runner.start(Job(workload=workload, threads=1, measure=protocol))
            got = runner.compare(distinct, rounds=args.rounds)
        samples = {
            p.to_json(): np.array(m.samples if m.ok else [np.inf] * args.rounds)
            for p, m in zip(distinct, got, strict=True)
        }
        t = {k: samples[p.to_json()] for k, p in picks.items()}
        gf = {k: r.flops / float(np.median(v)) / 1e9 for k, v in t.items()}
        ratio = float(np.median(t[0] / t[args.trials]))
        top = max(gf, key=gf.get)  # the row's best; the % from per-round ratios (paired)
        pct = 100.0 * float(np.median(t[top] / t[20])) if 20 in gf else float("nan")
        ratios.append(ratio)
        if choice > 1:
            ratios_choice.append(ratio)
        at20.append(pct)
        walls.append(r.wall)
        cells = " ".join(f"{gf[m]:7.1f}" for m in marks)
        print(
            f"{name:<12} {choice:>6} {cells} {gf['fastest']:7.1f} {r.wall:7.1f} {ratio:8.3f}"
            f" {pct:5.1f}%   {how_found(r)}",
            flush=True,
        )
    print(
        f"tuned/untuned geomean {geomean(ratios):.3f} (all), {geomean(ratios_choice):.3f}"
        f" (where the cost model has a choice, {len(ratios_choice)} workloads);"
        f" the pick after 20 trials: min {min(at20):.1f}%, geomean {geomean(at20):.1f}% of the"
        f" row's best; tuning wall time: max {max(walls):.1f} s, mean {np.mean(walls):.1f} s"
        " per workload"
    )


if __name__ == "__main__":
    main()
