"""``polydl tune FILE:KERNEL --sizes ... | --model NAME``: tune kernels, store the records."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="auto-tune a kernel (or every conv layer of a model) for this machine",
        description="Measure schedule candidates of a kernel (the cost model's ranking first, "
        "then model-guided evolution), keep every trial in the tuning database and the "
        "fastest record, which pd.compile then uses for the same kernel, sizes and threads.",
    )
    p.add_argument("kernel", nargs="?", help="FILE.py:KERNEL, a DSL kernel in a Python file")
    p.add_argument("--sizes", default="", help="size bindings, e.g. M=1024,N=1024,K=1024")
    p.add_argument("--model", default=None, help="tune every distinct conv layer: resnet50")
    p.add_argument("--layers", default=None, help="with --model: these layers only (a,b,...)")
    p.add_argument("--batch", type=int, default=1, help="with --model: the batch size")
    p.add_argument(
        "--layout",
        default="nchwc",
        choices=("nchwc", "nchw"),
        help="with --model: nchwc (blocked ops.conv2d kernels) or nchw (the kernels "
        "pd.nn.conv2d runs on NCHW arrays)",
    )
    p.add_argument("--trials", type=int, default=64, help="measurements per kernel")
    p.add_argument("--budget", default=None, help="time per kernel: seconds, 90s, 10m, 1h")
    p.add_argument("--resume", action="store_true", help="continue from the stored trials")
    p.add_argument("--db", default=None, help="the database file (default: user cache dir)")
    p.add_argument("--ray", default=None, metavar="ADDRESS", help="run trials on Ray ('local')")
    p.add_argument("--threads", type=int, default=1, help="threads the kernel runs with")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--space", action="store_true", help="print the tuning space and stop")
    p.set_defaults(func=run)


def _kernels(args) -> list[tuple[str, object, dict[str, int]]]:
    from ..cli import _load_kernel, _parse_sizes
    from .models import model_kernels

    if args.model and args.kernel:
        raise SystemExit("polydl tune: give FILE:KERNEL or --model, not both")
    if args.model:
        layers = [x for x in (args.layers or "").split(",") if x] or None
        found = model_kernels(
            args.model, batch=args.batch, layers=layers, layout=args.layout, threads=args.threads
        )
        return [(n, k, {}) for n, k in found]
    if not args.kernel:
        raise SystemExit("polydl tune: give FILE:KERNEL (with --sizes) or --model NAME")
    kern = _load_kernel(args.kernel)
    return [(args.kernel.rpartition(":")[2], kern, _parse_sizes(args.sizes))]


def run(args: argparse.Namespace) -> int:
    from .builder import Workload
    from .database import default_path
    from .space import KernelSpace
    from .tuner import TuneInterrupted, parse_duration, tune

    kernels = _kernels(args)
    parse_duration(args.budget)  # a malformed budget fails before anything runs
    if args.space:
        for name, kern, sizes in kernels:
            space = KernelSpace(Workload.of(kern, sizes), threads=args.threads)
            print(f"{name}: {space.describe()}")
        return 0
    runner = None
    if args.ray:
        from .ray_runner import RayRunner

        runner = RayRunner(None if args.ray == "local" else args.ray)
    db = args.db or str(default_path())
    print(f"polydl tune: database {db}, {args.threads} thread(s)", flush=True)
    rows = []
    try:
        for name, kern, sizes in kernels:
            try:
                r = tune(
                    kern,
                    trials=args.trials,
                    time_budget=args.budget,
                    db=db,
                    threads=args.threads,
                    resume=args.resume,
                    runner=runner,
                    seed=args.seed,
                    **sizes,
                )
            except TuneInterrupted as e:
                print(f"{name}: {e.result.summary()}")
                print(
                    "polydl tune: interrupted; every finished trial is in the database, "
                    "run again with --resume to continue",
                    file=sys.stderr,
                )
                return 130
            print(f"{name}: {r.summary()}", flush=True)
            rows.append((name, r))
    finally:
        if runner is not None:
            runner.close()
    if len(rows) > 1:
        print(_table(rows))
    return 0


def _table(rows) -> str:
    lines = [f"{'layer':<12} {'trials':>6} {'ms/call':>9} {'GFLOPS':>8} {'vs untuned':>10}"]
    for name, r in rows:
        ms = f"{r.seconds * 1e3:.4g}" if r.seconds else "-"
        gf = f"{r.gflops:.1f}" if r.gflops else "-"
        sp = f"{r.speedup:.3f}x" if r.speedup else "-"
        lines.append(f"{name:<12} {len(r.trials):>6} {ms:>9} {gf:>8} {sp:>10}")
    return "\n".join(lines)
