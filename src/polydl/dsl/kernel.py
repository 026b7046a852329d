"""``@pd.kernel``: a DSL function, its IR, its sequential reference and shape-driven calls."""

from __future__ import annotations

import functools
import inspect
import sys
import threading
import types
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import where
from ..ir.nodes import Int, Kernel, TensorArg, Var
from .parse import parse


def kernel(fn: types.FunctionType) -> KernelFunction:
    """Decorate a DSL function: parsed now (a :class:`~polydl.errors.DSLError` surfaces here).

    An argument annotated with an expression that evaluates to ``None`` at definition
    (``b: pd.f32[n] if bias else None`` in a factory) is absent: the kernel, its call signature
    and ``.reference`` have no such argument, and its name may appear only in a branch that a
    static ``if`` drops (docs/API.md, section 1).

    String annotations (``from __future__ import annotations``) are evaluated in the scope that
    applies the decorator (a factory's locals, then the function's closure and globals), like
    Python evaluates plain annotations at definition."""
    scope = None
    if any(isinstance(a, str) for a in getattr(fn, "__annotations__", {}).values()):
        frame = sys._getframe(1)
        scope = dict(frame.f_locals)
        del frame
    return KernelFunction(fn, scope=scope)


class KernelFunction:
    """A parsed DSL kernel.

    - ``ir``: the :class:`~polydl.ir.nodes.Kernel` (symbolic sizes);
    - ``signature``: the call signature, the function's less its absent arguments (``absent``,
      annotated ``None``); ``inspect.signature`` of the kernel gives it too;
    - ``reference(*args, **kwargs)``: the sequential meaning, the original Python body run on
      the NumPy arrays in place with the size names bound from their shapes (absent arguments
      are passed as ``None``: the body never reads them);
    - ``sizes_for(*args, **kwargs)``: the size bindings the arrays' shapes imply;
    - calling it compiles for those sizes (cached per sizes) and runs the compiled code.
    """

    def __init__(self, fn: types.FunctionType, *, scope: Mapping[str, Any] | None = None) -> None:
        self.fn = fn
        self.ir: Kernel = parse(fn, scope=scope)
        self.free_sizes = self.ir.free_sizes  # sizes no array's shape gives (``range(T)``)
        self.name: str = fn.__name__
        full = inspect.signature(fn)
        present = {a.name for a in self.ir.args}
        self.absent: tuple[str, ...] = tuple(p for p in full.parameters if p not in present)
        self.signature = full.replace(
            parameters=[p for p in full.parameters.values() if p.name in present]
        )
        self._compiled: dict[tuple[tuple[str, int], ...], Any] = {}
        self._lock = threading.Lock()
        functools.update_wrapper(self, fn)
        self.__signature__ = self.signature  # inspect.signature(kernel): without absent args

    def __repr__(self) -> str:
        args = ", ".join(a.name for a in self.ir.args)
        return f"<pd.kernel {self.name}({args}) sizes={list(self.ir.sizes)}>"

    def split_sizes(self, kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
        """``kwargs`` less the sizes no array's shape gives (``T=10`` for ``range(T)``), and
        those sizes as ints."""
        if not self.free_sizes:  # the common case: every size comes from a shape
            return dict(kwargs), {}
        rest, sizes = {}, {}
        for k, v in kwargs.items():
            if k in self.free_sizes:
                if isinstance(v, bool) or not isinstance(v, int | np.integer) or v <= 0:
                    raise TypeError(
                        f"kernel {self.name!r}: size {k} must be a positive int, got {v!r}"
                    )
                sizes[k] = int(v)
            else:
                rest[k] = v
        return rest, sizes

    def bind(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Arguments by parameter name (positional and keyword, like a Python call)."""
        kwargs, _ = self.split_sizes(kwargs)
        try:
            ba = self.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"kernel {self.name!r}: {e}") from None
        return dict(ba.arguments)

    def sizes_for(self, *args: Any, **kwargs: Any) -> dict[str, int]:
        """Size bindings unified from every tensor argument's shape (ValueError on conflict),
        plus the sizes no shape gives, passed by keyword (TypeError when one is missing)."""
        given = self.bind(*args, **kwargs)
        _, sizes = self.split_sizes(kwargs)
        missing = [s for s in self.free_sizes if s not in sizes]
        if missing:
            raise TypeError(
                f"{where(self.ir.filename, self.ir.line)} kernel {self.name!r}: size "
                f"{', '.join(map(repr, missing))} shapes no array (it is used only in loop "
                f"bounds, conditions or indices); pass it by keyword, e.g. "
                f"{self.name}(..., {missing[0]}=10)"
            )
        origin: dict[str, str] = {}
        for a in self.ir.tensors:
            x = given[a.name]
            shape = getattr(x, "shape", None)
            if shape is None:
                raise TypeError(
                    f"kernel {self.name!r}: argument {a.name!r} must be a NumPy array of shape "
                    f"{_expected(a, sizes)}, got {type(x).__name__}"
                )
            shape = tuple(int(d) for d in shape)
            if len(shape) != len(a.shape):
                raise ValueError(
                    f"kernel {self.name!r}: argument {a.name!r} has shape {shape} but "
                    f"{len(a.shape)} dimensions {_expected(a, sizes)} are expected"
                )
            for k, (d, n) in enumerate(zip(a.shape, shape, strict=True)):
                if isinstance(d, Int) and d.value != n:
                    raise ValueError(
                        f"kernel {self.name!r}: argument {a.name!r} has shape {shape} but shape "
                        f"{_expected(a, sizes)} is expected (dimension {k} must be {d.value})"
                    )
                if isinstance(d, Var):
                    if d.name in sizes and sizes[d.name] != n:
                        raise ValueError(
                            f"kernel {self.name!r}: argument {a.name!r} has shape {shape} but "
                            f"shape {_expected(a, sizes)} is expected: {d.name}={sizes[d.name]} "
                            f"from argument {origin[d.name]!r}, {n} here"
                        )
                    sizes[d.name] = n
                    origin.setdefault(d.name, a.name)
        return sizes

    def reference(self, *args: Any, **kwargs: Any) -> None:
        """Run the original Python body sequentially on the given arrays (updated in place)."""
        sizes = self.sizes_for(*args, **kwargs)
        given = self.bind(*args, **kwargs)
        env = dict(self.fn.__globals__)
        env.update(sizes)
        fn = types.FunctionType(
            self.fn.__code__, env, self.fn.__name__, self.fn.__defaults__, self.fn.__closure__
        )
        bf16 = {a.name for a in self.ir.tensors if a.dtype == "bf16"}
        held: frozenset[str] = frozenset()
        if bf16:
            from ..analysis.contraction import bf16_accumulated
            from ..pipeline import bind_sizes

            held = bf16_accumulated(bind_sizes(self.ir, sizes))
        wrapped = {k: _BF16(v, held=k in held) for k, v in given.items() if k in bf16}
        fn(**{**given, **wrapped}, **dict.fromkeys(self.absent))
        for w in wrapped.values():
            w.flush()

    def compiled(self, sizes: Mapping[str, int]) -> Any:
        """The compiled kernel for ``sizes`` (compiled once per sizes, then cached)."""
        key = tuple(sorted(sizes.items()))
        with self._lock:
            ck = self._compiled.get(key)
        if ck is None:
            from ..api import compile as _compile

            ck = _compile(self, **dict(sizes))
            with self._lock:
                ck = self._compiled.setdefault(key, ck)
        return ck

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Compile for the arguments' shapes (cached) and run; outputs are updated in place."""
        sizes = self.sizes_for(*args, **kwargs)
        return self.compiled(sizes)(*args, **self.split_sizes(kwargs)[0])


def _expected(a: TensorArg, sizes: Mapping[str, int]) -> str:
    dims = []
    for d in a.shape:
        if isinstance(d, Var) and d.name in sizes:
            dims.append(f"{d.name}={sizes[d.name]}")
        else:
            dims.append(str(d))
    return f"({', '.join(dims)})" if len(dims) != 1 else f"({dims[0]},)"


class _BF16:
    """A bf16 array as :meth:`KernelFunction.reference` sees it: elements read as float32
    (arithmetic on them is float32), stores rounded to bfloat16 (to nearest, ties to even),
    the array itself (``ml_dtypes.bfloat16`` or its ``uint16`` bits) updated in place.
    ``held``: the C of a bf16 contraction (``analysis.contraction.bf16_accumulated``): its
    elements are held in float32 while the kernel runs and rounded once, by :meth:`flush`."""

    def __init__(self, a: np.ndarray, *, held: bool = False):
        import ml_dtypes

        self.array = a.view(ml_dtypes.bfloat16) if a.dtype == np.uint16 else a
        self.shape = a.shape
        self.held = self.array.astype(np.float32) if held else None
        self.written = np.zeros(a.shape, bool) if held else None

    def __getitem__(self, idx):
        return np.float32((self.array if self.held is None else self.held)[idx])

    def __setitem__(self, idx, value) -> None:
        if self.held is None:
            self.array[idx] = np.float32(value)
        else:
            self.held[idx] = np.float32(value)
            self.written[idx] = True

    def flush(self) -> None:
        """Round the held elements that were written into the array (once)."""
        if self.held is not None:
            self.array[self.written] = self.held[self.written]
