"""Kernel factories in the DSL itself: an ``if`` on names of the enclosing scope only is static
(evaluated at definition, its other branch not part of the kernel), and annotations may use
the enclosing function's values, so a factory needs no source formatting."""

from __future__ import annotations

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
