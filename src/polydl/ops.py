"""Ready-made primitives (API.md, section 3), written in the DSL.

Each function is a kernel factory: ordinary Python that defines a nested ``@pd.kernel``
function for the given shapes and options and returns it. Shapes are ints of the factory's
scope (closure values in the annotations and the body), so the kernels have no size
parameters: ``pd.compile(k)`` or ``k(*arrays)`` directly. Options are static ``if``s on the
factory's values (evaluated at definition, only the branch taken is the kernel), and an
optional bias is an argument whose annotation is ``None`` when there is no bias (absent: not
in the kernel's signature). ``DSLError``/``BoundsError`` messages and tracebacks name the lines
of this file.

Convolution layouts:

* ``layout="nchw"``: ``O[N, K, P, Q]``, ``I[N, C, H, W]``, ``Wt[K, C, R, S]``; padding as guards.
* ``layout="nchwc"``: blocked, the layout BRGEMM runs on. ``O[N, K/kb, P, Q, kb]``,
  ``I[N, C/cb, H + 2*ph, W + 2*pw, cb]`` (the zero border is part of the input),
  ``Wt[K/kb, C/cb, R, S, cb, kb]``; bias ``b[K/kb, kb]``. The blocks are ``channel_block(C,
  block)`` and ``channel_block(K, block)``, ``block`` defaulting to :func:`conv_block` ``(Q, P)``
  for ``conv2d`` and to :func:`default_block` for the packing kernels: pass the same ``block``. :func:`pack_input`,
  :func:`pack_weights` and :func:`unpack_output` give the DSL kernels converting to and from NCHW.
"""

import functools
import operator

from .dsl.intrinsics import exp as pd_exp
from .dsl.kernel import KernelFunction, kernel
from .dsl.types import DType, bf16, f32

TILE = 16  # the packing kernels transpose tiles of TILE pixels x one channel block
# output channels a tile of the VNNI-2 weight pack reads (pack_weights(vnni=True)): runs of
# 2*PAIR_TILE elements written per (pair, tap); on a Zen 4 host (512x512x3x3, one thread) 8 runs
# as fast as the plain bf16 pack (0.47 ms), 16 takes 0.63 ms and 4 0.73 ms
PAIR_TILE = 8


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        return v, v
    if isinstance(v, tuple | list) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return int(v[0]), int(v[1])
    raise ValueError(f"{what} must be an int or a pair of ints, got {v!r}")


def _ints(*values) -> tuple[int, ...]:
    """Shape arguments as Python ints (NumPy integers too): the kernels' closure constants."""
    return tuple(operator.index(v) for v in values)


def _operand_type(dtype: str) -> DType:
    """The element type of the operands A/B (inputs, weights): ``"f32"`` or ``"bf16"`` (the
    output and bias stay f32: products are accumulated in f32)."""
    if dtype not in ("f32", "bf16"):
        raise ValueError(f"dtype must be 'f32' or 'bf16', got {dtype!r}")
    return bf16 if dtype == "bf16" else f32


def _activation(activation) -> bool:
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    return activation == "relu"


@functools.cache
def matmul(
    M: int,
    N: int,
    K: int,
    *,
    bias: bool = False,
    activation: str | None = None,
    dtype: str = "f32",
) -> KernelFunction:
    """``C = A @ B (+ bias[N]) (relu)``; arguments ``(C, A, B[, bias])``; ``dtype="bf16"``:
    ``A`` and ``B`` bfloat16, ``C`` (and the bias) float32."""
    relu = _activation(activation)
    ab = _operand_type(dtype)
    for v, n in ((M, "M"), (N, "N"), (K, "K")):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"matmul: {n} must be a positive int, got {v!r}")
    has_bias = bool(bias)

    @kernel
    def matmul(C: f32[M, N], A: ab[M, K], B: ab[K, N], bias: f32[N] if has_bias else None):
        for i in range(M):
            for j in range(N):
                C[i, j] = 0.0
            for k in range(K):
                for j in range(N):
                    C[i, j] += A[i, k] * B[k, j]
            if has_bias:
                for j in range(N):
                    C[i, j] = C[i, j] + bias[j]
            if relu:
                for j in range(N):
                    C[i, j] = max(C[i, j], 0.0)

    return matmul


def conv_shape(H: int, W: int, R: int, S: int, stride, padding, dilation=1) -> tuple[int, int]:
    """Output height and width (P, Q) of a convolution (a dilated filter spans
    ``dilation*(R-1) + 1`` rows)."""
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    P = (H + 2 * ph - dh * (R - 1) - 1) // sh + 1
    Q = (W + 2 * pw - dw * (S - 1) - 1) // sw + 1
    if P < 1 or Q < 1:
        raise ValueError(
            f"conv2d: empty output {P}x{Q} for input {H}x{W}, filter {R}x{S}, dilation {dilation}"
        )
    return P, Q


@functools.cache
def default_block() -> int:
    """Channels per block of the blocked layouts on this host: two vector registers of f32
    (16 with AVX2, 32 with AVX-512): one microkernel row is then two vectors wide."""
    from .target import host

    return 2 * host().family.vector_width


def conv_block(Q: int, P: int | None = None) -> int:
    """Channels per block for a convolution with output ``P x Q`` (``P`` defaults to ``Q``):
    with AVX-512, four vectors (64, the 6x64 register tile of the microkernel) when a call has
    rows enough to fill it, else two; otherwise :func:`default_block`. A call covers whole
    output rows (grouped rows, ``kernels/config.py``): about ``plan.CALL_ROWS`` pixels, at
    least one row."""
    from .optimize.plan import whole_rows

    base = default_block()
    rows = Q * whole_rows(P or Q, Q)
    return 2 * base if base >= 32 and rows >= 12 else base


def channel_block(channels: int, limit: int | None = None) -> int:
    """The channel block of the blocked layouts: the largest divisor of ``channels`` <= limit
    (default :func:`default_block`)."""
    limit = default_block() if limit is None else limit
    return max(d for d in range(1, min(channels, limit) + 1) if channels % d == 0)


@functools.cache
def conv2d(
    N: int,
    C: int,
    K: int,
    H: int,
    W: int,
    R: int,
    S: int,
    *,
    stride=1,
    padding=0,
    bias: bool = False,
    activation: str | None = None,
    layout: str = "nchw",
    block: int | None = None,
    dilation=1,
    dtype: str = "f32",
    vnni: bool = False,
) -> KernelFunction:
    """A 2-D convolution kernel; arguments ``(O, I, Wt[, b])`` in the chosen layout. Filter
    tap ``(r, s)`` reads input pixel ``(sh*p + dh*r - ph, sw*q + dw*s - pw)``;
    ``dtype="bf16"``: ``I`` and ``Wt`` bfloat16, ``O`` (and ``b``) float32. ``vnni`` (bf16,
    ``layout="nchwc"``, an even input-channel block ``cb``): ``Wt[K/kb, C/cb, R, S, cb/2, kb,
    2]``, input channels in pairs (:func:`pack_weights`), as ``vdpbf16ps``/AMX read them."""
    relu = _activation(activation)
    ab = _operand_type(dtype)
    N, C, K, H, W, R, S = _ints(N, C, K, H, W, R, S)
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    if min(sh, sw, dh, dw) < 1:
        raise ValueError(f"conv2d: stride {stride} and dilation {dilation} must be positive")
    P, Q = conv_shape(H, W, R, S, stride, padding, dilation)
    block = conv_block(Q, P) if block is None else block
    has_bias = bool(bias)
    if layout == "nchw":

        @kernel
        def conv2d(
            O: f32[N, K, P, Q],
            I: ab[N, C, H, W],
            Wt: ab[K, C, R, S],
            b: f32[K] if has_bias else None,
        ):
            for n in range(N):
                for k in range(K):
                    for p in range(P):
                        for q in range(Q):
                            O[n, k, p, q] = 0.0
                            for c in range(C):
                                for r in range(R):
                                    for s in range(S):
                                        if (
                                            0 <= sh * p + dh * r - ph < H
                                            and 0 <= sw * q + dw * s - pw < W
                                        ):
                                            O[n, k, p, q] += (
                                                I[n, c, sh * p + dh * r - ph, sw * q + dw * s - pw]
                                                * Wt[k, c, r, s]
                                            )
                            if has_bias:
                                O[n, k, p, q] = O[n, k, p, q] + b[k]
                            if relu:
                                O[n, k, p, q] = max(O[n, k, p, q], 0.0)

        return conv2d
    if layout != "nchwc":
        raise ValueError(f"conv2d: layout must be 'nchw' or 'nchwc', got {layout!r}")
    CV, KV = channel_block(C, block), channel_block(K, block)  # channels per block
    CB, KB = C // CV, K // KV  # blocks
    Hp, Wp = H + 2 * ph, W + 2 * pw
    if vnni:
        _vnni_block(dtype, CV, "conv2d")
    # the weights: KCRSck, or with vnni the input channels of a block in pairs (CV2 x KV x 2)
    CV2 = CV // 2
    w_shape = (KB, CB, R, S, CV2, KV, 2) if vnni else (KB, CB, R, S, CV, KV)

    @kernel
    def conv2d(
        O: f32[N, KB, P, Q, KV],
        I: ab[N, CB, Hp, Wp, CV],
        Wt: ab[w_shape],
        b: f32[KB, KV] if has_bias else None,
    ):
        for n in range(N):
            for kb in range(KB):
                for p in range(P):
                    for q in range(Q):
                        for kv in range(KV):
                            O[n, kb, p, q, kv] = 0.0
                    for cb in range(CB):
                        for r in range(R):
                            for s in range(S):
                                for q in range(Q):
                                    for cv in range(CV):
                                        for kv in range(KV):
                                            if vnni:
                                                O[n, kb, p, q, kv] += (
                                                    I[n, cb, sh * p + dh * r, sw * q + dw * s, cv]
                                                    * Wt[kb, cb, r, s, cv // 2, kv, cv % 2]
                                                )
                                            else:
                                                O[n, kb, p, q, kv] += (
                                                    I[n, cb, sh * p + dh * r, sw * q + dw * s, cv]
                                                    * Wt[kb, cb, r, s, cv, kv]
                                                )
                    if has_bias or relu:
                        for q in range(Q):
                            for kv in range(KV):
                                if has_bias:
                                    O[n, kb, p, q, kv] = O[n, kb, p, q, kv] + b[kb, kv]
                                if relu:
                                    O[n, kb, p, q, kv] = max(O[n, kb, p, q, kv], 0.0)

    return conv2d


@functools.cache
def pack_input(
    N: int, C: int, H: int, W: int, padding=0, block: int | None = None, dtype: str = "f32"
) -> KernelFunction:
    """NCHW ``X`` -> blocked ``Xp[N, C/cb, H+2ph, W+2pw, cb]``; the border is left as it is
    (pass a zeroed ``Xp``). Arguments ``(Xp, X)``, both of ``dtype`` (``"bf16"``: copied
    exactly). Tiles of TILE pixels x cb channels are transposed one at a time, so reads and
    writes both stay within a few cache lines."""
    et = _operand_type(dtype)
    N, C, H, W = _ints(N, C, H, W)
    ph, pw = _pair(padding, "padding")
    cb = channel_block(C, block)
    CB, Hp, Wp = C // cb, H + 2 * ph, W + 2 * pw

    @kernel
    def pack_input(Xp: et[N, CB, Hp, Wp, cb], X: et[N, C, H, W]):
        for n in range(N):
            for c in range(CB):
                for h in range(H):
                    for w0 in range(0, W, TILE):
                        for v in range(cb):
                            for w in range(w0, min(w0 + TILE, W)):
                                Xp[n, c, h + ph, w + pw, v] = X[n, cb * c + v, h, w]

    return pack_input


@functools.cache
def pack_weights(
    K: int,
    C: int,
    R: int,
    S: int,
    block: int | None = None,
    dtype: str = "f32",
    vnni: bool = False,
) -> KernelFunction:
    """KCRS ``Wt`` -> blocked ``Wp[K/kb, C/cb, R, S, cb, kb]``. Arguments ``(Wp, Wt)``, both of
    ``dtype``.

    A transpose of each ``kb x (cb*R*S)`` block. In f32 the filter taps are one iterator ``t``
    (``r, s = t // S, t % S``: unit stride in ``Wt``), so that ``transform/transpose.py`` makes
    tile transposes of the ``kb`` output channels by the ``R*S`` taps of each input channel
    (tiles of 16 x 9 for a 3x3 filter). In bf16 (32 lanes a vector: 9 taps too few to fill
    half a tile), TILE output channels at a time: a tile reads TILE rows of ``cb*R*S``
    consecutive elements (a few KiB, L1-resident) and writes runs of TILE consecutive
    elements; a 1x1 filter's pack is a transpose of output by input channels either way.
    ``vnni`` (bf16, an even ``cb``): ``Wp[K/kb, C/cb, R, S, cb/2, kb, 2]``, the weights of
    :func:`conv2d`'s ``vnni``: input channels ``2u, 2u + 1`` side by side for each output
    channel (``Wp[k, c, r, s, u, v, h] = Wt[kb*k + v, cb*c + 2u + h, r, s]``)."""
    et = _operand_type(dtype)
    K, C, R, S = _ints(K, C, R, S)
    cb, kb = channel_block(C, block), channel_block(K, block)
    KB, CB, RS = K // kb, C // cb, R * S
    if vnni:
        _vnni_block(dtype, cb, "pack_weights")
        cb2 = cb // 2

        @kernel
        def pack_weights(Wp: et[KB, CB, R, S, cb2, kb, 2], Wt: et[K, C, R, S]):
            for k in range(KB):
                for c in range(CB):
                    for v0 in range(0, kb, PAIR_TILE):
                        for u in range(cb2):
                            for r in range(R):
                                for s in range(S):
                                    for v in range(v0, min(v0 + PAIR_TILE, kb)):
                                        for h in range(2):
                                            Wp[k, c, r, s, u, v, h] = Wt[
                                                kb * k + v, cb * c + 2 * u + h, r, s
                                            ]

        return pack_weights

    if dtype == "f32":

        @kernel
        def pack_weights(Wp: et[KB, CB, R, S, cb, kb], Wt: et[K, C, R, S]):
            for k in range(KB):
                for c in range(CB):
                    for u in range(cb):
                        for t in range(RS):
                            for v in range(kb):
                                Wp[k, c, t // S, t % S, u, v] = Wt[
                                    kb * k + v, cb * c + u, t // S, t % S
                                ]

        return pack_weights

    @kernel
    def pack_weights(Wp: et[KB, CB, R, S, cb, kb], Wt: et[K, C, R, S]):
        for k in range(KB):
            for c in range(CB):
                for v0 in range(0, kb, TILE):
                    for u in range(cb):
                        for r in range(R):
                            for s in range(S):
                                for v in range(v0, min(v0 + TILE, kb)):
                                    Wp[k, c, r, s, u, v] = Wt[kb * k + v, cb * c + u, r, s]

    return pack_weights


def _vnni_block(dtype: str, cb: int, what: str) -> None:
    if dtype != "bf16" or cb % 2:
        raise ValueError(
            f"{what}: vnni=True pairs the input channels of bf16 weights; got dtype={dtype!r}, "
            f"input-channel block {cb} (it must be even)"
        )


@functools.cache
def unpack_output(N: int, K: int, P: int, Q: int, block: int | None = None) -> KernelFunction:
    """Blocked ``Op[N, K/kb, P, Q, kb]`` -> NCHW ``Y[N, K, P, Q]``. Arguments ``(Y, Op)``."""
    N, K, P, Q = _ints(N, K, P, Q)
    kb = channel_block(K, block)
    KB = K // kb

    @kernel
    def unpack_output(Y: f32[N, K, P, Q], Op: f32[N, KB, P, Q, kb]):
        for n in range(N):
            for k in range(KB):
                for p in range(P):
                    for q0 in range(0, Q, TILE):
                        for v in range(kb):
                            for q in range(q0, min(q0 + TILE, Q)):
                                Y[n, kb * k + v, p, q] = Op[n, k, p, q, v]

    return unpack_output


@functools.cache
def pad_rows(N: int, C: int, H: int, W: int, padding, extra: int = 0) -> KernelFunction:
    """NCHW ``X`` into zero-padded flat rows ``Xp[N, C, (H+2ph)*(W+2pw) + extra]``: pixel
    ``(h, w)`` at ``(h + ph)*(W + 2pw) + w + pw``. Only the interior is written: pass a buffer
    whose border (and ``extra`` tail) is already zero. Arguments ``(Xp, X)``."""
    N, C, H, W, extra = _ints(N, C, H, W, extra)
    ph, pw = _pair(padding, "padding")
    Wp = W + 2 * pw
    L = (H + 2 * ph) * Wp + extra
    first = ph * Wp + pw  # where pixel (0, 0) goes

    @kernel
    def pad_rows(Xp: f32[N, C, L], X: f32[N, C, H, W]):
        for n in range(N):
            for c in range(C):
                for h in range(H):
                    for w in range(W):
                        Xp[n, c, Wp * h + w + first] = X[n, c, h, w]

    return pad_rows


@functools.cache
def crop_rows(N: int, K: int, P: int, Q: int, Wp: int) -> KernelFunction:
    """The first ``Q`` pixels of each output row of ``Wp``: ``Y[n, k, p, q] = O[n, k, p*Wp + q]``.
    Arguments ``(Y, O)``."""
    N, K, P, Q, Wp = _ints(N, K, P, Q, Wp)
    J = P * Wp

    @kernel
    def crop_rows(Y: f32[N, K, P, Q], O: f32[N, K, J]):
        for n in range(N):
            for k in range(K):
                for p in range(P):
                    for q in range(Q):
                        Y[n, k, p, q] = O[n, k, Wp * p + q]

    return crop_rows


@functools.cache
def subsample(N: int, C: int, H: int, W: int, stride) -> KernelFunction:
    """``Xs[n, c, p, q] = X[n, c, sh * p, sw * q]``: the pixels a 1x1 convolution of stride
    ``(sh, sw)`` without padding reads, packed densely (it then runs as a stride-1 convolution,
    one run of ``P * Q`` pixels per channel). Arguments ``(Xs, X)``."""
    N, C, H, W = _ints(N, C, H, W)
    sh, sw = _pair(stride, "stride")
    P, Q = (H - 1) // sh + 1, (W - 1) // sw + 1

    @kernel
    def subsample(Xs: f32[N, C, P, Q], X: f32[N, C, H, W]):
        for n in range(N):
            for c in range(C):
                for p in range(P):
                    for q in range(Q):
                        Xs[n, c, p, q] = X[n, c, sh * p, sw * q]

    return subsample


@functools.cache
def softmax(M: int, N: int) -> KernelFunction:
    """``Y[i, :] = softmax(X[i, :])`` over the rows of ``X`` (the row maximum subtracted first);
    ``m`` and ``s`` hold each row's maximum and sum. Arguments ``(Y, X, m, s)``. Its three
    nests fuse at the row loop when the rows are large (``show("fusion")``)."""
    M, N = _ints(M, N)

    @kernel
    def softmax(Y: f32[M, N], X: f32[M, N], m: f32[M], s: f32[M]):
        for i in range(M):
            m[i] = -3.0e38
            for j in range(N):
                m[i] = max(m[i], X[i, j])
        for i in range(M):
            s[i] = 0.0
            for j in range(N):
                Y[i, j] = pd_exp(X[i, j] - m[i])
                s[i] += Y[i, j]
        for i in range(M):
            for j in range(N):
                Y[i, j] = Y[i, j] / s[i]

    return softmax


@functools.cache
def max_pool2d(N: int, C: int, H: int, W: int, R: int, S: int, *, stride=1, padding=0):
    """``O[n, c, p, q]`` = the largest of ``I[n, c, ...]`` in its ``R x S`` window (padding
    takes no part, as in torch). Arguments ``(O, I)``."""
    N, C, H, W, R, S = _ints(N, C, H, W, R, S)
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
    P, Q = conv_shape(H, W, R, S, stride, padding)

    @kernel
    def max_pool2d(O: f32[N, C, P, Q], I: f32[N, C, H, W]):
        for n in range(N):
            for c in range(C):
                for p in range(P):
                    for q in range(Q):
                        O[n, c, p, q] = -3.0e38
                        for r in range(R):
                            for s in range(S):
                                if 0 <= sh * p + r - ph < H and 0 <= sw * q + s - pw < W:
                                    O[n, c, p, q] = max(
                                        O[n, c, p, q], I[n, c, sh * p + r - ph, sw * q + s - pw]
                                    )

    return max_pool2d


@functools.cache
def global_avg_pool(N: int, C: int, H: int, W: int):
    """``O[n, c] = mean(I[n, c, :, :])`` (2-D out, as flattened after global pooling).
    Arguments ``(O, I)``."""
    N, C, H, W = _ints(N, C, H, W)
    inv = 1.0 / (H * W)

    @kernel
    def global_avg_pool(O: f32[N, C], I: f32[N, C, H, W]):
        for n in range(N):
            for c in range(C):
                O[n, c] = 0.0
                for h in range(H):
                    for w in range(W):
                        O[n, c] += I[n, c, h, w]
                O[n, c] = O[n, c] * inv

    return global_avg_pool


# 1-D convolutions: their own module (ops1d.py), the same namespace
from .ops1d import (  # noqa: E402, F401
    conv1d,
    conv1d_phases,
    conv1d_spans,
    conv1d_wgrad,
    conv1d_width,
    flip_taps,
    from_nwc,
    pack_phases,
    pack_spans,
    pack_taps,
    padding1d,
    spread,
    taps_nwc,
    to_nwc,
    unpack_wgrad,
)

# operators of whole models (pd.graph): their own module (ops_graph.py), the same namespace
from .ops_graph import (  # noqa: E402, F401
    avg_pool2d,
    batch_matmul,
    grouped_conv2d,
    layer_norm,
    linear_blocked,
)
