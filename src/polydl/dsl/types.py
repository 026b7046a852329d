"""Argument annotations of DSL kernels: ``pd.f32["M", "N"]`` (a tensor) and ``pd.f32`` (a scalar).

A dimension is a size-parameter name (a string, bound when the kernel is compiled) or an int.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class TensorType:
    """The annotation of a tensor argument: element type and dimensions."""

    dtype: str
    shape: tuple[str | int, ...]

    def __repr__(self) -> str:
        return f"pd.{self.dtype}[{', '.join(map(repr, self.shape))}]"


@dataclass(frozen=True, kw_only=True)
class DType:
    """An element type; bare it annotates a scalar argument, subscripted a tensor argument."""

    name: str
    numpy: str

    def __getitem__(self, dims) -> TensorType:
        dims = dims if isinstance(dims, tuple) else (dims,)
        if not dims:
            raise TypeError(f"pd.{self.name}[...] needs at least one dimension")
        for d in dims:
            if isinstance(d, bool) or not isinstance(d, str | int):
                raise TypeError(
                    f"pd.{self.name}[...]: a dimension is a size name (str) or an int, got {d!r}"
                )
            if isinstance(d, str) and not d.isidentifier():
                raise TypeError(f"pd.{self.name}[...]: size name {d!r} is not an identifier")
            if isinstance(d, int) and d <= 0:
                raise TypeError(f"pd.{self.name}[...]: dimension {d} must be positive")
        return TensorType(dtype=self.name, shape=tuple(dims))

    def __repr__(self) -> str:
        return f"pd.{self.name}"


f32 = DType(name="f32", numpy="float32")
f64 = DType(name="f64", numpy="float64")
# bfloat16: float32's range with an 8-bit mantissa. Arithmetic on it is float32; a store to a
# bf16 tensor rounds to nearest even (NaN stays NaN). Arrays: ml_dtypes.bfloat16 or uint16.
bf16 = DType(name="bf16", numpy="bfloat16")
