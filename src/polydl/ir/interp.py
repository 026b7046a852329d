"""A NumPy interpreter of ``ir.Kernel``: runs every statement instance in schedule order.

The oracle of the passes: a pass maps a kernel to another with the same meaning, so
interpreting its input and its output on the same arrays must give the same results
(``tests/test_passes.py``). It needs no LLVM: the schedule's isl AST (``ir/poly.ast``) is walked
in Python, plain statements are evaluated element by element, BRGEMM statements
(``Statement.micro``) call the microkernels' NumPy twin (``kernels/reference.py``), packed
operand copies (``transform/pack.py``) are followed too. Slow (a Python step per instance):
for small kernels in tests and for debugging.

    run(kernel, {"C": c, "A": a, "B": b}, {"alpha": 1.5})   # arrays updated in place
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from . import loops as L
from . import poly
from .nodes import Arg, BinOp, Expr, Kernel, Load, Micro, Num, UnOp, eval_int

_UN = {
    "neg": lambda x: -x,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "tanh": math.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + math.exp(-x)),
    "erf": math.erf,
}
_BIN = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
    "max": max,
    "min": min,
}
_UPDATE = {"+=": "+", "-=": "-", "*=": "*", "/=": "/"}


def run(
    kernel: Kernel,
    arrays: Mapping[str, np.ndarray],
    scalars: Mapping[str, float] | None = None,
    *,
    tree: tuple[L.Node, ...] | None = None,
) -> None:
    """Execute ``kernel`` (sizes bound) on ``arrays`` (its tensor arguments, updated in place)
    and ``scalars``; ``tree``: a loop tree of it to walk instead of the schedule's AST (one
    that ``transform/pack.py`` rewrote, say). Scratch tensors start as NaN, so reading one
    before it is written shows in the results."""
    flat = {}
    for t in kernel.tensors:
        a = arrays[t.name]
        if a.shape != kernel.shape_of(t.name) or not a.flags.c_contiguous:
            raise ValueError(
                f"interp: {t.name} must be C-contiguous of shape {kernel.shape_of(t.name)}"
            )
        flat[t.name] = a.reshape(-1)
    for t in kernel.temps:
        flat[t.name] = np.full(math.prod(kernel.shape_of(t.name)), np.nan, np.float32)
    if tree is None:
        sched = poly.union(poly.schedule(kernel, s) for s in kernel.statements)
        tree = poly.ast(sched, poly.context(kernel), {})
    _Machine(kernel, flat, dict(scalars or {})).nodes(tree, dict(kernel.size_values))


class _Machine:
    def __init__(self, kernel: Kernel, flat: dict[str, np.ndarray], scalars: dict) -> None:
        self.k = kernel
        self.flat = flat
        self.scalars = scalars
        self.stmts = {s.name: s for s in kernel.statements}
        self.strides = {t.name: _strides(kernel.shape_of(t.name)) for t in kernel.all_tensors}
        self.buffers: dict[str, np.ndarray] = {}

    def nodes(self, nodes: tuple[L.Node, ...], env: dict[str, int]) -> None:
        for n in nodes:
            self.node(n, env)

    def node(self, n: L.Node, env: dict[str, int]) -> None:
        if isinstance(n, L.For):
            v = eval_int(n.init, env)
            while True:
                env[n.var] = v
                if not _cond(n.cond, env):
                    break
                self.nodes(n.body, env)
                v += n.step
            env.pop(n.var, None)
        elif isinstance(n, L.If):
            self.nodes(n.then if _cond(n.cond, env) else n.orelse, env)
        elif isinstance(n, L.Assign):
            env[n.var] = eval_int(n.value, env)
        elif isinstance(n, L.Buffer):
            self.buffers[n.name] = np.full(n.elems, np.nan, np.float32)
        elif isinstance(n, L.Copy):
            src, dst = eval_int(n.src, env), eval_int(n.dst, env)
            row = self.flat[n.tensor][src : src + n.count]
            if n.kind == "rows":
                self.buffers[n.buf][dst : dst + n.count] = row
            else:
                mate = self.flat[n.tensor][src + n.ld : src + n.ld + n.count]
                self.buffers[n.buf][dst : dst + 2 * n.count : 2] = row
                self.buffers[n.buf][dst + 1 : dst + 2 * n.count : 2] = (
                    mate if n.kind == "pairs" else 0.0
                )
        elif isinstance(n, L.Call):
            self.call(n, env)
        else:  # pragma: no cover - every node kind is handled above
            raise TypeError(f"interp: unknown loop-tree node {n!r}")

    def call(self, c: L.Call, env: dict[str, int]) -> None:
        s = self.stmts[c.stmt]
        it = {**env, **{v: eval_int(a, env) for v, a in zip(s.iterators, c.args, strict=True)}}
        if s.micro is not None:
            self.micro(s.micro, it, c.packed_b, c.packed_vnni)
            return
        if s.transpose is not None:
            from ..kernels.transpose import TransposeConfig, reference_transpose

            tr = s.transpose
            cfg = TransposeConfig(
                rows=tr.rows, cols=tr.cols, lds=tr.lds, ldd=tr.ldd, dtype=tr.dtype
            )
            src0, dst0 = eval_int(tr.src_origin, it), eval_int(tr.dst_origin, it)
            reference_transpose(cfg, self.flat[tr.src][src0:], self.flat[tr.dst][dst0:])
            return
        off = self.offset(s.target, it)
        value = self.expr(s.expr, it)
        buf = self.flat[s.target.tensor]
        if s.op != "=":
            value = _BIN[_UPDATE[s.op]](float(buf[off]), value)
        buf[off] = value

    def offset(self, ld: Load, env: dict[str, int]) -> int:
        return sum(
            eval_int(e, env) * st for e, st in zip(ld.index, self.strides[ld.tensor], strict=True)
        )

    def expr(self, e: Expr, env: dict[str, int]) -> float:
        if isinstance(e, Num):
            return e.value
        if isinstance(e, Arg):
            return float(self.scalars[e.name])
        if isinstance(e, Load):
            return float(self.flat[e.tensor][self.offset(e, env)])
        if isinstance(e, BinOp):
            return _BIN[e.op](self.expr(e.a, env), self.expr(e.b, env))
        if isinstance(e, UnOp):
            return _UN[e.op](self.expr(e.a, env))
        raise TypeError(f"interp: unknown expression {e!r}")  # pragma: no cover

    def micro(self, mk: Micro, env: dict[str, int], packed_b, vnni: bool = False) -> None:
        from ..kernels import BrgemmConfig, reference

        a0, b0, c0 = (eval_int(x, env) for x in (mk.a_origin, mk.b_origin, mk.c_origin))
        b_src, b_offs = self.flat[mk.b][b0:], mk.b_offsets
        if packed_b is not None:
            buf, at = packed_b
            b_src = self.buffers[buf][eval_int(at, env) :]
        cfg = BrgemmConfig.of_call(mk, packed=packed_b is not None, vnni=vnni)
        if packed_b is not None:
            b_offs = tuple(i * cfg.b_rows * mk.n for i in range(len(mk.b_offsets)))
        operands = [self.flat[t][eval_int(at, env) :] for t, at in mk.operands]
        c = self.flat[mk.c]
        out = reference(
            cfg,
            self.flat[mk.a][a0:],
            b_src,
            c[c0:],
            a_offsets=np.array(mk.a_offsets, np.int64),
            b_offsets=np.array(b_offs, np.int64),
            operands=operands,
            alpha=self.scalars.get(mk.alpha_arg) if mk.alpha_arg else None,
        )
        c[c0:] = out


def _strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return tuple(reversed(out))


def _cond(c: L.Cond, env: dict[str, int]) -> bool:
    if isinstance(c, L.BoolOp):
        a = _cond(c.a, env)
        return (a and _cond(c.b, env)) if c.op == "and" else (a or _cond(c.b, env))
    a, b = eval_int(c.a, env), eval_int(c.b, env)
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b}[c.op]
