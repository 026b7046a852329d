"""A picture of the model graph coloured by device (matplotlib, Agg backend)."""

from __future__ import annotations

from collections import defaultdict

import networkx as nx

from .placement import Plan


def layered_positions(g: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """x: longest-path depth from the inputs, y: rank within that depth (centred)."""
    depth: dict[str, int] = {}
    index = {n: i for i, n in enumerate(g.nodes)}
    for v in nx.lexicographical_topological_sort(g, key=index.__getitem__):
        depth[v] = 1 + max((depth[u] for u in g.predecessors(v)), default=-1)
    by_depth: dict[int, list[str]] = defaultdict(list)
    for v, d in depth.items():
        by_depth[d].append(v)
    pos = {}
    for d, vs in by_depth.items():
        for r, v in enumerate(vs):
            pos[v] = (float(d), r - (len(vs) - 1) / 2)
    return pos


def draw_graph(plan: Plan, path: str, graph: nx.DiGraph | None = None) -> None:
    """Draw the plan's graph, nodes coloured by device, cut edges in red (.svg or .png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    if graph is None:
        graph = nx.DiGraph()
        graph.add_nodes_from(plan.nodes)
        graph.add_edges_from((e["src"], e["dst"]) for e in plan.edges)
    pos = layered_positions(graph)
    n = graph.number_of_nodes()
    xs = [pos[v][0] for v in plan.nodes]
    ys = [pos[v][1] for v in plan.nodes]
    width = min(40.0, 6 + 0.06 * (max(xs) + 1))
    height = min(20.0, 3 + 0.25 * (max(ys) - min(ys) + 1))
    fig, ax = plt.subplots(figsize=(width, height))
    cmap = plt.get_cmap("tab10" if plan.devices <= 10 else "tab20")
    plain = [(pos[e["src"]], pos[e["dst"]]) for e in plan.edges if not e["cut"]]
    cut = [(pos[e["src"]], pos[e["dst"]]) for e in plan.edges if e["cut"]]
    lw = 0.6 if n < 2000 else 0.15
    ax.add_collection(LineCollection(plain, colors="0.6", linewidths=lw, zorder=1))
    ax.add_collection(LineCollection(cut, colors="red", linewidths=2 * lw, zorder=2))
    colors = [cmap(a["device"] % cmap.N) for a in plan.nodes.values()]
    ax.scatter(
        xs,
        ys,
        c=colors,
        s=30 if n < 2000 else 4,
        edgecolors="k" if n < 2000 else "none",
        linewidths=0.3,
        zorder=3,
    )
    for d in range(plan.devices):
        name = plan.device_names[d] if d < len(plan.device_names) else f"dev{d}"
        ax.scatter([], [], color=cmap(d % cmap.N), label=f"{d}: {name}")
    ax.legend(loc="upper right", fontsize=7, ncol=max(1, plan.devices // 8))
    ax.set_title(
        f"{plan.model}: {n} nodes on {plan.devices} devices ({plan.algorithm}); cut edges in red, bottleneck {plan.bottleneck_s * 1e3:.3f} ms"
    )
    ax.autoscale()
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
