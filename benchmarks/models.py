"""Whole models: ``pd.compile_model(module, example)`` against torch eager (oneDNN) and
``torch.compile`` (Inductor), same run, threads pinned.

    python benchmarks/models.py [--threads 1 2] [--batch 1 8] [--models resnet50 bert]
                                [--layouts nchw blocked] [--no-inductor]

The models are the built-in ones of ``polydl.model.zoo`` (torchvision does not install beside
the torch wheel here): ResNet-50 (torchvision's layout) and a BERT-base encoder layer (d=768,
12 heads, feed-forward 3072, GELU, layer norms) at sequence 128 (``--batch`` sequences).
Weights are random, norms with random statistics, evaluation mode. Prints latency (median of
interleaved rounds), the ratios, the model compile time (export, compile and the first call),
and the share of time in polydl kernels against fallback nodes (``CompiledModel.report``), for
each ``compile_model`` layout (ResNet-50: NCHW kernels, and the blocked layout kept between
convs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved  # noqa: E402

import polydl as pd  # noqa: E402
from polydl.model import zoo  # noqa: E402

MODELS = {
    "resnet50": (zoo.resnet50, lambda b: (b, 3, 224, 224)),
    "bert": (zoo.bert, lambda b: (b, 128, 768)),
}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--no-inductor", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--layouts", nargs="+", default=["nchw", "blocked"], choices=["nchw", "blocked"]
    )
    args = ap.parse_args()
    torch.manual_seed(0)
    for name in args.models:
        build, shape = MODELS[name]
        net = build()
        for batch in args.batch:
            x = torch.randn(*shape(batch))
            for threads in args.threads:
                torch.set_num_threads(threads)
                layouts = args.layouts if name == "resnet50" else ["nchw"]  # no conv in bert
                ours, compile_s = {}, {}
                for layout in layouts:
                    t0 = time.perf_counter()
                    ours[layout] = pd.compile_model(net, (x,), threads=threads, layout=layout)
                    with torch.no_grad():
                        ours[layout](x)  # the first call: JIT done
                    compile_s[layout] = time.perf_counter() - t0
                with torch.no_grad():
                    want = net(x)
                contenders = {f"polydl-{k}": (lambda m=m: m(x)) for k, m in ours.items()}
                contenders["eager"] = lambda: net(x)
                if not args.no_inductor:
                    torch._dynamo.reset()
                    fast = torch.compile(net)
                    with torch.no_grad():
                        fast(x)
                    contenders["inductor"] = lambda: fast(x)
                with torch.no_grad():
                    times = interleaved(contenders, rounds=args.rounds, repeat=3, min_time=0.05)
                med = {k: float(np.median(v)) for k, v in times.items()}
                peers = [k for k in ("eager", "inductor") if k in times]
                head = f"{name} batch={batch} threads={threads}:"
                head += "".join(f" {k} {1000 * med[k]:.2f} ms," for k in peers)
                print(head.rstrip(","), flush=True)
                for layout, m in ours.items():
                    key = f"polydl-{layout}"
                    with torch.no_grad():
                        err = float((m(x) - want).abs().max() / want.abs().max())
                    line = f"  polydl layout={layout}: {1000 * med[key]:.2f} ms"
                    for k in peers:
                        line += f", x{float(np.median(times[k] / times[key])):.2f} {k}"
                    line += f"; compile {compile_s[layout]:.1f} s;"
                    line += f" {100 * m.compiled.polydl_share:.1f}% of the time in polydl kernels,"
                    line += f" {len(m.compiled.fallbacks)} fallback node(s); err {err:.1e}"
                    print(line, flush=True)


if __name__ == "__main__":
    main()
