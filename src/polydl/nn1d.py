"""NumPy-level 1-D convolutions (API.md, section 4; re-exported by :mod:`polydl.nn`):
``conv1d`` and its two gradients, with torch's semantics (NCW input, ``[K, C/groups, S]``
filters, ``padding`` an int, a pair or ``"same"``/``"valid"``, ``dilation``, ``groups``).

Every step is a kernel of :mod:`polydl.ops1d` compiled once per shape (``nn.compiled``):

- forward, route ``"ncw"``: for stride 1, the output positions whose taps all lie in the
  input computed straight from it (:func:`~polydl.ops1d.conv1d_spans`, no guard, no copy) and
  the few at its ends from a small zero-bordered copy of their windows
  (:func:`~polydl.ops1d.pack_spans`, :class:`Spans`), a large output of a short reduction
  stored non-temporally (:func:`_streams`); when that interior is small (a short
  input, a wide filter), the input copied into zero-bordered rows
  (:func:`~polydl.ops1d.spread`; no copy at all without padding), then ``ops1d.conv1d`` on them
  (no guard is left); for a stride, the rows split into their phases
  (:func:`~polydl.ops1d.pack_phases`) and :func:`~polydl.ops1d.conv1d_phases`. Both have the
  positions on the vector columns, output channels as rows, the filter taps as the reduction
  of one call, the input channels as its batch. Route
  ``"nwc"``: the input transposed to channels-innermost with its zero border
  (:func:`~polydl.ops1d.to_nwc`), ``ops1d.conv1d(layout="nwc")``, the output transposed back.
  :func:`conv1d_route` picks the route the cost model predicts cheaper: the ranked plan's cost
  of the convolution kernel plus every copy (:func:`copy_cost`: cycles per element, its bytes
  as the compiler costs its gathers). Nothing is timed.
- data gradient: a stride-1 convolution of the output gradient (spread ``stride`` positions
  apart, :func:`~polydl.ops1d.spread`, zero-padded by ``dilation*(S-1) - left``) with the
  filter's taps reversed and its channels swapped (:func:`~polydl.ops1d.flip_taps`), by the
  same two routes. For a stride ``> 1`` the spread rows hold ``stride - 1`` zeros between the
  gradient's positions, and their products are computed: ``stride`` times the work.
- filter gradient: a BRGEMM over positions (:func:`~polydl.ops1d.conv1d_wgrad`) on the input
  transposed to NWC with its zero border; its ``[G, Kg, S, Cg]`` result unpacked to
  ``[K, Cg, S]``.

Intermediates (padded rows, phases, transposes) live in scratch buffers of a plan kept per shape,
route and thread count for each calling thread (:class:`_Plan`): the elements no copy writes
(the zero border) stay zero.
"""

from __future__ import annotations

import functools
import operator
import threading
from dataclasses import dataclass, replace

import numpy as np

from . import memory, ops1d
from .nn import _f32, compiled
from .transform.gather import buffer_cost

ROUTES = ("ncw", "nwc")


@dataclass(frozen=True, kw_only=True)
class Problem:
    """A 1-D convolution as the routes run it: source ``x[N, C, W]`` placed at positions
    ``step*i + left`` of zero-padded rows of ``L`` positions, convolved with ``w[K, Cg, S]``
    (stride, dilation, groups)."""

    N: int
    C: int
    K: int
    W: int
    S: int
    L: int
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    step: int = 1
    left: int = 0
    bias: bool = False
    activation: str | None = None

    @property
    def Q(self) -> int:
        return (self.L - self.dilation * (self.S - 1) - 1) // self.stride + 1

    @property
    def Cg(self) -> int:
        return self.C // self.groups

    @property
    def copy_free(self) -> bool:
        """The source is the padded rows itself (stride 1, no padding, no spread)."""
        return (self.step, self.left, self.L, self.stride) == (1, 0, self.W, 1)


def _int(v, name: str, what: str) -> int:
    try:
        v = operator.index(v)
    except TypeError:
        raise TypeError(f"{what}: {name} must be an int, got {v!r}") from None
    if v < 1:
        raise ValueError(f"{what}: {name} must be a positive int, got {v}")
    return v


# a filter-sized copy of fewer elements runs on one thread: a parallel region costs more than
# it saves there, and much more when another process holds a core of a shared machine (its
# threads wait for each other)
FEW_ELEMENTS = 1 << 16


# the same for the multiply-adds of a convolution's ends (``conv1d_spans`` on their windows):
# tens of microseconds on one core
FEW_PRODUCTS = 1 << 22


def _few(elements: int, threads: int | None, few: int = FEW_ELEMENTS) -> int | None:
    """The thread count of a packing kernel copying ``elements`` elements (of a kernel of
    ``elements`` multiply-adds when ``few`` is :data:`FEW_PRODUCTS`)."""
    return 1 if elements < few else threads


class _Plan:
    """What one call of a route runs, resolved once per problem, route and thread count (and
    per calling thread): the compiled kernels and the scratch buffers, kept between calls so
    that the zero elements no copy writes stay zero and the kernels find the same arrays
    (their argument checks are then skipped)."""

    def __init__(self, p: Problem, route: str, threads: int | None) -> None:
        self.p, self.route = p, route
        N, C, K, S, T, Cg = p.N, p.C, p.K, p.S, p.stride, p.Cg
        S1, J = ops1d.phases(S, T, p.dilation, p.Q)
        self.pack = self.wpack = self.unpack = None
        self.edges = None
        spans = _spans(p) if route == "ncw" else None
        if spans is not None:
            # the interior straight from the input, the ends from a small zero-bordered copy
            self.xp = memory.zeros((N, C, spans.rows), np.float32)
            self.pack = compiled(
                ops1d.pack_spans,
                N,
                C,
                p.W,
                spans.rows,
                spans=spans.count,
                width=spans.width,
                start=spans.out_start - p.left,
                step=spans.out_step,
                threads=_few(N * C * spans.rows, threads),
            )
            self.edges = _edge_kernel(p, spans, threads)
        elif route == "ncw":
            if p.copy_free:
                self.xp = None
            elif T == 1:
                self.xp = memory.zeros((N, C, p.L), np.float32)
                self.pack = compiled(
                    ops1d.spread, N, C, p.W, p.L, step=p.step, left=p.left, threads=threads
                )
            else:
                self.xp = memory.zeros((N, C, T, J), np.float32)
                self.pack = compiled(
                    ops1d.pack_phases,
                    N,
                    C,
                    p.W,
                    p.Q,
                    S,
                    stride=T,
                    dilation=p.dilation,
                    left=p.left,
                    threads=threads,
                )
            if T > 1:
                self.wp = memory.zeros((K, Cg, T, S1), np.float32)
                self.wpack = compiled(
                    ops1d.pack_taps, K, Cg, S, stride=T, threads=_few(K * Cg * S, threads)
                )
        else:
            self.xp, self.pack = _nwc_input(p, threads, step=p.step)
            self.wp = memory.empty((S, Cg, K), np.float32)
            self.wpack = compiled(ops1d.taps_nwc, K, Cg, S, threads=_few(K * Cg * S, threads))
            self.o = memory.empty((N, p.Q, K), np.float32)
            self.unpack = compiled(ops1d.from_nwc, N, K, p.Q, threads=threads)
        self.conv = _kernel(p, route, threads)
        if spans is not None and _streams(p):
            self.conv = _nontemporal(p, threads)

    def __call__(self, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        p = self.p
        extra = () if bias is None else (bias,)
        if self.edges is not None:
            y = memory.empty((p.N, p.K, p.Q), np.float32)
            self.pack(self.xp, x)
            self.conv(y, x, w, *extra)
            self.edges(y, self.xp, w, *extra)
            return y
        if self.pack is not None:
            self.pack(self.xp, x)
            x = self.xp
        if self.wpack is not None:
            self.wpack(self.wp, w)
            w = self.wp
        y = memory.empty((p.N, p.K, p.Q), np.float32)
        if self.unpack is None:
            self.conv(y, x, w, *extra)
        else:
            self.conv(self.o, x, w, *extra)
            self.unpack(y, self.o)
        return y


def _nwc_input(p: Problem, threads: int | None, step: int = 1):
    """The NWC copy of an input with its zero border (``[N, L, C]``, zeroed once: the copy
    writes only the interior) and the compiled kernel that makes it (``ops1d.to_nwc``)."""
    buf = memory.zeros((p.N, p.L, p.C), np.float32)
    return buf, compiled(ops1d.to_nwc, p.N, p.C, p.W, p.L, step=step, left=p.left, threads=threads)


_plans = threading.local()
MAX_PLANS = 16  # per thread
MAX_PLAN_BYTES = 1 << 30  # of scratch buffers, per thread (each plan's are about its input)


def _scratch_bytes(plan) -> int:
    found = plan if isinstance(plan, tuple) else tuple(vars(plan).values())
    return sum(a.nbytes for a in found if isinstance(a, np.ndarray))


def _plan(key: tuple, build):
    """The plan of ``key`` for this thread (built by ``build()`` the first time); past
    :data:`MAX_PLANS` plans or :data:`MAX_PLAN_BYTES` of their buffers, the others are
    dropped."""
    plans = getattr(_plans, "plans", None)
    if plans is None:
        plans = _plans.plans = {}
    plan = plans.get(key)
    if plan is None:
        plan = build()
        held = sum(_scratch_bytes(p) for p in plans.values())
        if len(plans) >= MAX_PLANS or held + _scratch_bytes(plan) > MAX_PLAN_BYTES:
            plans.clear()
        plans[key] = plan
    return plan


@dataclass(frozen=True, kw_only=True)
class Spans:
    """How a stride-1 NCW convolution runs without copying its input (:func:`_spans`): output
    positions ``[lo, hi)`` (``lo`` a multiple of :data:`ALIGN_POSITIONS`, every tap inside the
    input) straight from it, and ``count`` runs of ``span`` positions at the ends (from
    ``out_start``, ``out_step`` apart) from windows of ``width`` positions of the input with its
    zero border, side by side in ``rows`` positions (``ops1d.pack_spans``)."""

    lo: int
    hi: int
    count: int
    span: int
    out_start: int
    out_step: int
    width: int

    @property
    def rows(self) -> int:
        return self.count * self.width


# the first interior output position is a multiple of this (64 bytes: whole vectors stored
# aligned when the output's rows are), and the interior takes at least this share of the output
ALIGN_POSITIONS = 16
MIN_INTERIOR = 0.75


def _spans(p: Problem) -> Spans | None:
    """The interior and end runs of ``p`` (:class:`Spans`), or None: a stride, a spread
    (``step``), no padding at all (nothing to copy anyway), or an interior less than
    :data:`MIN_INTERIOR` of the output (a small input: its copy is cheap)."""
    if p.stride != 1 or p.step != 1 or p.copy_free:
        return None
    reach = p.dilation * (p.S - 1)
    right = p.L - p.left - p.W
    lo = -(-p.left // ALIGN_POSITIONS) * ALIGN_POSITIONS
    hi = p.Q - right
    if hi - lo < MIN_INTERIOR * p.Q:
        return None
    span = max(lo, right)
    starts = [0] * (lo > 0) + [p.Q - span] * (right > 0)
    return Spans(
        lo=lo,
        hi=hi,
        count=len(starts),
        span=span,
        out_start=starts[0],
        out_step=starts[-1] - starts[0],
        width=span + reach,
    )


# the interior's output is stored non-temporally (vmovntps: its lines bypass the caches) when
# it is larger than the caches keep (transform/transpose.past_caches, as the copy kernels)
# and each output sums at most SHORT_REDUCTION products (3 taps x 64 channels: the stores are a
# large part of the traffic; a long reduction hides them)
SHORT_REDUCTION = 256
NONTEMPORAL = True


def _streams(p: Problem) -> bool:
    """Whether the interior kernel of ``p`` stores its output non-temporally (larger than the
    caches keep: the rule of the copy kernels and of the compiler's default plans,
    ``transform/transpose.past_caches``)."""
    from .target import host
    from .transform.transpose import past_caches

    big = past_caches(4 * p.N * p.K * p.Q, host())
    return NONTEMPORAL and big and p.Cg * p.S <= SHORT_REDUCTION


@functools.lru_cache(maxsize=64)
def _nontemporal(p: Problem, threads: int | None):
    """The interior kernel of ``p`` compiled again on its own schedule (nothing ranked anew),
    with non-temporal stores of C wherever a call writes C whole (zeroes and finishes it); the
    kernel itself when the replay refuses that."""
    from .api import compile as compile_
    from .errors import PolyDLError

    kernel = _kernel(p, "ncw", threads)
    rec = kernel.schedule
    if all(c.nontemporal for c in rec.contractions):  # the default plan stores so already
        return kernel
    entries = tuple(replace(c, nontemporal=True) for c in rec.contractions)
    factory, args, kwargs = _interior(p)
    try:
        return compile_(
            factory(*args, **kwargs), threads=threads, schedule=replace(rec, contractions=entries)
        )
    except PolyDLError:
        return kernel


def _span_opts(p: Problem) -> dict:
    """The options every convolution kernel of ``p`` takes."""
    return dict(dilation=p.dilation, bias=p.bias, activation=p.activation, groups=p.groups)


def _interior(p: Problem):
    """(factory, args, keyword args) of the interior kernel of ``p`` (:class:`Spans`)."""
    sp = _spans(p)
    kwargs = dict(span=sp.hi - sp.lo, out_start=sp.lo, src_start=sp.lo - p.left, **_span_opts(p))
    return ops1d.conv1d_spans, (p.N, p.C, p.K, p.Q, p.W, p.S), kwargs


def _edge_kernel(p: Problem, sp: Spans, threads: int | None):
    """The end runs of :class:`Spans` on their windows (``ops1d.conv1d_spans``; on one thread
    when they are few products, :data:`FEW_PRODUCTS`)."""
    threads = _few(p.N * p.K * p.Cg * p.S * sp.count * sp.span, threads, FEW_PRODUCTS)
    return compiled(
        ops1d.conv1d_spans,
        p.N,
        p.C,
        p.K,
        p.Q,
        sp.rows,
        p.S,
        spans=sp.count,
        span=sp.span,
        out_start=sp.out_start,
        out_step=sp.out_step,
        src_step=sp.width,
        threads=threads,
        **_span_opts(p),
    )


def _kernel(p: Problem, route: str, threads: int | None):
    """The compiled convolution kernel of a route: ``ops1d.conv1d`` on the padded rows (NCW,
    stride 1: no guard is left, the domain is a box) or on NWC, ``ops1d.conv1d_phases`` for a
    stride on NCW; for a stride-1 NCW problem with :class:`Spans`, ``ops1d.conv1d_spans`` on
    its interior."""
    opts = dict(_span_opts(p), threads=threads)
    if route == "nwc":
        return compiled(
            ops1d.conv1d, p.N, p.C, p.K, p.L, p.S, stride=p.stride, layout="nwc", **opts
        )
    if _spans(p) is not None:  # the interior on the input itself
        factory, args, kwargs = _interior(p)
        return compiled(factory, *args, threads=threads, **kwargs)
    if p.stride == 1:
        return compiled(ops1d.conv1d, p.N, p.C, p.K, p.L, p.S, **opts)
    return compiled(ops1d.conv1d_phases, p.N, p.C, p.K, p.Q, p.S, stride=p.stride, **opts)


def _predicted(kernel) -> float | None:
    """The cost model's prediction for a compiled kernel's contractions (None: unranked)."""
    preds = [c.predicted for c in kernel.schedule.contractions]
    if not preds or any(x is None for x in preds):
        return None
    return sum(x.cost for x in preds)


# cycles per element of the packing kernels, measured on the Zen 4 host (15-64 channels, 1k-10k
# positions): a contiguous copy (spread, pack_phases) about 0.6, a transpose 1.3-2 (to_nwc: whole
# output rows) to 2.4-2.9 (from_nwc: strided loads) as vectorised loops. The tiled transposes
# (transform/transpose.py) now measure 0.31-0.47 cycles per element in L2/L3 (one thread, 15-128
# channels, 1k-10k positions; spread 0.35-0.45), but the constant stays: lowered to that, ten
# shapes of the benchmark's --sample 40 move to NWC, and those measured 3-9% slower there at one
# thread (the NWC kernel's predicted cost, not its copies, is what is low)
COPY_CYCLES = 0.5
TRANSPOSE_CYCLES = 2.0


def copy_cost(elements: int, target, threads: int, *, transpose: bool = False) -> float:
    """Cost-model units of a packing kernel that copies ``elements`` float32 elements: its
    instances as plain statements (:data:`COPY_CYCLES` or :data:`TRANSPOSE_CYCLES` each, in L1
    bytes per cycle like the pipeline's plain statements, spread over ``threads`` cores) plus
    its bytes, costed like a gather's copy (``transform/gather.buffer_cost``)."""
    cycles = TRANSPOSE_CYCLES if transpose else COPY_CYCLES
    plain = elements * cycles * target.l1_bytes_per_cycle / threads
    return plain + buffer_cost(4 * elements, target)


def route_costs(p: Problem, threads: int | None = None) -> dict[str, float | None]:
    """Predicted cost of each route (cost-model units): the convolution kernel's ranked plan
    plus the copies the route makes (:func:`copy_cost`). None: a kernel with no ranked plan."""
    from .pipeline import default_threads
    from .target import host

    tgt, cores = host(), default_threads() if threads is None else threads
    S1, J = ops1d.phases(p.S, p.stride, p.dilation, p.Q)
    ncw = _predicted(_kernel(p, "ncw", threads))
    sp = _spans(p)
    if ncw is not None and sp is not None:
        edges = _predicted(_edge_kernel(p, sp, threads))
        ncw = None if edges is None else ncw + edges + copy_cost(p.N * p.C * sp.rows, tgt, cores)
    elif ncw is not None and not p.copy_free:
        ncw += copy_cost(p.N * p.C * p.stride * J, tgt, cores)
    if ncw is not None and p.stride > 1:
        ncw += copy_cost(p.K * p.Cg * p.stride * S1, tgt, cores)
    nwc = _predicted(_kernel(p, "nwc", threads))
    if nwc is not None:
        for elements in (p.N * p.L * p.C, p.S * p.Cg * p.K, p.N * p.Q * p.K):
            nwc += copy_cost(elements, tgt, cores, transpose=True)
    return {"ncw": ncw, "nwc": nwc}


@functools.lru_cache(maxsize=256)
def _route(p: Problem, threads: int | None) -> str:
    costs = route_costs(p, threads)
    if costs["nwc"] is not None and (costs["ncw"] is None or costs["nwc"] < costs["ncw"]):
        return "nwc"
    return "ncw"


def _run(p: Problem, x, w, bias, threads, route) -> np.ndarray:
    route = _route(p, threads) if route is None else route
    if route not in ROUTES:
        raise ValueError(f"conv1d: route must be one of {ROUTES} or None, got {route!r}")
    return _plan((p, route, threads), lambda: _Plan(p, route, threads))(x, w, bias)


def _problem(x_shape, w_shape, stride, padding, dilation, groups, what: str) -> Problem:
    st = _int(stride, "stride", what)
    d = _int(dilation, "dilation", what)
    G = _int(groups, "groups", what)
    (N, C, W), (K, _, S) = x_shape, w_shape
    pl, pr = ops1d.padding1d(padding, S, d, st)
    ops1d.conv1d_width(W, S, st, (pl, pr), d)  # a ValueError for an empty output
    return Problem(N=N, C=C, K=K, W=W, S=S, L=W + pl + pr, stride=st, dilation=d, groups=G, left=pl)


def conv1d_route(
    x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1, threads: int | None = None
) -> str:
    """The route :func:`conv1d` runs for these shapes, ``"ncw"`` or ``"nwc"``: the one whose
    predicted cost (:func:`route_costs`) is lower."""
    return _route(_problem(x_shape, w_shape, stride, padding, dilation, groups, "conv1d"), threads)


def _cached(builder, *key):
    """``builder(*key)`` through its cache (the checks and the problem of a shape are computed
    once); unhashable arguments (a padding list) go to the builder itself."""
    try:
        hash(key)
    except TypeError:
        return builder.__wrapped__(*key)
    return builder(*key)


@functools.lru_cache(maxsize=1024)
def _forward(x_shape, w_shape, b_shape, stride, padding, dilation, groups, activation) -> Problem:
    what = "conv1d"
    G = _int(groups, "groups", what)
    K, Cg, _ = w_shape
    C = x_shape[1]
    if Cg * G != C:
        raise ValueError(
            f"{what}: x has {C} channels (shape {x_shape}) but w (shape {w_shape}) with "
            f"groups={G} expects {Cg * G}"
        )
    if K % G:
        raise ValueError(
            f"{what}: groups={G} does not divide the {K} filters of w (shape {w_shape})"
        )
    if b_shape is not None and b_shape != (K,):
        raise ValueError(f"{what}: bias must have shape ({K},), got {b_shape}")
    ops1d._relu(activation, what)
    p = _problem(x_shape, w_shape, stride, padding, dilation, G, what)
    return Problem(**{**p.__dict__, "bias": b_shape is not None, "activation": activation})


def conv1d(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    activation: str | None = None,
    *,
    threads: int | None = None,
    route: str | None = None,
) -> np.ndarray:
    """Like ``torch.nn.functional.conv1d`` (``x[N, C, W]``, ``w[K, C/groups, S]``, ``bias[K]``),
    then ``activation`` (None or ``"relu"``); ``route`` as :func:`conv1d_route` (None: its
    choice)."""
    x, w = _f32(x, "x", 3), _f32(w, "w", 3)
    bias = None if bias is None else _f32(bias, "bias", 1)
    b_shape = None if bias is None else bias.shape
    key = (x.shape, w.shape, b_shape, stride, padding, dilation, groups, activation)
    return _run(_cached(_forward, *key), x, w, bias, threads, route)


@functools.lru_cache(maxsize=1024)
def _data(dy_shape, w_shape, width, stride, padding, dilation, groups) -> Problem:
    """The stride-1 convolution that gives the data gradient (module docstring)."""
    what = "conv1d_backward_data"
    G = _int(groups, "groups", what)
    W = _int(width, "width", what)
    K, Cg, S = w_shape
    N, K2, Q = dy_shape
    if K2 != K:
        raise ValueError(
            f"{what}: dy has {K2} channels (shape {dy_shape}) but w has {K} filters (shape {w_shape})"
        )
    if K % G:
        raise ValueError(
            f"{what}: groups={G} does not divide the {K} filters of w (shape {w_shape})"
        )
    fwd = _problem((N, Cg * G, W), w_shape, stride, padding, dilation, G, what)
    if fwd.Q != Q:
        raise ValueError(
            f"{what}: dy (shape {dy_shape}) has {Q} positions, but a width-{W} input gives "
            f"{fwd.Q} with filter width {S}, stride {fwd.stride}, padding {padding!r}, "
            f"dilation {fwd.dilation}"
        )
    d = fwd.dilation
    return Problem(
        N=N,
        C=K,
        K=Cg * G,
        W=Q,
        S=S,
        L=W + d * (S - 1),
        dilation=d,
        groups=G,
        step=fwd.stride,
        left=d * (S - 1) - fwd.left,
    )


def conv1d_backward_data(
    dy: np.ndarray,
    w: np.ndarray,
    width: int,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    *,
    threads: int | None = None,
    route: str | None = None,
) -> np.ndarray:
    """The gradient of ``conv1d(x, w, stride=, padding=, dilation=, groups=)`` with respect to
    ``x[N, C, width]``, given the output gradient ``dy[N, K, Q]`` (torch's
    ``torch.nn.grad.conv1d_input``); ``route`` as for :func:`conv1d`."""
    dy, w = _f32(dy, "dy", 3), _f32(w, "w", 3)
    p = _cached(_data, dy.shape, w.shape, width, stride, padding, dilation, groups)
    K, Cg, S = w.shape
    G = p.groups
    flip, wf = _plan(
        ("flip", w.shape, G, threads),
        lambda: (
            compiled(ops1d.flip_taps, K, Cg, S, groups=G, threads=_few(K * Cg * S, threads)),
            memory.empty((Cg * G, K // G, S), np.float32),
        ),
    )
    flip(wf, w)
    return _run(p, dy, wf, None, threads, route)


@functools.lru_cache(maxsize=1024)
def _weight(x_shape, dy_shape, kernel_size, stride, padding, dilation, groups) -> Problem:
    what = "conv1d_backward_weight"
    G = _int(groups, "groups", what)
    S = _int(kernel_size, "kernel_size", what)
    (N, C, _), (N2, K, Q) = x_shape, dy_shape
    if N2 != N:
        raise ValueError(f"{what}: dy (shape {dy_shape}) has batch {N2}, x (shape {x_shape}) {N}")
    if C % G or K % G:
        raise ValueError(
            f"{what}: groups={G} must divide the channels of x (shape {x_shape}) and of dy "
            f"(shape {dy_shape})"
        )
    p = _problem(x_shape, (K, C // G, S), stride, padding, dilation, G, what)
    if p.Q != Q:
        raise ValueError(
            f"{what}: dy (shape {dy_shape}) has {Q} positions, but x (shape {x_shape}) gives "
            f"{p.Q} with filter width {S}, stride {p.stride}, padding {padding!r}, dilation "
            f"{p.dilation}"
        )
    return p


def conv1d_backward_weight(
    x: np.ndarray,
    dy: np.ndarray,
    kernel_size: int,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    *,
    threads: int | None = None,
) -> np.ndarray:
    """The gradient of ``conv1d(x, w, stride=, padding=, dilation=, groups=)`` with respect to
    ``w[K, C/groups, kernel_size]``, given the output gradient ``dy[N, K, Q]`` (torch's
    ``torch.nn.grad.conv1d_weight``)."""
    x, dy = _f32(x, "x", 3), _f32(dy, "dy", 3)
    p = _cached(_weight, x.shape, dy.shape, kernel_size, stride, padding, dilation, groups)
    return _plan(("weight", p, threads), lambda: _WeightPlan(p, threads))(x, dy)


class _WeightPlan:
    """The kernels and buffers of one filter gradient (see :class:`_Plan`): the input to NWC
    with its zero border, the BRGEMM over positions, the unpack to ``[K, Cg, S]``."""

    def __init__(self, p: Problem, threads: int | None) -> None:
        N, C, K, S, G, Cg = p.N, p.C, p.K, p.S, p.groups, p.Cg
        self.shape = (K, Cg, S)
        self.xt, self.pack = _nwc_input(p, threads)
        self.d = memory.empty((G, K // G, S, Cg), np.float32)
        self.wgrad = compiled(
            ops1d.conv1d_wgrad,
            N,
            C,
            K,
            p.L,
            p.Q,
            S,
            stride=p.stride,
            dilation=p.dilation,
            groups=G,
            threads=threads,
        )
        self.unpack = compiled(
            ops1d.unpack_wgrad, K, Cg, S, groups=G, threads=_few(K * Cg * S, threads)
        )

    def __call__(self, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
        self.pack(self.xt, x)
        self.wgrad(self.d, dy, self.xt)
        dw = memory.empty(self.shape, np.float32)
        self.unpack(dw, self.d)
        return dw
