"""Kernel factories in the DSL itself: an ``if`` on names of the enclosing scope only is static
(evaluated at definition, its other branch not part of the kernel), and annotations may use
the enclosing function's values, so a factory needs no source formatting."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
from test_dsl_util import assert_error_at

import polydl as pd

HERE = __file__


def scaled(n: int, m: int, *, relu: bool, mode: str):
    @pd.kernel
    def scaled(Y: pd.f32[n, m], X: pd.f32[n, m], b: pd.f32[m]):
        for i in range(n):
            for j in range(m):
                Y[i, j] = X[i, j]
                if mode == "bias":
                    Y[i, j] += b[j]
                else:
                    Y[i, j] *= 2.0
                if relu:
                    Y[i, j] = max(Y[i, j], 0.0)

    return scaled


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("mode", ["bias", "double"])
def test_static_if_picks_a_branch(relu, mode):
    k = scaled(5, 7, relu=relu, mode=mode)
    assert k.ir.sizes == () and len(k.ir.statements) == 2 + relu
    rng = np.random.default_rng(0)
    x, b = rng.standard_normal((5, 7)).astype(np.float32), rng.standard_normal(7).astype(np.float32)
    y, ref = np.zeros((5, 7), np.float32), np.zeros((5, 7), np.float32)
    k(y, x, b)
    k.reference(ref, x, b)
    want = x + b if mode == "bias" else 2 * x
    np.testing.assert_allclose(y, np.maximum(want, 0) if relu else want, rtol=1e-6)
    np.testing.assert_allclose(y, ref, rtol=1e-6)


def test_untaken_branch_is_not_part_of_the_kernel():
    """Names used only in the branch a static `if` drops are neither sizes nor errors."""
    wide = False

    @pd.kernel
    def k(A: pd.f32["N"]):
        for i in range(N):
            if wide:
                for j in range(Q):
                    A[i] += undefined_scale
            else:
                A[i] = 1.0

    assert k.ir.sizes == ("N",)
    a = np.zeros(4, np.float32)
    k(a)
    np.testing.assert_array_equal(a, 1.0)


def test_conditions_on_iterations_stay_in_the_domain():
    limit = 3

    @pd.kernel
    def k(A: pd.f32["N"]):
        for i in range(N):
            if i < limit:
                A[i] = 1.0

    a = np.zeros(6, np.float32)
    k(a)
    np.testing.assert_array_equal(a, [1, 1, 1, 0, 0, 0])


def test_failing_static_condition_names_its_line():
    table = {"a": 1}

    def k(A: pd.f32["N"]):
        for i in range(N):
            if table["missing"] > 0:  # e-static
                A[i] = 1.0

    with pytest.raises(pd.DSLError) as ei:
        pd.kernel(k)
    assert_error_at(ei.value, HERE, "e-static", "static condition", "missing")


# ---------------------------------------------------------------- optional arguments


def affine(n: int, *, with_bias: bool, scaled: bool = False):
    """``Y = X (* alpha) (+ b)``: ``b`` and ``alpha`` are absent (annotated None) unless asked."""

    @pd.kernel
    def affine(
        Y: pd.f32[n],
        X: pd.f32[n],
        b: pd.f32[n] if with_bias else None,
        alpha: pd.f32 if scaled else None,
    ):
        for i in range(n):
            Y[i] = X[i]
            if scaled:
                Y[i] *= alpha
            if with_bias:
                Y[i] += b[i]

    return affine


def test_string_annotations_see_the_defining_scope():
    """This file's annotations are strings: names only they use (``rows``) still evaluate."""
    rows, n = 3, 4

    @pd.kernel
    def k(Y: pd.f32[rows, n], X: pd.f32[n]):
        for j in range(n):
            Y[0, j] = X[j]

    assert [str(d) for d in k.ir.arg("Y").shape] == ["3", "4"]


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("scaled", [False, True])
def test_optional_argument_present_or_absent(with_bias, scaled):
    k = affine(6, with_bias=with_bias, scaled=scaled)
    names = ["Y", "X"] + ["b"] * with_bias + ["alpha"] * scaled
    assert [a.name for a in k.ir.args] == names
    assert list(k.signature.parameters) == names
    assert list(inspect.signature(k).parameters) == names
    assert k.absent == tuple(n for n in ("b", "alpha") if n not in names)
    assert len(k.ir.statements) == 1 + with_bias + scaled
    rng = np.random.default_rng(1)
    x, b = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    extra = [b] * with_bias + [1.5] * scaled
    want = x * (1.5 if scaled else 1.0) + (b if with_bias else 0.0)
    y, ref, kw = np.zeros(6, np.float32), np.zeros(6, np.float32), np.zeros(6, np.float32)
    k(y, x, *extra)  # positional: the absent arguments take no place
    k.reference(ref, x, *extra)
    k(Y=kw, X=x, **dict(zip(names[2:], extra, strict=True)))
    for got in (y, ref, kw):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    compiled = pd.compile(k)
    compiled(y, x, *extra)
    np.testing.assert_allclose(y, want, rtol=1e-6)


def test_absent_argument_is_no_argument_of_the_call():
    k = affine(4, with_bias=False)
    y, x = np.zeros(4, np.float32), np.ones(4, np.float32)
    with pytest.raises(TypeError, match="too many positional arguments"):
        k(y, x, np.ones(4, np.float32))
    with pytest.raises(TypeError, match="b"):
        k(y, x, b=np.ones(4, np.float32))
    with pytest.raises(TypeError, match="b"):
        k.reference(y, x, b=np.ones(4, np.float32))


def test_use_of_an_absent_argument_names_it_and_its_line():
    bias = False

    def k(Y: pd.f32["N"], b: pd.f32["N"] if bias else None):
        for i in range(N):
            Y[i] = 0.0
            Y[i] += b[i]  # e-absent-stmt

    with pytest.raises(pd.DSLError) as ei:
        pd.kernel(k)
    assert_error_at(ei.value, HERE, "e-absent-stmt", "`b`", "absent", "Y[i] += b[i]", "'k'")


def test_absent_argument_in_a_condition_or_a_bound():
    def cond(Y: pd.f32["N"], b: None):
        for i in range(N):
            if b is not None:  # e-absent-cond
                Y[i] = 1.0

    def bound(Y: pd.f32["N"], m: None):
        for i in range(m):  # e-absent-bound
            Y[i] = 1.0

    with pytest.raises(pd.DSLError) as ei:
        pd.kernel(cond)
    assert_error_at(ei.value, HERE, "e-absent-cond", "`b`", "absent", "static `if`")
    with pytest.raises(pd.DSLError) as ei:
        pd.kernel(bound)
    assert_error_at(ei.value, HERE, "e-absent-bound", "`m`", "absent")


def test_absent_argument_name_is_no_size():
    """An absent argument's name is the argument's (Python binds it), never a size."""

    def k(Y: pd.f32["N"], b: None, Z: pd.f32["b"]):  # e-absent-size
        for i in range(N):
            Y[i] = 1.0

    with pytest.raises(pd.DSLError) as ei:
        pd.kernel(k)
    assert_error_at(ei.value, HERE, "e-absent-size", "`b`", "argument name")


@pytest.mark.parametrize("bias", [False, True])
def test_ops_kernels_are_dsl_functions_of_ops_py(bias):
    """The ready-made primitives are nested ``@pd.kernel`` functions of ``polydl/ops.py``:
    their statements' lines are that file's, and an optional bias is an absent argument."""
    lines = Path(pd.ops.__file__).read_text().splitlines()
    for k, names in (
        (pd.ops.matmul(3, 4, 5, bias=bias), ["C", "A", "B"] + ["bias"] * bias),
        (pd.ops.conv2d(1, 2, 3, 5, 5, 3, 3, bias=bias), ["O", "I", "Wt"] + ["b"] * bias),
        (
            pd.ops.conv2d(1, 2, 3, 5, 5, 3, 3, bias=bias, layout="nchwc", block=2),
            ["O", "I", "Wt"] + ["b"] * bias,
        ),
    ):
        assert list(inspect.signature(k).parameters) == names
        assert k.ir.filename == pd.ops.__file__
        for s in k.ir.statements:
            assert lines[s.line - 1].strip().startswith(s.source.split(" ")[0]), s


def test_ops_factories_take_numpy_ints():
    """Shapes from NumPy integers become the kernels' int constants, as Python ints do."""
    k = pd.ops.conv2d(np.int64(1), 2, np.int32(3), 7, 5, 3, 3, padding=1, bias=True)
    assert [str(d) for d in k.ir.arg("I").shape] == ["1", "2", "7", "5"]
    assert k.ir == pd.ops.conv2d(1, 2, 3, 7, 5, 3, 3, padding=(1, 1), bias=True).ir
