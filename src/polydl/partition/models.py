"""Built-in model graphs, built in code with their exact layer shapes (no download).

``resnet50`` (224x224 images), ``bert-base`` (sequence 128), ``gpt2-small`` (sequence 1024),
``mlp3`` (a three-layer perceptron) and ``random-dag`` (a random layered DAG for scale tests).
All tensors are float32; ``batch`` is the micro-batch size.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ..errors import PartitionError
from .graph import F32, GraphBuilder, ModelGraph, numel


def _conv_out(h: int, k: int, s: int, p: int) -> int:
    return (h + 2 * p - k) // s + 1


def resnet50(batch: int = 1, image: int = 224, classes: int = 1000) -> ModelGraph:
    """ResNet-50 v1.5 (torchvision layout: stride on the 3x3 conv), conv/bn/relu as separate nodes."""
    b = GraphBuilder("resnet50")
    n = batch

    def conv(name, x, cout, k, s, p):
        _, cin, h, w = b.shape[x] if x in b.shape else (n, 3, image, image)
        ho, wo = _conv_out(h, k, s, p), _conv_out(w, k, s, p)
        flops = 2.0 * n * cout * ho * wo * cin * k * k
        extra = numel((n, 3, image, image)) * F32 if x not in b.shape else 0
        return b.add(
            name,
            "Conv",
            [x] if x in b.shape else [],
            (n, cout, ho, wo),
            flops=flops,
            params=cout * cin * k * k,
            extra_in_bytes=extra,
        )

    def bn(name, x):
        s = b.shape[x]
        return b.add(name, "BatchNormalization", [x], s, flops=4.0 * numel(s), params=2 * s[1])

    def relu(name, x):
        return b.add(name, "Relu", [x], b.shape[x], flops=float(numel(b.shape[x])))

    x = relu("relu1", bn("bn1", conv("conv1", "input", 64, 7, 2, 3)))
    _, c, h, w = b.shape[x]
    ho = _conv_out(h, 3, 2, 1)
    x = b.add("maxpool", "MaxPool", [x], (n, c, ho, ho), flops=9.0 * n * c * ho * ho)
    for li, (width, blocks, stride) in enumerate(
        [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=1
    ):
        for bi in range(blocks):
            p = f"layer{li}.{bi}"
            s = stride if bi == 0 else 1
            y = relu(f"{p}.relu1", bn(f"{p}.bn1", conv(f"{p}.conv1", x, width, 1, 1, 0)))
            y = relu(f"{p}.relu2", bn(f"{p}.bn2", conv(f"{p}.conv2", y, width, 3, s, 1)))
            y = bn(f"{p}.bn3", conv(f"{p}.conv3", y, width * 4, 1, 1, 0))
            skip = x
            if bi == 0:
                skip = bn(f"{p}.down.bn", conv(f"{p}.down.conv", x, width * 4, 1, s, 0))
            y = b.add(f"{p}.add", "Add", [y, skip], b.shape[y], flops=float(numel(b.shape[y])))
            x = relu(f"{p}.relu3", y)
    _, c, h, w = b.shape[x]
    x = b.add("avgpool", "GlobalAveragePool", [x], (n, c), flops=float(n * c * h * w))
    b.add(
        "fc", "Gemm", [x], (n, classes), flops=2.0 * n * c * classes, params=c * classes + classes
    )
    return b.build()


def _linear(b: GraphBuilder, name: str, x: str, out: int, *, bias: bool = True) -> str:
    s = b.shape[x]
    tokens = numel(s[:-1])
    return b.add(
        name,
        "MatMul",
        [x],
        (*s[:-1], out),
        flops=2.0 * tokens * s[-1] * out,
        params=s[-1] * out + (out if bias else 0),
    )


def _layernorm(b: GraphBuilder, name: str, x: str) -> str:
    s = b.shape[x]
    return b.add(name, "LayerNormalization", [x], s, flops=8.0 * numel(s), params=2 * s[-1])


def _attention(b: GraphBuilder, p: str, q: str, k: str, v: str, heads: int) -> str:
    bs, t, d = b.shape[q]
    hd = d // heads
    scores = (bs, heads, t, t)
    x = b.add(f"{p}.scores", "MatMul", [q, k], scores, flops=2.0 * bs * heads * t * t * hd)
    x = b.add(f"{p}.softmax", "Softmax", [x], scores, flops=6.0 * numel(scores))
    return b.add(f"{p}.context", "MatMul", [x, v], (bs, t, d), flops=2.0 * bs * heads * t * t * hd)


def _embeddings(b: GraphBuilder, batch: int, seq: int, vocab: int, pos: int, d: int, types: int):
    ids = numel((batch, seq)) * 8
    x = b.add(
        "embed.word", "Gather", [], (batch, seq, d), flops=0.0, params=vocab * d, extra_in_bytes=ids
    )
    y = b.add(
        "embed.position",
        "Gather",
        [],
        (batch, seq, d),
        flops=0.0,
        params=pos * d,
        extra_in_bytes=ids,
    )
    x = b.add("embed.add", "Add", [x, y], (batch, seq, d), flops=float(batch * seq * d))
    if types:
        z = b.add(
            "embed.type",
            "Gather",
            [],
            (batch, seq, d),
            flops=0.0,
            params=types * d,
            extra_in_bytes=ids,
        )
        x = b.add("embed.add2", "Add", [x, z], (batch, seq, d), flops=float(batch * seq * d))
    return x


def bert_base(batch: int = 1, seq: int = 128) -> ModelGraph:
    """BERT-base (12 layers, hidden 768, 12 heads, FFN 3072, vocabulary 30522) with its pooler."""
    b = GraphBuilder("bert-base")
    d, heads, ffn = 768, 12, 3072
    x = _layernorm(b, "embed.ln", _embeddings(b, batch, seq, 30522, 512, d, 2))
    for i in range(12):
        p = f"layer{i}"
        q, k, v = (_linear(b, f"{p}.attn.{w}", x, d) for w in "qkv")
        a = _linear(b, f"{p}.attn.out", _attention(b, f"{p}.attn", q, k, v, heads), d)
        a = b.add(f"{p}.attn.add", "Add", [a, x], b.shape[a], flops=float(numel(b.shape[a])))
        x = _layernorm(b, f"{p}.attn.ln", a)
        h = _linear(b, f"{p}.ffn.in", x, ffn)
        h = b.add(f"{p}.ffn.gelu", "Gelu", [h], b.shape[h], flops=8.0 * numel(b.shape[h]))
        h = _linear(b, f"{p}.ffn.out", h, d)
        h = b.add(f"{p}.ffn.add", "Add", [h, x], b.shape[h], flops=float(numel(b.shape[h])))
        x = _layernorm(b, f"{p}.ffn.ln", h)
    cls = b.add("pooler.cls", "Gather", [x], (batch, d), flops=0.0)
    pooled = _linear(b, "pooler.dense", cls, d)
    b.add("pooler.tanh", "Tanh", [pooled], (batch, d), flops=4.0 * batch * d)
    return b.build()


def gpt2_small(batch: int = 1, seq: int = 1024) -> ModelGraph:
    """GPT-2 small (12 layers, hidden 768, 12 heads, vocabulary 50257); LM head tied to wte."""
    b = GraphBuilder("gpt2-small")
    d, heads, vocab = 768, 12, 50257
    x = _embeddings(b, batch, seq, vocab, 1024, d, 0)
    for i in range(12):
        p = f"h{i}"
        y = _layernorm(b, f"{p}.ln_1", x)
        qkv = _linear(b, f"{p}.attn.c_attn", y, 3 * d)
        q, k, v = (
            b.add(f"{p}.attn.split_{w}", "Slice", [qkv], (batch, seq, d), flops=0.0) for w in "qkv"
        )
        a = _linear(b, f"{p}.attn.c_proj", _attention(b, f"{p}.attn", q, k, v, heads), d)
        x = b.add(f"{p}.attn.add", "Add", [a, x], b.shape[a], flops=float(numel(b.shape[a])))
        y = _layernorm(b, f"{p}.ln_2", x)
        h = _linear(b, f"{p}.mlp.c_fc", y, 4 * d)
        h = b.add(f"{p}.mlp.gelu", "Gelu", [h], b.shape[h], flops=8.0 * numel(b.shape[h]))
        h = _linear(b, f"{p}.mlp.c_proj", h, d)
        x = b.add(f"{p}.mlp.add", "Add", [h, x], b.shape[h], flops=float(numel(b.shape[h])))
    x = _layernorm(b, "ln_f", x)
    b.add("lm_head", "MatMul", [x], (batch, seq, vocab), flops=2.0 * batch * seq * d * vocab)
    return b.build()


def mlp3(batch: int = 32, sizes: tuple[int, ...] = (256, 512, 512, 10)) -> ModelGraph:
    """A three-layer perceptron: Linear-ReLU-Linear-ReLU-Linear (the shapes of ``torch_mlp3``)."""
    if len(sizes) != 4:
        raise PartitionError(f"model 'mlp3': expected 4 layer sizes, got {sizes!r}")
    b = GraphBuilder("mlp3")
    x = b.add(
        "fc1",
        "Gemm",
        [],
        (batch, sizes[1]),
        flops=2.0 * batch * sizes[0] * sizes[1],
        params=sizes[0] * sizes[1] + sizes[1],
        extra_in_bytes=batch * sizes[0] * F32,
    )
    x = b.add("relu1", "Relu", [x], (batch, sizes[1]), flops=float(batch * sizes[1]))
    x = _linear(b, "fc2", x, sizes[2])
    x = b.add("relu2", "Relu", [x], (batch, sizes[2]), flops=float(batch * sizes[2]))
    _linear(b, "fc3", x, sizes[3])
    return b.build()


def random_dag(n: int = 10_000, *, width: int = 8, seed: int = 0, batch: int = 1) -> ModelGraph:
    """A random layered DAG of ``n`` nodes: layers of up to ``width`` nodes, edges to the previous
    two layers, random matmul-like costs. Deterministic for a given seed."""
    if n < 1:
        raise PartitionError(f"model 'random-dag': needs at least one node, got n={n}")
    rng = random.Random(seed)
    b = GraphBuilder(f"random-dag-{n}")
    layers: list[list[str]] = []
    count = 0
    while count < n:
        size = min(rng.randint(1, width), n - count)
        layer = []
        for _ in range(size):
            name = f"n{count}"
            count += 1
            preds: set[str] = set()
            if layers:
                preds.add(rng.choice(layers[-1]))
                for src in layers[-2:]:
                    for u in src:
                        if rng.random() < 0.15:
                            preds.add(u)
            feat = rng.choice((64, 128, 256, 512))
            out = (batch, rng.choice((16, 32, 64)), feat)
            flops = 2.0 * numel(out) * rng.choice((64, 256, 1024))
            op = rng.choice(("MatMul", "MatMul", "Conv", "Add", "Relu"))
            params = feat * feat if op in ("MatMul", "Conv") else 0
            layer.append(b.add(name, op, sorted(preds), out, flops=flops, params=params))
        layers.append(layer)
    return b.build()


BUILTIN: dict[str, Callable[..., ModelGraph]] = {
    "resnet50": resnet50,
    "bert-base": bert_base,
    "gpt2-small": gpt2_small,
    "mlp3": mlp3,
    "random-dag": random_dag,
}


def builtin(name: str, *, batch: int | None = None) -> ModelGraph:
    """A built-in model by name (``resnet50``, ``bert-base``, ``gpt2-small``, ``mlp3``,
    ``random-dag``; ``random-dag-N`` for N nodes)."""
    kwargs = {} if batch is None else {"batch": batch}
    if name.startswith("random-dag-") and name[len("random-dag-") :].isdigit():
        return random_dag(int(name[len("random-dag-") :]), **kwargs)
    if name not in BUILTIN:
        known = ", ".join(sorted(BUILTIN))
        raise PartitionError(f"unknown model {name!r}: not a file and not a built-in ({known})")
    return BUILTIN[name](**kwargs)
