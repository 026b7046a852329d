"""Index-set splitting of guarded contractions (transform/split.py): a convolution written by hand
with padding guards runs on BRGEMM calls, against a float64 NumPy convolution.

Shapes are odd or prime on purpose; stride 2 (whose strided columns splitting cannot fix: the
pipeline gathers that operand first, tests/test_gather.py) and filters too wide for the cell
limit check the fallbacks.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from kernels import conv_ref, numpy_conv

import polydl as pd
from polydl.analysis.contraction import find_all
from polydl.ir.verify import verify
from polydl.pipeline import bind_sizes, compile_kernel
from polydl.target import host
from polydl.transform.split import split_guards


def split(kernel):
    """The split kernel alone (the pass also returns its contractions)."""
    return split_guards(kernel, find_all(kernel))[0]


rng = np.random.default_rng(11)


def rand(*shape):
    return rng.uniform(-1, 1, size=shape).astype(np.float32)


def run(kern, shapes, *, threads=1, optimize=True, bias=True):
    (N, C, K, H, W, R, S, P, Q) = shapes
    x, w, b = rand(N, C, H, W), rand(K, C, R, S), rand(K)
    o = np.full((N, K, P, Q), 7.0, np.float32)  # the init must overwrite it
    k = pd.compile(kern, threads=threads, optimize=optimize)
    k(o, x, w, *([b] if bias else []))
    return k, o, (x, w, b)


CASES = [
    # N, C, K, H, W, R, S, stride, padding
    (1, 5, 7, 9, 11, 3, 3, 1, 1),
    (2, 3, 13, 11, 7, 3, 3, 1, 1),
    (1, 7, 5, 13, 17, 3, 3, 2, 1),
    (1, 3, 5, 11, 13, 7, 7, 2, 3),
    (1, 2, 3, 17, 19, 7, 7, 1, 3),
    (1, 6, 5, 13, 11, 5, 5, 1, 2),
    (2, 3, 5, 7, 5, 1, 1, 1, 1),
    (1, 3, 11, 5, 7, 3, 3, 1, 2),
    (1, 4, 3, 9, 13, 3, 3, 1, (1, 0)),
    (1, 4, 3, 9, 13, 3, 5, 1, (0, 2)),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_padded_conv_against_numpy(case, threads):
    N, C, K, H, W, R, S, stride, pad = case
    P, Q = pd.ops.conv_shape(H, W, R, S, stride, pad)
    kern = pd.ops.conv2d(
        N, C, K, H, W, R, S, stride=stride, padding=pad, bias=True, activation="relu"
    )
    _, o, (x, w, b) = run(kern, (N, C, K, H, W, R, S, P, Q), threads=threads)
    np.testing.assert_allclose(o, conv_ref(x, w, b, stride, pad, True), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bias,activation", [(False, None), (True, None), (False, "relu")])
def test_epilogue_variants(bias, activation):
    N, C, K, H, W, R, S = 1, 5, 6, 7, 9, 3, 3
    kern = pd.ops.conv2d(N, C, K, H, W, R, S, padding=1, bias=bias, activation=activation)
    k, o, (x, w, b) = run(kern, (N, C, K, H, W, R, S, H, W), bias=bias)
    assert all(s.micro is not None for s in k.kernel.statements), k.show("loops")
    want = conv_ref(x, w, b if bias else None, 1, 1, activation == "relu")
    np.testing.assert_allclose(o, want, rtol=1e-4, atol=1e-4)


def test_against_the_kernels_reference():
    N, C, K, H, W, R, S = 1, 2, 3, 5, 7, 3, 3
    kern = pd.ops.conv2d(N, C, K, H, W, R, S, padding=1, bias=True, activation="relu")
    k, o, (x, w, b) = run(kern, (N, C, K, H, W, R, S, H, W))
    want = np.full_like(o, 7.0)
    kern.reference(want, x, w, b)
    np.testing.assert_allclose(o, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
def test_interior_and_borders_become_brgemm(threads):
    N, C, K, H, W, R, S = 1, 16, 32, 13, 29, 3, 3
    kern = pd.ops.conv2d(N, C, K, H, W, R, S, padding=1, bias=True, activation="relu")
    k, o, (x, w, b) = run(kern, (N, C, K, H, W, R, S, H, W), threads=threads)
    loops = k.show("loops")
    assert "brgemm(" in loops
    # nothing is left on the plain path, and the border columns are not one-column calls: every
    # call is at least half as wide as the ISA's widest register tile (or the output row)
    # (or, where the cost model prefers it, the input is gathered: the copies are plain loops)
    temps = {t.name for t in k.kernel.temps}
    micro = [s.micro for s in k.kernel.statements if s.target.tensor not in temps]
    assert all(m is not None for m in micro), loops
    widest = host().register_tile[1]
    assert min(m.n for m in micro) >= min(W - 1, widest) // 2
    # the zero init folds into the first cells (beta = 0), bias and ReLU into the last ones
    # (one whole-image call after a gather: beta = 0 and the epilogue together)
    assert {m.beta for m in micro} == ({0} if temps else {0, 1})
    assert any(
        m.operands
        and m.operands[0][0] == "b"
        and m.epilogue.expr == ("max", ("+", ("acc",), ("in", 0)), ("num", 0.0))
        for m in micro
    )
    np.testing.assert_allclose(o, conv_ref(x, w, b, 1, 1, True), rtol=1e-4, atol=1e-4)


def test_the_pass_is_pure_and_verified():
    ir = pd.ops.conv2d(1, 3, 4, 6, 7, 3, 3, padding=1, bias=True, activation="relu").ir
    before = replace(ir)
    out = split(ir)
    assert ir == before
    assert out is not ir and len(out.statements) > len(ir.statements)
    verify(out)
    assert {s.name for s in out.statements}.isdisjoint({"S1"})  # the reduction was cut
    # a kernel without guards (or not a contraction) comes back as it is
    for plain in (pd.ops.conv2d(1, 3, 4, 6, 7, 3, 3, padding=0).ir, pd.ops.matmul(5, 7, 3).ir):
        assert split(plain) is plain
    stride2 = pd.ops.conv2d(1, 3, 4, 9, 7, 3, 3, stride=2, padding=1).ir
    assert split(stride2) is stride2


@pytest.mark.parametrize("pad", [1, 2])
def test_split_kernel_on_the_plain_path(pad):
    # the split alone (no BRGEMM): the distributed nests compute the same as the source
    N, C, K, H, W, R, S = 2, 3, 5, 7, 6, 3, 5
    P, Q = pd.ops.conv_shape(H, W, R, S, 1, pad)
    ir = pd.ops.conv2d(N, C, K, H, W, R, S, padding=pad, bias=True, activation="relu").ir
    cut = split(ir)
    assert cut is not ir
    x, w, b = rand(N, C, H, W), rand(K, C, R, S), rand(K)
    o = np.full((N, K, P, Q), 7.0, np.float32)
    compile_kernel(bind_sizes(cut, {}), {}, threads=1, optimize=False)(o, x, w, b)
    np.testing.assert_allclose(o, conv_ref(x, w, b, 1, pad, True), rtol=1e-4, atol=1e-4)


@pd.kernel
def conv_then_shift(
    O: pd.f32["K", "P", "Q"],
    T: pd.f32["K", "P", "Q"],
    I: pd.f32["C", "P", "Q"],
    Wt: pd.f32["K", "C", "R", "S"],
):
    for k in range(K):
        for p in range(P):
            for q in range(Q):
                if q >= 1:
                    T[k, p, q] = O[k, p, q - 1]
                O[k, p, q] = 0.0
                for c in range(C):
                    for r in range(R):
                        for s in range(S):
                            if 0 <= p + r - 1 < P and 0 <= q + s - 1 < Q:
                                O[k, p, q] += I[c, p + r - 1, q + s - 1] * Wt[k, c, r, s]


def test_a_split_that_breaks_a_dependence_is_not_made():
    # T reads the finished output of the previous column: moving the reduction into nests
    # after T's would read O before it is computed; the dependence check refuses the split
    sizes = dict(K=3, P=5, Q=6, C=2, R=3, S=3)
    bound = bind_sizes(conv_then_shift.ir, sizes)
    assert split(bound) is bound
    x, w = rand(2, 5, 6), rand(3, 2, 3, 3)
    o, t = np.zeros((3, 5, 6), np.float32), np.zeros((3, 5, 6), np.float32)
    pd.compile(conv_then_shift, threads=1, **sizes)(o, t, x, w)
    want = numpy_conv(x, w, 1, 1)
    np.testing.assert_allclose(o, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(t[:, :, 1:], want[:, :, :-1], rtol=1e-4, atol=1e-4)


@pd.kernel
def conv_by_hand(
    O: pd.f32["N", "K", "P", "Q"],
    I: pd.f32["N", "C", "P", "Q"],
    Wt: pd.f32["K", "C", "R", "S"],
    b: pd.f32["K"],
):
    for n in range(N):
        for k in range(K):
            for p in range(P):
                for q in range(Q):
                    O[n, k, p, q] = 0.0
                    for c in range(C):
                        for r in range(R):
                            for s in range(S):
                                if p + r >= 2 and p + r < P + 2 and q + s >= 2 and q + s < Q + 2:
                                    O[n, k, p, q] += Wt[k, c, r, s] * I[n, c, p + r - 2, q + s - 2]
                    O[n, k, p, q] = max(O[n, k, p, q] + b[k], 0.0)


@pytest.mark.parametrize("threads", [1, 2])
def test_users_own_padded_conv_with_sizes(threads):
    # size parameters, guards spelled differently, operands in the other order, 5x5 'same'
    sizes = dict(N=2, C=3, K=7, P=11, Q=13, R=5, S=5)
    k = pd.compile(conv_by_hand, threads=threads, **sizes)
    assert "brgemm(" in k.show("loops")
    x, w, b = rand(2, 3, 11, 13), rand(7, 3, 5, 5), rand(7)
    o = np.full((2, 7, 11, 13), 7.0, np.float32)
    k(o, x, w, b)
    np.testing.assert_allclose(o, conv_ref(x, w, b, 1, 2, True), rtol=1e-4, atol=1e-4)


@pd.kernel
def conv_chain_by_hand(
    O: pd.f32["K", "P", "Q"],
    I: pd.f32["C", "P", "Q"],
    Wt: pd.f32["K", "C", "R", "S"],
    b: pd.f32["K"],
    g: pd.f32["K"],
):
    for k in range(K):
        for p in range(P):
            for q in range(Q):
                O[k, p, q] = 0.0
                for c in range(C):
                    for r in range(R):
                        for s in range(S):
                            if 0 <= p + r - 1 < P and 0 <= q + s - 1 < Q:
                                O[k, p, q] += I[c, p + r - 1, q + s - 1] * Wt[k, c, r, s]
                O[k, p, q] = O[k, p, q] + b[k]
                O[k, p, q] = max(O[k, p, q], 0.0)
                O[k, p, q] = O[k, p, q] * g[k]


def test_an_epilogue_chain_folds_into_the_split_cells():
    # three elementwise statements after a guarded reduction: the split cells' last calls take
    # the whole chain in their store, nothing stays on the plain path
    sizes = dict(C=5, K=19, P=11, Q=23, R=3, S=3)
    bound = bind_sizes(conv_chain_by_hand.ir, sizes)
    cut, found = split_guards(bound, find_all(bound))
    assert cut is not bound
    # the cells writing an element last carry all three statements of the chain
    assert any(len(c.epilogue) == 3 for c in found), found
    k = pd.compile(conv_chain_by_hand, threads=1, **sizes)
    micro = [s.micro for s in k.kernel.statements if s.target.tensor == "O"]
    assert micro and all(m is not None for m in micro), k.show("loops")
    assert any(len(m.operands) == 2 for m in micro), k.show("loops")
    x, w, b, g = rand(5, 11, 23), rand(19, 5, 3, 3), rand(19), rand(19)
    o = np.full((19, 11, 23), 7.0, np.float32)
    k(o, x, w, b, g)
    want = conv_ref(x[None], w, b, 1, 1, True)[0] * g[:, None, None]
    np.testing.assert_allclose(o, want, rtol=1e-4, atol=1e-4)
