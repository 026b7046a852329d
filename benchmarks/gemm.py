"""GEMM GFLOPS of polydl (DSL -> BRGEMM) against NumPy/OpenBLAS, threads pinned on both sides.

    python benchmarks/gemm.py [--threads 1 2] [--quick]

Shapes: square 256, 512, 1024, 2048 and the DL shapes (M, N, K) = (64, 1000, 2048),
(3136, 64, 576), (784, 512, 128). Contenders are timed in interleaved rounds
(``common.interleaved``, a pause after each so that OpenBLAS's spinning threads do not steal
the next one's cores); GFLOPS are medians over the rounds, a ratio (NumPy time / polydl time,
> 1: polydl faster) is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved  # noqa: E402

import polydl as pd  # noqa: E402

SHAPES = [
    (256, 256, 256),
    (512, 512, 512),
    (1024, 1024, 1024),
    (2048, 2048, 2048),
    (64, 1000, 2048),
    (3136, 64, 576),
    (784, 512, 128),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--quick", action="store_true", help="skip 2048^3")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per shape")
    args = ap.parse_args()
    shapes = [s for s in SHAPES if not (args.quick and s[0] == 2048)]
    rng = np.random.default_rng(0)
    for threads in args.threads:
        print(f"\nthreads={threads}")
        print(
            f"{'M':>5} {'N':>5} {'K':>5} {'polydl GF':>10} {'numpy GF':>9} {'ratio':>6} {'rel err':>8}"
        )
        ratios = []
        with threadpool_limits(limits=threads):
            for M, N, K in shapes:
                a = pd.aligned(rng.standard_normal((M, K), dtype=np.float32))
                b = pd.aligned(rng.standard_normal((K, N), dtype=np.float32))
                c = pd.empty((M, N), np.float32)
                k = pd.compile(pd.ops.matmul(M, N, K), threads=threads)
                want = pd.empty((M, N), np.float32)
                times = interleaved(
                    {"polydl": lambda: k(c, a, b), "numpy": lambda: np.matmul(a, b, out=want)},
                    rounds=args.rounds,
                    repeat=3,
                    pause=0.15,
                )
                err = float(np.abs(c - want).max() / np.abs(want).max())
                flops = 2.0 * M * N * K
                ratio = float(np.median(times["numpy"] / times["polydl"]))
                ratios.append(ratio)
                gf = lambda t: flops / float(np.median(t)) / 1e9  # noqa: E731
                print(
                    f"{M:5d} {N:5d} {K:5d} {gf(times['polydl']):10.1f} {gf(times['numpy']):9.1f} "
                    f"{ratio:6.2f} {err:8.1e}",
                    flush=True,
                )
        print(
            f"geomean ratio (NumPy time / polydl time), threads={threads}: {math.exp(np.mean(np.log(ratios))):.3f}"
        )


if __name__ == "__main__":
    main()
