"""DSL-to-callable time: GEMM, and a 7-deep convolution with a bias + ReLU epilogue.

    python benchmarks/compile_time.py

Each kernel is defined anew (so parsing is timed too), compiled and JIT-compiled, then
called once to check it runs. Medians of 5 fresh compilations, broken into phases; ``first``
is the total of the first one, before the process-wide caches keyed by isl text and by
microkernel configuration hold anything of that kernel.
"""

from __future__ import annotations

import statistics
import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np

import polydl as pd

GEMM = """
@pd.kernel
def gemm(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "N"], alpha: pd.f32):
    for i in range(M):
        for j in range(N):
            for k in range(K):
                C[i, j] += alpha * A[i, k] * B[k, j]
"""

CONV = """
@pd.kernel
def conv(O: pd.f32["Nb", "K", "P", "Q"], I: pd.f32["Nb", "C", "H", "W"], Wt: pd.f32["K", "C", "R", "S"], b: pd.f32["K"]):
    for n in range(Nb):
        for k in range(K):
            for p in range(P):
                for q in range(Q):
                    O[n, k, p, q] = 0.0
                    for c in range(C):
                        for r in range(R):
                            for s in range(S):
                                if 0 <= p + r - 1 < H and 0 <= q + s - 1 < W:
                                    O[n, k, p, q] += I[n, c, p + r - 1, q + s - 1] * Wt[k, c, r, s]
                    O[n, k, p, q] = max(O[n, k, p, q] + b[k], 0.0)
"""


def define(src: str, name: str, tmp: Path):
    path = tmp / f"{name}_{time.monotonic_ns()}.py"
    path.write_text("import polydl as pd\n" + textwrap.dedent(src))
    mod = types.ModuleType(path.stem)
    mod.__file__ = str(path)
    t0 = time.perf_counter()
    exec(compile(path.read_text(), str(path), "exec"), mod.__dict__)
    return getattr(mod, name), time.perf_counter() - t0


def measure(src: str, name: str, sizes: dict, args, tmp: Path) -> dict[str, float]:
    kern, parse_s = define(src, name, tmp)
    t0 = time.perf_counter()
    k = pd.compile(kern, threads=1, **sizes)
    mid = time.perf_counter()
    k.load()
    end = time.perf_counter()
    k(*args())
    return {
        "parse": parse_s,
        "analyse+codegen": mid - t0,
        "jit": end - mid,
        "total": parse_s + end - t0,
    }


def main() -> None:
    import tempfile

    tmp = Path(tempfile.mkdtemp())
    sys.path.insert(0, str(tmp))
    f32 = np.float32
    cases = {
        "gemm 256^3": (
            GEMM,
            "gemm",
            dict(M=256, N=256, K=256),
            lambda: (
                np.zeros((256, 256), f32),
                np.ones((256, 256), f32),
                np.ones((256, 256), f32),
                1.0,
            ),
        ),
        "conv 7-deep + bias/relu (resnet_03)": (
            CONV,
            "conv",
            dict(Nb=1, C=64, K=64, H=56, W=56, P=56, Q=56, R=3, S=3),
            lambda: (
                np.zeros((1, 64, 56, 56), f32),
                np.ones((1, 64, 56, 56), f32),
                np.ones((64, 64, 3, 3), f32),
                np.ones(64, f32),
            ),
        ),
    }
    print(
        f"{'kernel':<38} {'parse':>8} {'analyse+codegen':>16} {'jit':>13} {'total':>8}"
        f" {'first':>8}  (ms, median of 5)"
    )
    for label, (src, name, sizes, args) in cases.items():
        runs = [measure(src, name, sizes, args, tmp) for _ in range(5)]
        med = {k: statistics.median(r[k] for r in runs) * 1e3 for k in runs[0]}
        print(
            f"{label:<38} {med['parse']:8.1f} {med['analyse+codegen']:16.1f} {med['jit']:13.1f}"
            f" {med['total']:8.1f} {runs[0]['total'] * 1e3:8.1f}"
        )

    # the BRGEMM path with the cost model's ranking, on the blocked layout of pd.ops.conv2d
    runs = []
    for _ in range(5):
        pd.ops.conv2d.cache_clear()  # the kernel is defined and parsed anew each time
        t0 = time.perf_counter()
        kern = pd.ops.conv2d(1, 64, 64, 56, 56, 3, 3, padding=1, layout="nchwc")
        t1 = time.perf_counter()
        k = pd.compile(kern, threads=1)
        t2 = time.perf_counter()
        k.load()
        t3 = time.perf_counter()
        runs.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
    med = [statistics.median(r[i] for r in runs) * 1e3 for i in range(4)]
    label = "conv resnet_03 blocked, BRGEMM+ranking"
    print(
        f"{label:<38} {med[0]:8.1f} {med[1]:16.1f} {med[2]:13.1f} {med[3]:8.1f}"
        f" {runs[0][3] * 1e3:8.1f}"
    )


if __name__ == "__main__":
    main()
