"""Auto-tuning (pd.tune): how much better than the cost model's pick, how fast it gets there.

    python benchmarks/tune.py [--trials 64] [--layers gemm resnet_03 ...] [--rounds 5]
                              [--nchw resnet_14 ...] [--nchw-batch 8]

One thread; the measuring worker is pinned to one CPU (polydl/tune/runner.py). Workloads: GEMM
1024^3 and ResNet-50 layers 03, 09, 12, 01, 05, 07, 14, 17 (batch 1, blocked layout, as in
benchmarks/conv.py); ``--nchw`` adds the kernels ``pd.nn.conv2d`` compiles for NCHW arrays of
those layers at batch ``--nchw-batch`` (``nn.conv2d_kernels``: the rows kernel, or the direct
NCHW conv of a strided layer; named ``resnet_14/8``), the ones ``polydl tune --model resnet50
--layout nchw`` tunes. Each is tuned from scratch into a fresh database (``--db`` keeps one),
then the records that were the best after 0 trials (the cost model's pick, untuned), 8, 20
and ``--trials`` trials, and the tuner's confirmed pick, are timed again against each other
(``runner.compare``: one sample of each per round, the order rotating, ``--rounds`` rounds;
GFLOPS from the medians, ratios the medians of per-round ratios), so that the comparison is
not the first pass's noise.

Columns: ``choice`` the cost model's ranked variants (1: it had no choice); GFLOPS at 0, 8, 20,
N trials and the tuned pick; ``wall`` the tuning time (search and confirmation); ``tuned/0``
the tuned pick over the untuned one; ``@20 %`` the best within 20 trials as a % of the best
found; last, where the tuned pick came from (the trial's origin) and its microkernel knobs.
Goals (issue 14): @20 >= 95%, < 1 minute per operator, tuned/0 geomean >= 1.05 over
the layers where the cost model has a choice.
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

LAYERS = ["resnet_03", "resnet_09", "resnet_12", "resnet_01", "resnet_05", "resnet_07"]
LAYERS += ["resnet_14", "resnet_17"]


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
    ap.add_argument("--layers", nargs="*", default=["gemm", *LAYERS])
    ap.add_argument("--rounds", type=int, default=15, help="rounds of the comparison")
    ap.add_argument("--db", default=None, help="a database to keep (default: a fresh temp one)")
    ap.add_argument("--nchw", nargs="*", default=[], help="layers as pd.nn.conv2d runs them")
    ap.add_argument("--nchw-batch", type=int, default=8, help="the batch of the --nchw layers")
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
    print(f"{head} {'tuned':>7} {'wall s':>7} {'tuned/0':>8} {'@20 %':>6}   (GFLOPS)", flush=True)
    ratios, ratios_choice, at20, walls = [], [], [], []
    for name, kern in workloads(args.layers, args.nchw, args.nchw_batch):
        choice = ranked_variants(kern)
        r = pd.tune(kern, trials=args.trials, db=db, threads=1, progress=False)
        picks = {0: r.baseline.choices()}
        for m in marks[1:]:
            t = r.best_after(m)
            picks[m] = t.record.choices() if t else picks[0]
        picks["tuned"] = r.best or picks[0]
        distinct = list({p.to_json(): p for p in picks.values()}.values())
        with LocalRunner() as runner:
            runner.start(Job(workload=Workload.of(kern, {}), threads=1, measure=protocol))
            got = runner.compare(distinct, rounds=args.rounds)
        samples = {
            p.to_json(): np.array(m.samples if m.ok else [np.inf] * args.rounds)
            for p, m in zip(distinct, got, strict=True)
        }
        t = {k: samples[p.to_json()] for k, p in picks.items()}
        gf = {k: r.flops / float(np.median(v)) / 1e9 for k, v in t.items()}
        ratio = float(np.median(t[0] / t["tuned"]))
        best = max(gf[args.trials], gf["tuned"])
        pct = 100.0 * gf[20] / best if 20 in gf else float("nan")
        ratios.append(ratio)
        if choice > 1:
            ratios_choice.append(ratio)
        at20.append(pct)
        walls.append(r.wall)
        cells = " ".join(f"{gf[m]:7.1f}" for m in marks)
        print(
            f"{name:<12} {choice:>6} {cells} {gf['tuned']:7.1f} {r.wall:7.1f} {ratio:8.3f}"
            f" {pct:5.1f}%   {how_found(r)}",
            flush=True,
        )
    print(
        f"tuned/untuned geomean {geomean(ratios):.3f} (all), {geomean(ratios_choice):.3f}"
        f" (where the cost model has a choice, {len(ratios_choice)} workloads);"
        f" best within 20 trials: min {min(at20):.1f}%, geomean {geomean(at20):.1f}%;"
        f" tuning wall time: max {max(walls):.1f} s, mean {np.mean(walls):.1f} s per workload"
    )


if __name__ == "__main__":
    main()
