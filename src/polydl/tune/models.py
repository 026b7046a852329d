"""The kernels of a model that ``polydl tune --model NAME`` tunes, one per distinct layer.

``resnet50``: the 20 distinct convolutions of ResNet-50 (batch 1 unless asked), from
``resnet50_conv.csv`` beside this module (a copy of ``benchmarks/resnet50_conv.csv``, which the
tests keep equal). ``layout="nchwc"`` (the default): ``pd.ops.conv2d(..., layout="nchwc")``
kernels, the blocked layout the conv benchmarks measure; ``layout="nchw"``: the convolution
kernels ``pd.nn.conv2d`` compiles for NCHW arrays of these shapes (``nn.conv2d_kernels``: the
rows, direct or blocked kernel its route picks), so that its later calls at the same batch and
thread count run the tuned records.
"""

from __future__ import annotations

import csv
import io
from importlib import resources

from ..errors import TuneError

MODELS = ("resnet50",)
LAYOUTS = ("nchwc", "nchw")


def resnet50_layers() -> list[dict[str, int | str]]:
    """The rows of the layer table: name, C, K, H, W, R, S, stride, pad, P, Q."""
    text = resources.files("polydl.tune").joinpath("resnet50_conv.csv").read_text()
    return [
        {k: (v if k == "name" else int(v)) for k, v in row.items()}
        for row in csv.DictReader(io.StringIO(text))
    ]


def model_kernels(
    name: str, *, batch: int = 1, layers=None, layout: str = "nchwc", threads: int = 1
) -> list[tuple[str, object]]:
    """``[(layer name, kernel), ...]`` of model ``name`` (``layers``: only these names) in
    ``layout`` (see the module docstring; ``threads``: the count ``pd.nn.conv2d`` will run with,
    which its route for a strided layer may depend on)."""
    from .. import nn, ops

    if layout not in LAYOUTS:
        raise TuneError(f"polydl tune --layout {layout!r}: known layouts are {', '.join(LAYOUTS)}")
    if name not in MODELS:
        raise TuneError(f"polydl tune --model {name!r}: known models are {', '.join(MODELS)}")
    rows = resnet50_layers()
    if layers:
        unknown = sorted(set(layers) - {r["name"] for r in rows})
        if unknown:
            raise TuneError(f"--layers {unknown}: not layers of {name} ({rows[0]['name']}, ...)")
        rows = [r for r in rows if r["name"] in layers]
    out = []
    for r in rows:
        if layout == "nchw":
            x_shape, w_shape = (batch, r["C"], r["H"], r["W"]), (r["K"], r["C"], r["R"], r["S"])
            kern = nn.conv2d_kernels(x_shape, w_shape, r["stride"], r["pad"], threads=threads)[0]
            out.append((str(r["name"]), kern))
            continue
        kern = ops.conv2d(
            batch, r["C"], r["K"], r["H"], r["W"], r["R"], r["S"],
            stride=r["stride"], padding=r["pad"], layout="nchwc",
        )  # fmt: skip
        out.append((str(r["name"]), kern))
    return out
