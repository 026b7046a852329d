"""Run a plan with ``torch.distributed`` (gloo, one process per device, on this machine).

Every rank walks the exported graph in the same topological order and runs only its own
nodes; a tensor needed on another rank is sent right after it is computed and received at the
same step, so the sends and receives of all ranks are matched in one global order (no
deadlock, any DAG partition, not only pipelines). The output is gathered back on rank 0.
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
    rank: int, world: int, port: int, module: Any, inputs: tuple, assignment: dict, queue: Any
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
                    if owner == rank:
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
        if rank == 0:
            queue.put(output.numpy())
    finally:
        dist.destroy_process_group()


def run_plan(module: Any, example_inputs: tuple, plan: Plan, *, timeout: float = 120.0) -> Any:
    """Run ``module`` on ``example_inputs`` split as ``plan`` says (the plan of
    ``partition(module, example_inputs=...)``), one gloo process per device; returns the output
    as a NumPy array."""
    try:
        import torch.multiprocessing as mp
    except ImportError:
        raise PartitionError("distributed run: torch is not installed") from None
    from .torch_import import export

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
    queue = ctx.SimpleQueue()
    port = _free_port()
    procs = [
        ctx.Process(
            target=_worker,
            args=(r, plan.devices, port, module, example_inputs, assignment, queue),
            daemon=True,
        )
        for r in range(plan.devices)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    bad = [r for r, p in enumerate(procs) if p.exitcode != 0]
    for p in procs:
        if p.is_alive():
            p.kill()
    if bad:
        raise PartitionError(
            f"distributed run of {plan.model!r}: rank {bad[0]} failed or timed out"
        )
    return queue.get()


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
