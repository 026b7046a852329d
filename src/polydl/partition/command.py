"""``polydl partition MODEL --devices K ...``: partition a model and print/write the plan."""

from __future__ import annotations

import argparse
import sys
import time

from ..errors import PartitionError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "partition",
        help="partition a model graph over devices (pipeline or DAG)",
        description="Partition an ONNX file or a built-in model (resnet50, bert-base, gpt2-small, "
        "mlp3, random-dag-N) over devices; print a table per device and write the plan.",
    )
    p.add_argument("model", help="an .onnx file or a built-in model name")
    p.add_argument(
        "--devices",
        default="2",
        help="number of identical devices, or a JSON device description file",
    )
    p.add_argument("--mode", choices=("inference", "training"), default="inference")
    p.add_argument(
        "--algorithm",
        choices=("pipeline", "dag", "auto", "uniform", "parameters", "metis"),
        default="pipeline",
    )
    p.add_argument("--memory", default=None, help="memory per device, e.g. 16GB")
    p.add_argument("--bandwidth", default=None, help="link bandwidth per device, e.g. 25GB/s")
    p.add_argument(
        "--latency", type=float, default=None, help="link latency in seconds (default 5e-6)"
    )
    p.add_argument("--peak-flops", default=None, help="peak compute per device, e.g. 2TFLOPS")
    p.add_argument(
        "--micro-batches",
        type=int,
        default=1,
        metavar="M",
        help="micro-batches (timeline and training memory)",
    )
    p.add_argument(
        "--schedule",
        choices=("1f1b", "gpipe"),
        default="1f1b",
        help="schedule assumed for training memory",
    )
    p.add_argument("--batch", type=int, default=None, help="micro-batch size of a built-in model")
    p.add_argument(
        "--json", dest="json_path", default=None, metavar="PLAN.json", help="write the plan JSON"
    )
    p.add_argument(
        "--svg",
        default=None,
        metavar="FILE",
        help="draw the graph coloured by device (.svg or .png)",
    )
    p.add_argument(
        "--timeline",
        default=None,
        metavar="FILE",
        help="draw the GPipe and 1F1B timelines (.svg or .png)",
    )
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(func=run)


class _Progress:
    """A one-line progress indicator on a terminal for large graphs; silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.last = -1

    def __call__(self, done: int, total: int) -> None:
        pct = 100 * done // max(total, 1)
        if self.enabled and pct != self.last:
            self.last = pct
            end = "\n" if done >= total else ""
            print(
                f"\rpartitioning: {pct:3d}% ({done}/{total} nodes)",
                end=end,
                file=sys.stderr,
                flush=True,
            )


def run(args: argparse.Namespace) -> int:
    from .partitioner import load_model, make_devices, solve
    from .problem import build_problem
    from .roofline import CostModel

    if args.micro_batches < 1:
        raise PartitionError(f"--micro-batches: expected a positive int, got {args.micro_batches}")
    devices = int(args.devices) if args.devices.strip().isdigit() else args.devices
    if devices == 0:
        raise PartitionError("--devices: expected at least 1 device")
    t0 = time.perf_counter()
    graph = load_model(args.model, batch=args.batch)
    devs = make_devices(
        devices,
        memory=args.memory,
        bandwidth=args.bandwidth,
        latency=args.latency,
        peak_flops=args.peak_flops,
    )
    problem = build_problem(
        graph,
        devs,
        CostModel(mode=args.mode),
        micro_batches=args.micro_batches,
        schedule=args.schedule,
    )
    tty = sys.stderr.isatty() and not args.quiet
    progress = _Progress(tty and problem.n >= 2000)
    plan = solve(problem, args.algorithm, progress=progress)
    elapsed = time.perf_counter() - t0
    if args.json_path:
        plan.to_json(args.json_path)
    if args.svg:
        from .draw import draw_graph

        draw_graph(plan, args.svg)
    lines = []
    if args.micro_batches > 1 or args.timeline:
        from .schedule import simulate

        for sched in ("gpipe", "1f1b"):
            sim = simulate(plan, args.micro_batches, sched)
            lines.append(
                f"{sched}: {args.micro_batches} micro-batches, makespan {sim.makespan * 1e3:.3f} ms, bubble {sim.bubble:.1%}"
            )
    if args.timeline:
        from .schedule import draw_timeline

        draw_timeline(plan, args.micro_batches, args.timeline)
    if not args.quiet:
        print(
            f"{graph.name}: {graph.num_nodes} nodes, {len(devs)} devices, partitioned in {elapsed:.2f} s"
        )
        print(plan.table())
        for line in lines:
            print(line)
    return 0
