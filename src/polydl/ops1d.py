"""1-D convolutions written in the DSL (API.md, section 3): ``pd.ops.conv1d`` and the kernels
``pd.nn.conv1d`` and its gradients run (re-exported by :mod:`polydl.ops`).

Kernel factories like those of :mod:`polydl.ops`: each defines a nested ``@pd.kernel`` for its
shapes (closure ints) and options (static ``if``), a missing bias an absent argument.

Layouts (``G`` groups; ``Cg = C/G`` input and ``Kg = K/G`` output channels per group; channel
``c`` of group ``g`` is ``Cg*g + c``, as in torch):

* ``"ncw"`` (torch's): ``O[N, K, Q]``, ``I[N, C, W]``, ``Wt[K, Cg, S]``, padding as guards. The
  compiler finds the contraction with the *positions* on the vector columns (``q``, one run of
  the output row), the output channels as rows, the filter taps as the reduction of one call
  (B's rows ``dilation`` positions apart) and the input channels as its batch: long widths fill
  every vector whatever the channel count (15 channels as well as 64).
* ``"nwc"`` (channels innermost): ``O[N, Q, K]``, ``I[N, W + pl + pr, C]`` (the zero border part of
  the input, as in ``conv2d``'s ``"nchwc"``), ``Wt[S, Cg, K]``. Columns are the output channels,
  rows the positions (a stride is the rows' step), the input channels the reduction, the taps
  the batch.

``pd.nn.conv1d`` computes a stride-1 convolution's interior on the NCW input itself and its ends
from their windows with the zero border (:func:`conv1d_spans`, :func:`pack_spans`), or copies
the NCW input into zero-bordered rows (:func:`spread`) and runs :func:`conv1d` on them without
padding (no guard is left), for a stride splits them into phases
(:func:`pack_phases`) and runs :func:`conv1d_phases`, or packs into NWC with :func:`to_nwc`,
whichever the cost model ranks cheaper (``nn1d.conv1d_route``).
"""

from __future__ import annotations

import functools
import operator

from .dsl.kernel import KernelFunction, kernel
from .dsl.types import f32


def _ints(*values) -> tuple[int, ...]:
    return tuple(operator.index(v) for v in values)


def _relu(activation, what: str) -> bool:
    if activation not in (None, "relu"):
        raise ValueError(f"{what}: activation must be None or 'relu', got {activation!r}")
    return activation == "relu"


def _positive(what: str, **values) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{what}: {name} must be a positive int, got {v!r}")


def padding1d(padding, S: int, dilation: int = 1, stride: int = 1) -> tuple[int, int]:
    """``(left, right)`` zero positions of a 1-D convolution: an int (both sides), a pair, or
    torch's ``"valid"`` (none) and ``"same"`` (stride 1 only: ``dilation*(S-1)`` in all, the
    odd one on the right)."""
    if padding == "valid":
        return 0, 0
    if padding == "same":
        if stride != 1:
            raise ValueError(f"conv1d: padding='same' needs stride 1, got stride {stride}")
        total = dilation * (S - 1)
        return total // 2, total - total // 2
    if isinstance(padding, int) and not isinstance(padding, bool):
        pair = (padding, padding)
    elif isinstance(padding, tuple | list) and len(padding) == 2:
        pair = tuple(padding)
    else:
        raise ValueError(
            f"conv1d: padding must be an int, a (left, right) pair, 'same' or 'valid', "
            f"got {padding!r}"
        )
    if not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in pair):
        raise ValueError(f"conv1d: padding must be non-negative ints, got {padding!r}")
    return int(pair[0]), int(pair[1])


def conv1d_width(W: int, S: int, stride: int = 1, padding=0, dilation: int = 1) -> int:
    """Output positions ``Q`` of a 1-D convolution of ``W`` positions (torch's formula)."""
    pl, pr = padding1d(padding, S, dilation, stride)
    Q = (W + pl + pr - dilation * (S - 1) - 1) // stride + 1
    if Q < 1:
        raise ValueError(
            f"conv1d: empty output ({Q} positions) for width {W}, filter width {S}, dilation "
            f"{dilation}, stride {stride}, padding ({pl}, {pr})"
        )
    return Q


def _groups(C: int, K: int, groups: int) -> tuple[int, int]:
    _positive("conv1d", groups=groups)
    if C % groups or K % groups:
        raise ValueError(
            f"conv1d: groups={groups} must divide the input channels {C} and the output "
            f"channels {K}"
        )
    return C // groups, K // groups


@functools.cache
def conv1d(
    N: int,
    C: int,
    K: int,
    W: int,
    S: int,
    *,
    stride: int = 1,
    padding=0,
    dilation: int = 1,
    bias: bool = False,
    activation: str | None = None,
    groups: int = 1,
    layout: str = "ncw",
) -> KernelFunction:
    """A 1-D convolution (torch's ``conv1d``: cross-correlation, input position
    ``stride*q + dilation*s - left``); arguments ``(O, I, Wt[, b])`` in the layout's shapes
    (module docstring)."""
    relu = _relu(activation, "conv1d")
    N, C, K, W, S, st, d, G = _ints(N, C, K, W, S, stride, dilation, groups)
    _positive("conv1d", N=N, C=C, K=K, W=W, S=S, stride=st, dilation=d)
    Cg, Kg = _groups(C, K, G)
    pl, pr = padding1d(padding, S, d, st)
    Q = conv1d_width(W, S, st, (pl, pr), d)
    has_bias = bool(bias)
    if layout == "ncw":

        @kernel
        def conv1d(
            O: f32[N, K, Q], I: f32[N, C, W], Wt: f32[K, Cg, S], b: f32[K] if has_bias else None
        ):
            for n in range(N):
                for g in range(G):
                    for k in range(Kg):
                        for q in range(Q):
                            O[n, Kg * g + k, q] = 0.0
                            for c in range(Cg):
                                for s in range(S):
                                    if 0 <= st * q + d * s - pl < W:
                                        O[n, Kg * g + k, q] += (
                                            I[n, Cg * g + c, st * q + d * s - pl]
                                            * Wt[Kg * g + k, c, s]
                                        )
                            if has_bias:
                                O[n, Kg * g + k, q] = O[n, Kg * g + k, q] + b[Kg * g + k]
                            if relu:
                                O[n, Kg * g + k, q] = max(O[n, Kg * g + k, q], 0.0)

        return conv1d
    if layout != "nwc":
        raise ValueError(f"conv1d: layout must be 'ncw' or 'nwc', got {layout!r}")
    L = W + pl + pr

    @kernel
    def conv1d(
        O: f32[N, Q, K], I: f32[N, L, C], Wt: f32[S, Cg, K], b: f32[K] if has_bias else None
    ):
        for n in range(N):
            for q in range(Q):
                for g in range(G):
                    for k in range(Kg):
                        O[n, q, Kg * g + k] = 0.0
                    for s in range(S):
                        for c in range(Cg):
                            for k in range(Kg):
                                O[n, q, Kg * g + k] += (
                                    I[n, st * q + d * s, Cg * g + c] * Wt[s, c, Kg * g + k]
                                )
                    if has_bias or relu:
                        for k in range(Kg):
                            if has_bias:
                                O[n, q, Kg * g + k] = O[n, q, Kg * g + k] + b[Kg * g + k]
                            if relu:
                                O[n, q, Kg * g + k] = max(O[n, q, Kg * g + k], 0.0)

    return conv1d


def phases(S: int, stride: int, dilation: int, Q: int) -> tuple[int, int]:
    """``(S1, J)`` of the phase layout of :func:`conv1d_phases`: taps per phase
    (``ceil(S / stride)``) and positions per phase row (``Q + dilation*(S1 - 1)``)."""
    S1 = -(-S // stride)
    return S1, Q + dilation * (S1 - 1)


@functools.cache
def conv1d_phases(
    N: int,
    C: int,
    K: int,
    Q: int,
    S: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    bias: bool = False,
    activation: str | None = None,
    groups: int = 1,
) -> KernelFunction:
    """A 1-D convolution on an NCW input already padded and split into ``T = stride`` phases:
    arguments ``(O, X, Wt[, b])`` with ``O[N, K, Q]``, ``X[N, C, T, J]`` (:func:`pack_phases`:
    phase ``t`` holds the padded input's positions ``T*j + dilation*t``), ``Wt[K, Cg, T, S1]``
    (:func:`pack_taps`: tap ``t + T*s`` of the filter; torch's ``[K, Cg, S]`` itself when
    ``T = 1``), ``b[K]``.

    Output ``q`` reads ``X[.., t, q + dilation*s]``: no guard, unit stride along ``q`` whatever
    the convolution's stride, so the calls' columns are positions; rows the output channels,
    the reduction of one call the ``S1`` taps of a phase (B's rows ``dilation`` positions
    apart), its batch the input channels and phases. A stride's phases hold ``S1*T - S`` zero
    taps (none for stride 1)."""
    relu = _relu(activation, "conv1d_phases")
    N, C, K, Q, S, T, d, G = _ints(N, C, K, Q, S, stride, dilation, groups)
    _positive("conv1d_phases", N=N, C=C, K=K, Q=Q, S=S, stride=T, dilation=d)
    Cg, Kg = _groups(C, K, G)
    S1, J = phases(S, T, d, Q)
    has_bias = bool(bias)

    @kernel
    def conv1d_phases(
        O: f32[N, K, Q], X: f32[N, C, T, J], Wt: f32[K, Cg, T, S1], b: f32[K] if has_bias else None
    ):
        for n in range(N):
            for g in range(G):
                for k in range(Kg):
                    for q in range(Q):
                        O[n, Kg * g + k, q] = 0.0
                        for c in range(Cg):
                            for t in range(T):
                                for s in range(S1):
                                    O[n, Kg * g + k, q] += (
                                        X[n, Cg * g + c, t, q + d * s] * Wt[Kg * g + k, c, t, s]
                                    )
                        if has_bias:
                            O[n, Kg * g + k, q] = O[n, Kg * g + k, q] + b[Kg * g + k]
                        if relu:
                            O[n, Kg * g + k, q] = max(O[n, Kg * g + k, q], 0.0)

    return conv1d_phases


@functools.cache
def pack_phases(
    N: int, C: int, W: int, Q: int, S: int, *, stride: int = 1, dilation: int = 1, left: int = 0
) -> KernelFunction:
    """NCW ``X[N, C, W]`` into the phase layout ``Xp[N, C, T, J]`` of :func:`conv1d_phases`:
    ``Xp[n, c, t, j] = X[n, c, T*j + dilation*t - left]`` where that lies in ``X``. Only those
    elements are written: pass a buffer whose others are zero (the padding). Arguments
    ``(Xp, X)``; for stride 1 a plain copy into a zero-bordered row."""
    N, C, W, Q, S, T, d, pl = _ints(N, C, W, Q, S, stride, dilation, left)
    _, J = phases(S, T, d, Q)

    @kernel
    def pack_phases(Xp: f32[N, C, T, J], X: f32[N, C, W]):
        for n in range(N):
            for c in range(C):
                for t in range(T):
                    for j in range(J):
                        if 0 <= T * j + d * t - pl < W:
                            Xp[n, c, t, j] = X[n, c, T * j + d * t - pl]

    return pack_phases


@functools.cache
def pack_taps(K: int, Cg: int, S: int, *, stride: int) -> KernelFunction:
    """Filter ``Wt[K, Cg, S]`` into the phases ``Wp[K, Cg, T, S1]`` of :func:`conv1d_phases`:
    ``Wp[k, c, t, s] = Wt[k, c, t + T*s]``, the taps past ``S`` left as they are (pass a zeroed
    ``Wp``). Arguments ``(Wp, Wt)``."""
    K, Cg, S, T = _ints(K, Cg, S, stride)
    S1 = -(-S // T)

    @kernel
    def pack_taps(Wp: f32[K, Cg, T, S1], Wt: f32[K, Cg, S]):
        for k in range(K):
            for c in range(Cg):
                for t in range(T):
                    for s in range(S1):
                        if t + T * s < S:
                            Wp[k, c, t, s] = Wt[k, c, t + T * s]

    return pack_taps


@functools.cache
def flip_taps(K: int, Cg: int, S: int, *, groups: int = 1) -> KernelFunction:
    """The filter of the data gradient: ``Wf[C, Kg, S]`` with ``Wf[Cg*g + c, k, s] =
    Wt[Kg*g + k, c, S - 1 - s]`` (input and output channels swapped within each group, the taps
    reversed). Arguments ``(Wf, Wt)``."""
    K, Cg, S, G = _ints(K, Cg, S, groups)
    Kg, C = K // G, Cg * G

    @kernel
    def flip_taps(Wf: f32[C, Kg, S], Wt: f32[K, Cg, S]):
        for g in range(G):
            for c in range(Cg):
                for k in range(Kg):
                    for s in range(S):
                        Wf[Cg * g + c, k, s] = Wt[Kg * g + k, c, S - 1 - s]

    return flip_taps


@functools.cache
def spread(N: int, C: int, W: int, L: int, *, step: int = 1, left: int = 0) -> KernelFunction:
    """``X[N, C, W]`` spread into the rows ``Xp[N, C, L]``: ``Xp[n, c, step*i + left] =
    X[n, c, i]`` where that lies in the row (``step`` > 1: the zeros between the positions of a
    strided convolution's output gradient). Only those elements are written (pass a buffer
    whose others are zero). Arguments ``(Xp, X)``."""
    N, C, W, L, u, pl = _ints(N, C, W, L, step, left)

    @kernel
    def spread(Xp: f32[N, C, L], X: f32[N, C, W]):
        for n in range(N):
            for c in range(C):
                for i in range(W):
                    if 0 <= u * i + pl < L:
                        Xp[n, c, u * i + pl] = X[n, c, i]

    return spread


@functools.cache
def to_nwc(N: int, C: int, W: int, L: int, *, step: int = 1, left: int = 0) -> KernelFunction:
    """NCW ``X[N, C, W]`` into NWC ``Xt[N, L, C]``: ``Xt[n, step*i + left, c] = X[n, c, i]``
    where that lies in ``Xt`` (pass a buffer whose other rows are zero: the padding). A 2-D
    transpose per image: the compiler computes it by register tiles of the vector width
    (``transform/transpose.py``), each output row written whole, one tile after the other.
    Arguments ``(Xt, X)``."""
    N, C, W, L, u, pl = _ints(N, C, W, L, step, left)

    @kernel
    def to_nwc(Xt: f32[N, L, C], X: f32[N, C, W]):
        for n in range(N):
            for i in range(W):
                for c in range(C):
                    if 0 <= u * i + pl < L:
                        Xt[n, u * i + pl, c] = X[n, c, i]

    return to_nwc


@functools.cache
def from_nwc(N: int, K: int, Q: int) -> KernelFunction:
    """NWC ``O[N, Q, K]`` -> NCW ``Y[N, K, Q]`` (register tiles, as :func:`to_nwc`). Arguments
    ``(Y, O)``."""
    N, K, Q = _ints(N, K, Q)

    @kernel
    def from_nwc(Y: f32[N, K, Q], O: f32[N, Q, K]):
        for n in range(N):
            for k in range(K):
                for q in range(Q):
                    Y[n, k, q] = O[n, q, k]

    return from_nwc


@functools.cache
def taps_nwc(K: int, Cg: int, S: int) -> KernelFunction:
    """Filter ``Wt[K, Cg, S]`` -> ``Wn[S, Cg, K]`` of the ``"nwc"`` layout. Arguments
    ``(Wn, Wt)``."""
    K, Cg, S = _ints(K, Cg, S)

    @kernel
    def taps_nwc(Wn: f32[S, Cg, K], Wt: f32[K, Cg, S]):
        for k in range(K):
            for c in range(Cg):
                for s in range(S):
                    Wn[s, c, k] = Wt[k, c, s]

    return taps_nwc


@functools.cache
def conv1d_wgrad(
    N: int,
    C: int,
    K: int,
    L: int,
    Q: int,
    S: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
) -> KernelFunction:
    """The filter gradient of a 1-D convolution: arguments ``(D, dO, Xt)`` with
    ``D[G, Kg, S, Cg]`` (:func:`unpack_wgrad` gives torch's ``[K, Cg, S]``), ``dO[N, K, Q]`` the
    output gradient, ``Xt[N, L, C]`` the padded input in NWC (:func:`to_nwc`):
    ``D[g, k, s, c] = sum_{n, q} dO[n, Kg*g + k, q] * Xt[n, stride*q + dilation*s, Cg*g + c]``.

    A BRGEMM over positions: rows the output channels, columns the input channels (with
    dilation 1 the taps too, one run of ``S*Cg`` elements in ``D`` and in ``Xt``), the
    reduction of one call a chunk of positions (A's ``q`` is unit stride, B's rows ``stride*C``
    apart), the batch the images."""
    N, C, K, L, Q, S, st, d, G = _ints(N, C, K, L, Q, S, stride, dilation, groups)
    Cg, Kg = _groups(C, K, G)

    @kernel
    def conv1d_wgrad(D: f32[G, Kg, S, Cg], dO: f32[N, K, Q], Xt: f32[N, L, C]):
        for g in range(G):
            for k in range(Kg):
                for s in range(S):
                    for c in range(Cg):
                        D[g, k, s, c] = 0.0
                        for n in range(N):
                            for q in range(Q):
                                D[g, k, s, c] += (
                                    dO[n, Kg * g + k, q] * Xt[n, st * q + d * s, Cg * g + c]
                                )

    return conv1d_wgrad


@functools.cache
def unpack_wgrad(K: int, Cg: int, S: int, *, groups: int = 1) -> KernelFunction:
    """``D[G, Kg, S, Cg]`` of :func:`conv1d_wgrad` -> torch's ``dW[K, Cg, S]``. Arguments
    ``(dW, D)``."""
    K, Cg, S, G = _ints(K, Cg, S, groups)
    Kg = K // G

    @kernel
    def unpack_wgrad(dW: f32[K, Cg, S], D: f32[G, Kg, S, Cg]):
        for g in range(G):
            for k in range(Kg):
                for c in range(Cg):
                    for s in range(S):
                        dW[Kg * g + k, c, s] = D[g, k, s, c]

    return unpack_wgrad


@functools.cache
def conv1d_spans(
    N: int,
    C: int,
    K: int,
    Q: int,
    R: int,
    S: int,
    *,
    spans: int = 1,
    span: int,
    out_start: int = 0,
    out_step: int = 0,
    src_start: int = 0,
    src_step: int = 0,
    dilation: int = 1,
    bias: bool = False,
    activation: str | None = None,
    groups: int = 1,
) -> KernelFunction:
    """A stride-1 convolution of some runs of output positions only: ``spans`` runs of
    ``span`` positions of ``O[N, K, Q]``, run ``j`` starting at ``out_start + out_step*j``,
    read from the rows ``X[N, C, R]`` at ``src_start + src_step*j`` on (no guard: every tap
    lies in the row). Arguments ``(O, X, Wt[, b])``, ``Wt[K, Cg, S]`` torch's; the other
    positions of ``O`` are not written. The contraction is :func:`conv1d`'s (positions on the
    columns, taps the reduction, channels the batch).

    ``pd.nn.conv1d`` computes the positions whose taps all lie in the input straight from the
    unpadded input (one span) and the few near its ends from a small zero-bordered copy of
    them (:func:`pack_spans`, two spans), rather than copying the whole input."""
    relu = _relu(activation, "conv1d_spans")
    N, C, K, Q, R, S, d, G = _ints(N, C, K, Q, R, S, dilation, groups)
    M, E, o0, ou, s0, su = _ints(spans, span, out_start, out_step, src_start, src_step)
    _positive("conv1d_spans", N=N, C=C, K=K, Q=Q, R=R, S=S, spans=M, span=E, dilation=d)
    Cg, Kg = _groups(C, K, G)
    if o0 + ou * (M - 1) + E > Q or min(o0, ou, s0, su) < 0:
        raise ValueError(
            f"conv1d_spans: {M} spans of {E} positions from {o0} (step {ou}) pass Q={Q}"
        )
    if s0 + su * (M - 1) + E + d * (S - 1) > R:
        raise ValueError(f"conv1d_spans: spans read past the rows' {R} positions")
    if M == 1:  # j is 0: steps that keep it an outer loop of C and B (not a zero reduction)
        ou, su = ou or Q, su or R
    has_bias = bool(bias)

    @kernel
    def conv1d_spans(
        O: f32[N, K, Q], X: f32[N, C, R], Wt: f32[K, Cg, S], b: f32[K] if has_bias else None
    ):
        for n in range(N):
            for j in range(M):
                for g in range(G):
                    for k in range(Kg):
                        for q in range(E):
                            O[n, Kg * g + k, o0 + ou * j + q] = 0.0
                            for c in range(Cg):
                                for s in range(S):
                                    O[n, Kg * g + k, o0 + ou * j + q] += (
                                        X[n, Cg * g + c, s0 + su * j + q + d * s]
                                        * Wt[Kg * g + k, c, s]
                                    )
                            if has_bias:
                                O[n, Kg * g + k, o0 + ou * j + q] = (
                                    O[n, Kg * g + k, o0 + ou * j + q] + b[Kg * g + k]
                                )
                            if relu:
                                O[n, Kg * g + k, o0 + ou * j + q] = max(
                                    O[n, Kg * g + k, o0 + ou * j + q], 0.0
                                )

    return conv1d_spans


@functools.cache
def pack_spans(
    N: int, C: int, W: int, R: int, *, spans: int, width: int, start: int = 0, step: int = 0
) -> KernelFunction:
    """Windows of the rows ``X[N, C, W]`` side by side in ``Xe[N, C, R]`` (``R = spans *
    width``): ``Xe[n, c, width*j + i] = X[n, c, start + step*j + i]`` where that lies in ``X``
    (``start`` may be negative: a zero border; pass a buffer whose other elements are zero).
    Arguments ``(Xe, X)``: the edges :func:`conv1d_spans` reads."""
    N, C, W, R, M, Le, x0, xu = _ints(N, C, W, R, spans, width, start, step)

    @kernel
    def pack_spans(Xe: f32[N, C, R], X: f32[N, C, W]):
        for n in range(N):
            for c in range(C):
                for j in range(M):
                    for i in range(Le):
                        if 0 <= x0 + xu * j + i < W:
                            Xe[n, c, Le * j + i] = X[n, c, x0 + xu * j + i]

    return pack_spans
