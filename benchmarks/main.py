"""polydl's main job: compile GEMM and a ResNet-50 3x3 conv layer from the DSL, check them
against NumPy, and print GFLOPS side by side with NumPy (OpenBLAS), threads pinned on both sides.

    python benchmarks/main.py [--threads 1] [--size 512] [--quick]

``--quick`` (what CI runs from a clean clone): a 128^3 GEMM and 3 short samples per timing, to
check that the job runs end to end on a fresh machine; its figures are not benchmarks.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_seconds, numpy_conv2d, resnet50_layers  # noqa: E402

import polydl as pd  # noqa: E402


@pd.kernel
def gemm(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "N"]):
    for i in range(M):
        for j in range(N):
            C[i, j] = 0.0
        for k in range(K):
            for j in range(N):
                C[i, j] += A[i, k] * B[k, j]


def conv_kernel(stride: int, pad: int):
    @pd.kernel
    def conv(
        O: pd.f32["Nb", "K", "P", "Q"],
        I: pd.f32["Nb", "C", "H", "W"],
        Wt: pd.f32["K", "C", "R", "S"],
    ):
        for n in range(Nb):
            for k in range(K):
                for p in range(P):
                    for q in range(Q):
                        O[n, k, p, q] = 0.0
                for c in range(C):
                    for r in range(R):
                        for s in range(S):
                            for p in range(P):
                                for q in range(Q):
                                    if (
                                        0 <= stride * p + r - pad < H
                                        and 0 <= stride * q + s - pad < W
                                    ):
                                        O[n, k, p, q] += (
                                            I[n, c, stride * p + r - pad, stride * q + s - pad]
                                            * Wt[k, c, r, s]
                                        )

    return conv


def report(
    name: str, flops: float, ours: float, theirs: float, err: float, compile_s: float
) -> None:
    print(
        f"{name:<28} {flops / ours / 1e9:9.2f} {flops / theirs / 1e9:9.2f} {theirs / ours:7.2f}x"
        f" {err:10.2e} {compile_s * 1e3:9.0f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--quick", action="store_true", help="small sizes, few samples (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.size = min(args.size, 128)
    reps = dict(repeat=3, min_time=0.005) if args.quick else {}

    def timed(fn) -> float:
        return median_seconds(fn, **reps)

    rng = np.random.default_rng(0)
    runs = 3 if args.quick else 7
    print(
        f"threads={args.threads} (polydl and NumPy/OpenBLAS pinned alike); medians of {runs} runs"
    )
    print(
        f"{'kernel':<28} {'polydl':>9} {'numpy':>9} {'ratio':>8} {'max err':>10} {'compile ms':>10}"
    )
    print(f"{'':<28} {'GFLOPS':>9} {'GFLOPS':>9}")
    with threadpool_limits(limits=args.threads):
        n = args.size
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        c = np.empty((n, n), np.float32)
        t0 = time.perf_counter()
        k = pd.compile(gemm, M=n, N=n, K=n, threads=args.threads)
        k(c, a, b)
        compile_s = time.perf_counter() - t0
        want = a @ b
        err = float(np.abs(c - want).max() / np.abs(want).max())
        report(
            f"gemm {n}^3",
            2.0 * n**3,
            timed(lambda: k(c, a, b)),
            timed(lambda: a @ b),
            err,
            compile_s,
        )

        layer = next(r for r in resnet50_layers() if r["name"] == "resnet_03")
        C, K, H, W, R, S = (int(layer[x]) for x in "CKHWRS")
        st, pad, P, Q = int(layer["stride"]), int(layer["pad"]), int(layer["P"]), int(layer["Q"])
        x = rng.standard_normal((1, C, H, W), dtype=np.float32)
        w = rng.standard_normal((K, C, R, S), dtype=np.float32)
        o = np.empty((1, K, P, Q), np.float32)
        t0 = time.perf_counter()
        kc = pd.compile(
            conv_kernel(st, pad), Nb=1, C=C, K=K, H=H, W=W, R=R, S=S, P=P, Q=Q, threads=args.threads
        )
        kc(o, x, w)
        compile_s = time.perf_counter() - t0
        want = numpy_conv2d(x, w, st, pad)
        err = float(np.abs(o - want).max() / np.abs(want).max())
        flops = 2.0 * K * C * R * S * P * Q
        t_np = timed(lambda: numpy_conv2d(x, w, st, pad))
        y = pd.nn.conv2d(x, w, stride=st, padding=pad, threads=args.threads)
        err2 = float(np.abs(y - want).max() / np.abs(want).max())
        t_nn = timed(lambda: pd.nn.conv2d(x, w, stride=st, padding=pad, threads=args.threads))
        report("resnet_03 pd.nn.conv2d (BRGEMM)", flops, t_nn, t_np, err2, 0.0)
        report(
            "resnet_03 DSL conv with guards",
            flops,
            timed(lambda: kc(o, x, w)),
            t_np,
            err,
            compile_s,
        )


if __name__ == "__main__":
    main()
