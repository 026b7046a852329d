"""bfloat16 GEMMs: ``pd.ops.matmul(..., dtype="bf16")`` (bf16 A and B, f32 C) against the f32
kernel of the same shape and against torch's bf16 and f32 matmuls (oneDNN), in the same run.

    python benchmarks/bf16.py [--threads 1 2] [--square 512 1024 2048 4096] [--layers resnet_02 ...]
                              [--no-gemms] [--no-convs]

GEMM rows: square ``n^3`` for each ``--square`` size, then the DL shapes (``DL_SHAPES``); shapes
of 2048 and more are timed in fewer rounds of one call each (a 4096^3 bf16 GEMM is ~0.6 s on one
core), and every error is measured on the first 256 rows against a float64 product.

Then ResNet-50 layers (``benchmarks/resnet50_conv.csv``, batch 1): ``pd.nn.conv2d`` on bf16
NCHW input and weights (f32 result) against torch's bf16 ``F.conv2d`` (the faster of NCHW and
channels_last, the latter converted before timing) and against polydl's own f32 ``pd.nn.conv2d``;
``pd pre`` is ``pd.nn.conv2d`` given the weights as ``pd.nn.ConvWeights`` (packed once, as an
inference session would; torch's ``F.conv2d`` reorders its weights at every call).

The bf16 kernel runs on AMX tiles (family ``amx_bf16``) where the host has them, multiplies k
pairs with ``vdpbf16ps`` where it has AVX512-BF16 (family ``avx512_bf16``), else widens bf16 to
f32 at the loads; B is copied into VNNI-2 pairs where the family takes them (printed per shape).
On an AMX host the AMX bf16 peak is measured by a tile loop in the same run (4 independent C
tiles, ``tdpbf16ps``) and each shape's % of it (times the threads) is printed. Threads pinned on both sides; contenders
timed in interleaved rounds (``common.interleaved``); ratios are medians of per-round ratios
(``> 1``: polydl bf16 faster).
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import geomean, interleaved, resnet50_layers  # noqa: E402

import polydl as pd  # noqa: E402
from polydl import jit  # noqa: E402
from polydl.ir import loops as L  # noqa: E402
from polydl.kernels import FAMILIES, amx  # noqa: E402
from polydl.kernels.generator import environment  # noqa: E402
from polydl.kernels.isa import bf16_family  # noqa: E402

CONV_LAYERS = ["resnet_02", "resnet_03", "resnet_07", "resnet_12", "resnet_17"]
SQUARE = [512, 1024, 2048, 4096]
DL_SHAPES = [(256, 256, 256), (128, 3072, 768), (3136, 64, 576)]
BIG = 2048**3  # M*N*K from which a shape is timed in fewer, single-call samples


def amx_peak() -> float:
    """GFLOPS of one core's AMX bf16 tiles: a loop of tdpbf16ps on 4 independent C tiles."""
    tiles = 4
    ir = environment().get_template("bench/amx_peak.ll.j2").render(name="amx_peak", tiles=tiles)
    mod = jit.build(ir, name="amx_peak")
    amx.request_permission()
    fn = mod.cfunc("amx_peak", None, ctypes.c_int64, ctypes.c_void_p)
    buf = np.zeros((tiles + 1) * 1024 // 4, np.float32)
    iters, best = 200_000, float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        fn(iters, buf.ctypes.data)
        best = min(best, time.perf_counter() - t0)
    return iters * tiles * 16 * 16 * 32 * 2 / best / 1e9


def route(kern) -> str:
    """The family the bf16 kernel's calls run, and whether B is copied into VNNI-2 pairs."""
    fam = bf16_family(None, "avx512")
    calls = [n for n in L.walk(kern.tree) if isinstance(n, L.Call) and n.packed_b is not None]
    vnni = any(c.packed_vnni for c in calls)
    return f"{fam.name}{'+vnni' if vnni else ''}"


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--layers", nargs="+", default=CONV_LAYERS)
    ap.add_argument("--square", type=int, nargs="*", default=SQUARE, help="square GEMM sizes")
    ap.add_argument("--no-convs", action="store_true", help="GEMMs only")
    ap.add_argument("--no-gemms", action="store_true", help="convolutions only")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    dot = "avx512bf16" in jit.host_features()
    has_amx = FAMILIES["amx_bf16"].required_features <= jit.host_features()
    print(f"# host {jit.host_cpu()}, AVX512-BF16: {'yes (vdpbf16ps)' if dot else 'no (widened)'}")
    print(f"# AMX (amx-tile, amx-bf16): {'yes' if has_amx else 'no'}")
    peak = amx_peak() if has_amx else None
    if peak is not None:
        print(f"# AMX bf16 peak (tile loop, one core): {peak:.1f} GFLOPS")
    shapes = [] if args.no_gemms else [(n, n, n) for n in args.square] + DL_SHAPES
    for threads in args.threads:
        torch.set_num_threads(threads)
        if not shapes:
            convs(threads, args.layers, args.rounds, rng)
            continue
        print(f"\nthreads={threads}  (GFLOPS; ratios = other time / polydl bf16 time)")
        print(
            f"{'M':>5} {'N':>5} {'K':>5} {'pd bf16':>8} {'pd f32':>7} {'torch bf16':>10} {'torch f32':>9} "
            f"{'/pd f32':>7} {'/t bf16':>7} {'/t f32':>6} {'err':>8}  family"
            + ("  %AMX" if peak else "")
        )
        cols: dict[str, list[float]] = {"pd_f32": [], "t_bf16": [], "t_f32": []}
        for M, N, K in shapes:
            a32 = rng.standard_normal((M, K), dtype=np.float32)
            b32 = rng.standard_normal((K, N), dtype=np.float32)
            a, b = pd.to_bf16(a32), pd.to_bf16(b32)
            a32, b32 = pd.aligned(pd.from_bf16(a)), pd.aligned(pd.from_bf16(b))
            kb = pd.compile(pd.ops.matmul(M, N, K, dtype="bf16"), threads=threads)
            kf = pd.compile(pd.ops.matmul(M, N, K), threads=threads)
            c, c2 = pd.empty((M, N)), pd.empty((M, N))
            ta, tb = (
                torch.from_numpy(a32).to(torch.bfloat16),
                torch.from_numpy(b32).to(torch.bfloat16),
            )
            tf, tg = torch.from_numpy(a32), torch.from_numpy(b32)
            kb(c, a, b)
            want = a32[:256].astype(np.float64) @ b32
            err = float(np.abs(c[:256] - want).max() / np.abs(want).max())
            big = M * N * K >= BIG
            times = interleaved(
                {
                    "pd_bf16": lambda: kb(c, a, b),
                    "pd_f32": lambda: kf(c2, a32, b32),
                    "t_bf16": lambda: ta @ tb,
                    "t_f32": lambda: tf @ tg,
                },
                rounds=max(2, args.rounds // 2) if big else args.rounds,
                repeat=1 if big else 3,
                min_time=0.0 if big else 0.02,
            )
            ratio = {k: float(np.median(times[k] / times["pd_bf16"])) for k in cols}
            for k, v in ratio.items():
                cols[k].append(v)
            gf = {k: 2.0 * M * N * K / float(np.median(v)) / 1e9 for k, v in times.items()}
            print(
                f"{M:5d} {N:5d} {K:5d} {gf['pd_bf16']:8.1f} {gf['pd_f32']:7.1f} {gf['t_bf16']:10.1f} "
                f"{gf['t_f32']:9.1f} {ratio['pd_f32']:7.2f} {ratio['t_bf16']:7.2f} {ratio['t_f32']:6.2f} {err:8.1e}"
                f"  {route(kb)}"
                + (f"  {100 * gf['pd_bf16'] / (peak * threads):5.1f}" if peak else ""),
                flush=True,
            )
        print(
            f"geomean, threads={threads}: polydl bf16 vs "
            + ", ".join(f"{k} {geomean(v):.3f}" for k, v in cols.items())
        )
        if not args.no_convs:
            convs(threads, args.layers, args.rounds, rng)


def convs(threads: int, names: list[str], rounds: int, rng) -> None:
    """The conv rows (module docstring) at ``threads`` threads."""
    import torch
    import torch.nn.functional as F

    print(f"\nthreads={threads}  convs, batch 1 (GFLOPS; ratios = other time / polydl bf16 time)")
    print(
        f"{'layer':<10} {'pd bf16':>8} {'pd f32':>7} {'torch bf16':>10} {'/pd f32':>7} {'/t bf16':>7} {'err':>8}"
        f" {'pd pre':>7} {'/t pre':>6}"
    )
    to_pd, to_t, to_pre = [], [], []
    for row in (r for r in resnet50_layers() if r["name"] in names):
        C, K, H, W, R, S = (int(row[x]) for x in "CKHWRS")
        st, pad, P, Q = int(row["stride"]), int(row["pad"]), int(row["P"]), int(row["Q"])
        x = pd.to_bf16(rng.standard_normal((1, C, H, W), dtype=np.float32))
        w = pd.to_bf16(rng.standard_normal((K, C, R, S), dtype=np.float32))
        x32, w32 = np.ascontiguousarray(pd.from_bf16(x)), np.ascontiguousarray(pd.from_bf16(w))
        tx, tw = torch.from_numpy(x32).to(torch.bfloat16), torch.from_numpy(w32).to(torch.bfloat16)
        cx, cw = (t.to(memory_format=torch.channels_last) for t in (tx, tw))
        opts = dict(stride=st, padding=pad, threads=threads)
        wc = pd.nn.ConvWeights(w)  # packed once, at its first call
        with torch.no_grad():
            times = interleaved(
                {
                    "pd_bf16": lambda: pd.nn.conv2d(x, w, **opts),
                    "pd_pre": lambda: pd.nn.conv2d(x, wc, **opts),
                    "pd_f32": lambda: pd.nn.conv2d(x32, w32, **opts),
                    "t_nchw": lambda: F.conv2d(tx, tw, stride=st, padding=pad),
                    "t_cl": lambda: F.conv2d(cx, cw, stride=st, padding=pad),
                },
                rounds=rounds,
                repeat=3,
            )
        want = F.conv2d(
            torch.from_numpy(x32).double(), torch.from_numpy(w32).double(), stride=st, padding=pad
        ).numpy()
        err = float(np.abs(pd.nn.conv2d(x, w, **opts) - want).max() / np.abs(want).max())
        t_bf16 = np.minimum(times["t_nchw"], times["t_cl"])
        r_pd = float(np.median(times["pd_f32"] / times["pd_bf16"]))
        r_t = float(np.median(t_bf16 / times["pd_bf16"]))
        r_pre = float(np.median(t_bf16 / times["pd_pre"]))
        to_pd.append(r_pd)
        to_t.append(r_t)
        to_pre.append(r_pre)
        flops = 2.0 * K * C * R * S * P * Q
        gf = lambda t: flops / float(np.median(t)) / 1e9  # noqa: E731
        print(
            f"{row['name']:<10} {gf(times['pd_bf16']):8.1f} {gf(times['pd_f32']):7.1f} "
            f"{gf(t_bf16):10.1f} {r_pd:7.2f} {r_t:7.2f} {err:8.1e} {gf(times['pd_pre']):7.1f} {r_pre:6.2f}",
            flush=True,
        )
    if to_pd:
        print(
            f"geomean, threads={threads}, convs: vs pd f32 {geomean(to_pd):.3f}, vs torch bf16 {geomean(to_t):.3f}"
            f", with ConvWeights vs torch bf16 {geomean(to_pre):.3f}"
        )


if __name__ == "__main__":
    main()
