"""LLVM IR text of BRGEMM microkernels, rendered from the templates in ``microkernels/``.

:func:`generate` returns a :class:`KernelIR`: the function definition under a chosen symbol name
and the intrinsic declarations it needs, to paste into any module (for example a loop nest that
polydl generates and that calls the kernel directly). The IR signatures, by batch form::

    stride:  void @name(ptr A, ptr B, ptr C, i64 batch [, ptr e0, ptr e1 ...] [, float alpha])
    offset:  void @name(ptr A, ptr B, ptr C, i64 batch, ptr a_offs, ptr b_offs [, ptr e0 ...] ...)
    address: void @name(ptr A, ptr B, ptr C, i64 batch [, ptr e0 ...] [, float alpha])

In C: ``A``/``B`` are ``const float *`` (stride, offset) or ``const float *const *`` (address);
``C`` is ``float *``; ``a_offs``/``b_offs`` are ``const int64_t *`` element offsets; ``e0``,
``e1`` ... are the epilogue's operands (``const float *``, each at the element of the block's
first row and column; a bias is ``e0``). ``C`` must not overlap the inputs. Semantics and
layouts: :mod:`polydl.kernels.config`; the epilogue: :mod:`polydl.kernels.epilogue`.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import struct
from dataclasses import dataclass

import jinja2

from . import amx
from .config import BrgemmConfig
from .epilogue import BINARY, Epilogue
from .isa import Blocking, IsaFamily, TileGroup, effective, family, plan

_SYMBOL = re.compile(r"^[A-Za-z_.$][A-Za-z0-9_.$]*$")


# llvm.prefetch(address, rw = 0: read, locality = 3: keep in every level (prefetcht0), cache
# type = 1: data)
PREFETCH_DECL = "declare void @llvm.prefetch.p0(ptr, i32 immarg, i32 immarg, i32 immarg)"
# whether a tile's lines of the epilogue's full operands are prefetched as it starts (an A/B
# switch: benchmarks/fusion.py --prefetch-ab)
PREFETCH_EPILOGUE = True
# whether those prefetches are spread over the tile's k loop (step t asks for the tile's line t,
# rows then columns; lines past the loop's steps still at the tile's start) instead of all
# issued as the tile starts (an A/B switch: benchmarks/fusion.py --spread-ab)
PREFETCH_SPREAD = True
# after non-temporal stores (weakly ordered): they are visible to other threads before the
# kernel returns to code that may hand C on
SFENCE_DECL = "declare void @llvm.x86.sse.sfence()"
# families whose kernels may store C non-temporally (x86: vmovntps and sfence)
NT_FAMILIES = frozenset({"avx512", "avx512_bf16", "avx2"})
# whether a tile's last column, when it holds at most half a vector's lanes (a 7x7 conv's 49
# pixels: 3 zmm vectors and one lane), is accumulated in a half-width vector (ymm): a core
# whose 512-bit FMAs take both 256-bit pipes (Zen 4) does two of those per cycle, so the row
# of 3 zmm + 1 ymm FMAs costs 3.5 FMA slots instead of 4 (an A/B switch:
# benchmarks/fusion.py --narrow-ab)
NARROW_TAIL = True


def nontemporal_align(config: BrgemmConfig) -> int:
    """The byte alignment of C under which ``config``'s kernel stores whole vectors
    non-temporally (``vmovntps``, which faults on an unaligned address), or 0 when it stores
    none that way: ``config.nontemporal``, an x86 family, f32 C, rows ``ldc`` (and groups
    ``ldc_group``) apart by whole vectors. Partial vectors are always stored the normal way
    (masked). The caller calls the kernel only with a C block so aligned (codegen checks the
    pointer at run time and calls the normal kernel otherwise)."""
    cfg = config.normalized()
    fam = family(cfg.isa)
    if not cfg.nontemporal or fam.name not in NT_FAMILIES or cfg.c_dtype != "f32":
        return 0
    v = effective(fam, cfg).vector_width
    if cfg.n < v or cfg.ldc % v or (cfg.row_group is not None and cfg.ldc_group % v):
        return 0
    return 4 * v


def _load_template(name: str) -> str | None:
    """Template source from the installed package (``polydl/microkernels``); None if missing."""
    res = importlib.resources.files("polydl").joinpath("microkernels", *name.split("/"))
    try:
        return res.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None


@functools.cache
def environment() -> jinja2.Environment:
    """The one Jinja environment of the microkernel templates (found with importlib.resources)."""
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(_load_template),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


@dataclass(frozen=True, kw_only=True)
class KernelIR:
    """A kernel ready to paste: ``declarations`` (one per line, deduplicate across kernels with
    :func:`merge_declarations`) and the ``definition`` of ``@name`` (plus nothing else)."""

    name: str
    config: BrgemmConfig
    family: IsaFamily
    blocking: Blocking
    declarations: tuple[str, ...]
    definition: str
    signature: str  # C-like

    def module(self) -> str:
        """A complete module holding only this kernel."""
        return "\n".join(self.declarations) + "\n\n" + self.definition


def merge_declarations(*kernels: KernelIR) -> list[str]:
    """The declarations several kernels need, each once, in a stable order."""
    return sorted({d for k in kernels for d in k.declarations})


def _params(cfg: BrgemmConfig) -> tuple[str, str]:
    ir = ["ptr %A", "ptr %B", "ptr noalias %C", "i64 %batch"]
    a_c = "const float *const *A" if cfg.form == "address" else "const float *A"
    b_c = "const float *const *B" if cfg.form == "address" else "const float *B"
    c = [a_c, b_c, "uint16_t *C" if cfg.c_dtype == "bf16" else "float *C", "int64_t batch"]
    if cfg.form == "offset":
        ir += ["ptr %a_offs", "ptr %b_offs"]
        c += ["const int64_t *a_offs", "const int64_t *b_offs"]
    for t, _ in enumerate(cfg.epilogue.operands if cfg.epilogue else ()):
        ir.append(f"ptr %e{t}")
        c.append(f"const float *e{t}")
    if cfg.alpha_arg:
        ir.append("float %alpha")
        c.append("float alpha")
    return ", ".join(ir), ", ".join(c)


def _vec_const(elt: str, values: list[str]) -> str:
    return "<" + ", ".join(f"{elt} {v}" for v in values) + ">"


def _mask(width: int, active: int) -> str:
    bits = ["true"] * active + ["false"] * (width - active)
    return f"<{width} x i1> " + _vec_const("i1", bits)


def _float_lit(x: float) -> str:
    """An LLVM float literal: the exact double of the f32 value, in hex."""
    if x in (float("inf"), float("-inf")):
        return "0x7FF0000000000000" if x > 0 else "0xFFF0000000000000"
    f32 = struct.unpack("<f", struct.pack("<f", x))[0]
    return "0x" + struct.pack(">d", f32).hex().upper()


def _stages(cfg: BrgemmConfig) -> list[str]:
    """Store-time stages before the epilogue: alpha, beta (macros of common/epilogue.ll.j2)."""
    stages = []
    if cfg.alpha != 1.0 or cfg.alpha_arg:
        stages.append("alpha")
    if cfg.beta == 1:
        stages.append("beta")
    return stages


# LLVM intrinsics (by base name) an epilogue step needs declared: max/min, and the vector math
# of common/math.ll.j2 (exp: roundeven and the family's fma; tanh/erf: fabs, copysign; sqrt)
_NEEDS = {
    "max": ("maxnum",),
    "min": ("minnum",),
    "exp": ("maxnum", "minnum", "roundeven"),
    "sigmoid": ("maxnum", "minnum", "roundeven"),
    "tanh": ("maxnum", "minnum", "roundeven", "fabs", "copysign"),
    "erf": ("maxnum", "minnum", "roundeven", "fabs", "copysign"),
    "sqrt": ("sqrt",),
    "abs": ("fabs",),
}
_ARITY = {"maxnum": 2, "minnum": 2, "copysign": 2}


def _program(
    epi: Epilogue | None, v: int, row_group: int | None
) -> tuple[list[dict], str, set[str]]:
    """The epilogue as steps for the template (each one macro of common/epilogue.ll.j2), the
    value stored, and the intrinsics the steps need. Values are named ``%@.<n>``: the template
    puts each accumulator's prefix in place of ``@``. Common subexpressions are computed once."""
    if epi is None:
        return [], "%@.acc", set()
    steps: list[dict] = []
    needs: set[str] = set()
    seen: dict[tuple, str] = {}

    def value(e: tuple) -> str:
        if e[0] == "acc":
            return "%@.acc"
        if e[0] == "num":
            return _vec_const("float", [_float_lit(e[1])] * v)
        if e in seen:
            return seen[e]
        if e[0] == "in":
            op = epi.operands[e[1]]
            step = {"kind": "load_col" if op.col else "load_row", "t": e[1], "ld": op.ld}
            if row_group is not None:
                step["ld_group"] = op.ld_group if op.ld_group is not None else row_group * op.ld
        elif e[0] in BINARY:
            step = {"kind": "binary", "op": e[0], "a": value(e[1]), "b": value(e[2])}
        else:
            step = {"kind": e[0], "a": value(e[1])}
        needs.update(_NEEDS.get(e[0], ()))
        dst = f"%@.v{len(seen)}"
        step["dst"] = dst
        step["p"] = dst[3:]  # prefix of the step's temporaries
        seen[e] = dst
        steps.append(step)
        return dst

    out = value(epi.expr)
    return steps, out, needs


# constants of the vector math (common/math.ll.j2): exp's range reduction and Taylor terms, the
# small-argument series of tanh, erf's rational form
_MATH = {
    "exp_lo": -104.0,
    "exp_max": 88.72283,
    "log2e": 1.4426950408889634,
    "ln2_hi": 0.693145751953125,
    "ln2_lo": 1.428606765330187e-06,
    "one": 1.0,
    "two": 2.0,
    "half": 0.5,
    "inf": float("inf"),
    "e2": 1 / 2,
    "e3": 1 / 6,
    "e4": 1 / 24,
    "e5": 1 / 120,
    "e6": 1 / 720,
    "tanh_small": 0.0625,
    "t3": -1 / 3,
    "t5": 2 / 15,
    "t7": -17 / 315,
    # erf: x * P(x^2) / Q(x^2) on |x| <= 4 (a weighted least-squares rational fit of erf(x)/x,
    # made for polydl: 4e-7 relative in float32)
    "erf_hi": 4.0,
    "zero": 0.0,
    "ep0": 1.1283790943068388,
    "ep1": 0.20712322356189655,
    "ep2": 0.051524588450457875,
    "ep3": 0.003990460685707664,
    "ep4": 0.0001472818047411177,
    "ep5": -1.9422530831722554e-06,
    "ep6": 1.9110210851949128e-08,
    "eq1": 0.5168894283382318,
    "eq2": 0.11796988058236173,
    "eq3": 0.014957871407927918,
    "eq4": 0.0010210788792373426,
}


def math_context(v: int | None, fma: str | None = None) -> dict:
    """What ``common/math.ll.j2`` needs for f32 vectors of ``v`` lanes, or scalars (``None``):
    the types, the intrinsics by base name, the family's ``fma``, the constants."""
    if v is None:
        suffix, vty, ity, bty = "f32", "float", "i32", "i1"

        def const(elt: str, x: str) -> str:
            return x

    else:
        suffix, vty, ity, bty = f"v{v}f32", f"<{v} x float>", f"<{v} x i32>", f"<{v} x i1>"

        def const(elt: str, x: str) -> str:
            return _vec_const(elt, [x] * v)

    mc = {k: const("float", _float_lit(x)) for k, x in _MATH.items()}
    mc |= {"exp_bias": const("i32", "127"), "exp_shift": const("i32", "23")}
    mc["one_i"] = const("i32", "1")
    names = ("maxnum", "minnum", "roundeven", "fabs", "copysign", "sqrt")
    return {
        "vty": vty,
        "ity": ity,
        "bty": bty,
        "mc": mc,
        "intr": {n: f"llvm.{n}.{suffix}" for n in names},
        "fma": fma or f"llvm.fma.{suffix}",
    }


def math_declarations(ctx: dict, needs: set[str]) -> list[str]:
    """The declarations of the intrinsics ``needs`` (base names) in ``ctx``'s types."""
    vty = ctx["vty"]
    return [
        f"declare {vty} @{ctx['intr'][n]}({', '.join([vty] * _ARITY.get(n, 1))})"
        for n in sorted(needs)
    ]


def math_code(fn: str, prefix: str, src: str, dst: str) -> tuple[str, list[str]]:
    """Scalar f32 ``fn`` (``exp``, ``tanh``, ``sigmoid``, ``erf``) of ``src`` into ``dst`` as
    LLVM instructions (temporaries named ``%<prefix>.*``), and the declarations they need: the
    loop vectoriser then widens it like any arithmetic, where a libm call would stay scalar."""
    ctx = math_context(None)
    module = environment().get_template("common/math.ll.j2").make_module(ctx)
    code = str(getattr(module, fn)(prefix, src, dst))
    decls = [
        *math_declarations(ctx, set(_NEEDS[fn])),
        f"declare float @{ctx['fma']}(float, float, float)",
    ]
    return code, decls


def narrow_width(cfg: BrgemmConfig, fam: IsaFamily, lanes: int) -> int | None:
    """The half width (lanes) a column of ``lanes`` live lanes accumulates in, or None for the
    family's own width: f32 A and B (not the bf16 paths), 16-lane vectors, at most half of
    them live (:data:`NARROW_TAIL`)."""
    v = fam.vector_width
    if not NARROW_TAIL or v < 16 or cfg.ab_dtype != "f32" or fam.amx or 2 * lanes > v:
        return None
    return v // 2


def _col_ctx(c: int, lanes: int, cfg: BrgemmConfig, fam: IsaFamily, nt: bool) -> dict:
    """One column of a tile group: its offset, store mask, and the vector type (``cvty``),
    mask (``bmask``), masked load and FMA of its B loads and accumulators (half width when
    :func:`narrow_width` says so; widened to the full vector before the store's stages)."""
    v = fam.vector_width
    w = narrow_width(cfg, fam, lanes) or v
    return {
        "c": c,
        "off": c * v,
        "mask": _mask(v, lanes),
        "lanes": lanes,
        "nt": nt and lanes == v,
        "narrow": w < v,
        "cvty": f"<{w} x float>",
        "calign": 4 * w,
        "bmask": _mask(w, lanes),
        "cload": f"llvm.masked.load.v{w}f32.p0",
        "cfma": f"{fam.fma}.v{w}f32",
        "widen": f"<{v} x i32> "
        + _vec_const("i32", [str(j) for j in range(w)] + ["poison"] * (v - w)),
        "csplat": f"<{w} x i32>",
        "cmty": f"<{w} x i1>",
    }


def _group_ctx(gi: int, g: TileGroup, cfg: BrgemmConfig, fam: IsaFamily, nt: bool) -> dict:
    p = f"g{gi}"
    cols = [_col_ctx(c, lanes, cfg, fam, nt) for c, lanes in enumerate(g.lanes)]
    row_setup: list[str] = []
    if cfg.row_group is None:  # one run of rows: offsets from the tile's first row
        rows = [{"r": r, "a_off": r * cfg.lda, "c_off": f"{r * cfg.ldc}"} for r in range(g.mr)]
        lda_step, ldc_step = cfg.lda, cfg.ldc
    else:
        # grouped rows: the offset of each row of a tile depends on where the tile starts, so
        # it is computed once per tile (before the batch loop) from the row index; the k loop
        # then addresses each row from its own base, like constant offsets
        rows = []
        for r in range(g.mr):
            x = f"%{p}.row{r}"
            row_setup += [
                f"{x}.i = add i64 %{p}.i0, {r}",
                f"{x}.g = udiv i64 {x}.i, {cfg.row_group}",
                f"{x}.w = urem i64 {x}.i, {cfg.row_group}",
                f"{x}.ag = mul i64 {x}.g, {cfg.lda_group}",
                f"{x}.aw = mul i64 {x}.w, {cfg.lda}",
                f"{x}.a = add i64 {x}.ag, {x}.aw",
                f"{x}.cg = mul i64 {x}.g, {cfg.ldc_group}",
                f"{x}.cw = mul i64 {x}.w, {cfg.ldc}",
                f"{x}.c = add i64 {x}.cg, {x}.cw",
            ]
            rows.append({"r": r, "a_off": f"{x}.a", "c_off": f"{x}.c"})
        lda_step = ldc_step = 0
    acc = [
        [[f"%{p}.acc.s{s}.r{r}.c{c}" for c in range(g.nv)] for r in range(g.mr)]
        for s in range(g.ksets)
    ]
    dot = fam.bf16_dot and cfg.ab_dtype == "bf16"
    steps = cfg.k // 2 if dot else cfg.k  # k steps, or bf16 pairs (k, k+1) of one dot product
    k_main, k_tail = divmod(steps, g.unroll)
    return {
        "p": p,
        "mr": g.mr,
        "nv": g.nv,
        "ksets": g.ksets,
        "unroll": g.unroll,
        "i_start": g.i_start,
        "i_count": g.i_count,
        "j_start": g.j_start,
        "j_count": g.j_count,
        "j_step": g.j_step,
        "cols": cols,
        "rows": rows,
        "lda_step": lda_step,
        "ldc_step": ldc_step,
        "row_setup": row_setup,
        "acc": acc,
        "acc_list": [
            (a, cols[c]["cvty"], cols[c]["calign"]) for s in acc for r in s for c, a in enumerate(r)
        ],
        "narrow": any(col["narrow"] for col in cols),
        "sets": list(range(g.ksets)),
        "steps": [{"t": t, "s": t % g.ksets} for t in range(g.unroll)],
        "k_main": k_main,
        # the tile's lines of each prefetched operand (rows x columns) the k loop asks for, one
        # a step (the first pf_loop lines); the others are asked for as the tile starts
        "pf_loop": min(g.mr * g.nv, k_main * g.unroll) if PREFETCH_SPREAD else 0,
        "k_tail": k_tail,
        "k_tail_start": k_main * g.unroll,
        "kstride": 2 if dot else 1,
        "has_odd": dot and cfg.k % 2 == 1,  # the last k of an odd count: one widened step
        "k_odd": cfg.k - 1,
    }


def generate(
    config: BrgemmConfig,
    *,
    name: str = "polydl_brgemm",
    linkage: str = "",
    attributes: str = "nounwind",
) -> KernelIR:
    """Render the kernel for ``config`` (its ``isa``, or the host's best family) as ``@name``.

    ``linkage`` is an LLVM linkage keyword (``""`` for external, ``"internal"``, ...);
    ``attributes`` are inline function attributes (e.g. ``"nounwind noinline"``). No attribute
    groups or numbered metadata are emitted (non-temporal stores carry theirs inline), so the
    text pastes into any module without renumbering.
    """
    if not _SYMBOL.match(name):
        raise ValueError(f"not a plain LLVM symbol name: {name!r}")
    cfg = config.normalized()
    blocking = plan(cfg, family(cfg.isa))
    fam = effective(family(cfg.isa), cfg)
    v = fam.vector_width
    suffix = f"v{v}f32"
    fma = f"{fam.fma}.{suffix}"
    mload = f"llvm.masked.load.{suffix}.p0"
    mstore = f"llvm.masked.store.{suffix}.p0"
    vty = fam.vty
    mty = f"<{v} x i1>"
    program, result, needs = _program(cfg.epilogue, v, cfg.row_group)
    # the epilogue's full operands (a residual: one value per element), each tile's lines of
    # them prefetched over its k loop (common/epilogue.ll.j2, prefetch_step; the lines the loop
    # does not reach, or all of them without PREFETCH_SPREAD, as the tile starts: prefetch_col)
    prefetched = [st for st in program if st["kind"] == "load_col" and st["ld"]]
    prefetched = prefetched if PREFETCH_EPILOGUE else []
    math = math_context(v, fma)
    bf16 = cfg.ab_dtype == "bf16"
    if bf16 and cfg.ab_dtype not in fam.dtypes:
        raise ValueError(f"family {fam.name} takes no {cfg.ab_dtype} operands")
    if not bf16 and "f32" not in fam.dtypes:
        raise ValueError(f"family {fam.name} takes bf16 operands only")
    dot = fam.bf16_dot and bf16
    if fam.amx and amx.supports(cfg) is not None:
        raise ValueError(f"family {fam.name}: {amx.supports(cfg)}")
    if cfg.b_vnni and not dot:
        raise ValueError(f"family {fam.name} reads no VNNI-2 B (a bf16 dot-product family does)")
    c_bf16 = cfg.c_dtype == "bf16"
    nt = nontemporal_align(cfg) > 0
    hty, pty, bty16 = f"<{v} x i16>", f"<{2 * v} x i16>", f"<{2 * v} x bfloat>"
    ity = f"<{v} x i32>"
    mload16 = f"llvm.masked.load.v{v}i16.p0"
    mstore16 = f"llvm.masked.store.v{v}i16.p0"
    mload32 = f"llvm.masked.load.v{v}i32.p0"
    dot_fn = f"llvm.x86.avx512bf16.dpbf16ps.{32 * v}"
    params, c_params = _params(cfg)
    groups = (
        [] if fam.amx else [_group_ctx(gi, g, cfg, fam, nt) for gi, g in enumerate(blocking.groups)]
    )
    declarations = (
        f"declare {vty} @{fma}({vty}, {vty}, {vty})",
        f"declare {vty} @{mload}(ptr, i32 immarg, {mty}, {vty})",
        f"declare void @{mstore}({vty}, ptr, i32 immarg, {mty})",
        *math_declarations(math, needs),
        *([f"declare {hty} @{mload16}(ptr, i32 immarg, {mty}, {hty})"] if bf16 or c_bf16 else []),
        *([f"declare void @{mstore16}({hty}, ptr, i32 immarg, {mty})"] if c_bf16 else []),
        *([f"declare {ity} @{mload32}(ptr, i32 immarg, {mty}, {ity})"] if cfg.b_vnni else []),
        *([f"declare {vty} @{dot_fn}({vty}, {bty16}, {bty16})"] if dot and not fam.amx else []),
        *(amx.DECLARATIONS if fam.amx else ()),
        *([PREFETCH_DECL] if cfg.prefetch_b or prefetched else []),
        *([SFENCE_DECL] if nt else []),
        *sorted(
            {
                d
                for g in groups
                for col in g["cols"]
                if col["narrow"]
                for d in (
                    f"declare {col['cvty']} @{col['cfma']}({', '.join([col['cvty']] * 3)})",
                    f"declare {col['cvty']} @{col['cload']}(ptr, i32 immarg, {col['cmty']}, "
                    f"{col['cvty']})",
                )
            }
        ),
    )
    counters = [f"{g['p']}.{lvl}" for g in groups for lvl in ("j", "i", "b", "k", "q")]
    ctx = {
        "name": name,
        "linkage": f"{linkage} " if linkage else "",
        "fn_attrs": attributes,
        "params": params,
        "vty": vty,
        "lanes": v,
        "valign": 4 * v,
        "splat_mask": f"<{v} x i32>",
        "fma": fma,
        "mload": mload,
        "mstore": mstore,
        "lda": cfg.lda,
        "ldb": cfg.ldb,
        "ldc": cfg.ldc,
        "form": cfg.form,
        "stride_a": cfg.stride_a,
        "stride_b": cfg.stride_b,
        "alpha_splat": "%alpha.splat"
        if cfg.alpha_arg
        else _vec_const("float", [_float_lit(cfg.alpha)] * v),
        "prologue": [
            f"%alpha.ins = insertelement {vty} poison, float %alpha, i64 0",
            f"%alpha.splat = shufflevector {vty} %alpha.ins, {vty} poison, <{v} x i32> zeroinitializer",
        ]
        if cfg.alpha_arg
        else [],
        "neg_zero": _vec_const("float", ["-0.0"] * v),
        "stages": _stages(cfg),
        "program": program,
        "result": result,
        **{k: math[k] for k in ("intr", "mc", "ity", "bty")},
        "row_group": cfg.row_group,
        "bf16": bf16,
        "dot": dot_fn if dot else "",
        "ety": "i16" if bf16 else "float",
        "hty": hty,
        "pty": pty,
        "bty16": bty16,
        "mload16": mload16,
        "mstore16": mstore16,
        "mload32": mload32,
        "b_vnni": cfg.b_vnni,
        "low16": _vec_const("i32", ["65535"] * v),
        "c_bf16": c_bf16,
        "cty": "i16" if c_bf16 else "float",
        "round_bias": _vec_const("i32", ["32767"] * v),
        "quiet": _vec_const("i32", ["64"] * v),
        "even_lanes": f"<{v} x i32> " + _vec_const("i32", [str(2 * j) for j in range(v)]),
        "shift16": _vec_const("i32", ["16"] * v),
        "pair_mask": f"<{2 * v} x i32> "
        + _vec_const("i32", [str(x) for j in range(v) for x in (j, j + v)]),
        "counters": counters,
        "accs": [a for g in groups for a in g["acc_list"]],  # (name, type, alignment)
        "groups": groups,
        **(amx.context(cfg, _mask, params) if fam.amx else {}),
        "prefetch_b": cfg.prefetch_b,
        "prefetched": prefetched,
        "nontemporal": nt,
    }
    text = environment().get_template(fam.template).render(**ctx)
    signature = f"void {name}({c_params})"
    return KernelIR(
        name=name,
        config=cfg,
        family=fam,
        blocking=blocking,
        declarations=declarations,
        definition=text.strip() + "\n",
        signature=signature,
    )
