"""The DSL front end: a Python function's AST → :class:`~polydl.ir.nodes.Kernel`.

Nothing is executed or traced: the source is read with :mod:`inspect`, parsed with :mod:`ast` and
walked once. Loop bounds, ``if`` conditions and indices become isl texts over the kernel's size
parameters (``ir/poly/`` turns them into isl objects); statements keep their float expression
as IR trees. Every construct outside the DSL (docs/API.md, section 1) raises
:class:`~polydl.errors.DSLError` with the ``file:line:`` prefix of the construct's real line.

A factory's options are decided here: an ``if`` on names of the enclosing scope only is static
(only the branch it takes is walked); an argument annotated ``None`` is absent (no argument of
the kernel; a use of it outside a branch a static ``if`` drops is a DSLError there).

Original schedule: the classic 2d+1 schedule (statement position at each depth interleaved with
the loop iterators, ``if`` blocks do not add a level), padded with zeros so every statement's
schedule has ``2 * maxdepth + 1`` output dimensions.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import re
import textwrap
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import DSLError, where
from ..ir.nodes import (
    Arg,
    BinOp,
    Expr,
    IExpr,
    Int,
    IntOp,
    Kernel,
    Load,
    Num,
    ScalarArg,
    Statement,
    TensorArg,
    UnOp,
    Var,
    eval_int,
)
from ..ir.poly import isl_iexpr as iexpr
from ..ir.poly import params_text, simplify_set_text
from . import intrinsics
from .types import DType, TensorType

_AUG = {ast.Add: "+=", ast.Sub: "-=", ast.Mult: "*=", ast.Div: "/="}
_FLOAT_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_CMP = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "="}
_PY_OP = {
    ast.Pow: "**",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.MatMult: "@",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.Div: "/",
}
# Words isl's parser reserves: a loop variable or size with such a name cannot appear in isl text.
_ISL_RESERVED = frozenset(
    "and or not implies exists mod floor ceil floord ceild min max infty true false rat".split()
)
_INTRINSIC_FUNCS = {getattr(intrinsics, n): n for n in intrinsics.NAMES}
_CONSTRUCTS = {
    ast.While: "`while` loop",
    ast.Break: "`break`",
    ast.Continue: "`continue`",
    ast.Return: "`return`",
    ast.With: "`with` block",
    ast.Try: "`try` block",
    ast.Raise: "`raise`",
    ast.Assert: "`assert`",
    ast.Delete: "`del`",
    ast.Global: "`global`",
    ast.Nonlocal: "`nonlocal`",
    ast.Import: "`import`",
    ast.ImportFrom: "`import`",
    ast.FunctionDef: "nested function definition",
    ast.AsyncFunctionDef: "nested function definition",
    ast.ClassDef: "class definition",
    ast.AnnAssign: "annotated assignment",
    ast.AsyncFor: "`async for`",
    ast.Match: "`match` statement",
}


def parse(fn: types.FunctionType, *, scope: Mapping[str, Any] | None = None) -> Kernel:
    """The IR of a DSL kernel function (raises :class:`DSLError` on anything outside the DSL);
    string annotations see ``scope`` (the defining scope's locals), the closure and globals."""
    return _Parser(fn, scope=scope).kernel()


@dataclass(frozen=True, kw_only=True)
class _Loop:
    var: str
    constraints: tuple[str, ...]


class _Parser:
    def __init__(self, fn: types.FunctionType, *, scope: Mapping[str, Any] | None) -> None:
        if not isinstance(fn, types.FunctionType):
            raise DSLError(f"@pd.kernel expects a Python function, got {type(fn).__name__}")
        self.fn = fn
        self.scope = dict(scope or {})
        code = fn.__code__
        self.filename = inspect.getsourcefile(fn) or code.co_filename
        try:
            lines, first = inspect.getsourcelines(fn)
        except (OSError, TypeError) as e:
            raise DSLError(
                f"{where(code.co_filename, code.co_firstlineno)} cannot read the source of kernel "
                f"{fn.__name__!r} ({e}); define kernels in a file"
            ) from None
        self.src = textwrap.dedent("".join(lines))
        self.lines = re.split(r"\r\n|\r|\n", self.src)  # the lines of ast's line numbers
        self.offset = max(first, 1) - 1
        try:
            tree = ast.parse(self.src)
        except SyntaxError as e:
            raise DSLError(
                f"{where(self.filename, (e.lineno or 1) + self.offset)} cannot parse kernel "
                f"{fn.__name__!r}: {e.msg}"
            ) from None
        node = tree.body[0] if tree.body else None
        if not isinstance(node, ast.FunctionDef):
            raise DSLError(
                f"{where(self.filename, first)} kernel {fn.__name__!r} must be a plain `def` "
                "function (not a lambda or async def)"
            )
        self.node = node
        self.closure = {
            n: c.cell_contents
            for n, c in zip(code.co_freevars, fn.__closure__ or (), strict=True)
            if _cell_full(c)
        }
        self.tensors: dict[str, TensorArg] = {}
        self.scalars: dict[str, ScalarArg] = {}
        self.sizes: list[str] = []
        self.free_sizes: list[str] = []  # sizes that shape no tensor (bound_only_sizes)
        self.constants: dict[str, int] = {}
        self.absent: dict[str, str] = {}  # argument -> its annotation's text (evaluated to None)
        self.loop_names = {
            t.target.id
            for t in ast.walk(node)
            if isinstance(t, ast.For) and isinstance(t.target, ast.Name)
        }
        self.statements: list[Statement] = []
        self._raw: list[tuple[str, tuple[str, ...], str, list[int], ast.stmt, Load, str, Expr]] = []

    # ------------------------------------------------------------ helpers

    def line(self, node: ast.AST) -> int:
        return getattr(node, "lineno", 1) + self.offset

    def text(self, node: ast.AST) -> str:
        """The node's source text, on one line (``ast.unparse`` if it spans several)."""
        first, last = getattr(node, "lineno", None), getattr(node, "end_lineno", None)
        if first is None or first != last or getattr(node, "end_col_offset", None) is None:
            return ast.unparse(node)
        # ast.get_source_segment, without splitting the whole source at every call
        return self.lines[first - 1].encode()[node.col_offset : node.end_col_offset].decode()

    def err(self, node: ast.AST, msg: str) -> DSLError:
        return DSLError(f"{where(self.filename, self.line(node))} {msg}")

    def lookup(self, name: str) -> tuple[bool, Any]:
        """A name of the enclosing scope: closure cell, module global or builtin."""
        if name in self.closure:
            return True, self.closure[name]
        g = self.fn.__globals__
        if name in g:
            return True, g[name]
        b = g.get("__builtins__", builtins)
        b = b if isinstance(b, dict) else vars(b)
        if name in b:
            return True, b[name]
        return False, None

    def is_local(self, name: str) -> bool:
        """An argument (present or absent) or a size: a name of the kernel, not of its scope."""
        return any(name in d for d in (self.tensors, self.scalars, self.absent, self.sizes))

    def reject_absent(self, node: ast.AST) -> None:
        """A use of an absent argument (annotation ``None``) in ``node`` → DSLError at it."""
        if not self.absent:
            return
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and sub.id in self.absent:
                raise self.err(
                    sub,
                    f"argument `{sub.id}` of kernel {self.fn.__name__!r} is absent (its "
                    f"annotation `{self.absent[sub.id]}` is None), but `{self.text(node)}` uses "
                    "it: an absent argument may appear only in a branch that a static `if` "
                    "drops (test the enclosing scope's flag, e.g. `if bias:`)",
                )

    def builtin(self, node: ast.AST, fn: Any) -> bool:
        """Whether ``node`` is a bare name bound (in the enclosing scope) to builtin ``fn``."""
        if not isinstance(node, ast.Name) or self.is_local(node.id) or node.id in self.loop_names:
            return False
        found, value = self.lookup(node.id)
        return found and value is fn

    def constant(self, node: ast.Name) -> Any:
        """The value of a name of the enclosing scope, or a DSLError if it is unknown."""
        found, value = self.lookup(node.id)
        if not found:
            raise self.err(
                node,
                f"unknown name `{node.id}` (not an argument, a size of the signature, a loop "
                "variable or an int constant of the enclosing scope)",
            )
        return value

    # ------------------------------------------------------------ signature

    def signature(self) -> tuple[TensorArg | ScalarArg, ...]:
        a = self.node.args
        if a.vararg or a.kwarg:
            raise self.err(
                self.node, f"kernel {self.fn.__name__!r}: *args/**kwargs are not allowed"
            )
        if a.defaults or a.kw_defaults and any(d is not None for d in a.kw_defaults):
            raise self.err(self.node, f"kernel {self.fn.__name__!r}: arguments have no defaults")
        try:
            # a string annotation sees the defining scope's values, as a plain one does
            scope = {**self.scope, **self.closure}
            ann = inspect.get_annotations(self.fn, eval_str=True, locals=scope)
        except Exception as e:  # noqa: BLE001 - report any failure of a string annotation
            raise self.err(
                self.node, f"cannot evaluate the annotations of the kernel: {e}"
            ) from None
        out: list[TensorArg | ScalarArg] = []
        for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs]:
            name = arg.arg
            t = ann.get(name)
            if t is None and name in ann:
                # absent (`b: pd.f32[n] if bias else None`): a use is an error (reject_absent)
                self.absent[name] = self.text(arg.annotation) if arg.annotation else "None"
            elif isinstance(t, TensorType):
                shape: list[IExpr] = []
                for d in t.shape:
                    if isinstance(d, int):
                        shape.append(Int(value=d))
                        continue
                    if d in self.tensors or d in self.scalars or d in self.absent or d == name:
                        raise self.err(arg, f"size name `{d}` of `{name}` is also an argument name")
                    if d in self.fn.__code__.co_freevars:
                        raise self.err(
                            arg,
                            f"size name `{d}` is also a variable of the enclosing function; "
                            "rename one of them",
                        )
                    if d in _ISL_RESERVED:
                        raise self.err(arg, f"size name `{d}` is reserved (isl); rename it")
                    if d not in self.sizes:
                        self.sizes.append(d)
                    shape.append(Var(name=d))
                ta = TensorArg(name=name, dtype=t.dtype, shape=tuple(shape))
                self.tensors[name] = ta
                out.append(ta)
            elif isinstance(t, DType):
                if t.name == "bf16":
                    raise self.err(
                        arg,
                        f"argument `{name}`: pd.bf16 is a tensor element type (pd.bf16[...]); "
                        "take a scalar as pd.f32",
                    )
                sa = ScalarArg(name=name, dtype=t.name)
                self.scalars[name] = sa
                out.append(sa)
            else:
                got = "no annotation" if t is None else f"annotation {t!r}"
                raise self.err(
                    arg,
                    f'argument `{name}` has {got}: annotate it pd.f32["M", ...] (a tensor), '
                    "pd.f32 (a scalar) or None (absent)",
                )
            if name in self.sizes:
                raise self.err(arg, f"argument `{name}` is also used as a size name")
        return tuple(out)

    # ------------------------------------------------------------ kernel

    def kernel(self) -> Kernel:
        args = self.signature()
        for v in self.loop_names:
            if self.is_local(v):
                kind = "size parameter" if v in self.sizes else "argument"
                node = next(
                    t
                    for t in ast.walk(self.node)
                    if isinstance(t, ast.For)
                    and isinstance(t.target, ast.Name)
                    and t.target.id == v
                )
                raise self.err(node, f"loop variable `{v}` shadows the {kind} `{v}`")
        self.free_sizes = self.bound_only_sizes()
        self.sizes += self.free_sizes
        body = self.node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            if isinstance(body[0].value.value, str):
                body = body[1:]  # docstring
        self.block(body, [], [], [], [0])
        depth = max((len(r[1]) for r in self._raw), default=0)
        ps = params_text(self.sizes)
        stmts = []
        for name, iters, dom, positions, node, target, op, expr in self._raw:
            times: list[str] = [str(positions[0])]
            for it, p in zip(iters, positions[1:], strict=True):
                times += [it, str(p)]
            times += ["0"] * (2 * depth + 1 - len(times))
            stmts.append(
                Statement(
                    name=name,
                    iterators=iters,
                    domain=dom,
                    target=target,
                    op=op,
                    expr=expr,
                    schedule=f"{ps} -> {{ {name}[{', '.join(iters)}] -> [{', '.join(times)}] }}",
                    line=self.line(node),
                    source=self.text(node),
                )
            )
        return Kernel(
            name=self.fn.__name__,
            args=args,
            sizes=tuple(self.sizes),
            statements=tuple(stmts),
            filename=self.filename,
            line=self.line(self.node),
            constants=tuple(self.constants.items()),
        )

    def bound_only_sizes(self) -> list[str]:
        """Size parameters that shape no tensor: bare names of loop bounds, ``if`` conditions and
        indices that are no argument, loop variable or name of the enclosing scope (a stencil's
        time steps ``T`` in ``for t in range(T)``), in order of first use."""
        found: list[str] = []

        def visit(e: ast.AST) -> None:
            if isinstance(e, ast.Call):
                for a in [*e.args, *(k.value for k in e.keywords)]:
                    visit(a)  # not e.func: `max`, `min` are calls, not sizes
                return
            if isinstance(e, ast.Name):
                n = e.id
                if not (
                    self.is_local(n)
                    or n in self.loop_names
                    or n in found
                    or n in _ISL_RESERVED
                    or self.lookup(n)[0]
                ):
                    found.append(n)
                return
            for c in ast.iter_child_nodes(e):
                visit(c)

        def walk(node: ast.AST) -> None:
            if isinstance(node, ast.For) and isinstance(node.iter, ast.Call):
                for a in node.iter.args:
                    visit(a)
            elif isinstance(node, ast.If):
                taken = self.static_condition(node.test)
                if taken is not None:  # only the branch a static `if` keeps is the kernel
                    for c in node.body if taken else node.orelse:
                        walk(c)
                    return
                visit(node.test)
            elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
                if node.value.id in self.tensors:
                    visit(node.slice)
            for c in ast.iter_child_nodes(node):
                walk(c)

        walk(self.node)
        return found

    def static_condition(self, test: ast.expr) -> bool | None:
        """The value of an ``if`` condition made only of names of the enclosing scope (a
        kernel factory's ``bias``, ``activation == "relu"``): evaluated now, at definition,
        like Python would at run time; None when it involves a loop variable, a size, an
        argument or an unknown name (a condition on iterations, part of the domain)."""
        names = [n.id for n in ast.walk(test) if isinstance(n, ast.Name)]
        if not names or any(
            self.is_local(n) or n in self.loop_names or not self.lookup(n)[0] for n in names
        ):
            return None
        env = {n: self.lookup(n)[1] for n in names}
        try:
            value = eval(  # noqa: S307 - the kernel's own source, names of its own scope
                compile(ast.Expression(test), self.filename, "eval"), {"__builtins__": {}}, env
            )
        except Exception as e:  # noqa: BLE001 - any failure is the user's condition's
            raise self.err(test, f"static condition `{self.text(test)}` fails: {e}") from None
        return bool(value)

    # ------------------------------------------------------------ statements

    def block(
        self,
        body: list[ast.stmt],
        loops: list[_Loop],
        conds: list[str],
        prefix: list[int],
        counter: list[int],
    ) -> None:
        for node in body:
            if isinstance(node, ast.Assign | ast.AugAssign):
                self.reject_absent(node)
                self.assignment(node, loops, conds, [*prefix, counter[0]])
                counter[0] += 1
            elif isinstance(node, ast.For):
                self.reject_absent(node.iter)
                loop = self.loop(node, loops)
                pos = counter[0]
                counter[0] += 1
                self.block(node.body, [*loops, loop], conds, [*prefix, pos], [0])
            elif isinstance(node, ast.If):
                taken = self.static_condition(node.test)
                if taken is not None:  # a static `if`: the kernel is the branch it takes
                    self.block(node.body if taken else node.orelse, loops, conds, prefix, counter)
                    continue
                self.reject_absent(node.test)
                self.reject_data(node.test, "if condition")
                c = self.condition(node.test, loops)
                self.block(node.body, loops, [*conds, c], prefix, counter)
                if node.orelse:
                    self.block(node.orelse, loops, [*conds, f"not ({c})"], prefix, counter)
            elif isinstance(node, ast.Pass):
                continue
            elif isinstance(node, ast.Expr):
                raise self.err(
                    node,
                    f"expression statement `{self.text(node)}` is not in the DSL (statements are "
                    "`T[idx] = e`, `+=`, `-=`, `*=`, `/=`)",
                )
            else:
                what = _CONSTRUCTS.get(type(node), f"`{type(node).__name__}` statement")
                raise self.err(node, f"{what} is not in the DSL: `{_first_line(self.text(node))}`")

    def loop(self, node: ast.For, loops: list[_Loop]) -> _Loop:
        head = f"for {self.text(node.target)} in {self.text(node.iter)}"
        if not isinstance(node.target, ast.Name):
            raise self.err(node, f"loop `{head}`: the loop variable must be a single name")
        v = node.target.id
        if v in _ISL_RESERVED:
            raise self.err(node, f"loop variable `{v}` is a reserved name (isl); rename it")
        if any(lp.var == v for lp in loops):
            raise self.err(node, f"loop variable `{v}` shadows the enclosing loop's variable `{v}`")
        if node.orelse:
            raise self.err(node, f"`for ... else` is not in the DSL: `{head}`")
        it = node.iter
        if (
            not isinstance(it, ast.Call)
            or not self.builtin(it.func, range)
            or it.keywords
            or not 1 <= len(it.args) <= 3
        ):
            raise self.err(
                node, f"loop `{head}`: loops iterate over `range(hi)`, `range(lo, hi[, step])`"
            )
        bounds = [self.iexpr(a, loops, "loop bound") for a in it.args]
        lo, hi = (Int(value=0), bounds[0]) if len(bounds) == 1 else (bounds[0], bounds[1])
        cons = [f"{iexpr(lo)} <= {v}", f"{v} < {iexpr(hi)}"]
        if len(bounds) == 3:
            step = bounds[2]
            if not isinstance(step, Int) or step.value <= 0:
                raise self.err(
                    node,
                    f"loop `{head}`: the step `{self.text(it.args[2])}` must be a positive int "
                    "constant",
                )
            if step.value > 1:
                cons.append(f"({v} - ({iexpr(lo)})) mod {step.value} = 0")
        return _Loop(var=v, constraints=tuple(cons))

    def assignment(
        self, node: ast.Assign | ast.AugAssign, loops: list[_Loop], conds: list[str], pos: list[int]
    ) -> None:
        if isinstance(node, ast.Assign):
            if len(node.targets) != 1:
                raise self.err(node, f"chained assignment `{self.text(node)}` is not in the DSL")
            target, op = node.targets[0], "="
        else:
            target = node.target
            op = _AUG.get(type(node.op))
            if op is None:
                sym = _PY_OP.get(type(node.op), type(node.op).__name__)
                raise self.err(
                    node,
                    f"`{sym}=` in `{self.text(node)}` is not a DSL statement "
                    "(use `=`, `+=`, `-=`, `*=` or `/=`)",
                )
        if not (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)) or (
            target.value.id not in self.tensors
        ):
            what = target.id if isinstance(target, ast.Name) else self.text(target)
            if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
                what = target.value.id
            raise self.err(
                node,
                f"assignment to non-tensor `{what}` in `{self.text(node)}`: only elements of "
                "tensor arguments can be assigned (no scalar or local variables)",
            )
        tgt = self.load(target, loops)
        expr = self.expr(node.value, loops)
        name = f"S{len(self._raw)}"
        iters = tuple(lp.var for lp in loops)
        cons = [c for lp in loops for c in lp.constraints] + [f"({c})" for c in conds]
        body = f" : {' and '.join(cons)}" if cons else ""
        dom = f"{params_text(self.sizes)} -> {{ {name}[{', '.join(iters)}]{body} }}"
        try:
            dom = simplify_set_text(dom)
        except ValueError as e:
            raise self.err(node, f"cannot express the domain of `{self.text(node)}`: {e}") from None
        self._raw.append((name, iters, dom, pos, node, tgt, op, expr))

    # ------------------------------------------------------------ conditions

    def condition(self, node: ast.expr, loops: list[_Loop]) -> str:
        if isinstance(node, ast.BoolOp):
            j = " and " if isinstance(node.op, ast.And) else " or "
            return j.join(f"({self.condition(v, loops)})" for v in node.values)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return f"not ({self.condition(node.operand, loops)})"
        if isinstance(node, ast.Constant) and isinstance(node.value, bool):
            return "0 = 0" if node.value else "1 = 0"
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            texts = [iexpr(self.iexpr(s, loops, "if condition")) for s in sides]
            parts = []
            for op, a, b in zip(node.ops, texts, texts[1:], strict=False):
                if isinstance(op, ast.NotEq):
                    parts.append(f"({a} < {b} or {a} > {b})")
                elif type(op) in _CMP:
                    parts.append(f"{a} {_CMP[type(op)]} {b}")
                else:
                    raise self.err(
                        node,
                        f"comparison `{type(op).__name__}` in `if {self.text(node)}` is not "
                        "affine (use <, <=, >, >=, ==, !=)",
                    )
            return " and ".join(f"({p})" for p in parts)
        self.reject_data(node, "if condition")
        raise self.err(
            node,
            f"`if {self.text(node)}`: conditions are affine comparisons combined with "
            "`and`, `or`, `not`",
        )

    def reject_data(self, node: ast.AST, ctx: str, whole: ast.AST | None = None) -> None:
        """A data-dependent construct (reads a tensor or a scalar argument) → DSLError."""
        for sub in ast.walk(node):
            if isinstance(sub, ast.Subscript) and isinstance(sub.value, ast.Name):
                if sub.value.id in self.tensors:
                    raise self._data_error(whole or node, sub, ctx)
            if isinstance(sub, ast.Name) and sub.id in self.scalars:
                raise self._data_error(whole or node, sub, ctx)

    def _data_error(self, whole: ast.AST, sub: ast.AST, ctx: str) -> DSLError:
        if ctx == "if condition":
            return self.err(
                whole,
                f"data-dependent `if {self.text(whole)}`: the condition reads `{self.text(sub)}`; "
                "conditions may only use loop variables, sizes and constants",
            )
        return self.err(
            whole,
            f"data-dependent {ctx} in `{self.text(whole)}`: it reads `{self.text(sub)}`; "
            f"{_a(ctx)} may only use loop variables, sizes and constants",
        )

    # ------------------------------------------------------------ integer expressions

    def iexpr(self, node: ast.expr, loops: list[_Loop], ctx: str) -> IExpr:
        """A quasi-affine integer expression (loop bound, index or condition side)."""
        self.reject_data(node, ctx)
        return self._iexpr(node, node, loops, ctx)

    def _iexpr(self, node: ast.expr, whole: ast.expr, loops: list[_Loop], ctx: str) -> IExpr:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, int) and not isinstance(node.value, bool):
                return Int(value=node.value)
            raise self.err(node, f"{ctx} `{self.text(whole)}`: `{node.value!r}` is not an int")
        if isinstance(node, ast.Name):
            return self.int_name(node, loops, ctx)
        if isinstance(node, ast.UnaryOp):
            a = self._iexpr(node.operand, whole, loops, ctx)
            if isinstance(node.op, ast.UAdd):
                return a
            if isinstance(node.op, ast.USub):
                return (
                    Int(value=-a.value)
                    if isinstance(a, Int)
                    else IntOp(op="-", a=Int(value=0), b=a)
                )
        if isinstance(node, ast.BinOp):
            a = self._iexpr(node.left, whole, loops, ctx)
            b = self._iexpr(node.right, whole, loops, ctx)
            if isinstance(node.op, ast.Add | ast.Sub):
                return _fold("+" if isinstance(node.op, ast.Add) else "-", a, b)
            if isinstance(node.op, ast.Mult):
                if not isinstance(a, Int) and not isinstance(b, Int):
                    raise self.err(
                        node,
                        f"non-affine {ctx} `{self.text(whole)}`: `{self.text(node)}` multiplies "
                        "two non-constant terms",
                    )
                return _fold("*", a, b)
            if isinstance(node.op, ast.FloorDiv | ast.Mod):
                sym = "//" if isinstance(node.op, ast.FloorDiv) else "%"
                if not isinstance(b, Int) or b.value <= 0:
                    raise self.err(
                        node,
                        f"non-affine {ctx} `{self.text(whole)}`: `{sym}` needs a positive int "
                        f"constant on the right, got `{self.text(node.right)}`",
                    )
                return _fold(sym, a, b)
            sym = _PY_OP.get(type(node.op), type(node.op).__name__)
            raise self.err(
                node,
                f"non-affine {ctx} `{self.text(whole)}`: operator `{sym}` in `{self.text(node)}`",
            )
        if isinstance(node, ast.Call) and (
            self.builtin(node.func, max) or self.builtin(node.func, min)
        ):
            if node.keywords or len(node.args) < 2:
                raise self.err(node, f"`{self.text(node)}`: max/min take two or more arguments")
            op = node.func.id  # type: ignore[union-attr]
            out = self._iexpr(node.args[0], whole, loops, ctx)
            for x in node.args[1:]:
                out = _fold(op, out, self._iexpr(x, whole, loops, ctx))
            return out
        if isinstance(node, ast.Call):
            raise self.err(node, f"unknown call `{self.text(node)}` in {ctx} `{self.text(whole)}`")
        raise self.err(
            node, f"non-affine {ctx} `{self.text(whole)}`: `{self.text(node)}` is not quasi-affine"
        )

    def int_name(self, node: ast.Name, loops: list[_Loop], ctx: str) -> IExpr:
        n = node.id
        if any(lp.var == n for lp in loops) or n in self.sizes:
            return Var(name=n)
        if n in self.tensors:
            raise self.err(node, f"tensor `{n}` used without an index in {_a(ctx)}")
        if n in self.loop_names:
            raise self.err(node, f"loop variable `{n}` used outside its loop")
        value = self.constant(node)
        if isinstance(value, int) and not isinstance(value, bool):
            self.constants.setdefault(n, value)
            return Int(value=value)
        raise self.err(
            node,
            f"`{n}` in {_a(ctx)} is not a loop variable, a size or an int constant ({value!r})",
        )

    # ------------------------------------------------------------ float expressions

    def load(self, node: ast.Subscript, loops: list[_Loop]) -> Load:
        name = node.value.id  # type: ignore[attr-defined]
        t = self.tensors[name]
        sl = node.slice
        elts = sl.elts if isinstance(sl, ast.Tuple) else [sl]
        for e in elts:
            if isinstance(e, ast.Slice):
                raise self.err(node, f"slice in `{self.text(node)}`: index every dimension")
        if len(elts) != len(t.shape):
            shape = ", ".join(map(str, t.shape))
            raise self.err(
                node,
                f"`{self.text(node)}` uses {len(elts)} index(es) but tensor `{name}` has "
                f"{len(t.shape)} dimension(s) (shape [{shape}])",
            )
        for e in elts:
            self.reject_data(e, "index", whole=node)
        idx = tuple(self.iexpr(e, loops, "index") for e in elts)
        return Load(tensor=name, index=idx)

    def expr(self, node: ast.expr, loops: list[_Loop]) -> Expr:
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, int | float) and not isinstance(v, bool):
                return Num(value=float(v))
            raise self.err(node, f"literal `{self.text(node)}` is not a number")
        if isinstance(node, ast.Name):
            return self.float_name(node, loops)
        if isinstance(node, ast.Subscript):
            if isinstance(node.value, ast.Name) and node.value.id in self.tensors:
                return self.load(node, loops)
            raise self.err(
                node, f"`{self.text(node)}` indexes something that is not a tensor argument"
            )
        if isinstance(node, ast.BinOp):
            op = _FLOAT_OPS.get(type(node.op))
            if op is None:
                sym = _PY_OP.get(type(node.op), type(node.op).__name__)
                raise self.err(node, f"operator `{sym}` in `{self.text(node)}` is not in the DSL")
            return BinOp(op=op, a=self.expr(node.left, loops), b=self.expr(node.right, loops))
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.UAdd):
                return self.expr(node.operand, loops)
            if isinstance(node.op, ast.USub):
                a = self.expr(node.operand, loops)
                return Num(value=-a.value) if isinstance(a, Num) else UnOp(op="neg", a=a)
            raise self.err(node, f"operator in `{self.text(node)}` is not in the DSL")
        if isinstance(node, ast.Call):
            return self.call(node, loops)
        raise self.err(node, f"expression `{self.text(node)}` is not in the DSL")

    def float_name(self, node: ast.Name, loops: list[_Loop]) -> Expr:
        n = node.id
        if n in self.scalars:
            return Arg(name=n)
        if n in self.tensors:
            raise self.err(node, f"tensor `{n}` used without an index")
        if any(lp.var == n for lp in loops) or n in self.sizes:
            kind = "size parameter" if n in self.sizes else "loop variable"
            raise self.err(
                node, f"{kind} `{n}` used as a float value (only in indices, bounds and conditions)"
            )
        if n in self.loop_names:
            raise self.err(node, f"loop variable `{n}` used outside its loop")
        value = self.constant(node)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if isinstance(value, int):
                self.constants.setdefault(n, value)
            return Num(value=float(value))
        raise self.err(node, f"`{n}` is not a scalar argument or a number ({type(value).__name__})")

    def call(self, node: ast.Call, loops: list[_Loop]) -> Expr:
        f = node.func
        name = self.intrinsic(f)
        if node.keywords:
            raise self.err(node, f"call `{self.text(node)}` with keyword arguments")
        if name is not None:
            if len(node.args) != 1:
                raise self.err(node, f"`{self.text(node)}`: {name} takes one argument")
            return UnOp(op=name, a=self.expr(node.args[0], loops))
        if self.builtin(f, max) or self.builtin(f, min):
            if len(node.args) < 2:
                raise self.err(node, f"`{self.text(node)}`: max/min take two or more arguments")
            out = self.expr(node.args[0], loops)
            for a in node.args[1:]:
                out = BinOp(op=f.id, a=out, b=self.expr(a, loops))  # type: ignore[union-attr]
            return out
        raise self.err(
            node,
            f"unknown call `{self.text(node)}`: calls are max, min, pd.exp, pd.sqrt, pd.tanh, "
            "pd.sigmoid, pd.erf",
        )

    def intrinsic(self, f: ast.expr) -> str | None:
        """The intrinsic a call's function names (``pd.exp``, ``polydl.exp``, bare ``exp``)."""
        if isinstance(f, ast.Name):
            if self.is_local(f.id) or f.id in self.loop_names:
                return None
            found, value = self.lookup(f.id)
            return _INTRINSIC_FUNCS.get(value) if found and callable(value) else None
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            if self.is_local(f.value.id) or f.value.id in self.loop_names:
                return None
            found, mod = self.lookup(f.value.id)
            if not found or not isinstance(mod, types.ModuleType):
                return None
            value = getattr(mod, f.attr, None)
            if callable(value) and value in _INTRINSIC_FUNCS:
                return _INTRINSIC_FUNCS[value]
            modname = getattr(mod, "__name__", "")
            if f.attr in intrinsics.NAMES and (
                modname == "polydl" or modname.startswith("polydl.")
            ):
                return f.attr
        return None


def _fold(op: str, a: IExpr, b: IExpr) -> IExpr:
    e = IntOp(op=op, a=a, b=b)
    if isinstance(a, Int) and isinstance(b, Int):
        return Int(value=eval_int(e, {}))
    if op == "*" and (a == Int(value=1) or b == Int(value=1)):
        return b if a == Int(value=1) else a
    if op in ("+", "-") and b == Int(value=0):
        return a
    return e


def _cell_full(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def _a(ctx: str) -> str:
    return f"an {ctx}" if ctx[0] in "aeiou" else f"a {ctx}"


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else text
