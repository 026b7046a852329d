"""Convolution weights packed once (``pd.nn.ConvWeights``): what ``pd.nn.conv2d`` takes in
place of a KCRS array when the same weights serve many calls (inference).

``pd.nn.conv2d`` on the blocked layout (API.md section 4) copies the KCRS weights into the
blocked ``[K/kb, C/cb, R, S, cb, kb]`` layout of ``ops.conv2d(layout="nchwc")`` at every call:
for ResNet-50's 3x3 layers in bf16 that cost as much as 10% (resnet_12, 1.2 MB) to 50%
(resnet_17, 4.7 MB) of the convolution with ``ops.pack_weights``, about half that with the
one-pass VNNI-2 pack (:func:`weight_packer`, ``kernels/pack_vnni.py``). A :class:`ConvWeights` is a private, read-only copy of
the weights taken when it is made (changing the caller's array afterwards changes nothing:
make a new one), and it keeps each packed form it has been asked for (per block and element
type), so the packing runs once.
"""

from __future__ import annotations

import threading

import numpy as np

from . import memory, ops


def weight_packer(K: int, C: int, R: int, S: int, block, dtype: str, vnni: bool, threads):
    """The compiled pack of KCRS weights into the blocked layout (arguments ``(Wp, Wt)``):
    ``ops.pack_weights``, or for bf16 VNNI-2 pairs the one-pass kernel of
    ``kernels/pack_vnni.py`` where the host has vectors. Measured on a Zen 4 host
    (512x512x3x3, 4.7 MB): 0.42 / 0.27 ms for ``ops.pack_weights`` at 1 / 2 threads, 0.22 /
    0.11 ms for the one-pass kernel, against 0.10 ms for a plain copy."""
    from .nn import compiled

    if vnni:
        from .kernels.pack_vnni import pack_vnni
        from .pipeline import default_threads

        cb, kb = ops.channel_block(C, block), ops.channel_block(K, block)
        n = default_threads() if threads is None else int(threads)
        fast = pack_vnni(K, C, R, S, cb, kb, n)
        if fast is not None:
            return fast
    return compiled(
        ops.pack_weights, K, C, R, S, block=block, dtype=dtype, vnni=vnni, threads=threads
    )


class ConvWeights:
    """A snapshot of KCRS convolution weights (float32, or bfloat16: ``ml_dtypes`` or uint16
    bits) and their packed forms, made once: pass it to ``pd.nn.conv2d`` as ``w``."""

    def __init__(self, w: np.ndarray):
        if isinstance(w, ConvWeights):
            w = w.array
        if not isinstance(w, np.ndarray):
            raise TypeError(f"ConvWeights: w must be a numpy array, got {type(w).__name__}")
        if w.ndim != 4:
            raise ValueError(f"ConvWeights: w must have 4 dimensions (KCRS), got shape {w.shape}")
        if not (memory.is_bf16(w) or w.dtype == np.float32):
            raise TypeError(f"ConvWeights: w must be float32 or bfloat16, got {w.dtype}")
        self.array = memory.aligned(np.array(w, copy=True))
        self.array.setflags(write=False)
        self._packed: dict[tuple, np.ndarray] = {}
        self._lock = threading.RLock()  # a packed form is made from another

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def as_dtype(self, dtype: str) -> np.ndarray:
        """The KCRS weights in ``"f32"`` or ``"bf16"`` (rounded once, kept)."""
        return self._get(("kcrs", dtype), lambda: self._convert(dtype))

    def blocked(
        self, block: int, dtype: str, threads: int | None = None, *, vnni: bool = False
    ) -> np.ndarray:
        """The weights in the blocked layout of ``ops.conv2d(layout="nchwc", block=block)``
        (``ops.pack_weights``), in ``"f32"`` or ``"bf16"`` (``vnni``: bf16 input channels in
        pairs, ``[K/kb, C/cb, R, S, cb/2, kb, 2]``); packed at the first request."""

        def pack() -> np.ndarray:
            src = self.as_dtype(dtype)
            K, C, R, S = src.shape
            cb, kb = ops.channel_block(C, block), ops.channel_block(K, block)
            inner = (cb // 2, kb, 2) if vnni else (cb, kb)
            wp = memory.empty((K // kb, C // cb, R, S, *inner), src.dtype)
            weight_packer(K, C, R, S, block, dtype, vnni, threads)(wp, src)
            return wp

        return self._get(("blocked", block, dtype, vnni), pack)

    def _convert(self, dtype: str) -> np.ndarray:
        is_bf16 = memory.is_bf16(self.array)
        if dtype == "bf16":
            out = self.array if is_bf16 else memory.to_bf16(self.array)
        else:
            out = memory.aligned(memory.from_bf16(self.array)) if is_bf16 else self.array
        return out

    def _get(self, key: tuple, make) -> np.ndarray:
        with self._lock:
            found = self._packed.get(key)
            if found is None:
                found = self._packed[key] = make()
                found.setflags(write=False)
            return found

    def __repr__(self) -> str:
        forms = ", ".join(str(k) for k in self._packed) or "none yet"
        return f"<ConvWeights shape={self.shape} dtype={self.dtype} packed: {forms}>"
