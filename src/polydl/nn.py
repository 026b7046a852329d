"""NumPy-level functions (API.md, section 4): float32 arrays in, a new array out.

Each call finds (or compiles, once per shape per process) the kernels of :mod:`polydl.ops` it
needs. ``conv2d`` runs the convolution on the NCHW arrays when the stride is 1 (BRGEMM on
whole zero-padded rows, :func:`conv2d_rows`: no transposes), else on the blocked layout: it packs
the NCHW input (with its zero border) and the KCRS weights with kernels polydl generates from the
DSL, runs the blocked convolution, and unpacks the result to NCHW (:func:`conv_route`).
"""

import functools
import threading

import numpy as np

from . import memory, ops
from .api import compile as _compile
from .dsl.kernel import KernelFunction, kernel
from .dsl.types import f32
from .nn_weights import ConvWeights, weight_packer

_lock = threading.Lock()


@functools.lru_cache(maxsize=256)
def _compiled(factory, args: tuple, kwargs: tuple, threads: int | None):
    return _compile(factory(*args, **dict(kwargs)), threads=threads)


def compiled(factory, *args, threads: int | None = None, **kwargs):
    """The compiled kernel of ``factory(*args, **kwargs)`` (an :mod:`polydl.ops` function)."""
    with _lock:
        return _compiled(factory, args, tuple(sorted(kwargs.items())), threads)


def _f32(x, name: str, ndim: int) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    if x.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {x.dtype}")
    return np.ascontiguousarray(x)


def matmul(
    a: np.ndarray,
    b: np.ndarray,
    bias: np.ndarray | None = None,
    activation: str | None = None,
    *,
    threads: int | None = None,
) -> np.ndarray:
    """``a @ b (+ bias) (relu)`` for 2-D float32 arrays, or bfloat16 ones (``ml_dtypes``:
    both; products accumulated in float32, the result float32)."""
    if memory.is_bf16(np.asarray(a)) or memory.is_bf16(np.asarray(b)):
        dtype = "bf16"
        a, b = (
            np.ascontiguousarray(memory.to_bf16(x) if not memory.is_bf16(x) else x) for x in (a, b)
        )
        for x, nm in ((a, "a"), (b, "b")):
            if x.ndim != 2:
                raise ValueError(f"{nm} must have 2 dimensions, got shape {x.shape}")
    else:
        dtype = "f32"
        a, b = _f32(a, "a", 2), _f32(b, "b", 2)
    (M, K), (K2, N) = a.shape, b.shape
    if K != K2:
        raise ValueError(f"matmul: a has shape {a.shape} and b {b.shape}: inner sizes differ")
    args = [a, b]
    if bias is not None:
        bias = _f32(bias, "bias", 1)
        if bias.shape != (N,):
            raise ValueError(f"matmul: bias must have shape ({N},), got {bias.shape}")
        args.append(bias)
    k = compiled(
        ops.matmul,
        M,
        N,
        K,
        bias=bias is not None,
        activation=activation,
        threads=threads,
        dtype=dtype,
    )
    out = memory.empty((M, N), np.float32)
    k(out, *args)
    return out


ROUTES = ("direct", "rows", "blocked")


@functools.cache
def conv2d_rows(
    N: int,
    C: int,
    K: int,
    Hp: int,
    Wp: int,
    R: int,
    S: int,
    *,
    bias=False,
    activation=None,
    dilation=1,
) -> KernelFunction:
    """A stride-1 convolution on whole padded rows: arguments ``(O, I, Wt[, b])`` with
    ``O[N, K, P*Wp]`` (``P = Hp - dh*(R - 1)`` output rows of ``Wp`` pixels, of which the first
    ``Q = Wp - dw*(S - 1)`` are the convolution's), ``I[N, C, Hp*Wp + dw*(S - 1)]`` (the
    zero-padded input, rows of ``Wp``, ``dw*(S - 1)`` trailing elements for the last row's
    overhang; they may hold anything), ``Wt[K, C, R, S]``, ``b[K]``; ``dilation = (dh, dw)``.

    Output pixel ``j`` reads ``I[j + Wp*dh*r + dw*s]``: one contiguous run of pixels, a
    contraction with rows ``k``, columns ``j`` (``P*Wp`` of them, no guard, no row boundary)
    and the batch ``c, r, s``. The ``dw*(S - 1)`` columns past ``Q`` of each row mix two rows:
    they are computed and dropped."""
    relu = ops._activation(activation)
    N, C, K, Hp, Wp, R, S = ops._ints(N, C, K, Hp, Wp, R, S)
    has_bias = bool(bias)
    dh, dw = ops._pair(dilation, "dilation")
    P = Hp - dh * (R - 1)
    J, L = P * Wp, Hp * Wp + dw * (S - 1)
    Wr = Wp * dh  # elements from one filter row's input row to the next

    @kernel
    def conv2d_rows(
        O: f32[N, K, J], I: f32[N, C, L], Wt: f32[K, C, R, S], b: f32[K] if has_bias else None
    ):
        for n in range(N):
            for k in range(K):
                for j in range(J):
                    O[n, k, j] = 0.0
                    for c in range(C):
                        for r in range(R):
                            for s in range(S):
                                O[n, k, j] += I[n, c, j + Wr * r + dw * s] * Wt[k, c, r, s]
                    if has_bias:
                        O[n, k, j] = O[n, k, j] + b[k]
                    if relu:
                        O[n, k, j] = max(O[n, k, j], 0.0)

    return conv2d_rows


def conv_route(
    x_shape, w_shape, stride=1, padding=0, threads: int | None = None, dilation=1
) -> str:
    """The kernel :func:`conv2d` runs for these shapes: ``"rows"``, ``"direct"`` or
    ``"blocked"``.

    Routes (``route=`` of :func:`conv2d`; all give the same result within float rounding):

    - ``"rows"``: :func:`conv2d_rows` on the NCHW arrays: the input rows zero-padded by a plain
      copy (none for a 1x1 convolution without padding), the output rows cropped back to ``Q``.
      A contraction with rows ``k`` (output channels), columns one contiguous run of output
      pixels across rows (no guard, no row boundary), batch ``c, r, s``: BRGEMM with no
      transpose. Stride 1 only (with stride 2 the columns are strided).
    - ``"direct"``: ``ops.conv2d(..., layout="nchw")``, the textbook loops with padding guards;
      the optimiser gathers a strided input (``transform/gather.py``), splits the guards away
      or gathers the im2col, whichever its cost model prefers (``transform/split.py``), and
      coalesces the pixel rows of a 1x1 convolution into one column run
      (``transform/coalesce.py``). Any stride.
    - ``"blocked"``: pack the input (with its zero border) and the weights to NCHWc / KCRSck,
      run ``ops.conv2d(..., layout="nchwc")``, unpack the output. The transposes cost memory
      traffic at every call (22-35 GB/s on one Zen 5 core, 8 GB/s for the 8 MB weights of
      resnet_15).

    A strided 1x1 convolution without padding reads only the pixels ``(sh*p, sw*q)``: the
    ``"rows"`` route first copies them densely (:func:`polydl.ops.subsample`, a polydl kernel;
    oneDNN calls this "reduce to unit stride") and runs the stride-1 convolution on them.

    Rule: ``"direct"`` for a strided convolution (the compiler gathers its input once per call,
    one image at a time when the batch's copy would not fit one core's share of the last-level cache: a 1x1's subsample,
    a larger filter's im2col, ``transform/gather.py``); ``"blocked"`` for a stride-1 filter larger
    than 1x1 whose packed weights serve at least 256 output pixels (``N*P*Q``) and that has at
    least 512 input channels or would drop at least an eighth of the columns on ``"rows"``
    (``dw*(S - 1)`` of every padded row of ``W + 2*pw``: 2 of 16 on 14x14 pixels); else
    ``"rows"``. The second clause measured on a Zen 4 host (resnet_12, 256 channels 14x14, batch
    8, ratios to torch rows / blocked: 0.76 / 0.85 at 1 thread, 0.80-0.81 / 0.90-0.93 at 2;
    at batch 1, 196 pixels, the weight packing does not pay: 0.94 / 0.85, 0.89 / 0.85; resnet_07,
    2 of 30 columns dropped, 0.87 / 0.87-0.91 at batch 8 stays on "rows"). Measured on a Zen 5 host with ``benchmarks/nchw.py
    --routes`` (ratios to torch, 1 thread batch 1 / batch 8 / 2 threads batch 1 / batch 8):
    on the six stride-2 1x1 layers "direct" 1.00-1.20 / 0.85-1.03 / 0.95-1.08 / 0.84-1.05 against
    "rows" with a subsample 0.94-1.19 / 0.79-0.98 / 0.90-1.05 / 0.81-1.05 and "blocked" 0.35-0.62;
    on resnet_00 (7x7 stride 2, 3 channels) "direct" 0.84 at batch 1, "blocked" 0.44-0.69. On the
    3x3 layers "rows" and "blocked" are within a few percent of each other except resnet_17 at
    batch 8 (512 channels, 7x7: blocked 0.76 / 0.73, rows 0.75 / 0.61) and resnet_07 at batch 8
    (128 channels: rows 0.86 / 0.80, blocked 0.75 / 0.73). The thread count does not change the
    choice; nothing is timed at run time.
    """
    del threads  # the rule reads only the shapes (see above)
    N, C, H, W = x_shape
    R, S = w_shape[2:]
    unit = ops._pair(stride, "stride") == (1, 1)
    if not unit:
        return "direct"
    if (R, S) != (1, 1):
        P, Q = ops.conv_shape(H, W, R, S, stride, padding, dilation)
        # the columns "rows" computes and drops: dw*(S - 1) of each padded row of Wp
        dropped = ops._pair(dilation, "dilation")[1] * (S - 1)
        wp = W + 2 * ops._pair(padding, "padding")[1]
        if N * P * Q >= 256 and (C >= 512 or 8 * dropped >= wp):
            return "blocked"
    return "rows"


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    stride=1,
    padding=0,
    activation: str | None = None,
    dilation=1,
    *,
    threads: int | None = None,
    route: str | None = None,
) -> np.ndarray:
    """Like ``torch.nn.functional.conv2d`` (NCHW input, KCRS weights, ``dilation`` an int or a
    pair; no groups). ``w`` may be a :class:`ConvWeights` (weights copied and packed once for
    many calls: the blocked routes then skip the weight packing).

    ``route`` picks the kernel (``"rows"``, ``"direct"`` or ``"blocked"``, see
    :func:`conv_route`, which chooses when it is None); all give the same result within float
    rounding. bfloat16 inputs (``ml_dtypes``) run on bf16 (float32 result): filters larger than
    1x1 over at least :data:`BF16_BLOCKED_PIXELS` output pixels on the blocked layout, the
    others on the direct NCHW kernel."""
    packed = w if isinstance(w, ConvWeights) else None
    if packed is not None:
        w = packed.array
    if memory.is_bf16(np.asarray(x)) or memory.is_bf16(np.asarray(w)):
        if packed is not None:
            w = packed.as_dtype("bf16")
        return _conv2d_bf16(x, w, bias, stride, padding, activation, threads, dilation, packed)
    x, w = _f32(x, "x", 4), _f32(w, "w", 4)
    N, C, H, W = x.shape
    K, C2, R, S = w.shape
    if C != C2:
        raise ValueError(
            f"conv2d: x has {C} channels (shape {x.shape}) but w expects {C2} (shape {w.shape})"
        )
    (ph, pw), st = ops._pair(padding, "padding"), ops._pair(stride, "stride")
    dil = ops._pair(dilation, "dilation")
    if min(*st, *dil) < 1:
        raise ValueError(
            f"conv2d: stride {stride} and dilation {dilation} must be positive (x shape "
            f"{x.shape}, w shape {w.shape})"
        )
    P, Q = ops.conv_shape(H, W, R, S, stride, padding, dil)
    if bias is not None:
        bias = _f32(bias, "bias", 1)
        if bias.shape != (K,):
            raise ValueError(f"conv2d: bias must have shape ({K},), got {bias.shape}")
    if route is None:
        route = conv_route(x.shape, w.shape, st, (ph, pw), threads, dil)
    if route not in ROUTES:
        raise ValueError(f"conv2d: route must be one of {ROUTES} or None, got {route!r}")
    pointwise = (R, S, ph, pw) == (1, 1, 0, 0)  # a strided one reads a subsample of x
    if st != (1, 1) and route == "rows" and not pointwise:
        raise ValueError(
            f"conv2d: route='rows' needs stride 1 or a 1x1 convolution without padding, got "
            f"stride {stride} (x shape {x.shape}, w shape {w.shape}); use route='direct' or "
            "'blocked'"
        )
    if route == "rows":
        if st != (1, 1):
            xs = memory.empty((N, C, P, Q), np.float32)
            compiled(ops.subsample, N, C, H, W, st, threads=threads)(xs, x)
            x = xs
        return _conv2d_rows(x, w, bias, (ph, pw), activation, threads, (P, Q), dil)
    opts = dict(
        stride=st, padding=(ph, pw), bias=bias is not None, activation=activation, dilation=dil
    )
    conv, per_image = _main_kernel(route, x.shape, w.shape, opts, threads)
    if route == "direct":
        y = memory.empty((N, K, P, Q), np.float32)
        extra = [] if bias is None else [bias]
        if per_image:
            # the compiler gathers the input (stride, im2col): one image at a time keeps the
            # copy in cache instead of streaming the whole batch's copy through memory
            for i in range(N):
                conv(y[i : i + 1], x[i : i + 1], w, *extra)
            return y
        conv(y, x, w, *extra)
        return y
    block = ops.conv_block(Q, P)
    cb, kb = ops.channel_block(C, block), ops.channel_block(K, block)
    # scratch buffers kept per shape: the packed input's zero border stays zero (the pack
    # writes the interior), the packed weights and the blocked output are overwritten whole
    xp = _scratch(("blocked in", N, C // cb, H + 2 * ph, W + 2 * pw, cb))
    compiled(ops.pack_input, N, C, H, W, padding=(ph, pw), block=block, threads=threads)(xp, x)
    if packed is not None:
        wp = packed.blocked(block, "f32", threads)
    else:
        wp = _scratch(("blocked w", K // kb, C // cb, R, S, cb, kb))
        compiled(ops.pack_weights, K, C, R, S, block=block, threads=threads)(wp, w)
    args = [xp, wp]
    if bias is not None:
        args.append(bias.reshape(K // kb, kb))
    op = _scratch(("blocked out", N, K // kb, P, Q, kb))
    conv(op, *args)
    y = memory.empty((N, K, P, Q), np.float32)
    compiled(ops.unpack_output, N, K, P, Q, block=block, threads=threads)(y, op)
    return y


def _main_spec(route: str, x_shape, w_shape, opts: dict, threads: int | None):
    """``(args, kwargs, per_image)`` of the ``ops.conv2d`` kernel that ``route`` (``"direct"``
    or ``"blocked"``) runs for these shapes and ``opts`` (stride, padding, bias, activation,
    dilation, normalised); ``per_image``: the direct kernel runs one image at a time (when the
    batch's gathered copy would not fit one core's share of the last-level cache)."""
    (N, C, H, W), (K, _, R, S) = x_shape, w_shape
    if route == "direct":
        kw = dict(layout="nchw", **opts)
        one = compiled(ops.conv2d, 1, C, K, H, W, R, S, threads=threads, **kw)
        per_image = N > 1 and N * _gathered_bytes(one) > _cache_share_bytes()
        return (1 if per_image else N, C, K, H, W, R, S), kw, per_image
    P, Q = ops.conv_shape(H, W, R, S, opts["stride"], opts["padding"], opts["dilation"])
    return (N, C, K, H, W, R, S), dict(layout="nchwc", block=ops.conv_block(Q, P), **opts), False


def _main_kernel(route: str, x_shape, w_shape, opts: dict, threads: int | None):
    """The compiled kernel of :func:`_main_spec` and its ``per_image``."""
    args, kw, per_image = _main_spec(route, x_shape, w_shape, opts, threads)
    return compiled(ops.conv2d, *args, threads=threads, **kw), per_image


def conv2d_kernels(
    x_shape,
    w_shape,
    stride=1,
    padding=0,
    dilation=1,
    *,
    bias: bool = False,
    activation: str | None = None,
    threads: int | None = None,
    route: str | None = None,
) -> list:
    """The convolution kernels (``pd.ops`` / :func:`conv2d_rows` kernel functions, not the
    copies around them) that :func:`conv2d` compiles for an input of ``x_shape`` and weights of
    ``w_shape``: what ``polydl tune --model resnet50 --layout nchw`` tunes, so that later
    :func:`conv2d` calls with these shapes and ``threads`` find the tuned records."""
    N, C, H, W = (int(d) for d in x_shape)
    K, _, R, S = (int(d) for d in w_shape)
    (ph, pw), st = ops._pair(padding, "padding"), ops._pair(stride, "stride")
    dil = ops._pair(dilation, "dilation")
    if route is None:
        route = conv_route((N, C, H, W), (K, C, R, S), st, (ph, pw), threads, dil)
    if route == "rows":
        if st != (1, 1):  # a strided 1x1: subsampled first, then the stride-1 rows kernel
            H, W = ops.conv_shape(H, W, R, S, st, (ph, pw), dil)
        Hp, Wp = H + 2 * ph, W + 2 * pw
        kw = {} if dil == (1, 1) else {"dilation": dil}
        return [conv2d_rows(N, C, K, Hp, Wp, R, S, bias=bias, activation=activation, **kw)]
    opts = dict(stride=st, padding=(ph, pw), bias=bias, activation=activation, dilation=dil)
    args, kw, _ = _main_spec(route, (N, C, H, W), (K, C, R, S), opts, threads)
    return [ops.conv2d(*args, **kw)]


def _gathered_bytes(kernel) -> int:
    """Bytes of the scratch copies a compiled kernel makes per call (transform/gather.py)."""
    return sum(kernel.kernel.nbytes(t.name) for t in kernel.kernel.temps)


def _cache_share_bytes() -> int:
    """One core's share of the host's largest cache."""
    from .target import host

    return host().share_bytes()


def _conv2d_rows(x, w, bias, pad, activation, threads, out, dilation=(1, 1)) -> np.ndarray:
    """The ``"rows"`` route: zero-pad the input rows (a plain copy, no transpose), run
    :func:`conv2d_rows`, keep the first ``Q`` pixels of each output row."""
    (N, C, H, W), (K, _, R, S), (ph, pw), (P, Q) = x.shape, w.shape, pad, out
    Hp, Wp = H + 2 * ph, W + 2 * pw
    tail = dilation[1] * (S - 1)
    if (ph, pw, S) == (0, 0, 1):
        xp = x.reshape(N, C, H * W)  # the input itself
    else:
        # a scratch buffer kept per shape and thread: its zero border stays zero, the
        # interior is overwritten by a compiled (threaded, vectorised) copy
        xp = _scratch(("pad", N, C, Hp * Wp + tail))
        compiled(ops.pad_rows, N, C, H, W, (ph, pw), tail, threads=threads)(xp, x)
    opts = dict(bias=bias is not None, activation=activation, threads=threads)
    if dilation != (1, 1):
        opts["dilation"] = dilation
    conv = compiled(conv2d_rows, N, C, K, Hp, Wp, R, S, **opts)
    if Wp == Q:
        o = memory.empty((N, K, P * Wp), np.float32)
        conv(o, xp, w, *([] if bias is None else [bias]))
        return o.reshape(N, K, P, Q)
    o = _scratch(("rows", N, K, P * Wp))
    conv(o, xp, w, *([] if bias is None else [bias]))
    y = memory.empty((N, K, P, Q), np.float32)
    compiled(ops.crop_rows, N, K, P, Q, Wp, threads=threads)(y, o)
    return y


_scratch_local = threading.local()


def _scratch(key: tuple, dtype=np.float32) -> np.ndarray:
    """A zero-initialised aligned buffer of shape ``key[1:]`` (float32, or ``dtype``: uint16
    holding bfloat16 for the bf16 blocked route), kept for this thread and key (intermediates of nn.conv2d:
    no allocation, page faults or zero fill per call). The caller must leave whatever it relies
    on being zero untouched."""
    bufs = getattr(_scratch_local, "bufs", None)
    if bufs is None:
        bufs = _scratch_local.bufs = {}
    buf = bufs.get(key)
    if buf is None:
        if len(bufs) >= 64:
            bufs.clear()
        buf = bufs[key] = memory.zeros(key[1:], dtype)
    return buf


def pack_weights(
    w: np.ndarray, *, block: int | None = None, threads: int | None = None
) -> np.ndarray:
    """KCRS weights in the blocked layout ``[K/kb, C/cb, R, S, cb, kb]`` of ``ops.conv2d``
    (``block`` as given to it; default :func:`ops.default_block`)."""
    w = _f32(w, "w", 4)
    K, C, R, S = w.shape
    cb, kb = ops.channel_block(C, block), ops.channel_block(K, block)
    wp = memory.empty((K // kb, C // cb, R, S, cb, kb), np.float32)
    compiled(ops.pack_weights, K, C, R, S, block=block, threads=threads)(wp, w)
    return wp


def _bf16(x, name: str, ndim: int) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    return np.ascontiguousarray(x if memory.is_bf16(x) else memory.to_bf16(x))


def _conv2d_bf16(
    x, w, bias, stride, padding, activation, threads, dilation=1, packed=None
) -> np.ndarray:
    """:func:`conv2d` on bfloat16 input and weights (a float32 one rounded to bf16): the NCHW
    kernel of ``pd.ops.conv2d(..., dtype="bf16")``, products accumulated in float32, or the
    blocked route (:func:`_bf16_blocked_plan`). ``packed``: the :class:`ConvWeights` ``w``
    came from (its blocked form is packed once)."""
    x, w = _bf16(x, "x", 4), _bf16(w, "w", 4)
    if bias is not None:
        bias = _f32(bias, "bias", 1)
    key = (x.shape, w.shape, stride, padding, dilation, bias is None, activation, threads)
    key += (packed is not None,)
    plan = _bf16_plans.get(key)
    if plan is None:
        if len(_bf16_plans) >= 256:
            _bf16_plans.clear()
        plan = _bf16_plans.setdefault(key, _bf16_plan(*key))
    return plan(x, w, bias, packed)


_bf16_plans: dict[tuple, object] = {}  # shapes and options -> the callable running them


def _bf16_plan(x_shape, w_shape, stride, padding, dilation, no_bias, activation, threads, pre):
    """What a bf16 :func:`conv2d` of these shapes and options runs (``pre``: the weights come
    packed, a :class:`ConvWeights`), found once: a function of ``(x, w, bias, packed)`` with
    its kernels compiled (no per-call dispatch)."""
    (N, C, H, W), (K, C2, R, S) = x_shape, w_shape
    if C != C2:
        raise ValueError(f"conv2d: x has {C} channels (shape {x_shape}) but w expects {C2}")
    P, Q = ops.conv_shape(H, W, R, S, stride, padding, dilation)
    opts = dict(stride=stride, padding=padding, bias=not no_bias, activation=activation)
    opts["dilation"] = dilation
    if (R, S) != (1, 1) and (N * P * Q >= BF16_BLOCKED_PIXELS or (pre and C >= 128)):
        return _bf16_blocked_plan(x_shape, w_shape, opts, threads, (P, Q))
    k = compiled(ops.conv2d, N, C, K, H, W, R, S, dtype="bf16", threads=threads, **opts)

    def run(x, w, bias, packed):
        y = memory.empty((N, K, P, Q), np.float32)
        if bias is None:
            k(y, x, w)
        else:
            _bias_shape(bias, K)
            k(y, x, w, bias)
        return y

    return run


def _bias_shape(bias: np.ndarray, K: int) -> None:
    if bias.shape != (K,):
        raise ValueError(f"conv2d: bias must have shape ({K},), got {bias.shape}")


# output pixels (N*P*Q) from which a bf16 filter larger than 1x1 runs on the blocked layout: the
# weights are packed at every call (unless they come as ConvWeights), paid back over the pixels.
# Measured on a Zen 4 host, one thread, 3x3 filters, C = K, the weights packed in VNNI-2 pairs,
# blocked / direct NCHW time: 512 channels 7x7 (49 pixels) 0.77, 256 channels 7x7 0.80, 128
# channels 7x7 0.89, 64 channels 7x7 1.01, 128 channels 10x10 0.72, 512 channels 4x4 1.26. With
# ConvWeights (packed once) at least 128 input channels suffice: 512 channels 7x7 0.53, 512
# channels 4x4 0.57, 128 channels 4x4 0.94, 64 channels 7x7 1.3.
BF16_BLOCKED_PIXELS = 48


def bf16_vnni(cb: int) -> bool:
    """Whether the bf16 blocked route packs its weights in VNNI-2 pairs (``ops.pack_weights``
    ``vnni``): where this host's bf16 family multiplies pairs (``vdpbf16ps``, AMX) and the
    input-channel block ``cb`` is even. The kernel then reads its weights where they are,
    instead of copying each weight panel into pairs at every call (``transform/pack.py``)."""
    from .optimize.cost import vnni_target
    from .target import resolve

    return cb % 2 == 0 and vnni_target(resolve(None))


def _bf16_blocked_plan(x_shape, w_shape, opts, threads, out):
    """A bf16 convolution larger than 1x1 on the blocked layout: the input (with its zero
    border) and the weights packed to NCHWc / KCRSck in bf16 (the weights once per
    :class:`ConvWeights`; in VNNI-2 pairs where :func:`bf16_vnni` says so, read in place by the
    kernel, else the kernel copies its weight panels into pairs, ``transform/pack.py``), the
    blocked bf16 kernel, the f32 output unpacked. Measured on a Zen 4 host
    (``benchmarks/bf16.py``): resnet_03 at 1 thread 227 GFLOPS for the kernel, against about
    100 for the direct NCHW kernel."""
    (N, C, H, W), (K, _, R, S), (P, Q) = x_shape, w_shape, out
    ph, pw = ops._pair(opts["padding"], "padding")
    block = ops.conv_block(Q, P)
    cb, kb = ops.channel_block(C, block), ops.channel_block(K, block)
    vnni = bf16_vnni(cb)
    w_shape = (K // kb, C // cb, R, S, *((cb // 2, kb, 2) if vnni else (cb, kb)))
    pack_in = compiled(
        ops.pack_input, N, C, H, W, padding=(ph, pw), block=block, dtype="bf16", threads=threads
    )
    pack_w = weight_packer(K, C, R, S, block, "bf16", vnni, threads)
    conv = compiled(
        ops.conv2d,
        N,
        C,
        K,
        H,
        W,
        R,
        S,
        layout="nchwc",
        block=block,
        dtype="bf16",
        vnni=vnni,
        threads=threads,
        **opts,
    )
    unpack = compiled(ops.unpack_output, N, K, P, Q, block=block, threads=threads)

    def run(x, w, bias, packed):
        # scratch buffers kept per thread: the packed input's zero border stays zero (the
        # packing writes the interior), the packed weights and the blocked output are
        # overwritten whole
        xp = _scratch(("bf16 in", N, C // cb, H + 2 * ph, W + 2 * pw, cb), np.uint16)
        wp = _scratch(("bf16 w", *w_shape), np.uint16)
        op = _scratch(("bf16 out", N, K // kb, P, Q, kb))
        pack_in(xp, x)
        if packed is not None:
            wp = packed.blocked(block, "bf16", threads, vnni=vnni)
        else:
            pack_w(wp, w)
        if bias is None:
            conv(op, xp, wp)
        else:
            _bias_shape(bias, K)
            conv(op, xp, wp, bias.reshape(K // kb, kb))
        y = memory.empty((N, K, P, Q), np.float32)
        unpack(y, op)
        return y

    return run


# 1-D convolutions and their gradients: their own module (nn1d.py), the same namespace
from .nn1d import conv1d, conv1d_backward_data, conv1d_backward_weight, conv1d_route  # noqa: E402, F401
