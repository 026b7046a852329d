"""Index-set splitting and loop distribution of guarded contractions: one pure pass, Kernel -> Kernel.

A convolution written by hand guards its padding, so its reduction's domain is not a box and
``analysis/contraction.py`` cannot take it::

    for n, k, p, q:
        O[n, k, p, q] = 0.0                                                  S0 (init)
        for c, r, s:
            if 0 <= p + r - 1 < H and 0 <= q + s - 1 < W:
                O[n, k, p, q] += I[n, c, p + r - 1, q + s - 1] * Wt[k, c, r, s]   S1
        O[n, k, p, q] = max(O[n, k, p, q] + b[k], 0.0)                       S2 (epilogue)

The pass cuts the reduction's domain into *cells*, boxes on which no guard is left, each of
which is a contraction (asked of a trial kernel holding the cell alone:
``analysis/contraction.recognise``), and gives each cell a top-level nest of its own, so that
the BRGEMM lowering takes it:

- the output iterators (those indexing the target) are cut into segments: the interior, where
  no guard cuts the reduction's bounding box (found with isl: the outputs whose whole slice of
  the box lies in the domain, here ``1 <= p <= P - 2``), and each border value on either side
  (``p = 0``, ``p = P - 1``), where the guards clip the reduction to a smaller box
  (``p = 0``: ``1 <= r <= 2``);
- the microkernel's columns (the iterator the contraction would vectorise, here ``q``) are not
  cut, which would leave one-column calls: the reduction iterators coupled with them by the
  guards (``s``) are cut into single values instead, each giving a wide box
  (``s = 0``: ``1 <= q <= Q - 1``). Cells of different ``s`` add into the same outputs
  (a reduction may be reassociated).

Within the cells of one output segment the one covering all its outputs (``s = 1``) comes
first; when there are both an init and an epilogue it is halved along its longest other
reduction iterator, the halves going first and last. A cell takes the piece of the zero init
that writes its outputs when no earlier cell writes them (the microkernel's ``beta = 0``), and
the piece of the epilogue when no later one does (bias and ReLU at the final store; the
epilogue is the chain of elementwise updates of the same elements that follow the
reduction in its nest, as far as ``contraction.recognise`` folds it, e.g. ``O = O + b[k]``
then ``O = max(O, 0.0)``)::

    nest 1: for n, k, p in 1..P-2, q:          S0_c0; for c < C/2, r, s = 1: S1_c0
    nest 2: for n, k, p in 1..P-2, q in 1..:   for c, r, s = 0:              S1_c1
    nest 3: for n, k, p in 1..P-2, q in ..Q-2: for c, r, s = 2:              S1_c2
    nest 4: for n, k, p in 1..P-2, q:          for c >= C/2, r, s = 1:       S1_c3; S2_c3
    ...

What no cell takes stays with the original loops and guards: the rest of the init (and the
nest's statements before the reduction) in a nest before the cells, the rest of the reduction
and of the epilogue (and the statements after it) in a nest after them. Past ``MAX_CELLS``
cells (a wide filter) the border rows stay there too, then the border columns. A reduction whose
domain is a box already goes through the same steps when its nest does not fold as it is (a
1x1 convolution with padding: the init also covers outputs that nothing adds to). The new
schedules are checked against every dependence of the original kernel
(``analysis/deps.check_schedule``); a split that would break one is not made.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import replace

from ..analysis.contraction import Contraction, recognise, refresh
from ..analysis.deps import check_schedule
from ..errors import DependenceError
from ..ir import poly
from ..ir.nodes import Kernel, Num, Statement, int_vars
from .brgemm import foldable

MAX_CELLS = 16  # more (a wide filter, a small image): border rows stay on the plain path

Box = dict[str, tuple[int, int]]


def split_guards(
    kernel: Kernel, found: Sequence[Contraction]
) -> tuple[Kernel, tuple[Contraction, ...]]:
    """``kernel`` with every guarded contraction split into guard-free cells (module doc), and
    the contractions of the result; ``found``: those of ``kernel`` (``contraction.find_all``),
    recognised anew only where a split changed the kernel (``contraction.refresh``)."""
    found = tuple(found)
    for name in [s.name for s in kernel.statements]:
        red = next((s for s in kernel.statements if s.name == name), None)
        if red is not None and red.op == "+=" and red.micro is None:
            c = next((c for c in found if c.stmt == name), None)
            out = _split(kernel, red, c)
            if out is not None:
                kernel, found = out, refresh(kernel, found, out)
    return kernel, found


def _is_contraction(kernel: Kernel, red: Statement, dom: poly.Set) -> bool:
    """The probe: whether ``red`` on the cell ``dom`` alone, a trial kernel, is a contraction."""
    trial = replace(red, domain=poly.named_text(dom, red.name))
    return recognise(replace(kernel, statements=(trial,)), trial) is not None


def _split(kernel: Kernel, red: Statement, c: Contraction | None) -> Kernel | None:
    """``kernel`` with ``red`` split (``c``: the contraction it is, if any), or None."""
    positions = {s.name: poly.top_position(kernel, s) for s in kernel.statements}
    pos = positions[red.name]
    if pos is None or None in positions.values():
        return None
    dom = poly.domain(kernel, red)
    box = poly.extents(dom, red.iterators)
    if box is None:
        return None
    if poly.is_box(dom, box):  # a contraction already, unless its nest does not fold
        if c is None or foldable(kernel, c):
            return None
    nest = [s for s in kernel.statements if positions[s.name] == pos]
    i = nest.index(red)
    same = [s if s.target.tensor == red.target.tensor and s.micro is None else None for s in nest]
    init = same[i - 1] if i > 0 and same[i - 1] and same[i - 1].expr == Num(value=0.0) else None
    # the epilogue chain: the updates of the same elements that follow (bias, then ReLU, ...)
    chain = list(itertools.takewhile(lambda s: s is not None, same[i + 1 :]))
    # the contraction without the guards (a trial kernel): its columns, and how much of the
    # init and the epilogue chain folds (on the elements it writes)
    access = poly.access(kernel, red, red.target)
    whole_dom = poly.box_set(dom, box)
    covered = poly.image(access, whole_dom)
    whole = replace(red, domain=poly.named_text(whole_dom, red.name))
    probe_stmts = [
        s
        if s is whole
        else replace(s, domain=poly.named_text(poly.writers(kernel, s, covered), s.name))
        for s in (init, whole, *chain)
        if s is not None
    ]
    probe = recognise(replace(kernel, statements=tuple(probe_stmts)), whole)
    if probe is None:
        return None
    init = init if probe.init else None
    epi = {s.name for s in chain} & set(probe.epilogue)
    cells = _cells(kernel, red, dom, box, probe.n, halve=init is not None and bool(epi))
    if not cells:
        return None

    elems = [poly.image(access, c) for c in cells]
    rest = dom
    for c in cells:
        rest = poly.subtract(rest, c)
    # the init folds into the first cell writing an element, the epilogue into the last one
    first, last = [], []
    seen = poly.subtract(elems[0], elems[0])
    for e in elems:
        first.append(poly.is_disjoint(e, seen))
        seen = poly.unite(seen, e)
    seen = poly.image(access, rest)
    for e in reversed(elems):
        last.append(poly.is_disjoint(e, seen))
        seen = poly.unite(seen, e)
    last.reverse()

    # (statement, nest index, domain piece): nest 0 before the cells, 1 + i cell i, then after
    after = 1 + len(cells)
    pieces: list[tuple[Statement, int, poly.Set]] = []
    for j, s in enumerate(nest):
        if s is red:
            pieces += [(s, 1 + c, d) for c, d in enumerate(cells)] + [(s, after, rest)]
        elif s is init or s.name in epi:
            folds = first if s is init else last
            left = poly.domain(kernel, s)
            for c, e in enumerate(elems):
                if folds[c]:
                    part = poly.writers(kernel, s, e)
                    pieces.append((s, 1 + c, part))
                    left = poly.subtract(left, part)
            pieces.append((s, 0 if s is init else after, left))
        else:
            pieces.append((s, 0 if j < i else after, poly.domain(kernel, s)))
    return _distributed(kernel, positions, pos, after, pieces)


def _distributed(
    kernel: Kernel,
    positions: dict[str, int | None],
    pos: int,
    after: int,
    pieces: list[tuple[Statement, int, poly.Set]],
) -> Kernel | None:
    """The kernel with the nest at ``pos`` distributed into the nests of ``pieces`` (each at
    ``pos + index``), or None if that order breaks a dependence."""
    pieces = [p for p in pieces if not poly.is_empty(p[2])]
    count: dict[str, int] = {}
    for s, _, _ in pieces:
        count[s.name] = count.get(s.name, 0) + 1
    placed: dict[str, list[tuple[poly.Set, str]]] = {}
    new: list[tuple[int, int, Statement]] = []  # (nest, source order, statement)
    order = {s.name: j for j, s in enumerate(kernel.statements)}
    for s, at, dom in pieces:
        sched = poly.placed_schedule(s.schedule, s.name, pos + at)
        placed.setdefault(s.name, []).append((dom, sched))
        if count[s.name] == 1:
            name = s.name
        else:
            name = f"{s.name}_{'rest' if at in (0, after) else f'c{at - 1}'}"
        piece = replace(
            s,
            name=name,
            domain=poly.named_text(dom, name),
            schedule=poly.placed_schedule(s.schedule, name, pos + at),
        )
        new.append((pos + at, order[s.name], piece))
    checked = {name: poly.piecewise_schedule(p) for name, p in placed.items()}
    for s in kernel.statements:
        at = positions[s.name]
        assert at is not None
        if at == pos:
            continue
        if at > pos:
            s = replace(s, schedule=poly.placed_schedule(s.schedule, s.name, at + after))
        checked[s.name] = s.schedule
        new.append((at if at < pos else at + after, order[s.name], s))
    try:
        check_schedule(kernel, checked)
    except DependenceError:
        return None
    new.sort(key=lambda x: (x[0], x[1]))
    return replace(kernel, statements=tuple(s for _, _, s in new))


def _cells(
    kernel: Kernel, red: Statement, dom: poly.Set, box: Box, col: str, *, halve: bool
) -> list[poly.Set]:
    """The cells of ``red``'s domain that are contractions, in execution order (module doc)."""
    used = {v for e in red.target.index for v in int_vars(e)}
    outs = [v for v in red.iterators if v in used]
    inner = poly.full_slices(dom, box, outs)
    ibox = poly.extents(inner, outs)
    if ibox is None or not poly.is_box(inner, ibox):
        return []
    group = next(g for g in poly.coupled(dom) if col in g)
    by_value = [v for v in red.iterators if v in group and v not in used]
    if group & set(outs) != {col}:
        by_value = []

    def segments(v: str) -> list[tuple[str, int, int]]:
        (lo, hi), (ilo, ihi) = box[v], ibox[v]
        ends = [(v, x, x) for x in range(lo, ilo)] + [(v, x, x) for x in range(ihi + 1, hi + 1)]
        return [(v, ilo, ihi), *ends]

    cut_outs = [v for v in outs if not (by_value and v in group)]
    values = [[(v, x, x) for x in range(box[v][0], box[v][1] + 1)] for v in by_value]
    # the finest split that stays within MAX_CELLS: borders and values, values only (the
    # border rows stay on the plain path), the interior only
    for out_segs, val_segs in (
        ([segments(v) for v in cut_outs], values),
        ([[(v, *ibox[v])] for v in cut_outs], values),
        ([[(v, *ibox[v])] for v in outs], []),
    ):
        if math.prod(len(seg) for seg in out_segs + val_segs) <= MAX_CELLS:
            break
    cells: list[poly.Set] = []
    for out_combo in itertools.product(*out_segs):
        group_cells = []
        for val_combo in itertools.product(*val_segs):
            cut = {v: (lo, hi + 1) for v, lo, hi in (*out_combo, *val_combo)}
            cell = poly.restrict(dom, cut)
            if not poly.is_empty(cell) and _is_contraction(kernel, red, cell):
                group_cells.append(cell)
        if not group_cells:
            continue
        cells += _ordered(kernel, red, group_cells, outs, set(by_value), halve=halve)
    return cells


def _ordered(
    kernel: Kernel,
    red: Statement,
    cells: list[poly.Set],
    outs: list[str],
    by_value: set[str],
    *,
    halve: bool,
) -> list[poly.Set]:
    """The cells of one output segment: the one covering all its outputs first (halved into a
    first and a last cell when both an init and an epilogue are to fold)."""
    covers = [poly.project_onto(c, outs) for c in cells]
    union = covers[0]
    for c in covers[1:]:
        union = poly.unite(union, c)
    full = next((j for j, c in enumerate(covers) if poly.is_empty(poly.subtract(union, c))), None)
    if full is None:
        return cells
    others = [c for j, c in enumerate(cells) if j != full]
    if not halve or not others:
        return [cells[full], *others]
    ext = poly.extents(cells[full], red.iterators) or {}
    split = [v for v in red.iterators if v not in outs and v not in by_value and v in ext]
    split = [v for v in split if ext[v][1] > ext[v][0]]
    if not split:
        return [cells[full], *others]
    v = max(split, key=lambda u: ext[u][1] - ext[u][0])
    lo, hi = ext[v]
    mid = lo + (hi - lo + 1) // 2
    a = poly.restrict(cells[full], {v: (lo, mid)})
    b = poly.restrict(cells[full], {v: (mid, hi + 1)})
    if not (_is_contraction(kernel, red, a) and _is_contraction(kernel, red, b)):
        return [cells[full], *others]
    return [a, *others, b]
