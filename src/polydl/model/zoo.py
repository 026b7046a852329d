"""Built-in torch models (random weights, evaluation mode) for ``pd.compile_model(name, x)``,
the tests and ``benchmarks/models.py``: torchvision does not install beside the torch wheel
here, so they are built in this file.

- ``resnet50``: torchvision's layout (bottlenecks 3-4-6-3, stride on the 3x3), input
  ``(N, 3, 224, 224)``.
- ``mobilenet``: MobileNetV2-style inverted residuals (1x1 expand, 3x3 depthwise, 1x1 project,
  ReLU6), ``width`` channels after the stem, input ``(N, 3, H, W)``.
- ``bert``: a BERT encoder layer (multi-head self-attention, residual and layer norm, GELU
  feed-forward, residual and layer norm), BERT-base's sizes by default, input ``(N, S, d)``.

Batch and layer norms get random statistics and affine parameters, so that folding them is
exercised.
"""

from __future__ import annotations


def _torch():
    import torch

    return torch, torch.nn


def resnet50():
    torch, nn = _torch()

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

    return _randomise_norms(ResNet50())


def mobilenet(width: int = 16, classes: int = 10):
    torch, nn = _torch()

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            mid = cin * expand
            self.residual = stride == 1 and cin == cout
            self.body = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False),
                nn.BatchNorm2d(mid),
                nn.ReLU6(),
                nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),  # depthwise
                nn.BatchNorm2d(mid),
                nn.ReLU6(),
                nn.Conv2d(mid, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            )

        def forward(self, x):
            y = self.body(x)
            return x + y if self.residual else y

    class MobileNet(nn.Module):
        def __init__(self):
            super().__init__()
            w = width
            self.stem = nn.Sequential(
                nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU6()
            )
            self.blocks = nn.Sequential(
                InvertedResidual(w, w, 1, 2),
                InvertedResidual(w, 2 * w, 2, 3),
                InvertedResidual(2 * w, 2 * w, 1, 3),
                InvertedResidual(2 * w, 2 * w, 1, 3),
            )
            self.head = nn.Linear(2 * w, classes)

        def forward(self, x):
            y = self.blocks(self.stem(x))
            return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))

    return _randomise_norms(MobileNet())


def bert(d: int = 768, heads: int = 12, ff: int = 3072):
    torch, nn = _torch()

    class EncoderLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.up, self.down = nn.Linear(d, ff), nn.Linear(ff, d)

        def forward(self, x):
            B, S, D = x.shape

            def split(t):
                return t.reshape(B, S, heads, D // heads).transpose(1, 2)

            q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
            a = torch.softmax(q @ k.transpose(-1, -2) / (D // heads) ** 0.5, dim=-1)
            y = (a @ v).transpose(1, 2).reshape(B, S, D)
            x = self.ln1(x + self.o(y))
            return self.ln2(x + self.down(nn.functional.gelu(self.up(x))))

    return _randomise_norms(EncoderLayer())


def _randomise_norms(net):
    torch, nn = _torch()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
            if isinstance(m, nn.BatchNorm2d | nn.LayerNorm):
                m.weight.uniform_(0.5, 1.0)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


MODELS = {"resnet50": resnet50, "mobilenet": mobilenet, "bert": bert}


def build(name: str):
    """The built-in model ``name`` (a torch module)."""
    if name not in MODELS:
        from . import ModelError

        raise ModelError(f"no built-in model {name!r}; the built-in ones: {sorted(MODELS)}")
    return MODELS[name]()
