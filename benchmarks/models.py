"""Whole models: ``pd.compile_model(module, example)`` against torch eager (oneDNN) and
``torch.compile`` (Inductor), same run, threads pinned.

    python benchmarks/models.py [--threads 1 2] [--batch 1 8] [--models resnet50 bert] [--no-inductor]

torchvision does not install beside the torch wheel here, so the models are built in this file:
ResNet-50 (torchvision's layout: bottlenecks 3-4-6-3, stride on the 3x3) and a BERT-base encoder
layer's feed-forward block (768 -> 3072 -> 768 with GELU, sequence 128). Weights are random,
batch norms with random running statistics, evaluation mode. Prints latency (median of
interleaved rounds), the ratios, the model compile time, and the share of time in polydl
kernels against fallback nodes (``CompiledModel.report``).
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


def resnet50():
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            cout = 4 * width
            self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = torch.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    class ResNet50(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, 2, 3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
            blocks, cin = [], 64
            for width, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
                for i in range(n):
                    blocks.append(Bottleneck(cin, width, stride if i == 0 else 1))
                    cin = 4 * width
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(2048, 1000)

        def forward(self, x):
            y = self.blocks(self.stem(x))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))

    net = ResNet50()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.0)
    return net.eval()


def bert_ffn():
    from torch import nn

    class FFN(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(768, 3072), nn.Linear(3072, 768)

        def forward(self, x):
            return self.down(nn.functional.gelu(self.up(x)))

    return FFN().eval()


MODELS = {
    "resnet50": (resnet50, lambda b: (b, 3, 224, 224)),
    "bert": (bert_ffn, lambda b: (128 * b, 768)),
}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--no-inductor", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    for name in args.models:
        build, shape = MODELS[name]
        net = build()
        for batch in args.batch:
            x = torch.randn(*shape(batch))
            for threads in args.threads:
                torch.set_num_threads(threads)
                t0 = time.perf_counter()
                m = pd.compile_model(net, (x,), threads=threads)
                with torch.no_grad():
                    got = m(x)
                compile_s = time.perf_counter() - t0
                with torch.no_grad():
                    want = net(x)
                err = float((got - want).abs().max() / want.abs().max())
                contenders = {"polydl": lambda: m(x), "eager": lambda: net(x)}
                if not args.no_inductor:
                    torch._dynamo.reset()
                    fast = torch.compile(net)
                    with torch.no_grad():
                        fast(x)
                    contenders["inductor"] = lambda: fast(x)
                with torch.no_grad():
                    times = interleaved(contenders, rounds=args.rounds, repeat=3, min_time=0.05)
                med = {k: float(np.median(v)) for k, v in times.items()}
                ratio = {
                    k: float(np.median(times[k] / times["polydl"])) for k in times if k != "polydl"
                }
                steps = m.compiled.seconds
                in_pd = sum(
                    t for t, s in zip(steps, m.compiled.steps, strict=True) if not hasattr(s, "why")
                )
                share = 100 * in_pd / max(sum(steps), 1e-12)
                line = f"{name} batch={batch} threads={threads}: polydl {1000 * med['polydl']:.2f} ms, eager {1000 * med['eager']:.2f} ms"
                line += f" (x{ratio['eager']:.2f})"
                if "inductor" in ratio:
                    line += f", inductor {1000 * med['inductor']:.2f} ms (x{ratio['inductor']:.2f})"
                line += f"; compile {compile_s:.1f} s; {share:.1f}% of the time in polydl kernels,"
                line += f" {len(m.compiled.fallbacks)} fallback node(s); err {err:.1e}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
