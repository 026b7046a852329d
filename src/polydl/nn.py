"""NumPy-level functions (API.md, section 4): float32 arrays in, a new array out.

Each call finds (or compiles, once per shape per process) the kernels of :mod:`polydl.ops` it
needs. ``conv2d`` runs on the blocked layout: it packs the NCHW input (with its zero border) and
the KCRS weights with kernels polydl generates from the DSL, runs the blocked convolution (BRGEMM
on the inner loops), and unpacks the result to NCHW.
"""

from __future__ import annotations

import functools
import threading

import numpy as np

from . import ops
from .api import compile as _compile

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
    """``a @ b (+ bias) (relu)`` for 2-D float32 arrays."""
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
    k = compiled(ops.matmul, M, N, K, bias=bias is not None, activation=activation, threads=threads)
    out = np.empty((M, N), np.float32)
    k(out, *args)
    return out


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    stride=1,
    padding=0,
    activation: str | None = None,
    *,
    threads: int | None = None,
) -> np.ndarray:
    """Like ``torch.nn.functional.conv2d`` (NCHW input, KCRS weights, no groups/dilation)."""
    x, w = _f32(x, "x", 4), _f32(w, "w", 4)
    N, C, H, W = x.shape
    K, C2, R, S = w.shape
    if C != C2:
        raise ValueError(
            f"conv2d: x has {C} channels (shape {x.shape}) but w expects {C2} (shape {w.shape})"
        )
    (ph, pw) = ops._pair(padding, "padding")
    P, Q = ops.conv_shape(H, W, R, S, stride, padding)
    block = ops.conv_block(Q)
    cb, kb = ops.channel_block(C, block), ops.channel_block(K, block)
    xp = np.zeros((N, C // cb, H + 2 * ph, W + 2 * pw, cb), np.float32)
    compiled(ops.pack_input, N, C, H, W, padding=(ph, pw), block=block, threads=threads)(xp, x)
    wp = pack_weights(w, block=block, threads=threads)
    args = [xp, wp]
    if bias is not None:
        bias = _f32(bias, "bias", 1)
        if bias.shape != (K,):
            raise ValueError(f"conv2d: bias must have shape ({K},), got {bias.shape}")
        args.append(bias.reshape(K // kb, kb))
    conv = compiled(
        ops.conv2d,
        N,
        C,
        K,
        H,
        W,
        R,
        S,
        stride=ops._pair(stride, "stride"),
        padding=(ph, pw),
        bias=bias is not None,
        activation=activation,
        layout="nchwc",
        block=block,
        threads=threads,
    )
    op = np.empty((N, K // kb, P, Q, kb), np.float32)
    conv(op, *args)
    y = np.empty((N, K, P, Q), np.float32)
    compiled(ops.unpack_output, N, K, P, Q, block=block, threads=threads)(y, op)
    return y


def pack_weights(
    w: np.ndarray, *, block: int | None = None, threads: int | None = None
) -> np.ndarray:
    """KCRS weights in the blocked layout ``[K/kb, C/cb, R, S, cb, kb]`` of ``ops.conv2d``
    (``block`` as given to it; default :func:`ops.default_block`)."""
    w = _f32(w, "w", 4)
    K, C, R, S = w.shape
    cb, kb = ops.channel_block(C, block), ops.channel_block(K, block)
    wp = np.empty((K // kb, C // cb, R, S, cb, kb), np.float32)
    compiled(ops.pack_weights, K, C, R, S, block=block, threads=threads)(wp, w)
    return wp
