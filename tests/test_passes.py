"""Each pass against its own input: the NumPy interpreter (ir/interp.py) runs the kernel a pass
receives and the kernel (or loop tree) it returns on the same arrays; the results must agree.
No LLVM involved: a wrong rewrite shows here as a wrong number, with the pass named."""

from __future__ import annotations

import numpy as np
import pytest
from kernels import gemm_bias_relu, gemm_bt

import polydl as pd
from polydl.analysis.contraction import find_all
from polydl.ir import interp, poly
from polydl.ir.verify import verify
from polydl.pipeline import bind_sizes, lower_contractions
from polydl.target import resolve
from polydl.transform.coalesce import coalesce_columns
from polydl.transform.gather import gather_operands
from polydl.transform.pack import pack_operands
from polydl.transform.split import split_guards

rng = np.random.default_rng(17)


def arrays(kernel):
    return {
        t.name: rng.uniform(-1, 1, kernel.shape_of(t.name)).astype(np.float32)
        for t in kernel.tensors
    }


def same(before, after, *, tree=None, scalars=None):
    """Interpret both kernels on copies of the same random arrays; they must agree."""
    verify(after)
    data = arrays(before)
    want = {k: v.copy() for k, v in data.items()}
    got = {k: v.copy() for k, v in data.items()}
    interp.run(before, want, scalars)
    interp.run(after, got, scalars, tree=tree)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=2e-5, err_msg=name)


def conv(*args, **kw):
    return bind_sizes(pd.ops.conv2d(*args, **kw).ir, {})


CASES = {
    "strided 1x1": lambda: conv(1, 8, 16, 9, 7, 1, 1, stride=2, bias=True, activation="relu"),
    "strided padded 3x3": lambda: conv(1, 4, 16, 9, 11, 3, 3, stride=2, padding=1),
    "padded 3x3": lambda: conv(2, 5, 8, 7, 6, 3, 3, padding=1, bias=True),
    "1x1": lambda: conv(1, 6, 16, 5, 7, 1, 1),
    "gemm A @ B.T": lambda: bind_sizes(gemm_bt.ir, dict(M=13, N=17, K=19)),
    "gemm + bias + relu": lambda: bind_sizes(gemm_bias_relu.ir, dict(M=23, N=37, K=29)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_gather(case):
    k = CASES[case]()
    for guarded in (False, True):
        out = gather_operands(k, guarded=guarded)
        same(k, out)


@pytest.mark.parametrize("case", list(CASES))
def test_split_and_coalesce(case):
    k = gather_operands(CASES[case]())
    split, found = split_guards(k, find_all(k))
    same(k, split)
    # the contractions a pass returns are those of its result, as if found anew
    assert found == find_all(split)
    fused, found = coalesce_columns(split, found)
    same(split, fused)
    assert found == find_all(fused)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", list(CASES))
def test_lowering_and_packing(case, threads, monkeypatch):
    monkeypatch.setattr("polydl.transform.pack.WIDE_ROW_BYTES", 0)  # pack the small B too
    k = gather_operands(CASES[case](), guarded=True)
    tgt = resolve(None)
    low = lower_contractions(k, tgt.isa, target=tgt, threads=threads).kernel
    assert any(s.micro for s in low.statements) or case == "strided padded 3x3"
    same(k, low)
    sched = poly.union(poly.schedule(low, s) for s in low.statements)
    tree = poly.ast(sched, poly.context(low), {})
    packed = pack_operands(low, tree, max_bytes=1 << 20)
    same(low, low, tree=packed)


def test_interpreter_against_the_reference():
    """The interpreter itself: the DSL's sequential meaning (the Python body) on a kernel with
    every statement op and intrinsic."""

    @pd.kernel
    def mix(X: pd.f32["N", "N"], Y: pd.f32["N"], s: pd.f32):
        for i in range(N):
            Y[i] = pd.tanh(X[i, i]) + s
            for j in range(i):
                Y[i] += max(X[i, j], 0.0) * 0.5
                Y[i] -= pd.exp(X[j, i]) * 0.25
            Y[i] *= 1.5
            Y[i] /= 2.0 + pd.sigmoid(X[i, 0]) + pd.sqrt(1.0 + X[0, i] * X[0, i])

    k = bind_sizes(mix.ir, {"N": 7})
    x = rng.uniform(-1, 1, (7, 7)).astype(np.float32)
    y1, y2 = np.zeros(7, np.float32), np.zeros(7, np.float32)
    mix.reference(x, y1, 0.3)
    interp.run(k, {"X": x, "Y": y2}, {"s": 0.3})
    np.testing.assert_allclose(y2, y1, rtol=1e-5, atol=1e-6)


def test_a_wrong_rewrite_shows():
    """The oracle can fail: a gather whose copy halves the values is caught."""
    from dataclasses import replace

    from polydl.ir.nodes import BinOp, Num

    k = CASES["strided 1x1"]()
    out = gather_operands(k)
    (g,) = [s for s in out.statements if s.name.endswith("_g")]
    half = BinOp(op="*", a=g.expr, b=Num(value=0.5))
    broken = replace(
        out, statements=tuple(replace(s, expr=half) if s is g else s for s in out.statements)
    )
    with pytest.raises(AssertionError):
        same(k, broken)


def test_threads_pass_collapses_and_marks():
    """transform/threads.py: a 3-trip parallel loop over 2 threads is collapsed with the 7-trip
    one inside (21 iterations, threaded); with one thread nothing changes; the interpreter
    gives the same results on the rewritten tree."""
    from polydl.ir import loops as L
    from polydl.transform.threads import assign_threads

    @pd.kernel
    def scale(X: pd.f32[3, 7, 5]):
        for i in range(3):
            for j in range(7):
                for k in range(5):
                    X[i, j, k] *= 2.0

    k = bind_sizes(scale.ir, {})
    from polydl.analysis.deps import parallel_dims

    dims = parallel_dims(k)
    sched = poly.union(poly.schedule(k, s) for s in k.statements)
    tree = poly.ast(sched, poly.context(k), {s.name: dims for s in k.statements})
    assert assign_threads(tree, threads=1, sizes={}) is tree
    out = assign_threads(tree, threads=2, sizes={})
    threaded = [n for n in L.walk(out) if isinstance(n, L.For) and n.threaded]
    assert len(threaded) == 1 and threaded[0].upper() == L.Int(value=21)
    same(k, k, tree=out)
