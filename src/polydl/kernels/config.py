"""What a BRGEMM microkernel computes: its configuration, validated once, hashable for caching.

Layout convention (the optimiser relies on it). Everything is float32 and row-major:

* an A block is ``m x k`` with leading dimension ``lda`` (elements): ``A[i, p]`` is ``A + i*lda + p``;
* a B block is ``k x n`` with leading dimension ``ldb``: ``B[p, j]`` is ``B + p*ldb + j``;
* the C block is ``m x n`` with leading dimension ``ldc``: ``C[i, j]`` is ``C + i*ldc + j``.

Grouped rows (``row_group``): rows come in groups of ``row_group`` consecutive rows, ``lda`` /
``ldc`` apart inside a group and ``lda_group`` / ``ldc_group`` from one group's first row to the
next one's: row ``i`` of A is at ``(i // row_group)*lda_group + (i % row_group)*lda`` (C
likewise). A convolution's output rows ``p`` of ``Q`` pixels are such groups when the input rows
do not continue each other (stride 2, or a padded row of ``W + 2*pad`` pixels), so one call can
still cover several output rows. Without ``row_group`` (or with ``lda_group = row_group*lda``
and ``ldc_group = row_group*ldc``) the rows are one run, the form above.

Rows of A and B may overlap (``lda < k``, ``ldb < n``: a direct convolution on NCHW data reads
input rows one element apart); rows of C may not (``ldc >= n``).

VNNI-2 B (``b_vnni=True``, bf16 only): B's rows come in pairs ``(2q, 2q + 1)`` interleaved
element by element, ``ldb`` (>= n) columns apart: ``B[p, j]`` is ``B + (p//2)*2*ldb + 2*j + p%2``,
``ceil(k/2)`` pair rows (``[k/2][ldb][2]``), what ``vdpbf16ps`` and AMX's ``tdpbf16ps`` load as
one vector. Of an odd ``k`` the last pair row holds row ``k - 1`` and a pad the kernels never
let count (it is read: ``transform/pack.py`` writes zeros there).

``c_dtype="bf16"``: C holds bfloat16; a ``beta = 1`` kernel reads it widened, every product is
still accumulated in f32, and the store rounds the epilogue's result to nearest even (a NaN
stays a quiet NaN).

``n`` is the contiguous (vector) dimension. The kernel computes, for a batch of ``batch`` pairs::

    C[i, j] = f( beta*C[i, j] + alpha * sum_b sum_p A_b[i, p] * B_b[p, j], in_0[i, j], ... )

where ``alpha`` is a compile-time constant, or with ``alpha_arg=True`` a trailing ``float
alpha`` parameter of the kernel, and ``f`` is the :class:`~polydl.kernels.epilogue.Epilogue`
(identity by default), applied once, at the final store, to the finished element and the
epilogue's operands (tensors read like the C block). ``bias="row"`` (``bias[i]``),
``bias="col"`` (``bias[j]``) and ``relu=True`` are shorthands for the epilogue
``max(acc + bias, 0)`` and its parts; :meth:`BrgemmConfig.normalized` spells them out. The
three batch forms of LIBXSMM say where ``A_b`` and ``B_b`` are:

* ``"stride"``:  ``A_b = A + b*stride_a``, ``B_b = B + b*stride_b`` (strides in elements, fixed);
* ``"offset"``:  ``A_b = A + a_offs[b]``, ``B_b = B + b_offs[b]`` (int64 element offsets);
* ``"address"``: ``A_b = A[b]``, ``B_b = B[b]`` (arrays of pointers).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace
from typing import Literal

from ..errors import PolyDLError
from .epilogue import Epilogue

BatchForm = Literal["stride", "offset", "address"]
BiasKind = Literal["row", "col"] | None

FORMS: tuple[str, ...] = ("stride", "offset", "address")


@dataclass(frozen=True, kw_only=True)
class BrgemmConfig:
    """One f32 BRGEMM kernel: shapes, layouts, batch form, beta, alpha and epilogue.

    ``lda``, ``ldb``, ``ldc`` default to the dense values ``k``, ``n``, ``n``. ``stride_a`` and
    ``stride_b`` are used by the ``"stride"`` form only and default to the dense block sizes
    ``m*lda`` and ``k*ldb``. ``isa`` is a family name of :mod:`polydl.kernels.isa` or ``None`` for
    the best family of the host (the selection rule of :func:`polydl.kernels.isa.select_isa`).
    """

    m: int
    n: int
    k: int
    lda: int | None = None
    ldb: int | None = None
    ldc: int | None = None
    beta: int = 1
    alpha: float = 1.0
    form: BatchForm = "stride"
    stride_a: int | None = None
    stride_b: int | None = None
    bias: BiasKind = None
    relu: bool = False
    isa: str | None = None
    alpha_arg: bool = False  # alpha comes at run time, as a trailing float parameter
    row_group: int | None = None  # rows per group (None: one run of m rows)
    lda_group: int | None = None  # A offset between the first rows of consecutive groups
    ldc_group: int | None = None  # C offset between the first rows of consecutive groups
    epilogue: Epilogue | None = None  # what the final store computes (None: the element itself)
    ab_dtype: str = "f32"  # A and B elements: "f32", or "bf16" (products accumulated in f32)
    b_vnni: bool = False  # B in VNNI-2 pairs of rows (bf16 only; see the module docstring)
    c_dtype: str = "f32"  # C elements: "f32", or "bf16" (the store rounds to nearest even)
    # software prefetch: while reading a B row, prefetch (into L1) the line this many elements
    # further on, where the next call reads (transform/prefetch.py); 0: none
    prefetch_b: int = 0
    # the auto-tuner's microkernel knobs (kernels/isa.py): the register tile (rows, vectors)
    # and the k steps per main-loop iteration instead of the blocking rule's (None: the rule)
    register_tile: tuple[int, int] | None = None
    k_unroll: int | None = None
    # non-temporal stores of C (``!nontemporal``, vmovntps: the lines bypass the caches): only
    # of a beta = 0 f32 block, and the caller vouches that C is vector-aligned
    # (generator.nontemporal_ok: which stores can be; codegen checks the pointer at run time)
    nontemporal: bool = False

    def __post_init__(self) -> None:
        for name in ("m", "n", "k"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise PolyDLError(f"BRGEMM {name} must be a positive int, got {v!r}")
        # A and B are only read: their rows may overlap (a direct NCHW convolution reads B rows
        # one element apart). C rows are written and must not.
        for name, least in (("lda", 1), ("ldb", 1), ("ldc", self.n)):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < least):
                raise PolyDLError(f"BRGEMM {name}={v!r} must be an int >= {least}")
        if self.beta not in (0, 1):
            raise PolyDLError(f"BRGEMM beta must be 0 or 1, got {self.beta!r}")
        if self.form not in FORMS:
            raise PolyDLError(f"BRGEMM form must be one of {FORMS}, got {self.form!r}")
        if self.bias not in (None, "row", "col"):
            raise PolyDLError(f"BRGEMM bias must be None, 'row' or 'col', got {self.bias!r}")
        if self.epilogue is not None and (self.bias is not None or self.relu):
            raise PolyDLError("BRGEMM takes an epilogue or the bias/relu shorthands, not both")
        if self.ab_dtype not in ("f32", "bf16"):
            raise PolyDLError(f"BRGEMM ab_dtype must be 'f32' or 'bf16', got {self.ab_dtype!r}")
        if self.c_dtype not in ("f32", "bf16"):
            raise PolyDLError(f"BRGEMM c_dtype must be 'f32' or 'bf16', got {self.c_dtype!r}")
        if self.b_vnni and self.ab_dtype != "bf16":
            raise PolyDLError("BRGEMM b_vnni (VNNI-2 pairs of B rows) needs ab_dtype='bf16'")
        if self.b_vnni and self.ldb is not None and self.ldb < self.n:
            raise PolyDLError(f"BRGEMM VNNI-2 B needs ldb >= n, got ldb={self.ldb}, n={self.n}")
        if isinstance(self.prefetch_b, bool) or not isinstance(self.prefetch_b, int):
            raise PolyDLError(f"BRGEMM prefetch_b must be an int, got {self.prefetch_b!r}")
        rt = self.register_tile
        if rt is not None and (
            not isinstance(rt, tuple)
            or len(rt) != 2
            or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in rt)
        ):
            raise PolyDLError(f"BRGEMM register_tile must be (rows, vectors) > 0, got {rt!r}")
        ku = self.k_unroll
        if ku is not None and (isinstance(ku, bool) or not isinstance(ku, int) or ku < 1):
            raise PolyDLError(f"BRGEMM k_unroll must be a positive int, got {ku!r}")
        if self.nontemporal and (self.beta != 0 or self.c_dtype != "f32"):
            raise PolyDLError(
                "BRGEMM nontemporal stores need beta=0 and f32 C (C is written once, whole "
                f"vectors), got beta={self.beta}, c_dtype={self.c_dtype!r}"
            )
        if self.epilogue is not None and not isinstance(self.epilogue, Epilogue):
            raise PolyDLError(f"BRGEMM epilogue must be an Epilogue, got {self.epilogue!r}")
        for name in ("stride_a", "stride_b"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 0):
                raise PolyDLError(f"BRGEMM {name} must be a non-negative int, got {v!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, numbers.Real):
            raise PolyDLError(f"BRGEMM alpha must be a number, got {self.alpha!r}")
        if self.row_group is not None:
            if not isinstance(self.row_group, int) or self.row_group < 1:
                raise PolyDLError(
                    f"BRGEMM row_group must be a positive int, got {self.row_group!r}"
                )
            for name in ("lda_group", "ldc_group"):
                v = getattr(self, name)
                if v is not None and (not isinstance(v, int) or v < 0):
                    raise PolyDLError(f"BRGEMM {name} must be a non-negative int, got {v!r}")
            g = min(self.row_group, self.m)
            ldc = self.ldc if self.ldc is not None else self.n
            # C rows are written: a group must end before the next one starts
            if (
                self.ldc_group is not None
                and self.m > g
                and self.ldc_group < (g - 1) * ldc + self.n
            ):
                raise PolyDLError(
                    f"BRGEMM ldc_group={self.ldc_group} overlaps the previous group of {g} rows "
                    f"(ldc={ldc}, n={self.n})"
                )
        elif self.lda_group is not None or self.ldc_group is not None:
            raise PolyDLError("BRGEMM lda_group/ldc_group need row_group")

    @classmethod
    def of_call(
        cls,
        mk,
        *,
        packed: bool = False,
        vnni: bool = False,
        isa: str | None = None,
        prefetch_b: int = 0,
        nontemporal: bool = False,
    ) -> BrgemmConfig:
        """The offset-form kernel of one BRGEMM statement (an ``ir.nodes.Micro``); ``packed``:
        its B blocks read from a dense copy (``ldb = n``, ``transform/pack.py``), ``vnni``: a
        copy in VNNI-2 pairs of rows; ``prefetch_b``: the call's B prefetch distance
        (``transform/prefetch.py``); the statement's register tile and k unroll (the tuner's,
        ``Micro``) come along; ``nontemporal``: the variant with non-temporal stores."""
        return cls(
            m=mk.m,
            n=mk.n,
            k=mk.k,
            lda=mk.lda,
            ldb=mk.n if packed else mk.ldb,
            ldc=mk.ldc,
            beta=mk.beta,
            alpha=mk.alpha,
            form="offset",
            epilogue=mk.epilogue,
            ab_dtype=mk.ab_dtype,
            b_vnni=vnni or mk.b_vnni,
            c_dtype=mk.c_dtype,
            isa=isa,
            alpha_arg=mk.alpha_arg is not None,
            row_group=mk.row_group,
            lda_group=mk.lda_group,
            ldc_group=mk.ldc_group,
            prefetch_b=prefetch_b,
            register_tile=mk.register_tile,
            k_unroll=mk.k_unroll,
            nontemporal=nontemporal,
        )

    def normalized(self) -> BrgemmConfig:
        """The same kernel with every default filled in (the cache key); the bias/relu
        shorthands become the epilogue they stand for."""
        lda = self.lda if self.lda is not None else self.k
        ldb = self.ldb if self.ldb is not None else self.n
        ldc = self.ldc if self.ldc is not None else self.n
        if self.form == "stride":
            sa = self.stride_a if self.stride_a is not None else self.m * lda
            sb = self.stride_b if self.stride_b is not None else self.b_rows * ldb
        else:
            sa = sb = 0
        group, lda_g, ldc_g = self.row_group, self.lda_group, self.ldc_group
        if group is not None:
            group = min(group, self.m)
            lda_g = lda_g if lda_g is not None else group * lda
            ldc_g = ldc_g if ldc_g is not None else group * ldc
            if group == self.m or (lda_g == group * lda and ldc_g == group * ldc):
                group = lda_g = ldc_g = None  # one run of rows: the plain form
        epi = self.epilogue if self.epilogue is not None else Epilogue.of(self.bias, self.relu)
        if epi is not None and group is None:
            # one run of rows: an operand's rows must run on too
            given = min(self.row_group, self.m) if self.row_group else self.m
            for o in epi.operands:
                if given < self.m and o.ld_group not in (None, given * o.ld):
                    raise PolyDLError(
                        f"BRGEMM epilogue operand {o.name}: its rows come in groups of {given} "
                        f"(ld_group={o.ld_group}) where C's rows are one run"
                    )
            epi = replace(epi, operands=tuple(replace(o, ld_group=None) for o in epi.operands))
        if epi is not None and epi.is_identity:
            epi = None
        return replace(
            self,
            lda=lda,
            ldb=ldb,
            ldc=ldc,
            stride_a=sa,
            stride_b=sb,
            alpha=float(self.alpha),
            bias=None,
            relu=False,
            epilogue=epi,
            row_group=group,
            lda_group=lda_g,
            ldc_group=ldc_g,
        )

    @property
    def grouped(self) -> bool:
        """Whether the rows are groups that do not continue each other (normalized config)."""
        return self.normalized().row_group is not None

    def a_row(self, i: int) -> int:
        """Element offset of row ``i`` of an A block from its first element."""
        c = self.normalized()
        if c.row_group is None:
            return i * c.lda
        return (i // c.row_group) * c.lda_group + (i % c.row_group) * c.lda

    def c_row(self, i: int) -> int:
        """Element offset of row ``i`` of the C block from its first element."""
        c = self.normalized()
        if c.row_group is None:
            return i * c.ldc
        return (i // c.row_group) * c.ldc_group + (i % c.row_group) * c.ldc

    @property
    def flops_per_pair(self) -> int:
        """Floating-point operations of one A_b·B_b product (2·m·n·k)."""
        return 2 * self.m * self.n * self.k

    def a_extent(self) -> int:
        """Elements one A block spans from its first element."""
        return max(self.a_row(i) for i in (0, self.m - 1, *self._group_ends())) + self.k

    @property
    def b_rows(self) -> int:
        """Rows of a B block in memory, ``ldb`` elements each: ``k``, or with VNNI-2 pairs
        ``2*ceil(k/2)`` (a pair row is ``2*ldb`` elements)."""
        return 2 * -(-self.k // 2) if self.b_vnni else self.k

    def b_extent(self) -> int:
        ldb = self.ldb if self.ldb is not None else self.n
        if self.b_vnni:
            return (self.b_rows - 2) * ldb + 2 * self.n
        return (self.k - 1) * ldb + self.n

    def c_extent(self) -> int:
        return max(self.c_row(i) for i in (0, self.m - 1, *self._group_ends())) + self.n

    def operand_extents(self) -> tuple[int, ...]:
        """Elements each epilogue operand's pointer must reach (normalized config)."""
        c = self.normalized()
        if c.epilogue is None:
            return ()
        return tuple(o.extent(c.m, c.n, c.row_group) for o in c.epilogue.operands)

    def _group_ends(self) -> tuple[int, ...]:
        """The last row of every group (the rows farthest from the origin are among them)."""
        g = self.normalized().row_group
        return tuple(range(g - 1, self.m, g)) if g else ()
