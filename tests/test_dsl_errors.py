"""Every construct outside the DSL raises DSLError at ``@pd.kernel`` time, with ``file:line:``.

Each offending line carries a ``# marker`` comment; the error must start with this file's path and
that line, and name the construct.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_dsl_util import assert_error_at

import polydl as pd

HERE = __file__
LIMIT = 4.5


def raises(fn):
    with pytest.raises(pd.DSLError) as ei:
        pd.kernel(fn)
    return ei.value


def test_non_affine_index():
    def k(A: pd.f32["N", "N"]):
        for i in range(N):
            for j in range(N):
                A[i * j, j] = 1.0  # e-nonaffine

    assert_error_at(raises(k), HERE, "e-nonaffine", "non-affine index", "i * j")


def test_index_times_size_is_not_affine():
    def k(A: pd.f32["N"]):
        for i in range(N):
            A[i * N - i * N] = 1.0  # e-param-mult

    assert_error_at(raises(k), HERE, "e-param-mult", "non-affine", "i * N")


def test_floor_div_by_non_constant():
    def k(A: pd.f32["N"]):
        for i in range(N):
            A[i // N] = 1.0  # e-div-var

    assert_error_at(raises(k), HERE, "e-div-var", "//", "positive int constant")


def test_true_division_in_index():
    def k(A: pd.f32["N"]):
        for i in range(N):
            A[i / 2] = 1.0  # e-truediv

    assert_error_at(raises(k), HERE, "e-truediv", "non-affine index", "`/`")


def test_unknown_call():
    def k(A: pd.f32["N"]):
        for i in range(N):
            A[i] = np.exp(A[i])  # e-call

    assert_error_at(raises(k), HERE, "e-call", "unknown call", "np.exp(A[i])")


def test_unknown_bare_call():
    def k(A: pd.f32["N"]):
        for i in range(N):
            A[i] = abs(A[i])  # e-abs

    assert_error_at(raises(k), HERE, "e-abs", "unknown call", "abs(A[i])")


def test_while():
    def k(A: pd.f32["N"]):
        i = 0  # noqa: F841
        while i < N:  # e-while
            A[i] = 0.0

    # the first offence is the assignment to a local
    e = raises(k)
    assert "assignment to non-tensor `i`" in str(e)

    def k2(A: pd.f32["N"]):
        while N > 0:  # e-while2
            A[0] = 0.0

    assert_error_at(raises(k2), HERE, "e-while2", "`while` loop")


def test_data_dependent_if_on_tensor():
    def k(A: pd.f32["N"], B: pd.f32["N"]):
        for i in range(N):
            if B[i] > 0:  # e-dataif
                A[i] = 1.0

    assert_error_at(raises(k), HERE, "e-dataif", "data-dependent `if", "B[i]")


def test_data_dependent_if_on_scalar():
    def k(A: pd.f32["N"], t: pd.f32):
        for i in range(N):
            if i < t:  # e-scalarif
                A[i] = 1.0

    assert_error_at(raises(k), HERE, "e-scalarif", "data-dependent `if", "`t`")


def test_data_dependent_bound_and_index():
    def k(A: pd.f32["N"], B: pd.f32["N"]):
        for i in range(N):
            A[B[i]] = 1.0  # e-indirect

    assert_error_at(raises(k), HERE, "e-indirect", "data-dependent index in `A[B[i]]`", "`B[i]`")


def test_assignment_to_scalar_or_non_tensor():
    def k(A: pd.f32["N"], alpha: pd.f32):
        for i in range(N):
            alpha = A[i]  # e-scalar  # noqa: F841

    assert_error_at(raises(k), HERE, "e-scalar", "assignment to non-tensor `alpha`")

    def k2(A: pd.f32["N"], alpha: pd.f32):
        for i in range(N):
            alpha[i] = A[i]  # e-scalar-sub

    assert_error_at(raises(k2), HERE, "e-scalar-sub", "assignment to non-tensor `alpha`")


def test_break_and_return():
    def k(A: pd.f32["N"]):
        for i in range(N):
            A[i] = 1.0
            break  # e-break

    assert_error_at(raises(k), HERE, "e-break", "`break`")

    def k2(A: pd.f32["N"]):
        A[0] = 1.0
        return A  # e-return

    assert_error_at(raises(k2), HERE, "e-return", "`return`")


def test_wrong_number_of_indices():
    def k(A: pd.f32["M", "N"]):
        for i in range(M):
            A[i] = 1.0  # e-rank

    assert_error_at(raises(k), HERE, "e-rank", "`A[i]`", "1 index", "2 dimension", "[M, N]")

    def k2(A: pd.f32["M", "N"], x: pd.f32["N"]):
        for i in range(M):
            A[i, 0] = x[i, 0]  # e-rank2

    assert_error_at(raises(k2), HERE, "e-rank2", "`x[i, 0]`", "tensor `x`")


def test_unknown_name():
    def k(A: pd.f32["N"]):
        for i in range(N):
            A[i] = A[i] * undefined_scale  # e-unknown  # noqa: F821

    assert_error_at(raises(k), HERE, "e-unknown", "unknown name `undefined_scale`")

    def k2(A: pd.f32["N"]):
        for i in range(N):
            A[i] = A[i] * Q  # e-unknown-float

    # a bare unknown name in a float expression is no size (sizes live in bounds and indices)
    assert_error_at(raises(k2), HERE, "e-unknown-float", "unknown name `Q`")


def test_bound_only_size_is_a_size_parameter():
    """A name used only in a loop bound or condition (a stencil's time steps) is a size: bound
    by pd.compile, named when missing there and at a direct call."""

    @pd.kernel
    def steps(A: pd.f32["N"]):  # e-steps
        for t in range(T):
            for i in range(N):
                if i < M:
                    A[i] += 1.0

    assert steps.ir.sizes == ("N", "T", "M") and steps.ir.free_sizes == ("T", "M")
    with pytest.raises(pd.DSLError) as ei:
        pd.compile(steps, N=5, T=3)
    assert_error_at(ei.value, HERE, "e-steps", "'M'", "not bound", "M=64")
    a = np.zeros(5, np.float32)
    with pytest.raises(TypeError) as ti:
        steps(a, T=3)
    assert_error_at(ti.value, HERE, "e-steps", "'M'", "shapes no array", "M=10")
    steps(a, T=3, M=4)
    np.testing.assert_array_equal(a, [3, 3, 3, 3, 0])
    ref = np.zeros(5, np.float32)
    steps.reference(ref, T=3, M=4)
    np.testing.assert_array_equal(a, ref)
    k = pd.compile(steps, N=5, T=2, M=5)
    k(a, T=2)  # a size it was compiled for may be repeated
    np.testing.assert_array_equal(a, [5, 5, 5, 5, 2])
    with pytest.raises(ValueError, match="compiled for T=2"):
        k(a, T=3)


def test_non_int_global_in_index():
    def k(A: pd.f32["N"]):
        for i in range(N):
            A[i] = A[i + LIMIT]  # e-float-const

    assert_error_at(raises(k), HERE, "e-float-const", "`LIMIT`", "index")


def test_loop_variable_shadowing():
    def k(A: pd.f32["N", "N"]):
        for i in range(N):
            for i in range(N):  # e-shadow
                A[i, i] = 0.0

    assert_error_at(raises(k), HERE, "e-shadow", "loop variable `i` shadows")

    def k2(A: pd.f32["N"]):
        for N in range(3):  # e-shadow-size
            A[N] = 0.0

    assert_error_at(raises(k2), HERE, "e-shadow-size", "`N`", "size parameter")

    def k3(A: pd.f32["N"]):
        for i in range(N):
            A[i] = 0.0
        A[i] = 1.0  # e-outside

    assert_error_at(raises(k3), HERE, "e-outside", "loop variable `i` used outside its loop")


def test_bad_loops():
    def k(A: pd.f32["N"]):
        for i in range(0, N, 0):  # e-step0
            A[i] = 0.0

    assert_error_at(raises(k), HERE, "e-step0", "step `0`", "positive int constant")

    def k2(A: pd.f32["N"]):
        for i in range(0, N, N):  # e-stepN
            A[i] = 0.0

    assert_error_at(raises(k2), HERE, "e-stepN", "step `N`")

    def k3(A: pd.f32["N"]):
        for i in [0, 1]:  # e-list
            A[i] = 0.0

    assert_error_at(raises(k3), HERE, "e-list", "for i in [0, 1]", "range")

    def k4(A: pd.f32["N"]):
        for i in range(N * N):  # e-bound
            A[0] = 0.0

    assert_error_at(raises(k4), HERE, "e-bound", "non-affine loop bound", "N * N")


def test_bad_statements_and_operators():
    def k(A: pd.f32["N"]):
        for i in range(N):
            A[i] //= 2.0  # e-floordivassign

    assert_error_at(raises(k), HERE, "e-floordivassign", "`//=`", "`/=`")

    def k2(A: pd.f32["N"]):
        for i in range(N):
            A[i] = A[i] ** 2  # e-pow

    assert_error_at(raises(k2), HERE, "e-pow", "operator `**`")

    def k3(A: pd.f32["N"]):
        for i in range(N):
            A[i] = i  # e-iter-value

    assert_error_at(raises(k3), HERE, "e-iter-value", "loop variable `i` used as a float value")

    def k4(A: pd.f32["N"]):
        print(A)  # e-exprstmt

    assert_error_at(raises(k4), HERE, "e-exprstmt", "expression statement", "print(A)")


def test_signature_errors():
    def k(A, B: pd.f32["N"]):  # e-noann
        B[0] = 0.0

    assert_error_at(raises(k), HERE, "e-noann", "argument `A`", "no annotation")

    def k2(N: pd.f32, B: pd.f32["N"]):  # e-argsize
        B[0] = 0.0

    assert_error_at(raises(k2), HERE, "e-argsize", "`N`")


def test_error_is_a_polydl_error():
    assert issubclass(pd.DSLError, pd.PolyDLError)


def test_isl_reserved_names():
    def k(A: pd.f32["N"]):
        for mod in range(N):  # e-reserved
            A[mod] = 0.0

    assert_error_at(raises(k), HERE, "e-reserved", "`mod`", "reserved")


def test_float_literal_in_index_and_slices():
    def k(A: pd.f32["N"]):
        for i in range(N):
            A[i] = A[1.5]  # e-floatidx

    assert_error_at(raises(k), HERE, "e-floatidx", "`1.5` is not an int")

    def k2(A: pd.f32["N"], B: pd.f32["N"]):
        for i in range(N):
            A[i] = B[0:2]  # e-slice

    assert_error_at(raises(k2), HERE, "e-slice", "slice", "B[0:2]")


def test_size_name_captured_from_enclosing_function():
    N = 3

    def k(A: pd.f32["N"]):  # e-freevar
        A[N - 1] = 0.0

    assert_error_at(raises(k), HERE, "e-freevar", "size name `N`", "enclosing function")
