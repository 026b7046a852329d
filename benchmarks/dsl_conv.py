"""A user's own NCHW convolution kernel: ``pd.compile(pd.ops.conv2d(...))`` (the DSL's default
layout: NCHW in, KCRS weights, NCHW out, padding as guards) against torch, per ResNet-50 layer.

    python benchmarks/dsl_conv.py [--batch 1] [--threads 1] [--layers resnet_05 ...]

Nothing is packed by hand: whatever the compiler does (guard splitting, coalesced pixel runs,
gathers of strided operands) is inside the compiled kernel and inside the time. torch is the
faster of NCHW and channels_last inputs (``torch.nn.functional.conv2d``, oneDNN), threads pinned
on both sides (``torch.set_num_threads``; polydl ``threads=``). Contenders are timed in
interleaved rounds (``common.interleaved``); a ratio (torch time / polydl time, > 1: polydl
faster) is the median of the per-round ratios. ``err`` is the largest difference from torch
relative to its largest output.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import geomean, interleaved, layer_args, resnet50_layers  # noqa: E402

import polydl as pd  # noqa: E402


def main() -> None:
    import torch
    import torch.nn.functional as F

    ap = layer_args(__doc__.splitlines()[0], batch=(1,), threads=(1,))
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    layers = [r for r in resnet50_layers() if not args.layers or r["name"] in args.layers]
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batch:
            print(f"\nthreads={threads} batch={batch}  (GFLOPS; ratio = torch time / polydl time)")
            print(
                f"{'layer':<10} {'polydl':>7} {'torch':>7} {'ratio':>6} {'compile s':>9} {'err':>8}"
            )
            ratios = []
            for row in layers:
                C, K, H, W, R, S = (int(row[x]) for x in "CKHWRS")
                st, pad, P, Q = int(row["stride"]), int(row["pad"]), int(row["P"]), int(row["Q"])
                x = pd.aligned(rng.standard_normal((batch, C, H, W), dtype=np.float32))
                w = pd.aligned(rng.standard_normal((K, C, R, S), dtype=np.float32))
                y = pd.empty((batch, K, P, Q))
                flops = 2.0 * batch * K * C * R * S * P * Q
                t0 = time.perf_counter()
                conv = pd.compile(
                    pd.ops.conv2d(batch, C, K, H, W, R, S, stride=st, padding=pad),
                    threads=threads,
                )
                conv.load()
                compile_s = time.perf_counter() - t0
                tx, tw = torch.from_numpy(x), torch.from_numpy(w)
                cx = tx.to(memory_format=torch.channels_last)
                cw = tw.to(memory_format=torch.channels_last)
                contenders = {
                    "polydl": lambda: conv(y, x, w),
                    "nchw": lambda: F.conv2d(tx, tw, stride=st, padding=pad),
                    "cl": lambda: F.conv2d(cx, cw, stride=st, padding=pad),
                }
                with torch.no_grad():
                    times = interleaved(contenders, rounds=args.rounds, repeat=args.repeat)
                    ref = F.conv2d(tx, tw, stride=st, padding=pad).numpy()
                conv(y, x, w)
                err = float(np.abs(y - ref).max() / np.abs(ref).max())
                t_torch = np.minimum(times["nchw"], times["cl"])
                ratio = float(np.median(t_torch / times["polydl"]))
                ratios.append(ratio)
                print(
                    f"{row['name']:<10} {flops / np.median(times['polydl']) / 1e9:7.1f} "
                    f"{flops / np.median(t_torch) / 1e9:7.1f} {ratio:6.2f} {compile_s:9.2f} "
                    f"{err:8.1e}",
                    flush=True,
                )
            print(f"geomean ratio {geomean(ratios):.3f} (min {min(ratios):.2f})", flush=True)


if __name__ == "__main__":
    main()
