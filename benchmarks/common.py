"""Shared helpers of the benchmark scripts: medians, thread pinning, the ResNet-50 layer table."""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

LAYERS_CSV = Path(__file__).resolve().parent / "resnet50_conv.csv"


def median_seconds(fn: Callable[[], object], *, repeat: int = 7, min_time: float = 0.05) -> float:
    """Median wall time of ``fn()`` over ``repeat`` samples, each long enough to time."""
    fn()  # warm up (JIT, caches, thread pools)
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_time / once))
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return float(np.median(samples))


def interleaved(
    contenders: dict[str, Callable[[], object]],
    *,
    rounds: int,
    repeat: int,
    min_time: float = 0.02,
    pause: float = 0.0,
) -> dict[str, np.ndarray]:
    """Per-round median times of every contender, timed in interleaved rounds: each contender
    once per round, the order rotating, so that a disturbance of the shared machine falls on
    one round of all of them rather than on all samples of one. Compare contenders by the
    median of their per-round ratios. ``pause`` seconds pass after each contender (OpenBLAS's
    threads spin ~0.1 s after a threaded call and would steal the next contender's cores)."""
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for rnd in range(rounds):
        order = list(contenders)
        order = order[rnd % len(order) :] + order[: rnd % len(order)]
        for key in order:
            times[key].append(median_seconds(contenders[key], repeat=repeat, min_time=min_time))
            if pause:
                time.sleep(pause)
    return {k: np.array(v) for k, v in times.items()}


def layer_args(description: str, *, batch=(1, 8), threads=(1, 2), rounds: int = 5):
    """The argument parser the ResNet-50 layer benchmarks share."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--batch", type=int, nargs="+", default=list(batch))
    ap.add_argument("--threads", type=int, nargs="+", default=list(threads))
    ap.add_argument("--layers", nargs="*", default=None)
    ap.add_argument("--repeat", type=int, default=3, help="samples per contender per round")
    ap.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds per layer")
    return ap


def geomean(r) -> float:
    return math.exp(float(np.mean(np.log(r)))) if len(r) else float("nan")


def resnet50_layers() -> list[dict[str, int | str]]:
    """The rows of ``benchmarks/resnet50_conv.csv`` (the 20 distinct conv layers of ResNet-50,
    batch 1: channels, filters, input size, filter size, stride, padding, output size), ints
    converted."""
    with open(LAYERS_CSV) as f:
        return [
            {k: (v if k == "name" else int(v)) for k, v in row.items()} for row in csv.DictReader(f)
        ]


def numpy_conv2d(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """NCHW x KCRS convolution through im2col and one BLAS matmul (NumPy's fast path)."""
    n, c, h, wd = x.shape
    k, _, r, s = w.shape
    p = (h + 2 * pad - r) // stride + 1
    q = (wd + 2 * pad - s) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    cols = np.lib.stride_tricks.sliding_window_view(xp, (r, s), axis=(2, 3))
    cols = cols[:, :, ::stride, ::stride][:, :, :p, :q]  # n c p q r s
    cols = cols.transpose(0, 2, 3, 1, 4, 5).reshape(n * p * q, c * r * s)
    out = cols @ w.reshape(k, c * r * s).T
    return out.reshape(n, p, q, k).transpose(0, 3, 1, 2)
