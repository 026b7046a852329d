"""Working sets of tiled nests against footprints computed by hand.

Kernels are built directly as IR (``polydl.ir.nodes``) by :func:`stmt_kernel`, so these tests do
not depend on the DSL front end; ``test_search.py`` reuses the builders.
"""

from __future__ import annotations

import ast
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polydl.analysis import reuse
from polydl.ir import nodes as N
from polydl.target import PRESETS

ICE = PRESETS["icelake-server"]
ZEN = PRESETS["znver3"]

# ---------------------------------------------------------------- building kernels


def iexpr(text: str) -> N.IExpr:
    """``"2*p + r - 1"`` as an index expression tree."""

    def conv(e):
        if isinstance(e, ast.Name):
            return N.Var(name=e.id)
        if isinstance(e, ast.Constant):
            return N.Int(value=e.value)
        if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.USub):
            return N.IntOp(op="-", a=N.Int(value=0), b=conv(e.operand))
        if isinstance(e, ast.BinOp):
            op = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "//", ast.Mod: "%"}
            return N.IntOp(op=op[type(e.op)], a=conv(e.left), b=conv(e.right))
        raise ValueError(ast.dump(e))

    return conv(ast.parse(text, mode="eval").body)


def load(text: str) -> N.Load:
    """``"A[i, k + 1]"`` as a Load."""
    name, rest = text.split("[", 1)
    node = ast.parse("f(" + rest[:-1] + ")", mode="eval").body
    return N.Load(tensor=name.strip(), index=tuple(iexpr(ast.unparse(a)) for a in node.args))


def stmt_kernel(
    *,
    tensors: dict[str, tuple],
    sizes: dict[str, int],
    iterators: tuple[str, ...],
    cond: str,
    target: str,
    reads: list[str],
    op: str = "+=",
    dtype: str = "f32",
) -> N.Kernel:
    """One statement ``target op prod(reads)`` over ``{ S0[iterators] : cond }``, sizes bound."""
    ps = "[" + ", ".join(sizes) + "]"
    its = ", ".join(iterators)
    expr: N.Expr = load(reads[0])
    for r in reads[1:]:
        expr = N.BinOp(op="*", a=expr, b=load(r))
    sched = ", ".join(x for v in iterators for x in ("0", v)) + ", 0"
    s = N.Statement(
        name="S0",
        iterators=iterators,
        domain=f"{ps} -> {{ S0[{its}] : {cond} }}",
        target=load(target),
        op=op,
        expr=expr,
        schedule=f"{ps} -> {{ S0[{its}] -> [{sched}] }}",
        line=1,
        source=f"{target} {op} {' * '.join(reads)}",
    )
    args = tuple(
        N.TensorArg(name=n, dtype=dtype, shape=tuple(iexpr(str(d)) for d in shape))
        for n, shape in tensors.items()
    )
    k = N.Kernel(
        name="k", args=args, sizes=tuple(sizes), statements=(s,), filename="test.py", line=1
    )
    return k.bind(sizes)


def gemm(M: int, Nn: int, K: int, dtype: str = "f32") -> N.Kernel:
    return stmt_kernel(
        tensors={"C": ("M", "N"), "A": ("M", "K"), "B": ("K", "N")},
        sizes={"M": M, "N": Nn, "K": K},
        iterators=("i", "j", "k"),
        cond="0 <= i < M and 0 <= j < N and 0 <= k < K",
        target="C[i, j]",
        reads=["A[i, k]", "B[k, j]"],
        dtype=dtype,
    )


def conv_nchw(Nb, C, K, H, W, R, S, *, stride=1, pad=0, dil=1) -> N.Kernel:
    P = (H + 2 * pad - dil * (R - 1) - 1) // stride + 1
    Q = (W + 2 * pad - dil * (S - 1) - 1) // stride + 1
    h, w = f"{stride}*p + {dil}*r - {pad}", f"{stride}*q + {dil}*s - {pad}"
    return stmt_kernel(
        tensors={
            "O": ("Nb", "K", "P", "Q"),
            "I": ("Nb", "C", "H", "W"),
            "Wt": ("K", "C", "R", "S"),
        },
        sizes=dict(Nb=Nb, C=C, K=K, H=H, W=W, R=R, S=S, P=P, Q=Q),
        iterators=("n", "k", "p", "q", "c", "r", "s"),
        cond="0 <= n < Nb and 0 <= k < K and 0 <= p < P and 0 <= q < Q and 0 <= c < C and "
        f"0 <= r < R and 0 <= s < S and 0 <= {h} < H and 0 <= {w} < W",
        target="O[n, k, p, q]",
        reads=[f"I[n, c, {h}, {w}]", "Wt[k, c, r, s]"],
    )


def conv_nchwc(Nb, Cb, Kb, H, W, R, S, V=16) -> N.Kernel:
    """Blocked layout: I[n, cb, h, w, cv], Wt[kb, cb, r, s, cv, kv], O[n, kb, p, q, kv]."""
    P, Q = H - R + 1, W - S + 1
    return stmt_kernel(
        tensors={
            "O": ("Nb", "Kb", "P", "Q", V),
            "I": ("Nb", "Cb", "H", "W", V),
            "Wt": ("Kb", "Cb", "R", "S", V, V),
        },
        sizes=dict(Nb=Nb, Cb=Cb, Kb=Kb, H=H, W=W, R=R, S=S, P=P, Q=Q),
        iterators=("n", "kb", "p", "q", "kv", "cb", "r", "s", "cv"),
        cond=f"0 <= n < Nb and 0 <= kb < Kb and 0 <= p < P and 0 <= q < Q and 0 <= kv < {V} "
        f"and 0 <= cb < Cb and 0 <= r < R and 0 <= s < S and 0 <= cv < {V}",
        target="O[n, kb, p, q, kv]",
        reads=["I[n, cb, p + r, q + s, cv]", "Wt[kb, cb, r, s, cv, kv]"],
    )


def elems(level: reuse.Level) -> dict[str, int]:
    return {f.tensor: f.elements for f in level.footprints}


# ---------------------------------------------------------------- GEMM


def test_gemm_levels_by_hand():
    k = gemm(64, 64, 64)
    lv = reuse.working_sets(k, "S0", [("i", 16), ("j", 32), ("k", 8)], target=ICE)
    assert [x.label for x in lv] == ["i/16", "j/32", "k/8", "micro"]
    assert [x.trip for x in lv] == [4, 2, 8, 1]
    # one i tile: 16 rows of C and A, all of B
    assert elems(lv[0]) == {"C": 16 * 64, "A": 16 * 64, "B": 64 * 64}
    # one j tile inside it: C 16x32, A still 16x64, B 64x32
    assert elems(lv[1]) == {"C": 16 * 32, "A": 16 * 64, "B": 64 * 32}
    # one k tile: C 16x32, A 16x8, B 8x32; the microkernel block is the same
    assert elems(lv[2]) == {"C": 16 * 32, "A": 16 * 8, "B": 8 * 32}
    assert elems(lv[3]) == elems(lv[2])
    assert lv[0].total_bytes == 4 * (1024 + 1024 + 4096) == 24576
    # bytes come in whole lines: A's rows of 8 floats (32 bytes) occupy 16-float lines
    assert [f.bytes for f in lv[2].footprints] == [4 * 512, 4 * 16 * 16, 4 * 256]
    assert lv[1].ranges == (("i", 0, 16), ("j", 0, 32))
    # cache placement: 24K fits a 48K L1
    assert lv[0].cache.name == "L1"


def test_short_runs_bring_whole_lines():
    """One tap of a 3x3 filter (``s`` fixed) touches 1 of every 3 floats of the weights: its
    bytes are those of the rows it spans (3 floats each, less than a line), not its elements."""
    k = conv_nchw(1, 8, 8, 9, 9, 3, 3)
    lv = reuse.working_sets(k, "S0", [("k", 1), ("c", 1), ("r", 1)], target=ICE)
    fp = {f.tensor: f for f in lv[-1].footprints}
    assert fp["Wt"].elements == 3 and fp["Wt"].bytes == 4 * 3  # a whole row s = 0..2
    lv = reuse.working_sets(k, "S0", [("k", 1), ("c", 1), ("r", 1), ("s", 1)], target=ICE)
    fp = {f.tensor: f for f in lv[-1].footprints}
    assert fp["Wt"].elements == 1 and fp["Wt"].bytes == 4 * 3  # one tap: still its row
    assert fp["O"].elements == fp["O"].bytes // 4 == 7 * 7  # dense: unchanged
    lv = reuse.working_sets(k, "S0", [("k", 1), ("c", 1), ("p", 1), ("q", 4)], target=ICE)
    fp = {f.tensor: f for f in lv[-1].footprints}
    assert fp["O"].elements == 4 and fp["O"].bytes == 4 * 7  # 4 of a 7-float row


def test_gemm_non_dividing_tiles_first_tile_full():
    k = gemm(50, 40, 30)
    lv = reuse.working_sets(k, "S0", [("i", 16), ("j", 16), ("i", 4)], target=ZEN)
    assert [x.trip for x in lv] == [4, 3, 4, 1]  # ceil(50/16), ceil(40/16), 16/4
    assert elems(lv[0]) == {"C": 16 * 40, "A": 16 * 30, "B": 30 * 40}
    assert elems(lv[1]) == {"C": 16 * 16, "A": 16 * 30, "B": 30 * 16}
    assert elems(lv[2]) == {"C": 4 * 16, "A": 4 * 30, "B": 30 * 16}
    # a block larger than the extent: one iteration covering everything
    lv = reuse.working_sets(k, "S0", [("k", 64)], target=ZEN)
    assert lv[0].trip == 1 and elems(lv[0]) == {"C": 50 * 40, "A": 50 * 30, "B": 30 * 40}
    # no loops: the microkernel covers the whole statement
    (only,) = reuse.working_sets(k, "S0", [], target=ZEN)
    assert only.loop is None and elems(only) == elems(lv[0])
    assert reuse.nest_footprint(k, "S0") == only.footprints


def test_f64_bytes_and_cache_levels():
    k = gemm(128, 128, 128, dtype="f64")
    lv = reuse.working_sets(k, "S0", [("i", 32), ("j", 32)], target=ICE)
    assert lv[0].total_bytes == 8 * (32 * 128 + 32 * 128 + 128 * 128)  # 192K
    assert lv[0].cache.name == "L2"
    assert lv[1].total_bytes == 8 * (32 * 32 + 32 * 128 + 128 * 32)  # 72K: still L2 at 48K L1
    assert lv[1].cache.name == "L2"
    huge = reuse.working_sets(gemm(4096, 4096, 4096), "S0", [("i", 4096)], target=ICE)
    assert huge[0].cache is None  # 192M: memory


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 70),
    st.integers(1, 70),
    st.integers(1, 70),
    st.integers(1, 40),
    st.integers(1, 40),
    st.integers(1, 40),
)
def test_gemm_footprints_are_tile_products(M, Nn, K, bi, bj, bk):
    lv = reuse.working_sets(gemm(M, Nn, K), "S0", [("j", bj), ("k", bk), ("i", bi)], target=ZEN)
    ti, tj, tk = min(bi, M), min(bj, Nn), min(bk, K)
    assert [x.trip for x in lv] == [math.ceil(Nn / bj), math.ceil(K / bk), math.ceil(M / bi), 1]
    assert elems(lv[0]) == {"C": M * tj, "A": M * K, "B": K * tj}
    assert elems(lv[1]) == {"C": M * tj, "A": M * tk, "B": tk * tj}
    assert elems(lv[2]) == {"C": ti * tj, "A": ti * tk, "B": tk * tj}


# ---------------------------------------------------------------- several reads of one tensor


@pytest.mark.parametrize(
    "second,rows_level1",
    [
        ("A[j + 8, k]", 16),  # rows [0, 16) and [8, 16): overlapping, counted once
        ("A[j + 16, k]", 24),  # [0, 16) and [16, 24): adjacent
        ("A[j + 32, k]", 24),  # [0, 16) and [32, 40): disjoint, not the 40-row box
    ],
)
def test_reads_of_one_tensor_are_unioned(second, rows_level1):
    k = stmt_kernel(
        tensors={"C": ("M", "M"), "A": ("M + 40", "K")},
        sizes={"M": 64, "K": 8},
        iterators=("i", "j", "k"),
        cond="0 <= i < M and 0 <= j < M and 0 <= k < K",
        target="C[i, j]",
        reads=["A[i, k]", second],
    )
    lv = reuse.working_sets(k, "S0", [("i", 16), ("j", 8)], target=ZEN)
    assert elems(lv[1]) == {"C": 16 * 8, "A": rows_level1 * 8}
    assert elems(lv[2]) == elems(lv[1])


# ---------------------------------------------------------------- triangular domain


def test_triangular_domain():
    # y[i] += L[i, j] * x[j] over 0 <= j <= i < N
    k = stmt_kernel(
        tensors={"y": ("N",), "L": ("N", "N"), "x": ("N",)},
        sizes={"N": 40},
        iterators=("i", "j"),
        cond="0 <= i < N and 0 <= j <= i",
        target="y[i]",
        reads=["L[i, j]", "x[j]"],
    )
    lv = reuse.working_sets(k, "S0", [("i", 8), ("j", 4)], target=ZEN)
    assert lv[0].trip == 5
    # first i tile [0, 8): j ranges over [0, 7] only, not [0, 40)
    assert elems(lv[0]) == {"y": 8, "L": 8 * 8, "x": 8}
    assert lv[1].trip == 2  # j in [0, 7] by 4
    assert elems(lv[1]) == {"y": 8, "L": 8 * 4, "x": 4}
    # j outermost: its first block [0, 4) meets rows i in [0, 40)
    lv = reuse.working_sets(k, "S0", [("j", 4), ("i", 8)], target=ZEN)
    assert lv[0].trip == 10 and elems(lv[0]) == {"y": 40, "L": 40 * 4, "x": 4}
    assert lv[1].trip == 5 and elems(lv[1]) == {"y": 8, "L": 8 * 4, "x": 4}


# ---------------------------------------------------------------- convolutions


def test_conv_nchw_3x3_stride1():
    k = conv_nchw(1, 4, 8, 10, 10, 3, 3)  # P = Q = 8
    lv = reuse.working_sets(k, "S0", [("k", 4), ("p", 2), ("c", 2)], target=ZEN)
    assert [x.trip for x in lv] == [2, 4, 2, 1]
    assert elems(lv[0]) == {"O": 4 * 8 * 8, "I": 4 * 10 * 10, "Wt": 4 * 4 * 9}
    # two output rows need 2 + 3 - 1 = 4 input rows
    assert elems(lv[1]) == {"O": 4 * 2 * 8, "I": 4 * 4 * 10, "Wt": 4 * 4 * 9}
    assert elems(lv[2]) == {"O": 4 * 2 * 8, "I": 2 * 4 * 10, "Wt": 4 * 2 * 9}


def test_conv_nchw_3x3_stride2():
    k = conv_nchw(2, 3, 4, 11, 11, 3, 3, stride=2)  # P = Q = 5
    lv = reuse.working_sets(k, "S0", [("n", 1), ("p", 2), ("p", 1)], target=ZEN)
    assert [x.trip for x in lv] == [2, 3, 2, 1]
    assert elems(lv[0]) == {"O": 4 * 5 * 5, "I": 3 * 11 * 11, "Wt": 4 * 3 * 9}
    # output rows 0..1 read input rows 0..4 (2*1 + 2); columns 0..10
    assert elems(lv[1]) == {"O": 4 * 2 * 5, "I": 3 * 5 * 11, "Wt": 4 * 3 * 9}
    assert elems(lv[2]) == {"O": 4 * 1 * 5, "I": 3 * 3 * 11, "Wt": 4 * 3 * 9}


def test_conv_padding_dilation_first_iteration():
    # pad 1: the first output row sees input rows 0..1 only (r = 0 falls in the padding)
    k = conv_nchw(1, 2, 2, 6, 6, 3, 3, pad=1)  # P = Q = 6
    lv = reuse.working_sets(k, "S0", [("p", 1)], target=ZEN)
    assert lv[0].trip == 6
    assert elems(lv[0]) == {"O": 2 * 6, "I": 2 * 2 * 6, "Wt": 2 * 2 * 2 * 3}
    # dilation 2: rows p + 2r for r in 0..2 span 5 rows
    k = conv_nchw(1, 2, 2, 9, 9, 3, 3, dil=2)  # P = Q = 5
    lv = reuse.working_sets(k, "S0", [("p", 1)], target=ZEN)
    assert elems(lv[0]) == {"O": 2 * 5, "I": 2 * 5 * 9, "Wt": 2 * 2 * 9}


def test_conv_blocked_nchwc():
    k = conv_nchwc(1, 4, 2, 9, 9, 3, 3)  # P = Q = 7, 16-wide channel blocks
    lv = reuse.working_sets(k, "S0", [("kb", 1), ("p", 1), ("cb", 1)], target=ICE)
    assert [x.trip for x in lv] == [2, 7, 4, 1]
    assert elems(lv[0]) == {"O": 7 * 7 * 16, "I": 4 * 9 * 9 * 16, "Wt": 4 * 9 * 16 * 16}
    assert elems(lv[1]) == {"O": 7 * 16, "I": 4 * 3 * 9 * 16, "Wt": 4 * 9 * 16 * 16}
    assert elems(lv[2]) == {"O": 7 * 16, "I": 3 * 9 * 16, "Wt": 9 * 16 * 16}
    assert lv[2].total_bytes == 4 * (112 + 432 + 2304)


def test_packing_with_floor_division_and_modulo():
    # O[c // 16, h, c % 16] = I[c, h]: NCHW -> NCHWc packing, quasi-affine indices
    k = stmt_kernel(
        tensors={"O": ("C // 16", "H", 16), "I": ("C", "H")},
        sizes={"C": 64, "H": 10},
        iterators=("c", "h"),
        cond="0 <= c < C and 0 <= h < H",
        target="O[c // 16, h, c % 16]",
        reads=["I[c, h]"],
        op="=",
    )
    lv = reuse.working_sets(k, "S0", [("c", 32), ("h", 1), ("c", 4)], target=ZEN)
    assert [x.trip for x in lv] == [2, 10, 8, 1]
    assert elems(lv[0]) == {"O": 2 * 10 * 16, "I": 32 * 10}
    assert elems(lv[1]) == {"O": 2 * 16, "I": 32}
    assert elems(lv[2]) == {"O": 4, "I": 4}


# ---------------------------------------------------------------- errors


def test_errors():
    k = gemm(8, 8, 8)
    with pytest.raises(ValueError, match="not an iterator"):
        reuse.working_sets(k, "S0", [("z", 2)], target=ZEN)
    with pytest.raises(ValueError, match="positive"):
        reuse.working_sets(k, "S0", [("i", 0)], target=ZEN)
    unbound = N.Kernel(
        name="u", args=k.args, sizes=k.sizes, statements=k.statements, filename="t", line=1
    )
    with pytest.raises(ValueError, match="bound sizes"):
        reuse.working_sets(unbound, "S0", [("i", 2)], target=ZEN)
