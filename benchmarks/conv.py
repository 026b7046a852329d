"""ResNet-50 convolutions: polydl against torch (oneDNN inside), threads pinned on both sides.

    python benchmarks/conv.py [--batch 1 8] [--threads 1 2] [--layers resnet_03 ...]

Columns: polydl on the blocked layout with weights packed once ("blocked", what oneDNN's own
timings measure), polydl NCHW end to end including every packing ("nchw e2e"), and torch's
faster of NCHW and channels_last. Ratios are torch time / polydl time (> 1: polydl faster).

The machine is shared: the four contenders are timed in interleaved rounds (each a median of
``--repeat`` samples, the order rotating every round), GFLOPS are medians over the rounds, and a
ratio is the median of the per-round ratios, so that a disturbance of a few hundred
milliseconds falls on one round of every contender rather than on all samples of one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import geomean, interleaved, layer_args, resnet50_layers  # noqa: E402

import polydl as pd  # noqa: E402


def main() -> None:
    import torch
    import torch.nn.functional as F

    ap = layer_args(__doc__.splitlines()[0])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    layers = [r for r in resnet50_layers() if not args.layers or r["name"] in args.layers]
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batch:
            print(f"\nthreads={threads} batch={batch}  (GFLOPS; ratio = torch time / polydl time)")
            print(
                f"{'layer':<10} {'blocked':>8} {'nchw e2e':>9} {'torch':>7} {'ratio blk':>10} {'ratio e2e':>10} {'err':>8}"
            )
            r_blk, r_e2e = [], []
            for row in layers:
                C, K, H, W, R, S = (int(row[x]) for x in "CKHWRS")
                st, pad, P, Q = int(row["stride"]), int(row["pad"]), int(row["P"]), int(row["Q"])
                x = rng.standard_normal((batch, C, H, W), dtype=np.float32)
                w = rng.standard_normal((K, C, R, S), dtype=np.float32)
                flops = 2.0 * batch * K * C * R * S * P * Q
                # polydl, blocked layout, weights packed once, input already blocked
                kern = pd.ops.conv2d(
                    batch, C, K, H, W, R, S, stride=st, padding=pad, layout="nchwc"
                )
                conv = pd.compile(kern, threads=threads)
                blk = pd.ops.conv_block(Q, P)
                cb, kb = pd.ops.channel_block(C, blk), pd.ops.channel_block(K, blk)
                xp = pd.zeros((batch, C // cb, H + 2 * pad, W + 2 * pad, cb), np.float32)
                xp[:, :, pad : pad + H, pad : pad + W, :] = x.reshape(
                    batch, C // cb, cb, H, W
                ).transpose(0, 1, 3, 4, 2)
                wp = pd.nn.pack_weights(w, block=blk, threads=threads)
                op = pd.empty((batch, K // kb, P, Q, kb), np.float32)
                e2e = lambda: pd.nn.conv2d(x, w, stride=st, padding=pad, threads=threads)  # noqa: E731
                tx, tw = torch.from_numpy(x), torch.from_numpy(w)
                cx, cw = (
                    tx.to(memory_format=torch.channels_last),
                    tw.to(memory_format=torch.channels_last),
                )
                contenders = {
                    "blk": lambda: conv(op, xp, wp),
                    "e2e": e2e,
                    "nchw": lambda: F.conv2d(tx, tw, stride=st, padding=pad),
                    "cl": lambda: F.conv2d(cx, cw, stride=st, padding=pad),
                }
                # interleaved rounds, torch's faster layout per round (common.interleaved)
                with torch.no_grad():
                    times = interleaved(contenders, rounds=args.rounds, repeat=args.repeat)
                    ref = F.conv2d(tx, tw, stride=st, padding=pad).numpy()
                y = e2e()
                t_rounds = np.minimum(times["nchw"], times["cl"])
                med = {k: float(np.median(v)) for k, v in times.items()}
                t_torch = float(np.median(t_rounds))
                t_blk, t_e2e = med["blk"], med["e2e"]
                err = float(np.abs(y - ref).max() / np.abs(ref).max())
                ratio_blk = float(np.median(t_rounds / np.array(times["blk"])))
                ratio_e2e = float(np.median(t_rounds / np.array(times["e2e"])))
                r_blk.append(ratio_blk)
                r_e2e.append(ratio_e2e)
                print(
                    f"{row['name']:<10} {flops / t_blk / 1e9:8.1f} {flops / t_e2e / 1e9:9.1f} {flops / t_torch / 1e9:7.1f}"
                    f" {ratio_blk:10.2f} {ratio_e2e:10.2f} {err:8.1e}",
                    flush=True,
                )
            g = geomean
            print(
                f"geomean ratio blocked {g(r_blk):.3f}  (min {min(r_blk):.2f}), nchw e2e {g(r_e2e):.3f}"
            )


if __name__ == "__main__":
    main()
