"""How good is the cost model's pick? For each ResNet-50 layer (batch 1), measure the top 10
ranked variants and 5 random ones of ranks 11-40, all legal, with no other change.

    python benchmarks/cost_model.py [--threads 1] [--layers resnet_03 ...]

Per layer: the top-1 pick's speed as a % of the best measured variant, and the Spearman rank
correlation of predicted cost and measured time over the measured variants. PolyScientist
reported 98.7% (geomean) on ResNet-50 with no measurement at all.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_seconds, resnet50_layers  # noqa: E402

import polydl as pd  # noqa: E402


def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def predicted_costs(text: str) -> list[float]:
    """The cost column of a show('variants') table, in rank order."""
    rows = [ln for ln in text.splitlines() if re.match(r"^\d+\s", ln)]
    return [float(ln.split()[-2]) for ln in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layers", nargs="*", default=None)
    ap.add_argument("--random", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    pick = random.Random(0)
    print(f"threads={args.threads}, batch 1; GFLOPS of the measured variants (median of 7)")
    print(
        f"{'layer':<10} {'n':>3} {'top-1 GF':>9} {'best GF':>8} {'best rank':>9} {'top-1 %':>8} {'spearman':>9}"
    )
    pct = []
    for row in resnet50_layers():
        if args.layers and row["name"] not in args.layers:
            continue
        C, K, H, W, R, S = (int(row[x]) for x in "CKHWRS")
        st, pad, P, Q = int(row["stride"]), int(row["pad"]), int(row["P"]), int(row["Q"])
        kern = pd.ops.conv2d(1, C, K, H, W, R, S, stride=st, padding=pad, layout="nchwc")
        try:  # the ranked table down to rank 40 (fewer when fewer variants are legal)
            table = pd.compile(kern, threads=args.threads, variant=39).show("variants")
        except ValueError as e:
            have = int(re.search(r"has (\d+) ranked", str(e)).group(1))
            table = pd.compile(kern, threads=args.threads, variant=have - 1).show("variants")
        costs = predicted_costs(table)
        n = len(costs)
        ranks = list(range(min(10, n))) + sorted(
            pick.sample(range(10, n), min(args.random, max(0, n - 10)))
        )
        blk = pd.ops.conv_block(Q)
        cb, kb = pd.ops.channel_block(C, blk), pd.ops.channel_block(K, blk)
        xp = rng.standard_normal((1, C // cb, H + 2 * pad, W + 2 * pad, cb), dtype=np.float32)
        wp = rng.standard_normal((K // kb, C // cb, R, S, cb, kb), dtype=np.float32)
        op = np.empty((1, K // kb, P, Q, kb), np.float32)
        flops = 2.0 * K * C * R * S * P * Q
        times = []
        for r in ranks:
            k = pd.compile(kern, threads=args.threads, variant=r)
            times.append(median_seconds(lambda: k(op, xp, wp)))
        times = np.array(times)
        best = int(np.argmin(times))
        p = 100.0 * times[best] / times[0]
        pct.append(p)
        rho = spearman([costs[r] for r in ranks], times)
        print(
            f"{row['name']:<10} {len(ranks):3d} {flops / times[0] / 1e9:9.1f} {flops / times[best] / 1e9:8.1f}"
            f" {ranks[best] + 1:9d} {p:7.1f}% {rho:9.2f}",
            flush=True,
        )
    g = math.exp(float(np.mean(np.log(pct))))
    print(f"top-1 as % of best measured: geomean {g:.1f}%, min {min(pct):.1f}%")


if __name__ == "__main__":
    main()
