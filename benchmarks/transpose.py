"""The layout transposes of the 1-D convolutions alone: NCW -> NWC with a zero border
(``ops1d.to_nwc``) and NWC -> NCW (``ops1d.from_nwc``), compiled with the tile-transpose pass
(``transform/transpose.py``: in-register tile transposes) and without it (the plain nest the
LLVM loop vectoriser widens), against NumPy (``np.ascontiguousarray`` of a transposed view) and
torch (``.contiguous()`` of one), all in the same run.

    python benchmarks/transpose.py [--threads 1 2] [--rounds 5]

GB/s count the bytes read plus the bytes written (``2 * 4 * N*C*W``). Contenders run in
interleaved rounds (``common.interleaved``); the table gives median per-round GB/s and the
median per-round ratio of the old path's time to the new one's (> 1: the pass is faster).
polydl and torch are pinned to ``--threads``; NumPy's copy runs on one thread. Run it under
``flock /tmp/polydl-bench.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved  # noqa: E402

import polydl as pd  # noqa: E402
from polydl import ops1d  # noqa: E402
from polydl.transform import transpose as tiles  # noqa: E402

# (N, C, W): the conv1d benchmark's channel counts at its long widths
SHAPES = [(1, 64, 60000), (1, 15, 60000), (1, 32, 10000), (8, 64, 10000), (1, 128, 10000)]


def _compiled(kernel, threads: int, enabled: bool):
    tiles.ENABLED = enabled
    try:
        return pd.compile(kernel, threads=threads, tuned=False)
    finally:
        tiles.ENABLED = True


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\nthreads={threads}  (GB/s, read + write; ratio = old time / new time)")
        print(
            f"{'kind':>8} {'N':>2} {'C':>4} {'W':>6} {'new':>7} {'old':>7} {'numpy':>7} "
            f"{'torch':>7} {'ratio':>6} {'vs np':>6} {'vs torch':>8}"
        )
        for kind in ("to_nwc", "from_nwc"):
            for N, C, W in SHAPES:
                pad = 12
                if kind == "to_nwc":
                    kern = ops1d.to_nwc(N, C, W, W + 2 * pad, left=pad)
                    src = pd.aligned(rng.standard_normal((N, C, W), dtype=np.float32))
                    dst = pd.zeros((N, W + 2 * pad, C), np.float32)
                else:
                    kern = ops1d.from_nwc(N, C, W)
                    src = pd.aligned(rng.standard_normal((N, W, C), dtype=np.float32))
                    dst = pd.empty((N, C, W), np.float32)
                new, old = (_compiled(kern, threads, e) for e in (True, False))
                ts = torch.from_numpy(src)
                view = src.transpose(0, 2, 1)
                got = dst.copy()
                new(got, src)
                inner = got[:, pad : pad + W] if kind == "to_nwc" else got
                if not np.array_equal(inner, view):
                    raise AssertionError(f"{kind} {N}x{C}x{W}: the new path differs from NumPy")
                times = interleaved(
                    {
                        "new": lambda: new(dst, src),  # noqa: B023
                        "old": lambda: old(dst, src),  # noqa: B023
                        "numpy": lambda: np.ascontiguousarray(view),  # noqa: B023
                        "torch": lambda: ts.transpose(1, 2).contiguous(),  # noqa: B023
                    },
                    rounds=args.rounds,
                    repeat=args.repeat,
                )
                nbytes = 2 * 4 * N * C * W
                gbs = {k: nbytes / float(np.median(v)) / 1e9 for k, v in times.items()}

                def ratio(k: str) -> float:
                    return float(np.median(times[k] / times["new"]))  # noqa: B023

                print(
                    f"{kind:>8} {N:>2} {C:>4} {W:>6} {gbs['new']:7.1f} {gbs['old']:7.1f} "
                    f"{gbs['numpy']:7.1f} {gbs['torch']:7.1f} {ratio('old'):6.2f} "
                    f"{ratio('numpy'):6.2f} {ratio('torch'):8.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
