"""Golden files: the loop nest (``show("loops")``) and the chosen schedule record
(``show("schedule")``) of a dozen kernels, compiled for fixed presets (not the host), so that a
change of the compiler's choices shows as a diff of ``tests/golden/<name>.txt``. After an
intended change: ``pytest tests/test_golden.py --update-golden`` and review the diff."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
from kernels import bmm, gemm_bias_relu, gemm_bt
from test_polybench import jacobi_1d

import polydl as pd

GOLDEN = Path(__file__).resolve().parent / "golden"

# name -> (kernel factory, sizes, target preset, threads)
CASES = {
    "gemm_bias_relu_1t": (lambda: gemm_bias_relu, dict(M=131, N=97, K=67), "icelake-server", 1),
    "gemm_bias_relu_2t": (lambda: gemm_bias_relu, dict(M=131, N=97, K=67), "icelake-server", 2),
    "gemm_avx2": (lambda: gemm_bias_relu, dict(M=64, N=64, K=64), "znver3", 1),
    "matmul_even_rows_2t": (lambda: pd.ops.matmul(256, 196, 64), {}, "icelake-server", 2),
    "bmm": (lambda: bmm, dict(Bt=3, M=37, N=48, K=29), "skylake-avx512", 2),
    "gemm_transposed_b": (lambda: gemm_bt, dict(M=33, N=40, K=24), "icelake-server", 1),
    "conv_blocked": (
        lambda: pd.ops.conv2d(1, 64, 64, 14, 14, 3, 3, padding=1, layout="nchwc", block=64),
        {},
        "icelake-server",
        2,
    ),
    "conv_blocked_stride2": (
        lambda: pd.ops.conv2d(1, 64, 128, 14, 14, 1, 1, stride=2, layout="nchwc", block=64),
        {},
        "icelake-server",
        1,
    ),
    "conv_nchw_split": (
        lambda: pd.ops.conv2d(1, 16, 16, 28, 28, 3, 3, padding=1),
        {},
        "icelake-server",
        1,
    ),
    "conv_nchw_im2col": (
        lambda: pd.ops.conv2d(1, 128, 64, 7, 7, 3, 3, padding=1),
        {},
        "icelake-server",
        1,
    ),
    "conv_nchw_stride2": (
        lambda: pd.ops.conv2d(1, 32, 64, 14, 14, 1, 1, stride=2, bias=True, activation="relu"),
        {},
        "icelake-server",
        2,
    ),
    "conv_nchw_1x1": (lambda: pd.ops.conv2d(1, 32, 64, 14, 14, 1, 1), {}, "znver3", 1),
    # a 7x7 stride-2 im2col larger than a core's L2: copied block by block of output rows, and
    # image by image under the image loop (transform/fuse_gather.py)
    "conv_nchw_7x7_rows": (
        lambda: pd.ops.conv2d(1, 3, 16, 127, 127, 7, 7, stride=2, padding=3),
        {},
        "icelake-server",
        2,
    ),
    "conv_nchw_7x7_images": (
        lambda: pd.ops.conv2d(3, 3, 16, 127, 127, 7, 7, stride=2, padding=3),
        {},
        "icelake-server",
        1,
    ),
    "jacobi_1d_plain": (lambda: jacobi_1d, dict(N=100, T=4), "icelake-server", 2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_golden(name, request):
    factory, sizes, target, threads = CASES[name]
    k = pd.compile(factory(), target=target, threads=threads, **sizes)
    text = k.show("loops") + "\n\n" + k.show("schedule") + "\n"
    path = GOLDEN / f"{name}.txt"
    if request.config.getoption("--update-golden"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
        return
    assert path.exists(), f"no golden file {path}: run pytest {__file__} --update-golden"
    want = path.read_text()
    if text != want:
        diff = "".join(
            difflib.unified_diff(
                want.splitlines(keepends=True), text.splitlines(keepends=True), str(path), "now"
            )
        )
        pytest.fail(f"{name} differs from its golden file (--update-golden if intended):\n{diff}")
