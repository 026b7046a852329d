"""The DSL front end: what ``parse`` makes of GEMM, conv, triangular and stepped nests, guards."""

from __future__ import annotations

import kernels
from hypothesis import given, settings
from hypothesis import strategies as st
from test_dsl_util import assert_domain_points, line_of, product

import polydl
import polydl as pd
from polydl.dsl.intrinsics import exp
from polydl.dsl.parse import parse
from polydl.ir import poly
from polydl.ir.nodes import Arg, BinOp, Int, IntOp, Load, Num, ScalarArg, TensorArg, UnOp, Var
from polydl.ir.verify import verify

HERE = __file__
STRIDE = 2
PAD = 1


@pd.kernel
def gemm(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "N"], alpha: pd.f32):
    for i in range(M):
        for j in range(N):
            for k in range(K):
                C[i, j] += alpha * A[i, k] * B[k, j]  # gemm-stmt


def test_gemm_signature_and_statement():
    ir = gemm.ir
    verify(ir)
    assert ir.name == "gemm" and ir.sizes == ("M", "N", "K")
    assert ir.args[0] == TensorArg(name="C", dtype="f32", shape=(Var(name="M"), Var(name="N")))
    assert ir.args[3] == ScalarArg(name="alpha", dtype="f32")
    assert ir.filename == HERE
    (s,) = ir.statements
    assert (s.name, s.iterators, s.op) == ("S0", ("i", "j", "k"), "+=")
    assert s.target == Load(tensor="C", index=(Var(name="i"), Var(name="j")))
    a = Load(tensor="A", index=(Var(name="i"), Var(name="k")))
    b = Load(tensor="B", index=(Var(name="k"), Var(name="j")))
    assert s.expr == BinOp(op="*", a=BinOp(op="*", a=Arg(name="alpha"), b=a), b=b)
    assert s.schedule == "[M, N, K] -> { S0[i, j, k] -> [0, i, 0, j, 0, k, 0] }"
    want = poly.Set("[M, N, K] -> { S0[i, j, k] : 0 <= i < M and 0 <= j < N and 0 <= k < K }")
    assert poly.Set(s.domain).is_equal(want)
    assert s.line == line_of(HERE, "gemm-stmt")
    assert s.source == "C[i, j] += alpha * A[i, k] * B[k, j]"
    assert s.reads == (s.target, a, b)


@pd.kernel
def fused(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "N"], b: pd.f32["N"]):
    for i in range(M):
        for j in range(N):
            C[i, j] = 0.0
            for k in range(K):
                C[i, j] += A[i, k] * B[k, j]
            C[i, j] = max(C[i, j] + b[j], 0.0)
    for i in range(M):
        C[i, 0] *= 2
    C[0, 0] -= 1.0


def test_multi_statement_schedules_are_2d_plus_1_and_padded():
    ir = fused.ir
    verify(ir)
    got = [s.schedule.split("{")[1].strip(" }") for s in ir.statements]
    assert got == [
        "S0[i, j] -> [0, i, 0, j, 0, 0, 0]",
        "S1[i, j, k] -> [0, i, 0, j, 1, k, 0]",
        "S2[i, j] -> [0, i, 0, j, 2, 0, 0]",
        "S3[i] -> [1, i, 0, 0, 0, 0, 0]",
        "S4[] -> [2, 0, 0, 0, 0, 0, 0]",
    ]
    assert [s.op for s in ir.statements] == ["=", "+=", "=", "*=", "-="]
    assert ir.statements[2].expr == BinOp(
        op="max",
        a=BinOp(op="+", a=ir.statements[2].target, b=Load(tensor="b", index=(Var(name="j"),))),
        b=Num(value=0.0),
    )
    assert ir.statements[3].expr == Num(value=2.0)
    assert poly.Set(ir.statements[4].domain).is_equal(poly.Set("[M, N, K] -> { S4[] }"))


@pd.kernel
def conv(
    O: pd.f32["Nb", "K", "P", "Q"], I: pd.f32["Nb", "C", "H", "W"], Wt: pd.f32["K", "C", "R", "S"]
):
    for n in range(Nb):
        for k in range(K):
            for p in range(P):
                for q in range(Q):
                    for c in range(C):
                        for r in range(R):
                            for s in range(S):
                                if 0 <= STRIDE * p + r - PAD < H and 0 <= STRIDE * q + s - PAD < W:
                                    O[n, k, p, q] += (
                                        I[n, c, STRIDE * p + r - PAD, STRIDE * q + s - PAD]
                                        * Wt[k, c, r, s]
                                    )  # conv-end


def test_conv_guards_become_domain_constraints_and_constants_are_inlined():
    ir = conv.ir
    verify(ir)
    assert dict(ir.constants) == {"STRIDE": 2, "PAD": 1}
    (s,) = ir.statements
    want = poly.Set(
        "[Nb, K, P, Q, C, H, W, R, S] -> { S0[n, k, p, q, c, r, s] : 0 <= n < Nb and 0 <= k < K"
        " and 0 <= p < P and 0 <= q < Q and 0 <= c < C and 0 <= r < R and 0 <= s < S"
        " and 0 <= 2p + r - 1 < H and 0 <= 2q + s - 1 < W }"
    )
    assert poly.Set(s.domain).is_equal(want)
    h_index = s.expr.a.index[2]  # type: ignore[union-attr]
    assert poly.isl_iexpr(h_index) in ("(((2 * p) + r) - 1)",)
    # a statement spanning several lines: its first line, and its text on one line
    assert s.line == line_of(HERE, "conv-end") - 3
    assert "\n" not in s.source
    assert s.source.startswith("O[n, k, p, q] += I[n, c, STRIDE * p + r - PAD")


@pd.kernel
def tri(A: pd.f32["N", "N"], x: pd.f32["N"]):
    for i in range(N):
        for j in range(i + 1):
            A[i, j] = x[j]
    for i in range(N):
        for j in range(max(0, i - 2), min(N, i + 3)):
            A[i, j] += 1.0


def test_triangular_and_trapezoidal_domains():
    verify(tri.ir)
    for n in (1, 2, 6):
        assert_domain_points(tri.ir, "S0", [(i, j) for i in range(n) for j in range(i + 1)], N=n)
        band = [(i, j) for i in range(n) for j in range(max(0, i - 2), min(n, i + 3))]
        assert_domain_points(tri.ir, "S1", band, N=n)


@pd.kernel
def stepped(x: pd.f32["N"], y: pd.f32["N"]):
    for i in range(1, N, 3):
        x[i] = 1.0
    for i in range(N):
        for j in range(i, N, 2):
            y[j] += x[i]
    for i in range(N - 1, 0, 1 + 1):
        y[i] = 0.0


def test_step_ranges():
    verify(stepped.ir)
    for n in (1, 4, 9):
        assert_domain_points(stepped.ir, "S0", [(i,) for i in range(1, n, 3)], N=n)
        pts = [(i, j) for i in range(n) for j in range(i, n, 2)]
        assert_domain_points(stepped.ir, "S1", pts, N=n)
        assert_domain_points(stepped.ir, "S2", [(i,) for i in range(n - 1, 0, 2)], N=n)


@pd.kernel
def divmod_idx(y: pd.f32["N"], x: pd.f32["M"], B: pd.f32[4, "M"]):
    for i in range(N):
        y[i] = x[i // 2 + (N - N)] + B[i % 4, (3 * i + 1) // 4]


def test_floor_div_and_mod_indices():
    ir = divmod_idx.ir
    verify(ir)
    (s,) = ir.statements
    xi, bi = s.expr.a, s.expr.b  # type: ignore[union-attr]
    assert xi.index[0].a == IntOp(op="//", a=Var(name="i"), b=Int(value=2))
    assert bi.index[0] == IntOp(op="%", a=Var(name="i"), b=Int(value=4))
    k = ir.bind({"N": 8, "M": 6})
    # accesses are proper isl maps: x[i // 2] reaches 0..3 for i < 8
    img = poly.access_map(k, s, xi).range()
    assert poly.extent(img, poly.names(img)[0]) == (0, 3)


def inner_const():
    T = 3  # closure constant

    @pd.kernel
    def k(y: pd.f32["N"]):
        for i in range(0, N - T):
            y[i + T] = y[i] * T

    return k


def test_closure_constants_and_if_else_or_not_chains():
    k = inner_const()
    assert dict(k.ir.constants) == {"T": 3}
    assert_domain_points(k.ir, "S0", [(i,) for i in range(5 - 3)], N=5)

    @pd.kernel
    def guarded(A: pd.f32["N", "N"]):
        for i in range(N):
            for j in range(N):
                if i < j < N - 1 or not (i != 2):
                    A[i, j] = 1.0
                elif i == j:
                    A[i, j] = 2.0
                else:
                    A[i, j] = 3.0

    verify(guarded.ir)
    n = 5
    pts = product(range(n), range(n))
    first = [(i, j) for i, j in pts if i < j < n - 1 or not (i != 2)]
    second = [(i, j) for i, j in pts if (i, j) not in first and i == j]
    third = [p for p in pts if p not in first and p not in second]
    assert_domain_points(guarded.ir, "S0", first, N=n)
    assert_domain_points(guarded.ir, "S1", second, N=n)
    assert_domain_points(guarded.ir, "S2", third, N=n)
    # statements in if/else share the nest's levels: positions continue, no extra dimension
    assert [s.schedule.split("->")[-1].strip(" }") for s in guarded.ir.statements] == [
        "[0, i, 0, j, 0]",
        "[0, i, 0, j, 1]",
        "[0, i, 0, j, 2]",
    ]


def test_intrinsics_by_any_module_alias_and_bare_name():
    @pd.kernel
    def act(y: pd.f32["N"], x: pd.f32["N"], a: pd.f64):
        for i in range(N):
            y[i] = pd.exp(x[i]) + polydl.sqrt(x[i]) - exp(-x[i]) * pd.sigmoid(pd.tanh(a))

    (s,) = act.ir.statements
    ops = []

    def walk(e):
        if isinstance(e, UnOp):
            ops.append(e.op)
            walk(e.a)
        elif isinstance(e, BinOp):
            walk(e.a)
            walk(e.b)

    walk(s.expr)
    assert ops == ["exp", "sqrt", "exp", "neg", "sigmoid", "tanh"]
    assert act.ir.arg("a") == ScalarArg(name="a", dtype="f64")


def test_parse_is_pure_ast_and_sizes_in_signature_order():
    def k(B: pd.f32["K", 3], A: pd.f32["M", "K"]):
        for m in range(M):
            for kk in range(K):
                B[kk, 0] = A[m, kk]

    ir = parse(k)
    assert ir.sizes == ("K", "M")
    assert ir.arg("B").shape == (Var(name="K"), Int(value=3))  # type: ignore[union-attr]
    verify(ir)


# ---------------------------------------------------------------- random nests vs Python


def define(source: str, name: str = "k"):
    """A kernel from generated source text (``kernels.define``)."""
    return kernels.define(source, name, "test_dsl.random")


bound = st.sampled_from(["0", "1", "i", "i + 1", "N - i", "max(0, i - 2)", "min(N, i + 3)", "N"])
cond = st.sampled_from(
    ["i < j", "i + j >= N", "j % 2 == 0", "i // 2 != j", "not (j < 2 or i > 3)", "0 < j <= i"]
)


@settings(max_examples=40, deadline=None)
@given(
    lo=bound,
    hi=bound,
    step=st.integers(1, 3),
    c=st.one_of(st.none(), cond),
    n=st.integers(1, 6),
)
def test_random_two_level_nests_match_python(lo, hi, step, c, n):
    guard = f"if {c}:" if c else "if True:"
    src = f"""
    def k(A: pd.f32["N", "N"]):
        for i in range(N):
            for j in range({lo}, {hi}, {step}):
                {guard}
                    A[i, 0] += 1.0
                else:
                    A[0, i] -= 1.0
    """
    fn = define(src)
    ir = parse(fn)
    verify(ir)
    then, other = [], []
    env: dict = {"N": n}
    for i in range(n):
        env["i"] = i
        for j in range(eval(lo, {}, env), eval(hi, {}, env), step):  # noqa: S307
            env["j"] = j
            (then if (eval(c, {}, env) if c else True) else other).append((i, j))  # noqa: S307
    assert_domain_points(ir, "S0", then, N=n)
    assert_domain_points(ir, "S1", other, N=n)
