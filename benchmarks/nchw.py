"""NCHW end to end: ``pd.nn.conv2d`` (NCHW in, NCHW out) against torch, per ResNet-50 layer.

    python benchmarks/nchw.py [--batch 1 8] [--threads 1 2] [--layers resnet_03 ...] [--routes]

Columns: GFLOPS of ``pd.nn.conv2d`` (the route it picks per layer, see ``nn.conv_route``), of
torch's faster of NCHW and channels_last (``torch.nn.functional.conv2d``, threads pinned with
``torch.set_num_threads``), their ratio (torch time / polydl time, > 1: polydl faster) and the
largest error against torch relative to its largest output. ``--routes`` also times both routes
of ``pd.nn.conv2d`` on every layer (``nn.ROUTES``): "direct" (``ops.conv2d`` on NCHW, padding
guards split away), "rows" (``nn.conv2d_rows``: zero-padded rows, one run of pixels; a strided
1x1 layer subsampled first), both without packing, "direct" stride 1 only, and "blocked" (pack input and weights, NCHWc kernel, unpack). Medians of ``--repeat``
samples; run under ``flock /tmp/polydl-bench.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_seconds, resnet50_layers  # noqa: E402

import polydl as pd  # noqa: E402


def geomean(r: list[float]) -> float:
    return math.exp(float(np.mean(np.log(r)))) if r else float("nan")


def main() -> None:
    import torch
    import torch.nn.functional as F

    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--layers", nargs="*", default=None)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--routes", action="store_true", help="time both routes of nn.conv2d")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    layers = [r for r in resnet50_layers() if not args.layers or r["name"] in args.layers]
    conv_route = getattr(pd.nn, "conv_route", None)
    routes = getattr(pd.nn, "ROUTES", ("blocked",))
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batch:
            print(f"\nthreads={threads} batch={batch}  (GFLOPS; ratio = torch time / polydl time)")
            head = f"{'layer':<10} {'route':>7} {'polydl':>7} {'torch':>7} {'ratio':>6}"
            if args.routes:
                head += "".join(f" {r:>8}" for r in routes) + "".join(
                    f" {'r ' + r[:3]:>6}" for r in routes
                )
            print(head + f" {'err':>8}")
            ratios: list[float] = []
            by_route: dict[str, list[float]] = {r: [] for r in routes}
            for row in layers:
                C, K, H, W, R, S = (int(row[x]) for x in "CKHWRS")
                st, pad, P, Q = int(row["stride"]), int(row["pad"]), int(row["P"]), int(row["Q"])
                x = rng.standard_normal((batch, C, H, W), dtype=np.float32)
                w = rng.standard_normal((K, C, R, S), dtype=np.float32)
                flops = 2.0 * batch * K * C * R * S * P * Q
                tx, tw = torch.from_numpy(x), torch.from_numpy(w)
                with torch.no_grad():
                    t_nchw = median_seconds(
                        lambda: F.conv2d(tx, tw, stride=st, padding=pad), repeat=args.repeat
                    )
                    cx = tx.to(memory_format=torch.channels_last)
                    cw = tw.to(memory_format=torch.channels_last)
                    t_cl = median_seconds(
                        lambda: F.conv2d(cx, cw, stride=st, padding=pad), repeat=args.repeat
                    )
                    ref = F.conv2d(tx, tw, stride=st, padding=pad).numpy()
                t_torch = min(t_nchw, t_cl)

                def run(route=None):
                    kw = {"route": route} if route else {}
                    return pd.nn.conv2d(x, w, stride=st, padding=pad, threads=threads, **kw)

                route = conv_route(x.shape, w.shape, st, pad, threads) if conv_route else "blocked"
                t = median_seconds(run, repeat=args.repeat)
                err = float(np.abs(run() - ref).max() / np.abs(ref).max())
                ratios.append(t_torch / t)
                line = (
                    f"{row['name']:<10} {route:>7} {flops / t / 1e9:7.1f} "
                    f"{flops / t_torch / 1e9:7.1f} {t_torch / t:6.2f}"
                )
                if args.routes:
                    times = {}
                    for r in routes:
                        pointwise = (R, S, pad) == (1, 1, 0)  # "rows" subsamples it
                        if st != 1 and r == "rows" and not pointwise:
                            times[r] = float("nan")
                            continue
                        times[r] = median_seconds(lambda r=r: run(r), repeat=args.repeat)
                        by_route[r].append(t_torch / times[r])
                    line += "".join(f" {flops / times[r] / 1e9:8.1f}" for r in times)
                    line += "".join(f" {t_torch / times[r]:6.2f}" for r in times)
                print(line + f" {err:8.1e}", flush=True)
            tail = f"geomean ratio {geomean(ratios):.3f} (min {min(ratios):.2f})"
            if args.routes:
                tail += "".join(
                    f", {r} {geomean(v):.3f} over {len(v)}" for r, v in by_route.items()
                )
            print(tail, flush=True)


if __name__ == "__main__":
    main()
