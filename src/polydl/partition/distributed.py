"""Run a plan with ``torch.distributed`` (gloo, one process per device, on this machine).

Every rank walks the exported graph in the same topological order and runs only its own
nodes; a tensor needed on another rank is sent right after it is computed and received at the
same step, so the sends and receives of all ranks are matched in one global order (no
deadlock, any DAG partition, not only pipelines). The output is gathered back on rank 0.

``backend="torch"`` (the default) runs every node with its torch op; ``backend="polydl"``
cuts the graph into stages (:mod:`polydl.partition.stages`: runs of consecutive nodes on one
device), each rank compiles its stages with :func:`polydl.compile_model` once, before the walk,
and runs a stage at its first node; the messages are the same.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from ..errors import PartitionError
from .placement import Plan


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(
    rank: int,
    world: int,
    port: int,
    module: Any,
    inputs: tuple,
    assignment: dict,
    backend: str,
    queue: Any,
) -> None:
    import torch
    import torch.distributed as dist
    from torch.fx.node import map_arg

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from .torch_import import export

        ep = export(module, inputs)  # exported programs do not pickle; names are deterministic
        sig = ep.graph_signature
        weights = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
        consts = getattr(sig, "inputs_to_lifted_tensor_constants", {})
        state = {**ep.state_dict, **getattr(ep, "constants", {})}
        first: dict[str, Any] = {}  # polydl: a stage of this rank, by its first node
        if backend == "polydl":
            from .stages import compile_stage, split_stages

            for stage in split_stages(ep, assignment):
                if stage.device == rank:
                    first[stage.nodes[0]] = compile_stage(ep, stage)
        env: dict[str, Any] = {}
        user = iter(inputs)
        output = None
        with torch.no_grad():
            for node in ep.graph.nodes:
                if node.op == "placeholder":
                    key = weights.get(node.name) or consts.get(node.name)
                    env[node.name] = state[key] if key is not None else next(user)
                elif node.op == "call_function":
                    owner = assignment[node.name]
                    val = node.meta["val"]
                    if owner == rank and backend == "polydl":
                        if node.name in first:  # a stage's values, at its first node
                            env.update(first[node.name].run(env))
                    elif owner == rank:
                        args = map_arg(node.args, lambda a: env[a.name])
                        kwargs = map_arg(node.kwargs, lambda a: env[a.name])
                        env[node.name] = node.target(*args, **kwargs)
                    needers = sorted(
                        {assignment.get(u.name, 0) for u in node.users if u.op == "call_function"}
                        - {owner}
                    )
                    if owner == rank:
                        for r in needers:
                            dist.send(env[node.name].contiguous(), dst=r)
                    elif rank in needers:
                        buf = torch.empty(val.shape, dtype=val.dtype)
                        dist.recv(buf, src=owner)
                        env[node.name] = buf
                elif node.op == "output":
                    res = (
                        node.args[0][0] if isinstance(node.args[0], list | tuple) else node.args[0]
                    )
                    owner = assignment.get(res.name, 0)
                    if owner != 0:
                        if rank == owner:
                            dist.send(env[res.name].contiguous(), dst=0)
                        elif rank == 0:
                            buf = torch.empty(res.meta["val"].shape, dtype=res.meta["val"].dtype)
                            dist.recv(buf, src=owner)
                            env[res.name] = buf
                    if rank == 0:
                        output = env[res.name]
        queue.put((rank, [c.summary() for c in first.values()]))
        if rank == 0:
            queue.put(("output", output.numpy()))
    finally:
        dist.destroy_process_group()


def run_plan(
    module: Any,
    example_inputs: tuple,
    plan: Plan,
    *,
    timeout: float = 120.0,
    backend: str = "torch",
    report: bool = False,
) -> Any:
    """Run ``module`` on ``example_inputs`` split as ``plan`` says (the plan of
    ``partition(module, example_inputs=...)``), one gloo process per device; returns the output
    as a NumPy array. ``backend="polydl"``: each process compiles its stages with polydl
    (one thread each) and runs them as polydl kernels instead of torch ops. ``report=True``:
    returns ``(output, stages)``, ``stages[rank]`` a list with, per stage the rank ran
    compiled (none with ``backend="torch"``), a dict of its ``device``, ``nodes``,
    ``kernels`` (polydl kernels run), ``fallbacks`` (nodes run by NumPy) and ``report``
    (:meth:`polydl.CompiledModel.report`)."""
    import queue as queue_mod
    import time

    try:
        import torch.multiprocessing as mp
    except ImportError:
        raise PartitionError("distributed run: torch is not installed") from None
    from .torch_import import export

    if backend not in ("torch", "polydl"):
        raise PartitionError(
            f"distributed run of {plan.model!r}: backend must be 'torch' or 'polydl', "
            f"got {backend!r}"
        )
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    ep = export(module, example_inputs)
    assignment = plan.assignment()
    missing = [
        n.name for n in ep.graph.nodes if n.op == "call_function" and n.name not in assignment
    ]
    if missing:
        raise PartitionError(
            f"distributed run: node {missing[0]!r} of the module is not in plan {plan.model!r}"
        )
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(
            target=_worker,
            args=(r, plan.devices, port, module, example_inputs, assignment, backend, queue),
            daemon=True,
        )
        for r in range(plan.devices)
    ]
    for p in procs:
        p.start()
    # read the results while the workers run (a result larger than a pipe would otherwise
    # keep its worker from exiting), until all arrived, a worker died or the time is up
    results: dict[Any, Any] = {}
    deadline = time.monotonic() + timeout
    while len(results) < plan.devices + 1 and time.monotonic() < deadline:
        try:
            key, value = queue.get(timeout=0.2)
            results[key] = value
        except queue_mod.Empty:
            if any(p.exitcode not in (None, 0) for p in procs):
                break
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()) if len(results) > plan.devices else 0.1)
    bad = [r for r, p in enumerate(procs) if p.exitcode != 0]
    for p in procs:
        if p.is_alive():
            p.kill()
    if bad or "output" not in results:
        rank = bad[0] if bad else 0
        raise PartitionError(
            f"distributed run of {plan.model!r} ({backend}): rank {rank} failed or timed out"
        )
    if report:
        return results["output"], [results.get(r, []) for r in range(plan.devices)]
    return results["output"]


def torch_mlp3(sizes: tuple[int, ...] = (256, 512, 512, 10), seed: int = 0) -> Any:
    """The torch twin of the built-in ``mlp3`` graph."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(sizes[0], sizes[1]),
        torch.nn.ReLU(),
        torch.nn.Linear(sizes[1], sizes[2]),
        torch.nn.ReLU(),
        torch.nn.Linear(sizes[2], sizes[3]),
    ).eval()
