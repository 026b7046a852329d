"""Loop tree -> LLVM IR text, through the Jinja templates in ``templates/``.

The module has one exported entry, ``void polydl_entry(ptr tensors[], ptr scalars, i32 nthreads)``:
``tensors`` holds each tensor argument's data pointer (call order), ``scalars`` each scalar
argument as a double. The entry unpacks them and calls ``@nest`` whose tensor parameters are
``noalias`` (the caller refuses overlapping buffers), so LLVM vectorises freely. A loop marked
parallel becomes an outlined region run by ``GOMP_parallel``; each thread takes one contiguous
chunk of the iterations. Every name, constant and instruction is computed here; the templates
only lay out blocks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib import resources

import jinja2

from ..ir import loops as L
from ..ir.nodes import (
    DTYPE_BYTES,
    IExpr,
    Int,
    IntOp,
    Kernel,
    Load,
    Micro,
    Statement,
    TensorArg,
    Transpose,
    Var,
)
from .scalar import FM, LLTYPE, ScalarEmitter

ENTRY = "polydl_entry"
COMPUTE = {"f32": "f32", "f64": "f64", "bf16": "f32"}  # the type arithmetic on an element uses


@functools.cache
def environment() -> jinja2.Environment:
    """The one Jinja environment for generated code; undefined values are errors."""
    loader = jinja2.FunctionLoader(_load_template)
    return jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _load_template(name: str) -> str:
    folder, _, leaf = name.rpartition("/")
    root = resources.files("polydl") / (folder or "templates")
    return (root / leaf).read_text()


def render(template: str, **values) -> str:
    return environment().get_template(template).render(**values)


def _control():
    return environment().get_template("control.ll.j2").module


@functools.lru_cache(maxsize=256)
def _micro_ir(cfg) -> tuple[str, tuple[str, ...], str]:
    """(symbol, declarations, definition) of the microkernel of ``cfg``: rendered once per
    process, as the registry compiles once (the text is a function of the configuration)."""
    from ..kernels import generate, symbol_for
    from ..kernels.transpose import TransposeConfig, pasted

    if isinstance(cfg, TransposeConfig):
        return pasted(cfg)
    sym = symbol_for(cfg)
    # noinline: one body per shape however many call sites (O3 time: the JIT of a split conv
    # with 7 shapes went from ~0.6 s to ~0.35-0.5 s; run time unchanged)
    kir = generate(cfg, name=sym, linkage="internal", attributes="nounwind noinline")
    return sym, tuple(kir.declarations), kir.definition


@dataclass
class _Fn:
    """State of the function being emitted."""

    allocas: set[str] = field(default_factory=set)
    ctx_allocas: list[str] = field(default_factory=list)
    buffers: dict[str, int] = field(default_factory=dict)  # scratch name -> bytes (malloc'd here)
    inherited: tuple[str, ...] = ()  # scratch buffers of the caller, passed in as parameters


class ModuleEmitter(ScalarEmitter):
    """Emits one kernel's module. Use :func:`emit_module`."""

    def __init__(
        self,
        kernel: Kernel,
        tree: tuple[L.Node, ...],
        *,
        parallel: bool,
        cpu: str,
        isa: str | None = None,
        threads: int = 1,
    ):
        self.k = kernel
        self.tree = tree
        self.parallel = parallel
        self.cpu = cpu
        self.sizes = kernel.size_values
        self.stmts = {s.name: s for s in kernel.statements}
        self.args = kernel.tensors  # passed by the caller
        self.tensors = kernel.all_tensors  # and the scratch tensors the nest allocates
        self.scalars = kernel.scalars
        self.strides = {t.name: _strides(kernel.shape_of(t.name)) for t in self.tensors}
        self.n = 0
        self.decls: set[str] = set()
        self.functions: list[str] = []
        self.threads = threads
        self.isa = isa  # BRGEMM ISA family for micro statements (None: the host's best)
        self.micro_symbols: dict[object, str] = {}
        self.buffer_types: dict[str, str] = {}  # scratch buffer -> LLVM element type
        self.offset_tables: dict[tuple[int, ...], str] = {}
        self.fence = False  # the function being emitted stores non-temporally (an sfence due)

    # ------------------------------------------------------------ names and signatures
    def fresh(self, prefix: str = "v") -> str:
        self.n += 1
        return f"%{prefix}{self.n}"

    def label(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def kernel_params(self, scratch: bool = False) -> list[str]:
        """The nest's parameters (``scratch``: with the scratch tensors, for the functions the
        nest calls)."""
        ts = [
            f"ptr noalias nocapture %t.{t.name}" for t in (self.tensors if scratch else self.args)
        ]
        ss = [f"{LLTYPE[s.dtype]} %s.{s.name}" for s in self.scalars]
        return [*ts, *ss, "i32 %nthreads"]

    def kernel_args(self, scratch: bool = False) -> list[str]:
        ts = [f"ptr %t.{t.name}" for t in (self.tensors if scratch else self.args)]
        ss = [f"{LLTYPE[s.dtype]} %s.{s.name}" for s in self.scalars]
        return [*ts, *ss, "i32 %nthreads"]

    # ------------------------------------------------------------ module
    def emit(self) -> str:
        unpack: list[str] = []
        for i, t in enumerate(self.args):
            unpack += [
                f"%t.{t.name}.slot = getelementptr inbounds ptr, ptr %tensors, i64 {i}",
                f"%t.{t.name} = load ptr, ptr %t.{t.name}.slot, align 8",
            ]
        for i, s in enumerate(self.scalars):
            as_f64 = f"%s.{s.name}.d" if s.dtype == "f32" else f"%s.{s.name}"
            unpack += [
                f"%s.{s.name}.slot = getelementptr inbounds double, ptr %scalars, i64 {i}",
                f"{as_f64} = load double, ptr %s.{s.name}.slot, align 8",
            ]
            if s.dtype == "f32":
                unpack.append(f"%s.{s.name} = fptrunc double {as_f64} to float")
        # scratch tensors: one allocation per call, shared by the threads (transform/gather.py)
        alloc, free = [], []
        for t in self.k.temps:
            self.decls.add("declare noalias ptr @aligned_alloc(i64, i64)")
            self.decls.add("declare void @free(ptr)")
            nbytes = self.k.nbytes(t.name) * self.copies(t)
            alloc.append(
                f"%t.{t.name} = call ptr @aligned_alloc(i64 64, i64 {-(-nbytes // 64) * 64})"
            )
            free.append(f"call void @free(ptr %t.{t.name})")
        nest = self.function("nest", self.kernel_params(), alloc, self.tree, epilogue=free)
        self.functions.insert(0, nest)
        return render(
            "module.ll.j2",
            name=self.k.name,
            cpu=self.cpu,
            entry=ENTRY,
            n_tensors=len(self.args),
            n_scalars=len(self.scalars),
            declarations=sorted(self.decls),
            unpack=unpack,
            nest="nest",
            nest_args=", ".join(self.kernel_args()),
            functions=self.functions,
        )

    def function(
        self,
        name: str,
        params: Sequence[str],
        prologue: list[str],
        nodes: tuple[L.Node, ...],
        outer: Sequence[str] = (),
        in_parallel: bool = False,
        inherited: tuple[str, ...] = (),
        epilogue: Sequence[str] = (),
    ) -> str:
        fn = _Fn(inherited=inherited)
        for v in outer:
            fn.allocas.add(v)
            prologue = [*prologue, f"store i64 %o.{v}, ptr %{v}.addr"]
        outer_fence, self.fence = self.fence, False
        body = self.nodes(nodes, fn, list(outer), in_parallel=in_parallel)
        allocas = [f"%{v}.addr = alloca i64, align 8" for v in sorted(fn.allocas)] + fn.ctx_allocas
        epilogue = list(epilogue)
        if self.fence:  # this function's non-temporal stores, ordered before it returns
            from ..kernels.transpose import SFENCE, SFENCE_DECL

            self.decls.add(SFENCE_DECL)
            epilogue.insert(0, SFENCE)
        self.fence = outer_fence
        for buf, nbytes in fn.buffers.items():
            # scratch of this function (one per thread in a parallel region's body)
            self.decls.add("declare noalias ptr @aligned_alloc(i64, i64)")
            self.decls.add("declare void @free(ptr)")
            prologue = [*prologue, f"%buf.{buf} = call ptr @aligned_alloc(i64 64, i64 {nbytes})"]
            epilogue.append(f"call void @free(ptr %buf.{buf})")
        return render(
            "function.ll.j2",
            fn=name,
            params=", ".join(params),
            allocas=allocas,
            prologue=prologue,
            body=body,
            epilogue=epilogue,
        )

    # ------------------------------------------------------------ loop tree
    def nodes(self, nodes: tuple[L.Node, ...], fn: _Fn, path: list[str], in_parallel: bool) -> str:
        return "\n".join(self.node(n, fn, path, in_parallel) for n in nodes)

    def node(self, n: L.Node, fn: _Fn, path: list[str], in_parallel: bool) -> str:
        if isinstance(n, L.For):
            if self.parallel and n.threaded and not in_parallel:
                return self.parallel_for(n, fn, path)
            fn.allocas.add(n.var)
            init = self.int_code(n.init, {})
            body = self.nodes(n.body, fn, [*path, n.var], in_parallel)
            cond = self.cond_code(n.cond)
            lid = self.label("L")
            return _control().for_loop(lid, n.var, init, cond, n.step, body)
        if isinstance(n, L.Assign):
            fn.allocas.add(n.var)
            val = self.int_code(n.value, {})
            return f"{val.code}\n  store i64 {val.value}, ptr %{n.var}.addr"
        if isinstance(n, L.If):
            cond = self.cond_code(n.cond)
            then = self.nodes(n.then, fn, path, in_parallel)
            orelse = self.nodes(n.orelse, fn, path, in_parallel)
            return _control().if_block(self.label("I"), cond, then, orelse)
        if isinstance(n, L.Buffer):
            size = n.elems * DTYPE_BYTES[n.dtype]
            fn.buffers[n.name] = -(-size // 64) * 64
            self.buffer_types[n.name] = LLTYPE[n.dtype]
            return ""
        if isinstance(n, L.Copy):
            return self.copy(n)
        return self.call(n)

    def copy(self, n: L.Copy) -> str:
        """``count`` consecutive elements from a tensor into a scratch buffer, as one vector."""
        code: list[str] = []
        ty = self.buffer_types[n.buf]
        src = self.flat_pointer(n.tensor, n.src, {}, code)
        off = self.int_code(n.dst, {})
        code.append(off.code)
        dst = self.fresh("a")
        code.append(f"  {dst} = getelementptr inbounds {ty}, ptr %buf.{n.buf}, i64 {off.value}")
        v = self.fresh()
        align = DTYPE_BYTES[self.k.arg(n.tensor).dtype]  # type: ignore[union-attr]
        vt = f"<{n.count} x {ty}>"
        code.append(f"  {v} = load {vt}, ptr {src}, align {align}")
        if n.kind == "rows":
            code.append(f"  store {vt} {v}, ptr {dst}, align {align}")
            return "\n".join(x for x in code if x)
        # VNNI-2: element j of the row and of its mate (the next row, or zeros) side by side
        mate = "zeroinitializer"
        if n.kind == "pairs":
            q, mate = self.fresh("a"), self.fresh()
            code += [
                f"  {q} = getelementptr inbounds {ty}, ptr {src}, i64 {n.ld}",
                f"  {mate} = load {vt}, ptr {q}, align {align}",
            ]
        lanes = ", ".join(f"i32 {x}" for j in range(n.count) for x in (j, j + n.count))
        w = self.fresh()
        code += [
            f"  {w} = shufflevector {vt} {v}, {vt} {mate}, <{2 * n.count} x i32> <{lanes}>",
            f"  store <{2 * n.count} x {ty}> {w}, ptr {dst}, align {align}",
        ]
        return "\n".join(x for x in code if x)

    def parallel_for(self, n: L.For, fn: _Fn, path: list[str]) -> str:
        """Outline ``n`` into a region run by every thread on its chunk of iterations."""
        for d in ("GOMP_parallel", "omp_thread", "omp_threads", "smin"):
            self.decls.add(_DECLS[d])
        region = self.label("region")
        lo, hi = self.int_code(n.init, {}), self.int_code(n.upper(), {})  # type: ignore[arg-type]
        slots: list[tuple[str, str]] = []  # (i64 value to store, how the region unpacks it)
        stores: list[str] = [lo.code, hi.code]

        def slot(value_i64: str, unpack: list[str]) -> None:
            slots.append((value_i64, "\n".join(unpack)))

        for t in self.tensors:
            v = self.fresh("p")
            stores.append(f"  {v} = ptrtoint ptr %t.{t.name} to i64")
            slot(v, [f"%t.{t.name} = inttoptr i64 %slot{len(slots)} to ptr"])
        for s in self.scalars:
            v = self.fresh("p")
            if s.dtype == "f32":
                w = self.fresh("p")
                stores += [
                    f"  {w} = bitcast float %s.{s.name} to i32",
                    f"  {v} = zext i32 {w} to i64",
                ]
                slot(
                    v,
                    [
                        f"%s.{s.name}.i = trunc i64 %slot{len(slots)} to i32",
                        f"%s.{s.name} = bitcast i32 %s.{s.name}.i to float",
                    ],
                )
            else:
                stores.append(f"  {v} = bitcast double %s.{s.name} to i64")
                slot(v, [f"%s.{s.name} = bitcast i64 %slot{len(slots)} to double"])
        bufs = (*fn.inherited, *fn.buffers)
        for b in bufs:
            v = self.fresh("p")
            stores.append(f"  {v} = ptrtoint ptr %buf.{b} to i64")
            slot(v, [f"%buf.{b} = inttoptr i64 %slot{len(slots)} to ptr"])
        for var in path:
            v = self.fresh("p")
            stores.append(f"  {v} = load i64, ptr %{var}.addr")
            slot(v, [f"%o.{var} = add i64 %slot{len(slots)}, 0"])
        slot(lo.value, [f"%lo = add i64 %slot{len(slots)}, 0"])
        slot(hi.value, [f"%hi = add i64 %slot{len(slots)}, 0"])
        ctx = self.fresh("ctx")
        fn.ctx_allocas.append(f"{ctx} = alloca [{len(slots)} x i64], align 8")
        for i, (value, _) in enumerate(slots):
            p = self.fresh("q")
            stores += [
                f"  {p} = getelementptr inbounds i64, ptr {ctx}, i64 {i}",
                f"  store i64 {value}, ptr {p}",
            ]
        unpack: list[str] = []
        for i, (_, how) in enumerate(slots):
            unpack += [
                f"%slot{i}.p = getelementptr inbounds i64, ptr %ctx, i64 {i}",
                f"%slot{i} = load i64, ptr %slot{i}.p",
                *how.split("\n"),
            ]
        unpack.append("%nthreads = add i32 0, 0")
        body_fn = f"{region}.body"
        outer_params = [f"i64 %o.{v}" for v in path]
        buf_params = [f"ptr %buf.{b}" for b in bufs]
        body_params = [
            *self.kernel_params(scratch=True),
            *buf_params,
            *outer_params,
            "i64 %start",
            "i64 %stop",
        ]
        body_args = [
            *self.kernel_args(scratch=True),
            *buf_params,
            *[f"i64 %o.{v}" for v in path],
            "i64 %start",
            "i64 %stop",
        ]
        inner = L.For(
            var=n.var,
            dim=n.dim,
            init=Var(name="%start"),
            cond=L.Cmp(op="<", a=Var(name=n.var), b=Var(name="%stop")),
            step=n.step,
            body=n.body,
            parallel=False,
        )
        self.functions.append(
            render(
                "region.ll.j2",
                region=region,
                unpack=unpack,
                step=n.step,
                step_minus_one=n.step - 1,
                body_fn=body_fn,
                body_args=", ".join(body_args),
            )
        )
        self.functions.append(
            self.function(body_fn, body_params, [], (inner,), path, True, inherited=bufs)
        )
        return _control().parallel_launch(
            self.label("P"), ctx, len(slots), "\n".join(x for x in stores if x), region
        )

    # ------------------------------------------------------------ statements
    def call(self, c: L.Call) -> str:
        s: Statement = self.stmts[c.stmt]
        code: list[str] = [f"  ; {s.name}: {s.source}  (line {s.line})"]
        env: dict[str, str] = {}
        for it, arg in zip(s.iterators, c.args, strict=True):
            r = self.int_code(arg, {})
            code.append(r.code)
            env[it] = r.value
        if s.micro is not None:
            return self.micro_call(s.micro, env, code, c.packed_b, c.packed_vnni, c.prefetch_b)
        if s.transpose is not None:
            return self.transpose_call(s.transpose, env, code)
        st = self.k.arg(s.target.tensor).dtype  # type: ignore[union-attr]
        dt = COMPUTE[st]  # a bf16 element is computed in f32, rounded at the store
        ty = LLTYPE[dt]
        addr = self.address(s.target, env, code)
        rhs = self.float_expr(s.expr, env, code, dt)
        if s.op == "=":
            new = rhs
        else:
            old = self.fresh()
            code.append(f"  {old} = load {LLTYPE[st]}, ptr {addr}")
            old = self.convert(old, st, dt, code)
            new = self.fresh()
            inst = {"+=": "fadd", "-=": "fsub", "*=": "fmul", "/=": "fdiv"}[s.op]
            code.append(f"  {new} = {inst} {FM} {ty} {old}, {rhs}")
        new = self.convert(new, dt, st, code)
        code.append(f"  store {LLTYPE[st]} {new}, ptr {addr}")
        return "\n".join(x for x in code if x)

    def micro_call(
        self,
        mk: Micro,
        env: dict[str, str],
        code: list[str],
        packed_b: tuple[str, IExpr] | None = None,
        vnni: bool = False,
        prefetch_b: int = 0,
    ) -> str:
        """One BRGEMM call (offset form) on the blocks at this instance's origins; B from a
        dense scratch block when ``packed_b`` gives one (``transform/pack.py``; ``vnni``: in
        VNNI-2 pairs of rows), the next call's B rows prefetched ``prefetch_b`` elements on
        (``transform/prefetch.py``); with the statement's non-temporal stores, the kernel that
        stores C so where this call's C block is vector-aligned (checked at run time)."""
        from ..kernels import BrgemmConfig
        from ..kernels.generator import nontemporal_align

        isa = self.isa
        cfg = BrgemmConfig.of_call(
            mk, packed=packed_b is not None, vnni=vnni, isa=isa, prefetch_b=prefetch_b
        ).normalized()
        if mk.ab_dtype == "bf16":  # AMX tiles or vdpbf16ps where the CPU has them, else widened
            from ..kernels.isa import bf16_family, isa_for_cpu

            fam = bf16_family(self.cpu, isa or isa_for_cpu(self.cpu).name, cfg)
            if mk.b_vnni and not fam.bf16_dot:
                from ..errors import TargetError

                raise TargetError(
                    f"BRGEMM of {mk.c} += {mk.a} x {mk.b}: {mk.b} holds its rows in VNNI-2 "
                    f"pairs (k={mk.k}, n={mk.n}, ldb={mk.ldb}), which only a bf16 family that "
                    f"multiplies pairs reads (avx512_bf16, amx_bf16); CPU {self.cpu or 'host'} "
                    f"runs {fam.name}"
                )
            cfg = replace(cfg, isa=fam.name)
        b_offsets = mk.b_offsets
        if packed_b is not None:  # dense blocks, one after the other
            b_offsets = tuple(i * cfg.b_rows * mk.n for i in range(len(mk.b_offsets)))
        sym = f"@{self.micro_symbol(cfg)}"
        a_ptr = self.flat_pointer(mk.a, mk.a_origin, env, code)
        if packed_b is None:
            b_ptr = self.flat_pointer(mk.b, mk.b_origin, env, code)
        else:
            buf, at = packed_b
            off = self.int_code(at, {})
            code.append(off.code)
            b_ptr = self.fresh("a")
            ty = self.buffer_types[buf]
            code.append(f"  {b_ptr} = getelementptr inbounds {ty}, ptr %buf.{buf}, i64 {off.value}")
        c_ptr = self.flat_pointer(mk.c, mk.c_origin, env, code)
        nt = mk.nontemporal and cfg.beta == 0 and cfg.c_dtype == "f32"
        nt_cfg = replace(cfg, nontemporal=True) if nt else None
        align = nontemporal_align(nt_cfg) if nt_cfg is not None else 0
        if align:
            # the kernel that stores C non-temporally needs a vector-aligned C block: checked
            # here, the normal kernel otherwise (a user's array may be 16-byte aligned only)
            sym = self.if_aligned(c_ptr, align, f"@{self.micro_symbol(nt_cfg)}", sym, code)
        ptrs = [a_ptr, b_ptr, c_ptr]
        args = [f"ptr {p}" for p in ptrs] + [f"i64 {len(mk.a_offsets)}"]
        args += [f"ptr {self.offset_table(mk.a_offsets)}", f"ptr {self.offset_table(b_offsets)}"]
        for tensor, origin in mk.operands:
            args.append(f"ptr {self.flat_pointer(tensor, origin, env, code)}")
        if mk.alpha_arg is not None:
            args.append(
                f"float {self.convert(f'%s.{mk.alpha_arg}', self.k.arg(mk.alpha_arg).dtype, 'f32', code)}"
            )
        code.append(f"  call void {sym}({', '.join(args)})")
        return "\n".join(x for x in code if x)

    def transpose_call(self, tr: Transpose, env: dict[str, str], code: list[str]) -> str:
        """One tile transpose (``kernels/transpose.py``) at this instance's origins."""
        from ..kernels.transpose import TransposeConfig

        cfg = TransposeConfig.of_call(tr, self.isa)
        src = self.flat_pointer(tr.src, tr.src_origin, env, code)
        dst = self.flat_pointer(tr.dst, tr.dst_origin, env, code)
        sym = f"@{self.micro_symbol(cfg)}"
        if tr.nontemporal and cfg.nt_ok():  # where the tile is vector-aligned; fenced once
            nt = f"@{self.micro_symbol(replace(cfg, nontemporal=True))}"
            sym, self.fence = self.if_aligned(dst, cfg.bytes * tr.rows, nt, sym, code), True
        code.append(f"  call void {sym}(ptr {src}, ptr {dst})")
        return "\n".join(x for x in code if x)

    def if_aligned(self, ptr: str, align: int, aligned: str, other: str, code: list[str]) -> str:
        """The function ``aligned`` where ``ptr`` is on an ``align``-byte boundary, else
        ``other`` (a select at run time: a user's array may be 16-byte aligned only)."""
        addr, low, ok, fn = (self.fresh(x) for x in ("pa", "pl", "ok", "fn"))
        code += [
            f"  {addr} = ptrtoint ptr {ptr} to i64",
            f"  {low} = and i64 {addr}, {align - 1}",
            f"  {ok} = icmp eq i64 {low}, 0",
            f"  {fn} = select i1 {ok}, ptr {aligned}, ptr {other}",
        ]
        return fn

    def micro_symbol(self, cfg) -> str:
        """The symbol of ``cfg``'s microkernel in this module, rendered on first use."""
        sym = self.micro_symbols.get(cfg)
        if sym is None:
            sym, declarations, definition = _micro_ir(cfg)
            self.decls.update(declarations)
            self.functions.append(definition)
            self.micro_symbols[cfg] = sym
        return sym

    def offset_table(self, offsets: tuple[int, ...]) -> str:
        name = self.offset_tables.get(offsets)
        if name is None:
            name = f"@offsets.{len(self.offset_tables)}"
            body = ", ".join(f"i64 {o}" for o in offsets)
            self.decls.add(
                f"{name} = internal unnamed_addr constant [{len(offsets)} x i64] [{body}], align 64"
            )
            self.offset_tables[offsets] = name
        return name

    def copies(self, t: TensorArg) -> int:
        """Copies of a scratch tensor the nest allocates: one per thread for a per-thread one
        in a parallel module, else one."""
        return self.threads if t.per_thread and self.parallel else 1

    def flat_pointer(self, tensor: str, flat: IExpr, env: dict[str, str], code: list[str]) -> str:
        t = self.k.arg(tensor)
        assert isinstance(t, TensorArg)
        off = self.int_code(flat, env)
        code.append(off.code)
        base = f"%t.{t.name}"
        if self.copies(t) > 1:
            # this thread's copy (thread 0 outside a parallel region)
            self.decls.add(_DECLS["omp_thread"])
            tid, wide, at = self.fresh("tid"), self.fresh("tid"), self.fresh("a")
            elems = math.prod(self.k.shape_of(t.name))
            code += [
                f"  {tid} = call i32 @omp_get_thread_num()",
                f"  {wide} = sext i32 {tid} to i64",
                f"  {at} = mul i64 {wide}, {elems}",
            ]
            base = self.fresh("a")
            code.append(
                f"  {base} = getelementptr inbounds {LLTYPE[t.dtype]}, ptr %t.{t.name}, i64 {at}"
            )
        p = self.fresh("a")
        code.append(
            f"  {p} = getelementptr inbounds {LLTYPE[t.dtype]}, ptr {base}, i64 {off.value}"
        )
        return p

    def address(self, ld: Load, env: dict[str, str], code: list[str]) -> str:
        flat: IExpr = Int(value=0)
        for e, stride in zip(ld.index, self.strides[ld.tensor], strict=True):
            term = e if stride == 1 else IntOp(op="*", a=e, b=Int(value=stride))
            flat = term if flat == Int(value=0) else IntOp(op="+", a=flat, b=term)
        return self.flat_pointer(ld.tensor, flat, env, code)


_DECLS = {
    "GOMP_parallel": "declare void @GOMP_parallel(ptr, ptr, i32, i32)",
    "omp_thread": "declare i32 @omp_get_thread_num() nounwind readnone",
    "omp_threads": "declare i32 @omp_get_num_threads()",
    "smin": "declare i64 @llvm.smin.i64(i64, i64)",
}


def _strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    acc = 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return tuple(reversed(out))


def emit_module(
    kernel: Kernel,
    tree: tuple[L.Node, ...],
    *,
    parallel: bool,
    cpu: str,
    isa: str | None = None,
    threads: int = 1,
) -> str:
    """LLVM IR text of ``kernel`` scheduled as ``tree`` (loops marked parallel are threaded)."""
    return ModuleEmitter(kernel, tree, parallel=parallel, cpu=cpu, isa=isa, threads=threads).emit()
