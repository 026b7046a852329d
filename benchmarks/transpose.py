"""The layout transposes of the 1-D convolutions alone: NCW -> NWC with a zero border
(``ops1d.to_nwc``) and NWC -> NCW (``ops1d.from_nwc``), compiled with the tile-transpose pass
(``transform/transpose.py``: in-register tile transposes) and without it (the plain nest the
LLVM loop vectoriser widens), against NumPy (``np.ascontiguousarray`` of a transposed view) and
torch (``.contiguous()`` of one), all in the same run.

    python benchmarks/transpose.py [--threads 1 2] [--rounds 5] [--wgrad]

``--wgrad``: the filter gradient of the conv1d benchmark's 64-channel shapes (``padding="same"``)
as ``pd.nn.conv1d_backward_weight`` runs it (the input to NWC, the BRGEMM over positions, the
unpack to ``[K, C, S]``), its two transposes compiled with the pass (as it decides, never storing
non-temporally, always where it can) and without it, against torch, interleaved in one process.

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


WGRAD = [(1, 64, 60000, 3, 1), (1, 64, 60000, 25, 8), (1, 64, 10000, 51, 1), (8, 64, 10000, 9, 2)]


def _wgrad(args, rng) -> None:
    """The filter-gradient A/B (module docstring)."""
    import torch

    from polydl import nn1d

    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\nthreads={threads} filter gradient (ms; ratio = torch time / polydl time)")
        print(
            f"{'N':>2} {'C':>3} {'W':>6} {'S':>3} {'d':>2} {'new':>7} {'no-nt':>7} {'all-nt':>7} "
            f"{'old':>7} {'torch':>7} {'old/new':>7} {'vs torch':>8} {'old vs torch':>12}"
        )
        for N, C, W, S, d in WGRAD:
            pad = d * (S - 1) // 2
            x = pd.aligned(rng.standard_normal((N, C, W), dtype=np.float32))
            dy = pd.aligned(rng.standard_normal((N, C, W), dtype=np.float32))
            w = np.zeros((C, C, S), np.float32)
            p = nn1d._weight(x.shape, dy.shape, S, 1, pad, d, 1)
            conv = pd.compile(
                ops1d.conv1d_wgrad(N, C, C, p.L, p.Q, S, dilation=d), threads=threads, tuned=False
            )
            pack_k = ops1d.to_nwc(N, C, W, p.L, left=p.left)
            unpack_k = ops1d.unpack_wgrad(C, C, S)
            nt = tiles.NT_SHARE
            variants = {}
            for name, enabled, share in (
                ("new", True, nt),
                ("no-nt", True, 1e9),
                ("all-nt", True, 0.0),
                ("old", False, nt),
            ):
                tiles.NT_SHARE = share
                pack, unpack = (_compiled(k, threads, enabled) for k in (pack_k, unpack_k))
                tiles.NT_SHARE = nt
                xt = pd.zeros((N, p.L, C), np.float32)
                dbuf = pd.empty((1, C, S, C), np.float32)

                def run(pack=pack, unpack=unpack, xt=xt, dbuf=dbuf):
                    pack(xt, x)
                    conv(dbuf, dy, xt)
                    dw = pd.empty((C, C, S), np.float32)
                    unpack(dw, dbuf)
                    return dw

                variants[name] = run
            tx, tdy, tw = (torch.from_numpy(a) for a in (x, dy, w))
            mask = [False, True, False]

            def theirs(tx=tx, tdy=tdy, tw=tw, pad=pad, d=d):
                return torch.ops.aten.convolution_backward(
                    tdy, tx, tw, None, [1], [pad], [d], False, [0], 1, mask
                )[1]

            want = pd.nn.conv1d_backward_weight(x, dy, S, padding=pad, dilation=d, threads=threads)
            for name, fn in variants.items():
                if not np.allclose(fn(), want, rtol=1e-4, atol=1e-3):
                    raise AssertionError(f"filter gradient {name} differs")
            times = interleaved(
                {**variants, "torch": theirs}, rounds=args.rounds, repeat=args.repeat
            )
            ms = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
            r = {k: float(np.median(times["torch"] / v)) for k, v in times.items()}
            print(
                f"{N:>2} {C:>3} {W:>6} {S:>3} {d:>2} {ms['new']:7.2f} {ms['no-nt']:7.2f} "
                f"{ms['all-nt']:7.2f} {ms['old']:7.2f} {ms['torch']:7.2f} "
                f"{float(np.median(times['old'] / times['new'])):7.2f} {r['new']:8.2f} "
                f"{r['old']:12.2f}",
                flush=True,
            )


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--wgrad", action="store_true", help="the filter-gradient A/B instead")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    if args.wgrad:
        _wgrad(args, rng)
        return
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
