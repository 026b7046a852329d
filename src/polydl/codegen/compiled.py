"""The callable a compilation returns: argument checks, cached pointers, one ctypes call."""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import numpy as np

from .. import jit
from ..ir import loops as L
from ..ir.nodes import Kernel, ScalarArg, TensorArg
from ..kernels import amx
from ..kernels.amx import MARK as AMX_MARK
from .llvm import ENTRY

NP_DTYPE = {
    "f32": "float32",
    "f64": "float64",
    "bf16": "bfloat16 (ml_dtypes.bfloat16, or uint16 bits)",
}


_NP = {"f32": np.dtype(np.float32), "f64": np.dtype(np.float64), "u16": np.dtype(np.uint16)}


def _dtype_ok(v: np.ndarray, dtype: str) -> bool:
    dt = v.dtype
    if dtype == "bf16":
        return dt == _NP["u16"] or dt.name == "bfloat16"
    return dt == _NP[dtype]


class CompiledKernel:
    """A kernel compiled for fixed sizes; call it like the DSL function (outputs in place).

    Arguments are checked before anything runs (arity, names, shapes, dtypes, C-contiguity,
    writeability of outputs, overlapping buffers): a refused call writes nothing.
    """

    def __init__(
        self,
        *,
        kernel: Kernel,
        tree: tuple[L.Node, ...],
        llvm_ir: str,
        cpu: str,
        threads: int,
        schedule=None,
        fusion: tuple = (),
    ):
        self.kernel = kernel
        self.tree = tree
        self.llvm_ir = llvm_ir
        self.cpu = cpu
        self.threads = threads
        self.schedule = schedule  # polydl.schedule.Schedule of the optimiser's choices (or None)
        self.fusion = fusion  # transform/fuse.Candidate of every pair of nests considered
        self.tuned: str | None = None  # where a tuned record came from (pd.compile sets it)
        self.sizes = kernel.size_values
        self._module: jit.JitModule | None = None
        self._fn = None
        self._lock = threading.Lock()
        tensors = kernel.tensors
        self._shapes = {t.name: kernel.shape_of(t.name) for t in tensors}
        self._written = {s.target.tensor for s in kernel.statements}
        self._names = [a.name for a in kernel.args]
        self._tensor_pos = [i for i, a in enumerate(kernel.args) if isinstance(a, TensorArg)]
        self._scalar_pos = [i for i, a in enumerate(kernel.args) if isinstance(a, ScalarArg)]
        self._tensor_shapes = [self._shapes[kernel.args[i].name] for i in self._tensor_pos]
        self._tensor_names = [kernel.args[i].name for i in self._tensor_pos]
        self._tls = threading.local()

    # ------------------------------------------------------------ compilation
    def load(self, obj: bytes | None = None):
        """JIT-compile now (otherwise done at the first call); returns the native entry.
        ``obj``: the module's object code, compiled elsewhere by ``jit.emit_object`` from this
        kernel's ``llvm_ir`` (then only linked here)."""
        if self._fn is None:
            with self._lock:
                if self._fn is None:
                    name = self.kernel.name
                    self._module = (
                        jit.build(self.llvm_ir, target=self.cpu, name=name)
                        if obj is None
                        else jit.load_object(obj, ir=self.llvm_ir, target=self.cpu, name=name)
                    )
                    if AMX_MARK in self.llvm_ir:  # Linux hands out the tile state on request
                        amx.request_permission()
                    self._fn = self._module.cfunc(
                        ENTRY, None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32
                    )
        return self._fn

    def show(self, what: str = "loops") -> str:
        """``"loops"``: the transformed nest as C-like text; ``"variants"``: the ranked
        variants of each contraction; ``"schedule"``: the record of the choices, as JSON
        (``pd.compile(kernel, schedule=...)`` replays it); ``"fusion"``: each pair of nests
        offered for fusion, its verdict and why; ``"llvm"``, ``"llvm-opt"``; ``"asm"``."""
        if what == "loops":
            text = {
                s.name: f"{s.micro or s.transpose}  <- {s.source}  (line {s.line})"
                if s.micro or s.transpose
                else f"{s.source}  (line {s.line})"
                for s in self.kernel.statements
            }
            head = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
            return f"// {self.kernel.name}({head}), threads={self.threads}\n" + L.to_c(
                self.tree, text
            )
        if what == "variants":
            if self.schedule is None or not self.schedule.contractions:
                return f"// {self.kernel.name}: no contraction was ranked (nothing to choose)"
            from ..schedule import format_schedule

            return format_schedule(self.schedule, tuned=self.tuned)
        if what == "schedule":
            if self.schedule is None:
                return f"// {self.kernel.name}: compiled with optimize=False (no schedule)"
            return self.schedule.choices().to_json()
        if what == "fusion":
            head = f"// {self.kernel.name}: fusion of consecutive nests"
            if not self.fusion:
                return f"{head}: none considered (one nest, or optimize=False)"
            return "\n".join([head, *(c.line() for c in self.fusion)])
        if what == "llvm":
            return self.llvm_ir
        if what in ("llvm-opt", "llvm_opt"):
            return jit.optimized_ir(self.llvm_ir, cpu=self.cpu, name=self.kernel.name)
        if what == "asm":
            return jit.emit_asm(self.llvm_ir, cpu=self.cpu, name=self.kernel.name)
        raise ValueError(
            f"show() takes 'loops', 'variants', 'schedule', 'fusion', 'llvm', 'llvm-opt' or "
            f"'asm', not "
            f"{what!r}"
        )

    # ------------------------------------------------------------ calling
    def bind_args(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        """Match positional and keyword arguments to the kernel's parameters."""
        name = self.kernel.name
        if len(args) > len(self._names):
            raise TypeError(
                f"{name}() takes {len(self._names)} arguments ({', '.join(self._names)}), got {len(args)}"
            )
        bound = dict(zip(self._names, args, strict=False))
        for k, v in kwargs.items():
            if k in self.kernel.free_sizes and k not in self._names:
                if v != self.kernel.size_values[k]:
                    raise ValueError(
                        f"{name}() was compiled for {k}={self.kernel.size_values[k]}, got "
                        f"{k}={v!r}; compile again for another {k}"
                    )
                continue
            if k not in self._names:
                raise TypeError(
                    f"{name}() got an unexpected argument {k!r}; parameters: {', '.join(self._names)}"
                )
            if k in bound:
                raise TypeError(f"{name}() got argument {k!r} twice")
            bound[k] = v
        missing = [n for n in self._names if n not in bound]
        if missing:
            raise TypeError(f"{name}() is missing argument(s) {', '.join(map(repr, missing))}")
        return bound

    def check(self, bound: dict[str, Any], changed: set[str] | None = None) -> None:
        """Refuse a call whose arguments do not fit (see the class docstring). ``changed``:
        the tensors that differ from an earlier call whose arguments passed; the others are
        not checked again, nor are overlaps between two of them."""
        name = self.kernel.name
        arrays = []
        for a in self.kernel.args:
            v = bound[a.name]
            if changed is not None and isinstance(a, TensorArg) and a.name not in changed:
                arrays.append((a.name, v))
                continue
            if isinstance(a, ScalarArg):
                if isinstance(v, (bool, np.bool_)) or not isinstance(
                    v, (int, float, np.integer, np.floating)
                ):
                    raise TypeError(
                        f"{name}(): scalar argument {a.name!r} must be a number, got {type(v).__name__}"
                    )
                continue
            assert isinstance(a, TensorArg)
            want = self._shapes[a.name]
            if not isinstance(v, np.ndarray):
                raise TypeError(
                    f"{name}(): argument {a.name!r} must be a numpy array of shape {want} and dtype {NP_DTYPE[a.dtype]}, got {type(v).__name__}"
                )
            if not _dtype_ok(v, a.dtype):
                raise TypeError(
                    f"{name}(): argument {a.name!r} must have dtype {NP_DTYPE[a.dtype]}, got {v.dtype}"
                )
            if v.shape != want:
                raise ValueError(
                    f"{name}(): argument {a.name!r} must have shape {want} (sizes {self.sizes}), got {v.shape}"
                )
            if not v.flags.c_contiguous:
                raise ValueError(
                    f"{name}(): argument {a.name!r} must be C-contiguous (use np.ascontiguousarray)"
                )
            if a.name in self._written and not v.flags.writeable:
                raise ValueError(
                    f"{name}(): argument {a.name!r} is written by the kernel but is read-only"
                )
            arrays.append((a.name, v))
        for i, (n1, v1) in enumerate(arrays):
            for n2, v2 in arrays[i + 1 :]:
                if changed is not None and n1 not in changed and n2 not in changed:
                    continue
                if (n1 in self._written or n2 in self._written) and np.may_share_memory(v1, v2):
                    raise ValueError(
                        f"{name}(): arguments {n1!r} and {n2!r} share memory; pass distinct arrays"
                    )

    def __call__(self, *args, **kwargs) -> None:
        fn = self._fn if self._fn is not None else self.load()
        if kwargs or len(args) != len(self._names):
            bound = self.bind_args(args, kwargs)
            args = tuple(bound[n] for n in self._names)
        st = self._state()
        tensors = tuple(args[i] for i in self._tensor_pos)
        last = st.last
        if len(last) != len(tensors):
            new = list(range(len(tensors)))
        else:
            new = [
                i
                for i, (t, u, sh) in enumerate(zip(tensors, last, self._tensor_shapes, strict=True))
                if t is not u or getattr(t, "shape", None) != sh
            ]
        if new:
            # new arrays: check them (all of them on the first call), then cache their data
            # pointers for the next calls
            changed = None if len(last) != len(tensors) else {self._tensor_names[i] for i in new}
            st.last = ()
            self.check(dict(zip(self._names, args, strict=True)), changed)
            for i in new:
                st.ptrs[i] = tensors[i].__array_interface__["data"][0]
            st.last = tensors
        for i, pos in enumerate(self._scalar_pos):
            v = args[pos]
            if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
                self.check(dict(zip(self._names, args, strict=True)))
            st.scalars[i] = v
        fn(st.ptrs_addr, st.scalars_addr, self.threads)

    def holds(self, a) -> int:
        """How many references to ``a`` this thread's argument cache keeps (the arrays of its
        last call, kept to skip their checks when the same arrays come again)."""
        st = getattr(self._tls, "st", None)
        return 0 if st is None else sum(t is a for t in st.last)

    def _state(self):
        """Per-thread argument buffers, so that threads may call one kernel concurrently."""
        st = getattr(self._tls, "st", None)
        if st is None:
            st = self._tls.st = _CallState(len(self._tensor_pos), len(self._scalar_pos))
        return st

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return f"<CompiledKernel {self.kernel.name}({sizes}) cpu={self.cpu} threads={self.threads}>"


class _CallState:
    """One thread's ctypes argument arrays and the arrays whose pointers they hold."""

    def __init__(self, n_tensors: int, n_scalars: int):
        self.ptrs = (ctypes.c_void_p * max(1, n_tensors))()
        self.scalars = (ctypes.c_double * max(1, n_scalars))()
        self.ptrs_addr = ctypes.addressof(self.ptrs)
        self.scalars_addr = ctypes.addressof(self.scalars)
        self.last: tuple = ()
