"""LLVM IR text of BRGEMM microkernels, rendered from the templates in ``microkernels/``.

:func:`generate` returns a :class:`KernelIR`: the function definition under a chosen symbol name
and the intrinsic declarations it needs, to paste into any module (for example a loop nest that
polydl generates and that calls the kernel directly). The IR signatures, by batch form::

    stride:  void @name(ptr A, ptr B, ptr C, i64 batch [, ptr bias])
    offset:  void @name(ptr A, ptr B, ptr C, i64 batch, ptr a_offs, ptr b_offs [, ptr bias])
    address: void @name(ptr A, ptr B, ptr C, i64 batch [, ptr bias])

In C: ``A``/``B`` are ``const float *`` (stride, offset) or ``const float *const *`` (address);
``C`` is ``float *``; ``a_offs``/``b_offs`` are ``const int64_t *`` element offsets; ``bias`` is a
``const float *`` of ``m`` (row bias) or ``n`` (column bias) elements. ``C`` must not overlap the
inputs. Semantics and layouts: :mod:`polydl.kernels.config`.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import struct
from dataclasses import dataclass

import jinja2

from .config import BrgemmConfig
from .isa import Blocking, IsaFamily, TileGroup, effective, family, plan

_SYMBOL = re.compile(r"^[A-Za-z_.$][A-Za-z0-9_.$]*$")


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
    c = [a_c, b_c, "float *C", "int64_t batch"]
    if cfg.form == "offset":
        ir += ["ptr %a_offs", "ptr %b_offs"]
        c += ["const int64_t *a_offs", "const int64_t *b_offs"]
    if cfg.bias is not None:
        ir.append("ptr %bias")
        c.append("const float *bias")
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
    f32 = struct.unpack("<f", struct.pack("<f", x))[0]
    return "0x" + struct.pack(">d", f32).hex().upper()


def _stages(cfg: BrgemmConfig) -> list[str]:
    """Store-time stages in order: alpha, beta, bias, ReLU (macros of common/epilogue.ll.j2)."""
    stages = []
    if cfg.alpha != 1.0 or cfg.alpha_arg:
        stages.append("alpha")
    if cfg.beta == 1:
        stages.append("beta")
    if cfg.bias == "row":
        stages.append("bias_row")
    elif cfg.bias == "col":
        stages.append("bias_col")
    if cfg.relu:
        stages.append("relu")
    return stages


def _group_ctx(gi: int, g: TileGroup, cfg: BrgemmConfig, fam: IsaFamily) -> dict:
    p = f"g{gi}"
    v = fam.vector_width
    cols = [{"c": c, "off": c * v, "mask": _mask(v, lanes)} for c, lanes in enumerate(g.lanes)]
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
    k_main, k_tail = divmod(cfg.k, g.unroll)
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
        "acc_list": [a for s in acc for r in s for a in r],
        "sets": list(range(g.ksets)),
        "steps": [{"t": t, "s": t % g.ksets} for t in range(g.unroll)],
        "k_main": k_main,
        "k_tail": k_tail,
        "k_tail_start": k_main * g.unroll,
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
    groups or metadata are emitted, so the text pastes into any module without renumbering.
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
    declarations = (
        f"declare {vty} @{fma}({vty}, {vty}, {vty})",
        f"declare {vty} @{mload}(ptr, i32 immarg, {mty}, {vty})",
        f"declare void @{mstore}({vty}, ptr, i32 immarg, {mty})",
    )
    params, c_params = _params(cfg)
    groups = [_group_ctx(gi, g, cfg, fam) for gi, g in enumerate(blocking.groups)]
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
        "counters": counters,
        "accs": [a for g in groups for a in g["acc_list"]],
        "groups": groups,
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
