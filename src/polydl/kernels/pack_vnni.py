"""The VNNI-2 weight pack of the bf16 blocked convolution in one pass: KCRS ``Wt`` ->
``Wp[K/kb, C/cb, R, S, cb/2, kb, 2]`` with ``Wp[k, c, r, s, u, v, h] = Wt[kb*k + v,
cb*c + 2u + h, r, s]`` (what ``ops.pack_weights(vnni=True)`` computes; arguments ``(Wp, Wt)``).

The DSL kernel copies element by element (a pair's two elements are ``R*S`` apart in ``Wt``:
no tile transpose fits it). Here each group of ``lanes`` output channels (``v``) of one
``kb x cb`` block is packed in two steps that stay in the core's private caches:

1. the group's ``lanes`` rows of ``cb*R*S`` consecutive bf16 elements, read as 32-bit words
   (two adjacent elements each), are transposed by ``lanes x lanes`` f32 tile transposes
   (``kernels/transpose.py``) into a stack buffer: word row ``j`` holds elements ``2j, 2j + 1``
   (flat ``(c, tap)`` index) of every channel of the group;
2. for each pair ``u`` and tap ``t`` the elements ``f0 = 2u*RS + t`` and ``f1 = f0 + RS`` are
   the even or odd half of word rows ``f0 // 2`` and ``f1 // 2``: one two-input shuffle (a
   blend, or a blend of shifted words) gives the ``lanes`` pairs ``(Wt[v, f0], Wt[v, f1])``,
   stored as one vector of ``2*lanes`` elements.

Work items are the groups (output-channel block, input-channel block, group), split into one
contiguous chunk per thread (``GOMP_parallel``), walked from its last item to its first: the
blocks left in the core's caches are the first the convolution reads (its loop over output-channel
blocks runs forward; on a Zen 4 host, 512x512x3x3 at one thread, pack + convolution 1.47 -> 1.40
ms). A last group of fewer than ``lanes`` channels
transposes fewer rows and stores masked vectors. Needs a vector family (``lanes`` f32 lanes);
:func:`pack_vnni` returns None otherwise, and the caller runs the DSL kernel.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import numpy as np

from .. import jit, memory
from ..errors import PolyDLError
from .isa import compile_target, family
from .transpose import TransposeConfig, _lanes, generate_transpose

ENABLED = True  # False: pack_vnni returns None (the benchmarks' A/B switch)
# the stack buffer of one work item (its groups' transposed rows) stays within this: L2-resident
# and well inside a thread's stack
BUFFER_BYTES = 96 * 1024


@dataclass(frozen=True, kw_only=True)
class VnniPackConfig:
    """The pack of ``K x C x R x S`` weights in blocks of ``kb`` output and ``cb`` (even) input
    channels, run by ``threads`` threads (1: no libgomp)."""

    K: int
    C: int
    R: int
    S: int
    cb: int
    kb: int
    threads: int = 1

    def check(self) -> None:
        if min(self.K, self.C, self.R, self.S, self.cb, self.kb, self.threads) < 1:
            raise ValueError(f"{self}: every extent must be positive")
        if self.cb % 2 or self.C % self.cb or self.K % self.kb:
            raise ValueError(f"{self}: cb must be even and divide C={self.C}, kb divide K={self.K}")

    @property
    def shape(self) -> tuple[int, ...]:
        K, C, R, S, cb, kb = self.K, self.C, self.R, self.S, self.cb, self.kb
        return (K // kb, C // cb, R, S, cb // 2, kb, 2)


def generate(cfg: VnniPackConfig, lanes: int, isa: str) -> str:
    """LLVM IR of ``void polydl_pack_vnni(ptr Wp, ptr Wt, i32 threads)``."""
    cfg.check()
    K, C, RS, cb, kb = cfg.K, cfg.C, cfg.R * cfg.S, cfg.cb, cfg.kb
    CB, KB, cb2 = C // cb, K // kb, cb // 2
    words = cb * RS // 2  # 32-bit words per channel row of one block
    chunks, cols_left = divmod(words, lanes)
    groups, rows_left = divmod(kb, lanes)
    lds = C * RS // 2
    decls: set[str] = set()
    defs: list[str] = []

    def transpose(rows: int, cols: int) -> str:
        tcfg = TransposeConfig(rows=rows, cols=cols, lds=lds, ldd=lanes, isa=isa)
        tir = generate_transpose(
            tcfg, name=f"tr_{rows}x{cols}", linkage="internal", attributes="nounwind alwaysinline"
        )
        decls.update(tir.declarations)
        defs.append(tir.definition)
        return tir.name

    vty = f"<{2 * lanes} x i16>"
    mty = f"<{2 * lanes} x i1>"
    buf_words = (chunks + (1 if cols_left else 0)) * lanes * lanes

    def group(rows: int, count: int) -> str:
        """``@group_<rows>_<count>(ptr src, ptr dst)``: ``count`` consecutive groups of
        ``rows`` output channels each, transposed first, then stored tap by tap (each tap's
        pairs a run of ``count`` vectors per pair: the stores walk ``Wp`` in order)."""
        name = f"group_{rows}_{count}"
        full = transpose(rows, lanes) if chunks else None
        part = transpose(rows, cols_left) if cols_left else None
        code = [
            f"define internal void @{name}(ptr noalias %src, ptr noalias %dst) nounwind {{",
            "entry:",
            f"  %buf = alloca [{buf_words * count} x i32], align 64",
        ]
        prev = "entry"
        for g in range(count):
            src, buf = f"%src.{g}", f"%buf.{g}"
            code += [
                f"  {src} = getelementptr i8, ptr %src, i64 {g * lanes * 2 * C * RS}",
                f"  {buf} = getelementptr i8, ptr %buf, i64 {g * buf_words * 4}",
            ]
            if full:
                code += [
                    f"  br label %tr{g}",
                    f"tr{g}:",
                    f"  %j{g} = phi i64 [0, %{prev}], [%j{g}.n, %tr{g}]",
                    f"  %j{g}.s = mul i64 %j{g}, {4 * lanes}",
                    f"  %j{g}.p = getelementptr i8, ptr {src}, i64 %j{g}.s",
                    f"  %j{g}.d = mul i64 %j{g}, {4 * lanes * lanes}",
                    f"  %j{g}.q = getelementptr i8, ptr {buf}, i64 %j{g}.d",
                    f"  call void @{full}(ptr %j{g}.p, ptr %j{g}.q)",
                    f"  %j{g}.n = add i64 %j{g}, 1",
                    f"  %j{g}.c = icmp ult i64 %j{g}.n, {chunks}",
                    f"  br i1 %j{g}.c, label %tr{g}, label %tail{g}",
                    f"tail{g}:",
                ]
                prev = f"tail{g}"
            if part:
                code += [
                    f"  %t{g}.p = getelementptr i8, ptr {src}, i64 {4 * lanes * chunks}",
                    f"  %t{g}.q = getelementptr i8, ptr {buf}, i64 {4 * lanes * lanes * chunks}",
                    f"  call void @{part}(ptr %t{g}.p, ptr %t{g}.q)",
                ]
        mask = ""
        if rows < lanes:
            bits = ", ".join("i1 1" if i < 2 * rows else "i1 0" for i in range(2 * lanes))
            mask = f"{mty} <{bits}>"
            mstore = f"llvm.masked.store.v{2 * lanes}i16.p0"
            decls.add(f"declare void @{mstore}({vty}, ptr, i32 immarg, {mty})")
        for t in range(RS):
            (j0, e0), (j1, e1) = divmod(t, 2), divmod(t + RS, 2)
            sel = []
            for i in range(lanes):
                sel += [2 * i + e0, 2 * lanes + 2 * i + e1]
            sh = ", ".join(f"i32 {x}" for x in sel)
            u = f"%u{t}"
            code += [
                f"  br label %pair{t}",
                f"pair{t}:",
                f"  {u} = phi i64 [0, %{prev}], [{u}.n, %pair{t}]",
                f"  {u}.b = mul i64 {u}, {4 * lanes * RS}",  # word row u*RS of a buffer
                f"  {u}.o = mul i64 {u}, {2 * 2 * kb}",  # bytes from pair u to u + 1 in Wp
                f"  {u}.a = add i64 {u}.b, {4 * lanes * j0}",
                f"  {u}.bb = add i64 {u}.b, {4 * lanes * j1}",
                f"  {u}.d = add i64 {u}.o, {t * cb2 * kb * 2 * 2}",
            ]
            for g in range(count):
                x = f"%x{t}.{g}"
                code += [
                    f"  {x}.ao = add i64 {u}.a, {g * buf_words * 4}",
                    f"  {x}.ap = getelementptr i8, ptr %buf, i64 {x}.ao",
                    f"  {x}.a = load {vty}, ptr {x}.ap, align {4 * lanes}",
                    f"  {x}.bo = add i64 {u}.bb, {g * buf_words * 4}",
                    f"  {x}.bp = getelementptr i8, ptr %buf, i64 {x}.bo",
                    f"  {x}.b = load {vty}, ptr {x}.bp, align {4 * lanes}",
                    f"  {x} = shufflevector {vty} {x}.a, {vty} {x}.b, <{2 * lanes} x i32> <{sh}>",
                    f"  {x}.do = add i64 {u}.d, {g * lanes * 2 * 2}",
                    f"  {x}.dp = getelementptr i8, ptr %dst, i64 {x}.do",
                ]
                if mask:
                    code.append(f"  call void @{mstore}({vty} {x}, ptr {x}.dp, i32 2, {mask})")
                else:
                    code.append(f"  store {vty} {x}, ptr {x}.dp, align 2")
            code += [
                f"  {u}.n = add i64 {u}, 1",
                f"  {u}.c = icmp ult i64 {u}.n, {cb2}",
                f"  br i1 {u}.c, label %pair{t}, label %next{t}",
                f"next{t}:",
            ]
            prev = f"next{t}"
        code += ["  ret void", "}"]
        defs.append("\n".join(code))
        return name

    # groups of full width one item packs together: as many as keep the buffers within
    # BUFFER_BYTES (a divisor of the groups of a block)
    count = max(
        (d for d in range(1, groups + 1) if groups % d == 0 and d * buf_words * 4 <= BUFFER_BYTES),
        default=1,
    )
    per_block = groups // count + (1 if rows_left else 0)
    items = KB * CB * per_block
    g_full = group(lanes, count) if groups else None
    g_part = group(rows_left, 1) if rows_left else None
    # @items(ptr Wp, ptr Wt, i64 lo, i64 hi): the groups lo..hi-1, in (k, c, group) order
    body = [
        "define internal void @items(ptr noalias %wp, ptr noalias %wt, i64 %lo, i64 %hi) nounwind {",
        "entry:",
        "  %e = icmp ult i64 %lo, %hi",
        "  br i1 %e, label %first, label %done",
        "first:",
        "  %top = sub i64 %hi, 1",
        "  br label %loop",
        "loop:",
        "  %i = phi i64 [%top, %first], [%i.n, %next]",
        f"  %g = urem i64 %i, {per_block}",
        f"  %kc = udiv i64 %i, {per_block}",
        f"  %c = urem i64 %kc, {CB}",
        f"  %k = udiv i64 %kc, {CB}",
        # source: row kb*k + lanes*g, column cb*RS*c (bf16 elements)
        f"  %s.r = mul i64 %k, {kb}",
        f"  %s.g = mul i64 %g, {lanes * count}",
        "  %s.row = add i64 %s.r, %s.g",
        f"  %s.a = mul i64 %s.row, {2 * C * RS}",
        f"  %s.b = mul i64 %c, {2 * cb * RS}",
        "  %s.o = add i64 %s.a, %s.b",
        "  %src = getelementptr i8, ptr %wt, i64 %s.o",
        # destination: block (k, c), channel lanes*g of each pair run
        f"  %d.a = mul i64 %kc, {2 * RS * cb2 * kb * 2}",
        f"  %d.b = mul i64 %g, {2 * lanes * 2 * count}",
        "  %d.o = add i64 %d.a, %d.b",
        "  %dst = getelementptr i8, ptr %wp, i64 %d.o",
    ]
    if g_full and g_part:
        body += [
            f"  %last = icmp eq i64 %g, {groups // count}",
            "  br i1 %last, label %part, label %full",
            "part:",
            f"  call void @{g_part}(ptr %src, ptr %dst)",
            "  br label %next",
            "full:",
            f"  call void @{g_full}(ptr %src, ptr %dst)",
            "  br label %next",
        ]
    else:
        body += [f"  call void @{g_full or g_part}(ptr %src, ptr %dst)", "  br label %next"]
    body += [
        "next:",
        "  %i.n = sub i64 %i, 1",
        "  %i.c = icmp ugt i64 %i, %lo",
        "  br i1 %i.c, label %loop, label %done",
        "done:",
        "  ret void",
        "}",
    ]
    defs.append("\n".join(body))
    entry = [
        "define void @polydl_pack_vnni(ptr %wp, ptr %wt, i32 %threads) nounwind {",
        "entry:",
    ]
    if cfg.threads > 1:
        decls.update(
            {
                "declare void @GOMP_parallel(ptr, ptr, i32, i32)",
                "declare i32 @omp_get_thread_num()",
                "declare i32 @omp_get_num_threads()",
            }
        )
        defs.append(
            "\n".join(
                [
                    "define internal void @region(ptr %d) nounwind {",
                    "entry:",
                    "  %wp = load ptr, ptr %d",
                    "  %d1 = getelementptr ptr, ptr %d, i64 1",
                    "  %wt = load ptr, ptr %d1",
                    "  %tid.i = call i32 @omp_get_thread_num()",
                    "  %nt.i = call i32 @omp_get_num_threads()",
                    "  %tid = sext i32 %tid.i to i64",
                    "  %nt = sext i32 %nt.i to i64",
                    f"  %lo.m = mul i64 %tid, {items}",
                    "  %lo = udiv i64 %lo.m, %nt",
                    "  %t1 = add i64 %tid, 1",
                    f"  %hi.m = mul i64 %t1, {items}",
                    "  %hi = udiv i64 %hi.m, %nt",
                    "  call void @items(ptr %wp, ptr %wt, i64 %lo, i64 %hi)",
                    "  ret void",
                    "}",
                ]
            )
        )
        entry += [
            "  %par = icmp sgt i32 %threads, 1",
            "  br i1 %par, label %many, label %one",
            "many:",
            "  %d = alloca [2 x ptr], align 8",
            "  store ptr %wp, ptr %d",
            "  %d1 = getelementptr ptr, ptr %d, i64 1",
            "  store ptr %wt, ptr %d1",
            "  call void @GOMP_parallel(ptr @region, ptr %d, i32 %threads, i32 0)",
            "  ret void",
            "one:",
        ]
    entry += [f"  call void @items(ptr %wp, ptr %wt, i64 0, i64 {items})", "  ret void", "}"]
    defs.append("\n".join(entry))
    return "\n".join(sorted(decls)) + "\n\n" + "\n\n".join(defs) + "\n"


class VnniPack:
    """A compiled pack: ``pack(Wp, Wt)`` on C-contiguous 2-byte arrays (``uint16`` or
    ``ml_dtypes.bfloat16``) of the config's shapes, ``Wp`` starting on a 4-byte boundary (a
    ``Wt`` that does not is copied first)."""

    def __init__(self, cfg: VnniPackConfig, lanes: int, isa: str):
        self.config = cfg
        self.llvm_ir = generate(cfg, lanes, isa)
        self.module = jit.build(
            self.llvm_ir, target=compile_target(family(isa), None), name="pack_vnni"
        )
        self._fn = self.module.cfunc(
            "polydl_pack_vnni", None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32
        )

    def __call__(self, wp: np.ndarray, wt: np.ndarray) -> np.ndarray:
        cfg = self.config
        if isinstance(wt, np.ndarray) and wt.ctypes.data % 4:
            wt = memory.aligned(wt)  # the kernel reads 32-bit words
        for what, x, shape in (
            ("Wp", wp, cfg.shape),
            ("Wt", wt, (cfg.K, cfg.C, cfg.R, cfg.S)),
        ):
            if not isinstance(x, np.ndarray) or x.dtype.itemsize != 2:
                raise PolyDLError(f"pack_vnni: {what} must be a 2-byte (bf16) ndarray")
            if x.shape != shape or not x.flags.c_contiguous or x.ctypes.data % 4:
                raise PolyDLError(
                    f"pack_vnni: {what} must be C-contiguous of shape {shape} on a 4-byte "
                    f"boundary, got shape {x.shape}"
                )
        if not wp.flags.writeable:
            raise PolyDLError("pack_vnni: Wp must be writable")
        self._fn(wp.ctypes.data, wt.ctypes.data, cfg.threads)
        return wp


@functools.lru_cache(maxsize=64)
def pack_vnni(
    K: int, C: int, R: int, S: int, cb: int, kb: int, threads: int = 1
) -> VnniPack | None:
    """The compiled one-pass VNNI-2 pack of these weights (module docstring), built once per
    process; None where the host's family has no vectors (the caller runs
    ``ops.pack_weights(vnni=True)``)."""
    fam = family(None)
    lanes = _lanes(fam.name, "f32")
    if lanes is None or not ENABLED:
        return None
    cfg = VnniPackConfig(K=K, C=C, R=R, S=S, cb=cb, kb=kb, threads=max(1, threads))
    return VnniPack(cfg, lanes, fam.name)
