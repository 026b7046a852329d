"""The contract of pd.compile and of calling a compiled kernel (API.md, sections 2 and 5)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import polydl as pd
from polydl import jit


@pd.kernel
def axpy(Y: pd.f32["N"], X: pd.f32["N"], a: pd.f32):
    for i in range(N):
        Y[i] += a * X[i]


@pd.kernel
def shifted(Y: pd.f32["N"], X: pd.f32["N"]):
    for i in range(N):
        Y[i] = X[i + 1]


def test_missing_and_unknown_sizes():
    with pytest.raises(pd.DSLError, match=r"test_calls\.py:\d+:.*'N'.*not bound"):
        pd.compile(axpy)
    with pytest.raises(pd.DSLError, match=r"no size parameter 'Q'"):
        pd.compile(axpy, N=4, Q=3)
    with pytest.raises(pd.DSLError, match=r"positive int"):
        pd.compile(axpy, N=0)


def test_out_of_bounds_is_refused_before_running():
    with pytest.raises(pd.BoundsError) as e:
        pd.compile(shifted, N=8)
    msg = str(e.value)
    assert "X[i + 1]" in msg or "X[(i + 1)]" in msg
    assert "i=7" in msg and "test_calls.py:" in msg


@pytest.fixture(scope="module")
def k():
    return pd.compile(axpy, N=5, threads=1)


def test_call_checks_write_nothing(k):
    x = np.arange(5, dtype=np.float32)
    y = np.ones(5, np.float32)
    bad = [
        ((y, x), TypeError, "missing"),
        ((y, x, 1.0, 2.0), TypeError, "takes 3 arguments"),
        ((y, x.astype(np.float64), 1.0), TypeError, "'X' must have dtype float32"),
        ((y, np.ones(6, np.float32), 1.0), ValueError, r"'X' must have shape \(5,\)"),
        ((y, np.ones(10, np.float32)[::2], 1.0), ValueError, "C-contiguous"),
        ((y, [1, 2, 3, 4, 5], 1.0), TypeError, "numpy array"),
        ((y, x, "a"), TypeError, "'a' must be a number"),
        ((y, y, 1.0), ValueError, "share memory"),
    ]
    for args, exc, msg in bad:
        with pytest.raises(exc, match=msg):
            k(*args)
        np.testing.assert_array_equal(y, np.ones(5, np.float32))
    ro = np.ones(5, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        k(ro, x, 1.0)
    with pytest.raises(TypeError, match="unexpected argument 'Z'"):
        k(y, x, 1.0, Z=1)
    k(Y=y, X=x, a=2.0)
    np.testing.assert_allclose(y, 1 + 2 * x)


def test_show(k):
    loops = k.show("loops")
    assert "for (" in loops and "Y[i] += a * X[i]" in loops
    assert "define void @polydl_entry" in k.show("llvm")
    asm = k.show("asm")
    assert "polydl_entry" in asm


def test_other_target_shows_asm_but_refuses_to_run():
    mm = pd.ops.matmul(16, 64, 32)
    k = pd.compile(mm, target="skylake-avx512", threads=1)
    asm = k.show("asm")
    assert "vfmadd231ps" in asm and "zmm" in asm
    a, b, c = (
        np.ones((16, 32), np.float32),
        np.ones((32, 64), np.float32),
        np.zeros((16, 64), np.float32),
    )
    if "avx512f" not in jit.host_features():
        with pytest.raises(pd.TargetError, match="skylake-avx512"):
            k(c, a, b)
        np.testing.assert_array_equal(c, 0)
    else:
        k(c, a, b)
        np.testing.assert_allclose(c, 32.0)
    # an AVX2 target never uses zmm registers
    assert "zmm" not in pd.compile(mm, target="znver3", threads=1).show("asm")


def test_cli_show(tmp_path):
    src = tmp_path / "kern.py"
    src.write_text(
        textwrap.dedent(
            """
            import polydl as pd

            @pd.kernel
            def gemm(C: pd.f32["M", "N"], A: pd.f32["M", "K"], B: pd.f32["K", "N"]):
                for i in range(M):
                    for j in range(N):
                        for k in range(K):
                            C[i, j] += A[i, k] * B[k, j]
            """
        )
    )
    for emit, needle in [
        ("loops", "C[i, j] += A[i, k] * B[k, j]"),
        ("llvm", "polydl_entry"),
        ("asm", "vfmadd"),
    ]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "polydl.cli",
                "show",
                f"{src}:gemm",
                "--sizes",
                "M=16,N=16,K=16",
                "--emit",
                emit,
            ],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        assert needle in out.stdout, (emit, out.stdout[-500:], out.stderr)
    bad = subprocess.run(
        [sys.executable, "-m", "polydl.cli", "show", f"{src}:gemm", "--sizes", "M=16"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "not bound" in bad.stderr


def test_repeated_calls_check_the_arrays_that_changed(k):
    # after a call that passed, a call with one new array checks that one (and its overlaps
    # with the others, old ones included) and refuses it without writing anything
    x = np.arange(5, dtype=np.float32)
    y = np.zeros(5, np.float32)
    k(y, x, 1.0)
    np.testing.assert_array_equal(y, x)
    for args, exc, msg in [
        ((x, x, 1.0), ValueError, "share memory"),  # new Y, the old X
        ((y, y[::-1].copy()[:4], 1.0), ValueError, r"'X' must have shape \(5,\)"),
        ((y, np.zeros(5, np.float64), 1.0), TypeError, "'X' must have dtype float32"),
        ((y, y, 1.0), ValueError, "share memory"),  # the old Y, new X
    ]:
        with pytest.raises(exc, match=msg):
            k(*args)
        np.testing.assert_array_equal(x, np.arange(5, dtype=np.float32))
        np.testing.assert_array_equal(y, x)
    y2 = np.ones(5, np.float32)
    k(y2, x, 2.0)  # a new Y, the X of the first call
    np.testing.assert_array_equal(y2, 1 + 2 * x)
    k(y, x, 1.0)
    np.testing.assert_array_equal(y, 2 * x)
