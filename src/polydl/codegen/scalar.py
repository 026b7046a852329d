"""Scalar expressions -> LLVM instructions: floats, integers and conditions of one loop nest.

:class:`ScalarEmitter` is the half of :class:`~polydl.codegen.llvm.ModuleEmitter` that lowers
an expression tree to a list of instruction lines and names the value it computes
(``float_expr``, ``int_value``, ``cond_value``); the module emitter supplies the state it needs
(``k`` the kernel, ``sizes`` the bound sizes, ``decls`` the module's declarations, ``fresh``
for new SSA names, ``address`` for a load's pointer). Floats use the fast-math flags ``FM``
(reductions may be reassociated, API.md section 1); integers follow Python's floor division.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..ir import loops as L
from ..ir.nodes import Arg, BinOp, Expr, IExpr, IntOp, Load, Num, UnOp, Var, eval_int, int_vars

LLTYPE = {"f32": "float", "f64": "double", "bf16": "i16"}  # bf16: its bits in memory
FM = "reassoc nsz arcp contract afn"  # float reductions may be reassociated (API.md, section 1)


def float_literal(value: float, dtype: str) -> str:
    """LLVM's hexadecimal literal for ``value`` rounded to ``dtype``."""
    if dtype == "f32":
        value = struct.unpack("<f", struct.pack("<f", value))[0]
    return f"0x{struct.unpack('<Q', struct.pack('<d', value))[0]:016X}"


@dataclass
class _Code:
    """Instructions computing one value: ``code`` lines, then ``value`` (an operand)."""

    code: str
    value: str


def _sfx(dt: str) -> str:
    return "f32" if dt == "f32" else "f64"


class ScalarEmitter:
    """Expression lowering shared by the module emitter (a mixin: see the module docstring)."""

    def float_expr(self, e: Expr, env: dict[str, str], code: list[str], dt: str) -> str:
        ty = LLTYPE[dt]
        if isinstance(e, Num):
            return float_literal(e.value, dt)
        if isinstance(e, Arg):
            sdt = self.k.arg(e.name).dtype
            return self.convert(f"%s.{e.name}", sdt, dt, code)
        if isinstance(e, Load):
            addr = self.address(e, env, code)
            ldt = self.k.arg(e.tensor).dtype  # type: ignore[union-attr]
            v = self.fresh()
            code.append(f"  {v} = load {LLTYPE[ldt]}, ptr {addr}")
            return self.convert(v, ldt, dt, code)
        if isinstance(e, BinOp):
            a = self.float_expr(e.a, env, code, dt)
            b = self.float_expr(e.b, env, code, dt)
            v = self.fresh()
            if e.op in ("max", "min"):
                fname = f"llvm.{e.op}num.{_sfx(dt)}"
                self.decls.add(f"declare {ty} @{fname}({ty}, {ty})")
                code.append(f"  {v} = call {FM} {ty} @{fname}({ty} {a}, {ty} {b})")
            else:
                inst = {"+": "fadd", "-": "fsub", "*": "fmul", "/": "fdiv"}[e.op]
                code.append(f"  {v} = {inst} {FM} {ty} {a}, {b}")
            return v
        assert isinstance(e, UnOp)
        a = self.float_expr(e.a, env, code, dt)
        v = self.fresh()
        if e.op == "neg":
            code.append(f"  {v} = fneg {FM} {ty} {a}")
        elif dt == "f32" and e.op in ("exp", "tanh", "sigmoid", "erf"):
            # inline (kernels/generator.math_code), so that the loop vectoriser widens it
            from ..kernels.generator import math_code

            text, decls = math_code(e.op, v[1:], a, v)
            self.decls.update(decls)
            code.append(text.strip("\n"))
        elif e.op == "sigmoid":
            self.decls.add(f"declare {ty} @llvm.exp.{_sfx(dt)}({ty})")
            n, ex, d = self.fresh(), self.fresh(), self.fresh()
            code += [
                f"  {n} = fneg {FM} {ty} {a}",
                f"  {ex} = call {FM} {ty} @llvm.exp.{_sfx(dt)}({ty} {n})",
                f"  {d} = fadd {FM} {ty} {ex}, {float_literal(1.0, dt)}",
                f"  {v} = fdiv {FM} {ty} {float_literal(1.0, dt)}, {d}",
            ]
        elif e.op == "erf":  # no LLVM intrinsic: the C library's erff / erf
            fname = "erff" if dt == "f32" else "erf"
            self.decls.add(f"declare {ty} @{fname}({ty})")
            code.append(f"  {v} = call {ty} @{fname}({ty} {a})")
        else:
            fname = f"llvm.{e.op}.{_sfx(dt)}"
            self.decls.add(f"declare {ty} @{fname}({ty})")
            code.append(f"  {v} = call {FM} {ty} @{fname}({ty} {a})")
        return v

    def convert(self, v: str, src: str, dst: str, code: list[str]) -> str:
        if src == dst:
            return v
        if src == "bf16":  # the bits are the high half of the f32 (exact)
            z, sh, w = self.fresh(), self.fresh(), self.fresh()
            code += [
                f"  {z} = zext i16 {v} to i32",
                f"  {sh} = shl i32 {z}, 16",
                f"  {w} = bitcast i32 {sh} to float",
            ]
            return self.convert(w, "f32", dst, code)
        if dst == "bf16":  # round to nearest, ties to even; a NaN stays a (quiet) NaN
            f = self.convert(v, src, "f32", code)
            b, lsb, odd, bias, up, hi, nan, q, sel, w = (self.fresh() for _ in range(10))
            code += [
                f"  {b} = bitcast float {f} to i32",
                f"  {lsb} = lshr i32 {b}, 16",
                f"  {odd} = and i32 {lsb}, 1",
                f"  {bias} = add i32 {odd}, 32767",
                f"  {up} = add i32 {b}, {bias}",
                f"  {hi} = lshr i32 {up}, 16",
                f"  {nan} = fcmp uno float {f}, 0.0",
                f"  {q} = or i32 {lsb}, 64",
                f"  {sel} = select i1 {nan}, i32 {q}, i32 {hi}",
                f"  {w} = trunc i32 {sel} to i16",
            ]
            return w
        w = self.fresh()
        inst = "fpext" if src == "f32" else "fptrunc"
        code.append(f"  {w} = {inst} {LLTYPE[src]} {v} to {LLTYPE[dst]}")
        return w

    # ------------------------------------------------------------ integers and conditions
    def int_code(self, e: IExpr, env: dict[str, str]) -> _Code:
        code: list[str] = []
        value = self.int_value(e, env, code)
        return _Code(code="\n".join(x for x in code if x), value=value)

    def int_value(self, e: IExpr, env: dict[str, str], code: list[str]) -> str:
        const = self.const(e, env)
        if const is not None:
            return str(const)
        if isinstance(e, Var):
            if e.name in env:
                return env[e.name]
            if e.name.startswith("%"):
                return e.name
            v = self.fresh("i")
            code.append(f"  {v} = load i64, ptr %{e.name}.addr")
            return v
        assert isinstance(e, IntOp)
        a = self.int_value(e.a, env, code)
        b = self.int_value(e.b, env, code)
        v = self.fresh("i")
        match e.op:
            case "+" | "-" | "*":
                inst = {"+": "add", "-": "sub", "*": "mul"}[e.op]
                code.append(f"  {v} = {inst} nsw i64 {a}, {b}")
            case "min" | "max":
                fname = "llvm.smin.i64" if e.op == "min" else "llvm.smax.i64"
                self.decls.add(f"declare i64 @{fname}(i64, i64)")
                code.append(f"  {v} = call i64 @{fname}(i64 {a}, i64 {b})")
            case "//" | "%":
                # Python floor semantics: adjust truncating division when signs differ.
                q, r, neg, nz, fix = (self.fresh("i") for _ in range(5))
                code += [
                    f"  {q} = sdiv i64 {a}, {b}",
                    f"  {r} = srem i64 {a}, {b}",
                    f"  {nz} = icmp ne i64 {r}, 0",
                    f"  {neg} = icmp slt i64 {r}, 0",
                    f"  {fix} = and i1 {nz}, {neg}",
                ]
                if e.op == "//":
                    d = self.fresh("i")
                    code += [
                        f"  {d} = sub nsw i64 {q}, 1",
                        f"  {v} = select i1 {fix}, i64 {d}, i64 {q}",
                    ]
                else:
                    d = self.fresh("i")
                    code += [
                        f"  {d} = add nsw i64 {r}, {b}",
                        f"  {v} = select i1 {fix}, i64 {d}, i64 {r}",
                    ]
            case _:
                raise ValueError(f"unknown integer op {e.op!r}")
        return v

    def const(self, e: IExpr, env: dict[str, str]) -> int | None:
        """Fold ``e`` if it only involves literals and bound sizes."""
        names = set(int_vars(e))
        if all(n in self.sizes for n in names):
            return eval_int(e, self.sizes)
        return None

    def cond_code(self, c: L.Cond) -> _Code:
        code: list[str] = []
        value = self.cond_value(c, code)
        return _Code(code="\n".join(x for x in code if x), value=value)

    def cond_value(self, c: L.Cond, code: list[str]) -> str:
        v = self.fresh("b")
        if isinstance(c, L.Cmp):
            a = self.int_value(c.a, {}, code)
            b = self.int_value(c.b, {}, code)
            pred = {"<": "slt", "<=": "sle", ">": "sgt", ">=": "sge", "==": "eq"}[c.op]
            code.append(f"  {v} = icmp {pred} i64 {a}, {b}")
        else:
            a = self.cond_value(c.a, code)
            b = self.cond_value(c.b, code)
            code.append(f"  {v} = {c.op} i1 {a}, {b}")
        return v
