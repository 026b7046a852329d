"""NCHW end to end: ``pd.nn.conv2d`` (NCHW in, NCHW out) against torch, per ResNet-50 layer.

    python benchmarks/nchw.py [--batch 1 8] [--threads 1 2] [--layers resnet_03 ...] [--routes]

Columns: GFLOPS of ``pd.nn.conv2d`` (the route it picks per layer, see ``nn.conv_route``), of
torch's faster of NCHW and channels_last (``torch.nn.functional.conv2d``, threads pinned with
``torch.set_num_threads``), their ratio (torch time / polydl time, > 1: polydl faster), the
ratio against torch on the NCHW tensors themselves (``r nchw``: oneDNN's reorders inside the
call, as polydl's are; the channels_last contender gets its input converted before timing), the
largest error against torch relative to its largest output. ``--routes`` also times every route
of ``pd.nn.conv2d`` (``nn.ROUTES``): "direct" (``ops.conv2d`` on NCHW: guards split or
gathered, strided inputs gathered, by the compiler), "rows" (``nn.conv2d_rows``: zero-padded
rows, one run of pixels; a strided 1x1 layer subsampled first; other strided layers skipped)
and "blocked" (pack input and weights, NCHWc kernel, unpack). Contenders are timed in
interleaved rounds (``common.interleaved``: each a median of ``--repeat`` samples, the order
rotating), a ratio is the median of the per-round ratios against torch's faster layout of that
round; run under ``flock /tmp/polydl-bench.lock`` on a shared machine.
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
    ap.add_argument("--routes", action="store_true", help="time every route of nn.conv2d")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    layers = [r for r in resnet50_layers() if not args.layers or r["name"] in args.layers]
    routes = pd.nn.ROUTES
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batch:
            print(f"\nthreads={threads} batch={batch}  (GFLOPS; ratio = torch time / polydl time)")
            head = (
                f"{'layer':<10} {'route':>7} {'polydl':>7} {'torch':>7} {'ratio':>6} {'r nchw':>6}"
            )
            if args.routes:
                head += "".join(f" {r:>8}" for r in routes) + "".join(
                    f" {'r ' + r[:3]:>6}" for r in routes
                )
            print(head + f" {'err':>8}")
            ratios: list[float] = []
            vs_nchw: list[float] = []
            by_route: dict[str, list[float]] = {r: [] for r in routes}
            for row in layers:
                C, K, H, W, R, S = (int(row[x]) for x in "CKHWRS")
                st, pad, P, Q = int(row["stride"]), int(row["pad"]), int(row["P"]), int(row["Q"])
                x = rng.standard_normal((batch, C, H, W), dtype=np.float32)
                w = rng.standard_normal((K, C, R, S), dtype=np.float32)
                flops = 2.0 * batch * K * C * R * S * P * Q
                tx, tw = torch.from_numpy(x), torch.from_numpy(w)
                cx = tx.to(memory_format=torch.channels_last)
                cw = tw.to(memory_format=torch.channels_last)

                def run(route=None):
                    kw = {"route": route} if route else {}
                    return pd.nn.conv2d(x, w, stride=st, padding=pad, threads=threads, **kw)

                route = pd.nn.conv_route(x.shape, w.shape, st, pad, threads)
                contenders = {
                    "polydl": run,
                    "nchw": lambda: F.conv2d(tx, tw, stride=st, padding=pad),
                    "cl": lambda: F.conv2d(cx, cw, stride=st, padding=pad),
                }
                pointwise = (R, S, pad) == (1, 1, 0)  # "rows" subsamples a strided 1x1
                timed_routes = [r for r in routes if st == 1 or r != "rows" or pointwise]
                if args.routes:
                    contenders |= {r: (lambda r=r: run(r)) for r in timed_routes}
                with torch.no_grad():
                    times = interleaved(contenders, rounds=args.rounds, repeat=args.repeat)
                    ref = F.conv2d(tx, tw, stride=st, padding=pad).numpy()
                t_torch = np.minimum(times["nchw"], times["cl"])
                ratio = float(np.median(t_torch / times["polydl"]))
                r_nchw = float(np.median(times["nchw"] / times["polydl"]))
                vs_nchw.append(r_nchw)
                err = float(np.abs(run() - ref).max() / np.abs(ref).max())
                ratios.append(ratio)
                gf = lambda t: flops / float(np.median(t)) / 1e9  # noqa: E731
                line = (
                    f"{row['name']:<10} {route:>7} {gf(times['polydl']):7.1f} "
                    f"{gf(t_torch):7.1f} {ratio:6.2f} {r_nchw:6.2f}"
                )
                if args.routes:
                    rr = {
                        r: float(np.median(t_torch / times[r])) if r in times else float("nan")
                        for r in routes
                    }
                    for r in timed_routes:
                        by_route[r].append(rr[r])
                    line += "".join(
                        f" {gf(times[r]) if r in times else float('nan'):8.1f}" for r in routes
                    )
                    line += "".join(f" {rr[r]:6.2f}" for r in routes)
                print(line + f" {err:8.1e}", flush=True)
            tail = (
                f"geomean ratio {geomean(ratios):.3f} (min {min(ratios):.2f}); vs torch on NCHW "
                f"tensors {geomean(vs_nchw):.3f} (min {min(vs_nchw):.2f})"
            )
            if args.routes:
                tail += "".join(
                    f", {r} {geomean(v):.3f} over {len(v)}" for r, v in by_route.items()
                )
            print(tail, flush=True)


if __name__ == "__main__":
    main()
