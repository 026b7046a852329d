"""1-D dilated convolutions: ``pd.nn.conv1d`` and its two gradients against torch (oneDNN), with
the efficiency of each shape as a share of the FP32 peak measured in the same run.

    python benchmarks/conv1d.py [--threads 1 2] [--passes fwd data weight] [--full]
        [--sample K [--seed 0] [--budget 15]]
        [--widths 1000 10000 60000] [--filters 3 9 25 51] [--dilations 1 8]
        [--channels 32 64] [--batch 1] [--shape N,C,W,S,d ...] [--keep-channels 64]

Default: a representative subset of the issue's sweep, every width and filter width at 32 and 64
channels (as many filters as channels), dilations 1 and 8, batch 1, the three passes at 1 and 2
threads. ``--full`` takes the whole sweep (widths {1k, 10k, 60k} x filter widths {3, 9, 25, 51}
x dilations {1, 2, 4, 8} x channels {15, 32, 64, 128} x batch {1, 8}: 384 shapes per pass and
thread count, hours on a small machine); the other flags narrow either. ``--sample K`` takes K
shapes of the whole sweep (or of the grid the other flags give) instead, drawn with ``--seed``
(:func:`sample`): every value of every axis appears and every pair of values of two axes as far
as K allows (all 114 pairs from 16 shapes or so), the cheap shapes first among those that
cover as much; a shape whose calls would take more than ``--budget`` seconds at the default
rounds is timed in fewer rounds (``reps``: rounds x samples per round).

Padding is ``"same"`` (the output as wide as the input), stride 1. Passes: ``fwd``
(``pd.nn.conv1d`` against ``torch.nn.functional.conv1d``), ``data`` and ``weight`` (
``pd.nn.conv1d_backward_data`` / ``conv1d_backward_weight`` against
``torch.ops.aten.convolution_backward``, what autograd runs, asked for that gradient alone).
Threads are pinned on both sides (``torch.set_num_threads``; polydl ``threads=``). Contenders
are timed in interleaved rounds (``common.interleaved``), a ratio (torch time / polydl time,
> 1: polydl faster) is the median of the per-round ratios. GFLOPS count the convolution's
``2*N*K*C*S*Q`` multiply-adds; ``%peak`` is polydl's GFLOPS (median time) over ``threads``
times the one-core FP32 peak (``microkernel.measure_peak``, independent vector FMAs) measured at
the start of the run, ``best%`` the same for its fastest round (the least disturbed one on a
shared machine). ``err`` is the largest difference from torch relative to its largest value.
Run it under ``flock /tmp/polydl-bench.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import geomean, interleaved  # noqa: E402
from microkernel import measure_peak  # noqa: E402

import polydl as pd  # noqa: E402
from polydl.kernels import select_isa  # noqa: E402

FULL = {
    "widths": [1000, 10000, 60000],
    "filters": [3, 9, 25, 51],
    "dilations": [1, 2, 4, 8],
    "channels": [15, 32, 64, 128],
    "batch": [1, 8],
}
SUBSET = {**FULL, "dilations": [1, 8], "channels": [32, 64], "batch": [1]}
PASSES = ("fwd", "data", "weight")


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="the issue's whole sweep")
    ap.add_argument(
        "--sample", type=int, default=None, metavar="K", help="K shapes covering the sweep"
    )
    ap.add_argument("--seed", type=int, default=0, help="of --sample's draw")
    ap.add_argument(
        "--budget", type=float, default=15.0, help="seconds of timing per shape and pass (cap)"
    )
    for name in FULL:
        ap.add_argument(f"--{name}", type=int, nargs="+", default=None)
    ap.add_argument(
        "--shape",
        nargs="+",
        default=None,
        metavar="N,C,W,S,d",
        help="these shapes (N, C, W, S, d) instead of a grid, e.g. 1,64,60000,3,1",
    )
    ap.add_argument(
        "--keep-channels",
        type=int,
        nargs="+",
        default=None,
        metavar="C",
        help="of the shapes drawn (--sample) or listed, only those of these channel counts",
    )
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--passes", nargs="+", default=list(PASSES), choices=PASSES)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per shape")
    ap.add_argument("--repeat", type=int, default=2, help="samples per contender per round")
    args = ap.parse_args()
    base = FULL if args.full or args.sample else SUBSET
    for name in FULL:
        if getattr(args, name) is None:
            setattr(args, name, base[name])
    return args


AXES = ("batch", "channels", "widths", "filters", "dilations")  # a shape's (N, C, W, S, d)


def _work(shape: tuple[int, ...]) -> float:
    N, C, W, S, _ = shape
    return float(N * C * C * S * W)


def sample(grid: dict[str, list[int]], k: int, seed: int = 0) -> list[tuple[int, ...]]:
    """``k`` shapes ``(N, C, W, S, d)`` of the product of ``grid``'s axes (:data:`AXES`),
    drawn greedily: each next shape covers the most pairs (two axes' values) no chosen shape
    covers yet, among those the least work (a seeded random draw among equals); once every pair
    is covered, a seeded random draw of the others. In the order of the product."""
    rng = np.random.default_rng(seed)
    cands = list(itertools.product(*(grid[a] for a in AXES)))
    order = rng.permutation(len(cands))
    cands = [cands[i] for i in order]
    pairs = lambda s: {(i, s[i], j, s[j]) for i, j in itertools.combinations(range(len(s)), 2)}  # noqa: E731
    left = set().union(*(pairs(s) for s in cands))
    chosen: list[tuple[int, ...]] = []
    while len(chosen) < min(k, len(cands)) and left:
        best = max(
            (s for s in cands if s not in chosen),
            key=lambda s: (len(pairs(s) & left), -_work(s)),
        )
        chosen.append(best)
        left -= pairs(best)
    rest = [s for s in cands if s not in chosen]
    chosen += rest[: max(0, k - len(chosen))]
    rank = {s: i for i, s in enumerate(itertools.product(*(grid[a] for a in AXES)))}
    return sorted(chosen, key=rank.__getitem__)


def _capped(mine, theirs, rounds: int, repeat: int, budget: float) -> tuple[int, int]:
    """(rounds, samples per round) for a shape: the requested ones, or fewer when one call of
    each contender (timed after a warm-up call) says they would take more than ``budget``
    seconds (``common.median_seconds`` calls a slow function ``2 + repeat`` times a round)."""
    once = 0.0
    for fn in (mine, theirs):
        fn()
        t0 = time.perf_counter()
        fn()
        once += time.perf_counter() - t0
    for r, k in ((rounds, repeat), (2, 1), (1, 1)):
        if r * (2 + k) * once <= budget:
            return r, k
    return 1, 1


def _contenders(pass_: str, x, w, dy, pad: int, d: int, threads: int):
    """(polydl, torch) callables of one pass, and the polydl result's torch twin."""
    import torch
    import torch.nn.functional as F

    tx, tw, tdy = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(dy)
    S, W = w.shape[2], x.shape[2]
    if pass_ == "fwd":
        mine = lambda: pd.nn.conv1d(x, w, padding=pad, dilation=d, threads=threads)  # noqa: E731
        theirs = lambda: F.conv1d(tx, tw, padding=pad, dilation=d)  # noqa: E731
        return mine, theirs, theirs
    mask = [pass_ == "data", pass_ == "weight", False]
    which = 0 if pass_ == "data" else 1

    def theirs():
        return torch.ops.aten.convolution_backward(
            tdy, tx, tw, None, [1], [pad], [d], False, [0], 1, mask
        )[which]

    if pass_ == "data":
        mine = lambda: pd.nn.conv1d_backward_data(  # noqa: E731
            dy, w, W, padding=pad, dilation=d, threads=threads
        )
    else:
        mine = lambda: pd.nn.conv1d_backward_weight(  # noqa: E731
            x, dy, S, padding=pad, dilation=d, threads=threads
        )
    return mine, theirs, theirs


def main() -> None:
    import torch

    args = _args()
    isa = select_isa().name
    peak = measure_peak(isa)
    print(f"FP32 peak, one core ({isa}, independent FMAs): {peak:.1f} GFLOPS", flush=True)
    rng = np.random.default_rng(0)
    grid = {a: getattr(args, a) for a in AXES}
    if args.sample:
        shapes = sample(grid, args.sample, args.seed)
        print(f"--sample {args.sample} --seed {args.seed}: {len(shapes)} shapes", flush=True)
    else:
        shapes = list(itertools.product(*(grid[a] for a in AXES)))
    if args.shape:
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shape]
    if args.keep_channels:
        shapes = [s for s in shapes if s[1] in args.keep_channels]
    summary = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for pass_ in args.passes:
            print(
                f"\nthreads={threads} pass={pass_}  (GFLOPS; ratio = torch time / polydl time; "
                f"%peak of {threads} x {peak:.1f})"
            )
            print(
                f"{'N':>2} {'C=K':>4} {'W':>6} {'S':>3} {'d':>2} {'route':>5} {'polydl':>7} "
                f"{'torch':>7} {'ratio':>6} {'%peak':>6} {'best%':>6} {'err':>8} reps"
            )
            ratios, effs64, bests64 = [], [], []
            for N, C, W, S, d in shapes:
                pad = d * (S - 1) // 2
                x = pd.aligned(rng.standard_normal((N, C, W), dtype=np.float32))
                w = pd.aligned(
                    rng.standard_normal((C, C, S), dtype=np.float32) / np.float32(np.sqrt(C * S))
                )
                Q = W + 2 * pad - d * (S - 1)
                dy = pd.aligned(rng.standard_normal((N, C, Q), dtype=np.float32))
                mine, theirs, ref = _contenders(pass_, x, w, dy, pad, d, threads)
                route = (
                    "-"
                    if pass_ == "weight"
                    else pd.nn.conv1d_route(x.shape, w.shape, 1, pad, d, 1, threads)
                )
                with torch.no_grad():
                    rounds, repeat = args.rounds, args.repeat
                    if args.sample:
                        rounds, repeat = _capped(mine, theirs, rounds, repeat, args.budget)
                    times = interleaved(
                        {"polydl": mine, "torch": theirs}, rounds=rounds, repeat=repeat
                    )
                    want = ref().numpy()
                got = mine()
                err = float(np.abs(got - want).max() / np.abs(want).max())
                flops = 2.0 * N * C * C * S * Q
                gf = flops / float(np.median(times["polydl"])) / 1e9
                tg = flops / float(np.median(times["torch"])) / 1e9
                ratio = float(np.median(times["torch"] / times["polydl"]))
                eff = 100 * gf / (threads * peak)
                best = 100 * flops / float(np.min(times["polydl"])) / 1e9 / (threads * peak)
                ratios.append(ratio)
                if C == 64:
                    effs64.append(eff)
                    bests64.append(best)
                print(
                    f"{N:>2} {C:>4} {W:>6} {S:>3} {d:>2} {route:>5} {gf:7.1f} {tg:7.1f} "
                    f"{ratio:6.2f} {eff:6.1f} {best:6.1f} {err:8.1e} {rounds}x{repeat}",
                    flush=True,
                )
            line = f"geomean ratio {geomean(ratios):.3f} (min {min(ratios):.2f}, max {max(ratios):.2f})"
            if effs64:
                line += (
                    f"; 64 channels: {np.mean(effs64):.1f}% of peak on average (min "
                    f"{min(effs64):.1f}), best rounds {np.mean(bests64):.1f}%"
                )
            print(line, flush=True)
            e64 = (np.mean(effs64), np.mean(bests64)) if effs64 else None
            summary.append((threads, pass_, geomean(ratios), e64))
    print("\nsummary: threads pass geomean-ratio mean-%peak(64 channels) best-rounds-%peak")
    for threads, pass_, g, e in summary:
        tail = "- -" if e is None else f"{e[0]:.1f} {e[1]:.1f}"
        print(f"  {threads} {pass_:<6} {g:.3f} {tail}")


if __name__ == "__main__":
    main()
