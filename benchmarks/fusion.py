"""Fusion: memory-bound operator chains as one fused polydl kernel (pd.graph) against the same
chain one kernel per operator (``fuse=False``), torch eager (oneDNN) and torch.compile (Inductor).

    python benchmarks/fusion.py [--threads 1 2] [--batch 1 8] [--no-inductor] [--chains res2 ...]
                                [--conv-only] [--prefetch-ab] [--narrow-ab] [--nt-ab]
                                [--blocked-ab]

Chains:

* ``resN``: the last 1x1 conv of a ResNet-50 bottleneck with its batch norm, the residual add
  and ReLU (``relu(bn(conv1x1(x)) + identity)``) at res2-res5 shapes (56x56 64->256,
  28x28 128->512, 14x14 256->1024, 7x7 512->2048), batch 1 and 8. polydl folds the batch norm
  into the weights at build time (torch eager runs it as an op, as a model in eval mode does;
  Inductor folds what it can on its own).
* ``bert128``, ``bert512``: ``gelu(x @ W1 + b1)`` of a BERT-base feed-forward layer (768 ->
  3072) at sequence lengths 128 and 512 (batch 1).
* conv -> conv (``res2-1x1-3x3``, ``res2-3x3-1x1`` .. ``res5-3x3-1x1``): the middle of a
  ResNet-50 bottleneck, ``relu(conv3x3(relu(conv1x1(x) + b)))`` (56x56 64 -> 64 -> 64 .. 7x7
  512 -> 512 -> 512) and ``conv1x1(relu(conv3x3(x) + b))`` (56x56 64 -> 64 -> 256 .. 7x7 512 ->
  512 -> 2048), batch 1 (block by block of rows: ``transform/fuse_rows.py``) and 8 (image by
  image), in a table of their own: the cost model's verdict
  (``transform/fuse_contractions.py``), the graph as compiled (``auto``: fused where that
  verdict says so), the same one kernel with conv -> conv fusion off (``off``) and forced on
  (``forced``, ``fuse="always"``), torch eager; ``forced/off``: what fusion gives on this host.
  The 3x3 -> 1x1 pairs again as ``compile_model``'s kernel on the blocked layout (the pair one
  group, ``graph/groups.conv_pair``), auto / off / forced, on a bordered blocked input.

``--prefetch-ab``: only the residual chains, the fused kernel with the epilogue's prefetch of
its residual (each tile's lines asked for as the tile starts) against the same kernel without,
and the unfused chain. ``--narrow-ab``: the same with a tile's last column of at most 8 lanes
(7x7: 49 = 3 x 16 + 1) accumulated in ymm vectors against zmm ones
(``kernels/generator.NARROW_TAIL``). ``--nt-ab``: C stored non-temporally where the size rule
says (``transform/transpose.past_caches``), never, and wherever the microkernel can.
``--blocked-ab``: the chains chosen (default: the BERT ones) with a linear's weights laid out
``[N/nb][K][nb]`` at build time (``graph/lower.BLOCKED_WEIGHTS``) against ``[K, N]`` (their
column blocks copied at call time where the compiler finds that pays), and the unfused chain.

Threads pinned on both sides (``torch.set_num_threads``, polydl ``threads=``); contenders timed
in interleaved rounds (``common.interleaved``); ratios are medians of per-round ratios
(``> 1``: the fused kernel faster). ``err``: the largest difference from torch eager relative
to its largest output.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import geomean, interleaved  # noqa: E402

import polydl as pd  # noqa: E402

RES = {
    "res2": (64, 256, 56),
    "res3": (128, 512, 28),
    "res4": (256, 1024, 14),
    "res5": (512, 2048, 7),
}
BERT = {"bert128": 128, "bert512": 512}


def residual_chain(batch: int, cin: int, cout: int, hw: int, rng):
    x = rng.standard_normal((batch, cin, hw, hw), dtype=np.float32)
    res = rng.standard_normal((batch, cout, hw, hw), dtype=np.float32)
    w = (rng.standard_normal((cout, cin, 1, 1)) / np.sqrt(cin)).astype(np.float32)
    mean, var = (
        rng.standard_normal(cout, dtype=np.float32),
        rng.random(cout, dtype=np.float32) + 0.5,
    )
    gamma, beta = (
        rng.standard_normal(cout, dtype=np.float32),
        rng.standard_normal(cout, dtype=np.float32),
    )
    g = pd.graph.Graph("conv1x1_bn_add_relu")
    gx, gr = g.input("x", x.shape), g.input("res", res.shape)
    y = g.batch_norm(g.conv2d(gx, w), mean, var, gamma, beta)
    g.output(g.relu(g.add(y, gr)))

    def torch_fn(tx, tr, tw, tm, tv, tg, tb):
        import torch
        import torch.nn.functional as F

        y = F.batch_norm(F.conv2d(tx, tw), tm, tv, tg, tb, training=False, eps=1e-5)
        return torch.relu(y + tr)

    flops = 2.0 * batch * cin * cout * hw * hw
    return g, (x, res), (w, mean, var, gamma, beta), torch_fn, flops


def gelu_chain(seq: int, rng):
    d, f = 768, 3072
    x = rng.standard_normal((seq, d), dtype=np.float32)
    w = (rng.standard_normal((d, f)) / np.sqrt(d)).astype(np.float32)
    b = rng.standard_normal(f, dtype=np.float32)
    g = pd.graph.Graph("linear_gelu")
    gx = g.input("x", x.shape)
    g.output(g.gelu(g.linear(gx, w, b)))

    def torch_fn(tx, tw, tb):
        import torch.nn.functional as F

        return F.gelu(tx @ tw + tb)

    return g, (x,), (w, b), torch_fn, 2.0 * seq * d * f


CONVCONV = {
    "res2-1x1-3x3": (56, 64, 64, 64, "1x1-3x3"),
    "res2-3x3-1x1": (56, 64, 64, 256, "3x3-1x1"),
    "res3-1x1-3x3": (28, 128, 128, 128, "1x1-3x3"),
    "res3-3x3-1x1": (28, 128, 128, 512, "3x3-1x1"),
    "res4-1x1-3x3": (14, 256, 256, 256, "1x1-3x3"),
    "res4-3x3-1x1": (14, 256, 256, 1024, "3x3-1x1"),
    "res5-1x1-3x3": (7, 512, 512, 512, "1x1-3x3"),
    "res5-3x3-1x1": (7, 512, 512, 2048, "3x3-1x1"),
}


def convconv_chain(batch: int, hw: int, c: int, mid: int, out: int, kind: str, rng):
    """``kind`` "1x1-3x3": relu(conv3x3(relu(conv1x1(x) + b1))); "3x3-1x1":
    conv1x1(relu(conv3x3(x) + b1)) (padding 1 on the 3x3)."""
    first, second = ((1, 0), (3, 1)) if kind == "1x1-3x3" else ((3, 1), (1, 0))
    x = rng.standard_normal((batch, c, hw, hw), dtype=np.float32)
    w1 = (rng.standard_normal((mid, c, first[0], first[0])) / np.sqrt(c * first[0] ** 2)).astype(
        np.float32
    )
    b1 = rng.standard_normal(mid, dtype=np.float32)
    w2 = (
        rng.standard_normal((out, mid, second[0], second[0])) / np.sqrt(mid * second[0] ** 2)
    ).astype(np.float32)
    g = pd.graph.Graph(f"conv{kind}")
    gx = g.input("x", x.shape)
    y = g.conv2d(g.relu(g.conv2d(gx, w1, b1, padding=first[1])), w2, padding=second[1])
    g.output(g.relu(y) if kind == "1x1-3x3" else y)

    def torch_fn(tx, tw1, tb1, tw2):
        import torch
        import torch.nn.functional as F

        y = F.conv2d(torch.relu(F.conv2d(tx, tw1, tb1, padding=first[1])), tw2, padding=second[1])
        return torch.relu(y) if kind == "1x1-3x3" else y

    flops = 2.0 * batch * hw * hw * (c * mid * first[0] ** 2 + mid * out * second[0] ** 2)
    return g, (x,), (w1, b1, w2), torch_fn, flops


def one_kernel(g, threads: int, fuse):
    """The graph as one kernel compiled with ``fuse`` (True, False, "always"): the epilogues
    folded either way, conv -> conv fusion as ``fuse`` says; ``f(x) -> y``."""
    from polydl.graph.lower import fold_batch_norms, lower
    from polydl.pipeline import compile_kernel

    nodes, same = fold_batch_norms(list(g.nodes), g.outputs)
    kernel, params = lower(g.name, nodes, g.inputs, g.outputs, g.filename, g.line, same)
    ck = compile_kernel(kernel, {}, threads=threads, fuse=fuse)
    arrays = [p for _, p in params]
    shape = g.outputs[0].shape

    def f(x):
        y = pd.empty(shape)
        ck(x, *arrays, y)
        return y

    return ck, f


def blocked_pair(g, threads: int, fuse, rng):
    """The kernel ``compile_model`` runs for the chain's 3x3 -> 1x1 pair on the blocked layout
    (``graph/groups.conv_pair``: the 3x3 conv, its ReLU and the 1x1 conv one group), compiled
    with ``fuse``; ``(kernel, f, x)``: ``f(x)`` runs it on ``x``, a blocked input with the 3x3's
    zero border (the pack kernel's output)."""
    from dataclasses import replace

    from polydl.graph.groups import contraction_groups
    from polydl.graph.layout import blocked_layout
    from polydl.graph.lower import fold_batch_norms, lower
    from polydl.ops import default_block
    from polydl.pipeline import compile_kernel

    nodes, same = fold_batch_norms(list(g.nodes), g.outputs)
    root = lambda v: same.get(v.id, v.id)  # noqa: E731
    outputs = [replace(v, id=root(v)) for v in g.outputs]
    nodes, outputs, _ = blocked_layout(nodes, outputs, root, 2 * default_block())
    groups = contraction_groups(nodes, outputs, lambda v: v.id, pairs=True)
    nds, ins, outs = next(grp for grp in groups if grp[0][0].op == "conv2d")
    kernel, params = lower(f"{g.name}_pair", nds, ins, outs, g.filename, g.line, {})
    ck = compile_kernel(kernel, {}, threads=threads, fuse=fuse)
    arrays = [p for _, p in params]
    x = pd.zeros(ins[0].shape)
    x[:, :, 1:-1, 1:-1, :] = rng.standard_normal(x[:, :, 1:-1, 1:-1, :].shape)

    def f(xa):
        y = pd.empty(outs[0].shape)
        ck(xa, *arrays, y)
        return y

    return ck, f, x


def convconv_blocked(args, rng) -> None:
    """The 3x3 -> 1x1 pairs as compile_model's blocked kernel: fused as the cost model says,
    conv -> conv fusion off, forced."""
    cases = [
        (f"{name} N={b}", b, spec)
        for name, spec in CONVCONV.items()
        for b in args.batch
        if spec[4] == "3x3-1x1" and (not args.chains or name in args.chains)
    ]
    for threads in args.threads:
        print(
            f"\nconv 3x3 -> 1x1 on the blocked layout (compile_model's pair kernel), threads={threads}"
        )
        print(
            f"{'chain':<20} {'verdict':<17} {'auto GF':>7} {'off':>7} {'forced':>7}"
            f" {'auto/off':>8} {'forced/off':>10} {'err':>8}"
        )
        for label, batch, (hw, c, mid, out, kind) in cases:
            g, _, _, _, flops = convconv_chain(batch, hw, c, mid, out, kind, rng)
            auto, f_auto, x = blocked_pair(g, threads, True, rng)
            _, f_off, _ = blocked_pair(g, threads, False, rng)
            _, f_forced, _ = blocked_pair(g, threads, "always", rng)
            verdict = next(
                (
                    ln.split(": ")[1].split(" at")[0] + ("/rows" if ": rows:" in ln else "")
                    for ln in auto.show("fusion").splitlines()
                    if "depth 1" in ln
                ),
                "none",
            )
            want = f_off(x)
            err = max(
                float(np.abs(f(x) - want).max() / max(np.abs(want).max(), 1e-30))
                for f in (f_auto, f_forced)
            )
            contenders = {
                "auto": lambda f=f_auto: f(x),
                "off": lambda f=f_off: f(x),
                "forced": lambda f=f_forced: f(x),
            }
            times = interleaved(contenders, rounds=args.rounds, repeat=args.repeat)
            gf = {k: flops / float(np.median(v)) / 1e9 for k, v in times.items()}
            ao = float(np.median(times["off"] / times["auto"]))
            fo = float(np.median(times["off"] / times["forced"]))
            print(
                f"{label:<20} {verdict:<17} {gf['auto']:7.1f} {gf['off']:7.1f} "
                f"{gf['forced']:7.1f} {ao:8.2f} {fo:10.2f} {err:8.1e}",
                flush=True,
            )


def convconv(args, rng) -> None:
    import torch

    cases = [
        (f"{name} N={b}", name, b, spec)
        for name, spec in CONVCONV.items()
        for b in args.batch
        if not args.chains or name in args.chains
    ]
    if not cases:
        return
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\nconv -> conv, threads={threads}  (GFLOPS of both convs; ratios = time / time)")
        print(
            f"{'chain':<20} {'verdict':<17} {'auto GF':>7} {'off':>7} {'forced':>7} {'eager':>7}"
            f" {'forced/off':>10} {'auto/eager':>10} {'err':>8}"
        )
        for label, _, batch, (hw, c, mid, out, kind) in cases:
            g, inputs, params, torch_fn, flops = convconv_chain(batch, hw, c, mid, out, kind, rng)
            auto, f_auto = one_kernel(g, threads, True)
            _, f_off = one_kernel(g, threads, False)
            _, f_forced = one_kernel(g, threads, "always")
            verdict = next(
                (
                    ln.split(": ")[1].split(" at")[0] + ("/rows" if ": rows:" in ln else "")
                    for ln in auto.show("fusion").splitlines()
                    if "depth 1" in ln
                ),
                "none",
            )
            t_in = [torch.from_numpy(a) for a in inputs]
            t_par = [torch.from_numpy(p) for p in params]
            with torch.no_grad():
                want = torch_fn(*t_in, *t_par).numpy()
            err = max(
                float(np.abs(f(*inputs) - want).max() / max(np.abs(want).max(), 1e-30))
                for f in (f_auto, f_off, f_forced)
            )
            contenders = {
                "auto": lambda f=f_auto: f(*inputs),
                "off": lambda f=f_off: f(*inputs),
                "forced": lambda f=f_forced: f(*inputs),
                "eager": lambda: torch_fn(*t_in, *t_par),
            }
            with torch.no_grad():
                times = interleaved(contenders, rounds=args.rounds, repeat=args.repeat)
            gf = {k: flops / float(np.median(v)) / 1e9 for k, v in times.items()}
            fo = float(np.median(times["off"] / times["forced"]))
            ae = float(np.median(times["eager"] / times["auto"]))
            print(
                f"{label:<20} {verdict:<17} {gf['auto']:7.1f} {gf['off']:7.1f} "
                f"{gf['forced']:7.1f} {gf['eager']:7.1f} {fo:10.2f} {ae:10.2f} {err:8.1e}",
                flush=True,
            )


def switch_ab(args, rng, module, flag: str, variants: dict, names=tuple(RES)) -> None:
    """The fused kernel of the chains ``names`` (``args.chains`` among them) with
    ``module.flag`` at each of ``variants`` (label: value; the first the default), all compiled
    in this process and timed interleaved, and the unfused chain (compiled with the default). ``kernels/generator``'s ``PREFETCH_EPILOGUE``: the epilogue's operand
    prefetch; ``PREFETCH_SPREAD``: that prefetch spread over the k loop; ``NARROW_TAIL``: a tile's last column of at most half a vector's lanes in a
    half-width vector; ``transform/transpose.NT_SHARE``: the share of the largest cache past
    which C is stored non-temporally."""
    from polydl.codegen import llvm

    default = getattr(module, flag)
    first = next(iter(variants))
    others = [k for k in variants if k != first]
    for threads in args.threads:
        print(f"\n{flag}: {variants}, threads={threads}  (ratios = other time / {first} time)")
        print(
            f"{'chain':<14} "
            + " ".join(f"{k + ' ms':>9}" for k in [*variants, "unfused"])
            + " "
            + " ".join(f"{k + '/' + first:>12}" for k in [*others, "unfused"])
        )
        for name, batch in [(n, b) for n in names for b in (args.batch if n in RES else [1])]:
            if args.chains and name not in args.chains:
                continue
            if name in RES:
                g, inputs, _, _, _ = residual_chain(batch, *RES[name], rng)
            else:
                g, inputs, _, _, _ = gelu_chain(BERT[name], rng)
            unfused = g.compile(threads=threads, fuse=False)
            want = unfused(*inputs)
            contenders = {"unfused": lambda f=unfused: f(*inputs)}
            for label, value in variants.items():
                setattr(module, flag, value)
                llvm._micro_ir.cache_clear()  # the microkernel text, rendered again
                f = g.compile(threads=threads)
                np.testing.assert_allclose(f(*inputs), want, rtol=1e-4, atol=1e-4)
                contenders[label] = lambda f=f: f(*inputs)
            setattr(module, flag, default)
            llvm._micro_ir.cache_clear()
            t = interleaved(contenders, rounds=args.rounds, repeat=args.repeat)
            ms = {k: 1e3 * float(np.median(v)) for k, v in t.items()}
            line = f"{name + (f' N={batch}' if name in RES else ''):<14} "
            line += " ".join(f"{ms[k]:9.3f}" for k in [*variants, "unfused"])
            line += " " + " ".join(
                f"{float(np.median(t[k] / t[first])):12.2f}" for k in [*others, "unfused"]
            )
            print(line, flush=True)


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--chains", nargs="*", default=None)
    ap.add_argument("--no-inductor", action="store_true", help="leave torch.compile out")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--conv-only", action="store_true", help="only the conv -> conv table")
    ap.add_argument(
        "--prefetch-ab",
        action="store_true",
        help="only the residual chains, the epilogue's operand prefetch on and off",
    )
    ap.add_argument(
        "--spread-ab",
        action="store_true",
        help="only the residual chains, the epilogue's operand prefetch spread over the k loop "
        "or all at the tile start",
    )
    ap.add_argument(
        "--narrow-ab",
        action="store_true",
        help="only the residual chains, the half-width last column of a tile on and off",
    )
    ap.add_argument(
        "--nt-ab",
        action="store_true",
        help="only the residual chains, C stored non-temporally as the size rule says, never, always",
    )
    ap.add_argument(
        "--blocked-ab",
        action="store_true",
        help="only the chains chosen (default the BERT ones), linear weights blocked or [K, N]",
    )
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    if args.blocked_ab:
        from polydl.graph import lower

        names = [*RES, *BERT] if args.chains else list(BERT)
        switch_ab(args, rng, lower, "BLOCKED_WEIGHTS", {"blocked": True, "kxn": False}, names)
        return
    if args.prefetch_ab or args.narrow_ab or args.spread_ab:
        from polydl.kernels import generator

        flag = (
            "PREFETCH_EPILOGUE"
            if args.prefetch_ab
            else "PREFETCH_SPREAD"
            if args.spread_ab
            else "NARROW_TAIL"
        )
        switch_ab(args, rng, generator, flag, {"on": True, "off": False})
        return
    if args.nt_ab:
        from polydl.transform import transpose

        share = transpose.NT_SHARE
        variants = {f"auto{share:g}": share, "never": float("inf"), "always": 0.0}
        switch_ab(args, rng, transpose, "NT_SHARE", variants)
        return
    convconv(args, rng)
    convconv_blocked(args, rng)
    if args.conv_only:
        return
    cases = []
    for name, (cin, cout, hw) in RES.items():
        for batch in args.batch:
            cases.append(
                (
                    f"{name} N={batch}",
                    name,
                    lambda b=batch, c=(cin, cout, hw): residual_chain(b, *c, rng),
                )
            )
    for name, seq in BERT.items():
        cases.append((f"{name}", name, lambda s=seq: gelu_chain(s, rng)))
    cases = [c for c in cases if not args.chains or c[1] in args.chains]
    inductor = not args.no_inductor
    for threads in args.threads:
        torch.set_num_threads(threads)
        head = f"{'chain':<14} {'fused GF':>8} {'unfused':>8} {'eager':>8}"
        head += f" {'inductor':>8}" if inductor else ""
        head += (
            f" {'f/unf':>6} {'f/eager':>7}"
            + (f" {'f/ind':>6}" if inductor else "")
            + f" {'compile s':>9} {'err':>8}"
        )
        print(f"\nthreads={threads}  (GFLOPS of the contraction; ratios = other time / fused time)")
        print(head)
        cols: dict[str, list[float]] = {"unfused": [], "eager": [], "inductor": []}
        for label, _, make in cases:
            g, inputs, params, torch_fn, flops = make()
            t0 = time.perf_counter()
            fused = g.compile(threads=threads)
            fused(*inputs)
            compile_s = time.perf_counter() - t0
            unfused = g.compile(threads=threads, fuse=False)
            t_in = [torch.from_numpy(a) for a in inputs]
            t_par = [torch.from_numpy(p) for p in params]
            with torch.no_grad():
                want = torch_fn(*t_in, *t_par).numpy()
            got = fused(*inputs)
            err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
            contenders = {
                "fused": lambda: fused(*inputs),
                "unfused": lambda: unfused(*inputs),
                "eager": lambda: torch_fn(*t_in, *t_par),
            }
            if inductor:
                torch._dynamo.reset()  # a new thread count would count as a recompilation
                compiled = torch.compile(torch_fn, dynamic=False)
                with torch.no_grad():
                    compiled(*t_in, *t_par)
                contenders["inductor"] = lambda: compiled(*t_in, *t_par)
            with torch.no_grad():
                times = interleaved(contenders, rounds=args.rounds, repeat=args.repeat)
            ratio = {
                k: float(np.median(times[k] / times["fused"])) for k in contenders if k != "fused"
            }
            for k, v in ratio.items():
                cols[k].append(v)
            gf = {k: flops / float(np.median(v)) / 1e9 for k, v in times.items()}
            line = f"{label:<14} {gf['fused']:8.1f} {gf['unfused']:8.1f} {gf['eager']:8.1f}"
            line += f" {gf['inductor']:8.1f}" if inductor else ""
            line += f" {ratio['unfused']:6.2f} {ratio['eager']:7.2f}"
            line += f" {ratio['inductor']:6.2f}" if inductor else ""
            print(line + f" {compile_s:9.2f} {err:8.1e}", flush=True)
        summary = ", ".join(
            f"vs {k} {geomean(v):.3f} (min {min(v):.2f})" for k, v in cols.items() if v
        )
        print(f"geomean, threads={threads}: fused {summary}")


if __name__ == "__main__":
    main()
