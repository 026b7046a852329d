"""The kernels of a model that ``polydl tune --model NAME`` tunes, one per distinct layer.

``resnet50``: the 20 distinct convolutions of ResNet-50 (batch 1 unless asked), from
``resnet50_conv.csv`` beside this module (a copy of ``benchmarks/resnet50_conv.csv``, which the
tests keep equal), as ``pd.ops.conv2d(..., layout="nchwc")`` kernels: the blocked layout the
conv benchmarks measure.
"""

from __future__ import annotations

import csv
import io
from importlib import resources

from ..errors import TuneError

MODELS = ("resnet50",)


def resnet50_layers() -> list[dict[str, int | str]]:
    """The rows of the layer table: name, C, K, H, W, R, S, stride, pad, P, Q."""
    text = resources.files("polydl.tune").joinpath("resnet50_conv.csv").read_text()
    return [
        {k: (v if k == "name" else int(v)) for k, v in row.items()}
        for row in csv.DictReader(io.StringIO(text))
    ]


def model_kernels(name: str, *, batch: int = 1, layers=None) -> list[tuple[str, object]]:
    """``[(layer name, kernel), ...]`` of model ``name`` (``layers``: only these names)."""
    from .. import ops

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
        kern = ops.conv2d(
            batch, r["C"], r["K"], r["H"], r["W"], r["R"], r["S"],
            stride=r["stride"], padding=r["pad"], layout="nchwc",
        )  # fmt: skip
        out.append((str(r["name"]), kern))
    return out
