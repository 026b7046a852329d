"""Ready-made primitives (API.md, section 3), written in the DSL.

Each function writes the DSL source of its kernel for the given shapes and options, registers it
with ``linecache`` under a name like ``<polydl.ops.conv2d#3>`` (so tracebacks, ``DSLError``
messages and ``inspect.getsource`` show it), and returns the ``@pd.kernel`` function. Shapes are
plain ints of the enclosing scope, so the kernels have no size parameters: ``pd.compile(k)`` or
``k(*arrays)`` directly.

Convolution layouts:

* ``layout="nchw"``: ``O[N, K, P, Q]``, ``I[N, C, H, W]``, ``Wt[K, C, R, S]``; padding as guards.
* ``layout="nchwc"``: blocked, the layout BRGEMM runs on. ``O[N, K/kb, P, Q, kb]``,
  ``I[N, C/cb, H + 2*ph, W + 2*pw, cb]`` (the zero border is part of the input),
  ``Wt[K/kb, C/cb, R, S, cb, kb]``; bias ``b[K/kb, kb]``. The blocks are ``channel_block(C,
  block)`` and ``channel_block(K, block)``, ``block`` defaulting to :func:`conv_block` ``(Q, P)``
  for ``conv2d`` and to :func:`default_block` for the packing kernels: pass the same ``block``. :func:`pack_input`,
  :func:`pack_weights` and :func:`unpack_output` give the DSL kernels converting to and from NCHW.
"""

from __future__ import annotations

import functools
import itertools
import linecache
import textwrap

_ids = itertools.count()
TILE = 16  # the packing kernels transpose tiles of TILE pixels x one channel block


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        return v, v
    if isinstance(v, tuple | list) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return int(v[0]), int(v[1])
    raise ValueError(f"{what} must be an int or a pair of ints, got {v!r}")


def _activation(activation) -> bool:
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    return activation == "relu"


def _define(name: str, source: str):
    """Compile DSL ``source`` defining ``name`` under a linecache file name; the kernel."""
    from .dsl.kernel import kernel

    filename = f"<polydl.ops.{name}#{next(_ids)}>"
    text = textwrap.dedent(source).lstrip("\n")
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    namespace: dict = {"pd": __import__("polydl")}
    exec(compile(text, filename, "exec"), namespace)  # noqa: S102 - our own generated source
    fn = namespace[name]
    return kernel(fn)


def _epilogue(target: str, bias_load: str | None, relu: bool, pad: str) -> list[str]:
    if bias_load is None and not relu:
        return []
    value = f"{target} + {bias_load}" if bias_load else target
    if relu:
        value = f"max({value}, 0.0)"
    return [f"{pad}{target} = {value}"]


@functools.cache
def matmul(M: int, N: int, K: int, *, bias: bool = False, activation: str | None = None):
    """``C = A @ B (+ bias[N]) (relu)``; arguments ``(C, A, B[, bias])``."""
    relu = _activation(activation)
    for v, n in ((M, "M"), (N, "N"), (K, "K")):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"matmul: {n} must be a positive int, got {v!r}")
    args = f"C: pd.f32[{M}, {N}], A: pd.f32[{M}, {K}], B: pd.f32[{K}, {N}]"
    if bias:
        args += f", bias: pd.f32[{N}]"
    lines = [
        f"def matmul({args}):",
        f"    for i in range({M}):",
        f"        for j in range({N}):",
        "            C[i, j] = 0.0",
        f"        for k in range({K}):",
        f"            for j in range({N}):",
        "                C[i, j] += A[i, k] * B[k, j]",
    ]
    epi = _epilogue("C[i, j]", "bias[j]" if bias else None, relu, "            ")
    if epi:
        lines += [f"        for j in range({N}):", *epi]
    return _define("matmul", "\n".join(lines) + "\n")


def conv_shape(H: int, W: int, R: int, S: int, stride, padding) -> tuple[int, int]:
    """Output height and width (P, Q) of a convolution."""
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
    P, Q = (H + 2 * ph - R) // sh + 1, (W + 2 * pw - S) // sw + 1
    if P < 1 or Q < 1:
        raise ValueError(f"conv2d: empty output {P}x{Q} for input {H}x{W}, filter {R}x{S}")
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
):
    """A 2-D convolution kernel; arguments ``(O, I, Wt[, b])`` in the chosen layout."""
    relu = _activation(activation)
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
    P, Q = conv_shape(H, W, R, S, stride, padding)
    block = conv_block(Q, P) if block is None else block
    if layout == "nchw":
        args = f"O: pd.f32[{N}, {K}, {P}, {Q}], I: pd.f32[{N}, {C}, {H}, {W}], Wt: pd.f32[{K}, {C}, {R}, {S}]"
        args += f", b: pd.f32[{K}]" if bias else ""
        h, w = f"{sh} * p + r - {ph}", f"{sw} * q + s - {pw}"
        guard = f"0 <= {h} < {H} and 0 <= {w} < {W}"
        lines = [
            f"def conv2d({args}):",
            f"    for n in range({N}):",
            f"        for k in range({K}):",
            f"            for p in range({P}):",
            f"                for q in range({Q}):",
            "                    O[n, k, p, q] = 0.0",
            f"                    for c in range({C}):",
            f"                        for r in range({R}):",
            f"                            for s in range({S}):",
            f"                                if {guard}:",
            f"                                    O[n, k, p, q] += I[n, c, {h}, {w}] * Wt[k, c, r, s]",
            *_epilogue("O[n, k, p, q]", "b[k]" if bias else None, relu, "                    "),
        ]
        return _define("conv2d", "\n".join(lines) + "\n")
    if layout != "nchwc":
        raise ValueError(f"conv2d: layout must be 'nchw' or 'nchwc', got {layout!r}")
    cb, kb = channel_block(C, block), channel_block(K, block)
    CB, KB = C // cb, K // kb
    args = (
        f"O: pd.f32[{N}, {KB}, {P}, {Q}, {kb}], I: pd.f32[{N}, {CB}, {H + 2 * ph}, {W + 2 * pw}, {cb}], "
        f"Wt: pd.f32[{KB}, {CB}, {R}, {S}, {cb}, {kb}]"
    )
    args += f", b: pd.f32[{KB}, {kb}]" if bias else ""
    lines = [
        f"def conv2d({args}):",
        f"    for n in range({N}):",
        f"        for kb in range({KB}):",
        f"            for p in range({P}):",
        f"                for q in range({Q}):",
        f"                    for kv in range({kb}):",
        "                        O[n, kb, p, q, kv] = 0.0",
        f"                for cb in range({CB}):",
        f"                    for r in range({R}):",
        f"                        for s in range({S}):",
        f"                            for q in range({Q}):",
        f"                                for cv in range({cb}):",
        f"                                    for kv in range({kb}):",
        f"                                        O[n, kb, p, q, kv] += I[n, cb, {sh} * p + r, {sw} * q + s, cv] * Wt[kb, cb, r, s, cv, kv]",
    ]
    epi = _epilogue(
        "O[n, kb, p, q, kv]", "b[kb, kv]" if bias else None, relu, "                        "
    )
    if epi:
        lines += [
            f"                for q in range({Q}):",
            f"                    for kv in range({kb}):",
            *epi,
        ]
    return _define("conv2d", "\n".join(lines) + "\n")


@functools.cache
def pack_input(N: int, C: int, H: int, W: int, padding=0, block: int | None = None):
    """NCHW ``X`` -> blocked ``Xp[N, C/cb, H+2ph, W+2pw, cb]``; the border is left as it is
    (pass a zeroed ``Xp``). Arguments ``(Xp, X)``. Tiles of TILE pixels x cb channels are
    transposed one at a time, so reads and writes both stay within a few cache lines."""
    ph, pw = _pair(padding, "padding")
    cb = channel_block(C, block)
    src = f"""
    def pack_input(Xp: pd.f32[{N}, {C // cb}, {H + 2 * ph}, {W + 2 * pw}, {cb}], X: pd.f32[{N}, {C}, {H}, {W}]):
        for n in range({N}):
            for c in range({C // cb}):
                for h in range({H}):
                    for w0 in range(0, {W}, {TILE}):
                        for v in range({cb}):
                            for w in range(w0, min(w0 + {TILE}, {W})):
                                Xp[n, c, h + {ph}, w + {pw}, v] = X[n, {cb} * c + v, h, w]
    """
    return _define("pack_input", src)


@functools.cache
def pack_weights(K: int, C: int, R: int, S: int, block: int | None = None):
    """KCRS ``Wt`` -> blocked ``Wp[K/kb, C/cb, R, S, cb, kb]``. Arguments ``(Wp, Wt)``.

    A transpose of each ``kb x (cb*R*S)`` block, done TILE output channels at a time: a tile
    reads TILE rows of ``cb*R*S`` consecutive floats (a few KiB, L1-resident) and writes runs
    of TILE consecutive floats; the whole block it writes is touched once per tile, line by
    line."""
    cb, kb = channel_block(C, block), channel_block(K, block)
    src = f"""
    def pack_weights(Wp: pd.f32[{K // kb}, {C // cb}, {R}, {S}, {cb}, {kb}], Wt: pd.f32[{K}, {C}, {R}, {S}]):
        for k in range({K // kb}):
            for c in range({C // cb}):
                for v0 in range(0, {kb}, {TILE}):
                    for u in range({cb}):
                        for r in range({R}):
                            for s in range({S}):
                                for v in range(v0, min(v0 + {TILE}, {kb})):
                                    Wp[k, c, r, s, u, v] = Wt[{kb} * k + v, {cb} * c + u, r, s]
    """
    return _define("pack_weights", src)


@functools.cache
def unpack_output(N: int, K: int, P: int, Q: int, block: int | None = None):
    """Blocked ``Op[N, K/kb, P, Q, kb]`` -> NCHW ``Y[N, K, P, Q]``. Arguments ``(Y, Op)``."""
    kb = channel_block(K, block)
    src = f"""
    def unpack_output(Y: pd.f32[{N}, {K}, {P}, {Q}], Op: pd.f32[{N}, {K // kb}, {P}, {Q}, {kb}]):
        for n in range({N}):
            for k in range({K // kb}):
                for p in range({P}):
                    for q0 in range(0, {Q}, {TILE}):
                        for v in range({kb}):
                            for q in range(q0, min(q0 + {TILE}, {Q})):
                                Y[n, {kb} * k + v, p, q] = Op[n, k, p, q, v]
    """
    return _define("unpack_output", src)


@functools.cache
def pad_rows(N: int, C: int, H: int, W: int, padding, extra: int = 0):
    """NCHW ``X`` into zero-padded flat rows ``Xp[N, C, (H+2ph)*(W+2pw) + extra]``: pixel
    ``(h, w)`` at ``(h + ph)*(W + 2pw) + w + pw``. Only the interior is written: pass a buffer
    whose border (and ``extra`` tail) is already zero. Arguments ``(Xp, X)``."""
    ph, pw = _pair(padding, "padding")
    Wp = W + 2 * pw
    L = (H + 2 * ph) * Wp + extra
    src = f"""
    def pad_rows(Xp: pd.f32[{N}, {C}, {L}], X: pd.f32[{N}, {C}, {H}, {W}]):
        for n in range({N}):
            for c in range({C}):
                for h in range({H}):
                    for w in range({W}):
                        Xp[n, c, {Wp} * h + w + {ph * Wp + pw}] = X[n, c, h, w]
    """
    return _define("pad_rows", src)


@functools.cache
def crop_rows(N: int, K: int, P: int, Q: int, Wp: int):
    """The first ``Q`` pixels of each output row of ``Wp``: ``Y[n, k, p, q] = O[n, k, p*Wp + q]``.
    Arguments ``(Y, O)``."""
    src = f"""
    def crop_rows(Y: pd.f32[{N}, {K}, {P}, {Q}], O: pd.f32[{N}, {K}, {P * Wp}]):
        for n in range({N}):
            for k in range({K}):
                for p in range({P}):
                    for q in range({Q}):
                        Y[n, k, p, q] = O[n, k, {Wp} * p + q]
    """
    return _define("crop_rows", src)


@functools.cache
def subsample(N: int, C: int, H: int, W: int, stride):
    """``Xs[n, c, p, q] = X[n, c, sh * p, sw * q]``: the pixels a 1x1 convolution of stride
    ``(sh, sw)`` without padding reads, packed densely (it then runs as a stride-1 convolution,
    one run of ``P * Q`` pixels per channel). Arguments ``(Xs, X)``."""
    sh, sw = _pair(stride, "stride")
    P, Q = (H - 1) // sh + 1, (W - 1) // sw + 1
    src = f"""
    def subsample(Xs: pd.f32[{N}, {C}, {P}, {Q}], X: pd.f32[{N}, {C}, {H}, {W}]):
        for n in range({N}):
            for c in range({C}):
                for p in range({P}):
                    for q in range({Q}):
                        Xs[n, c, p, q] = X[n, c, {sh} * p, {sw} * q]
    """
    return _define("subsample", src)
