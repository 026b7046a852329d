"""1-D convolutions (``pd.ops.conv1d``, ``pd.nn.conv1d`` and its gradients) and dilated 2-D
ones, against float64 NumPy references (and torch's autograd where torch is installed). Channel
counts are odd, widths no multiple of any block; filter widths 1-51, dilations 1-16, strides
1-2; groups, depthwise included."""

from __future__ import annotations

import numpy as np
import pytest
from kernels import conv_ref

import polydl as pd
from polydl import nn1d, ops1d
from polydl.analysis.contraction import find_all
from polydl.transform import transpose as tiles

rng = np.random.default_rng(15)


def rand(*shape):
    return rng.uniform(-1, 1, size=shape).astype(np.float32)


def _patches(x, S, stride, pads, d):
    """``xp[:, :, d*s + stride*q]`` for every tap ``s``: [S][N, C, Q] float64 views."""
    pl, pr = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pl, pr)))
    Q = (xp.shape[2] - d * (S - 1) - 1) // stride + 1
    return xp, Q, [xp[:, :, d * s : d * s + stride * (Q - 1) + 1 : stride] for s in range(S)]


def ref_conv1d(x, w, b=None, stride=1, pads=(0, 0), d=1, groups=1, relu=False):
    """torch's conv1d (cross-correlation) in float64."""
    N, C, _ = x.shape
    K, Cg, S = w.shape
    Kg = K // groups
    _, Q, taps = _patches(x, S, stride, pads, d)
    out = np.zeros((N, K, Q))
    for g in range(groups):
        ks, cs = slice(g * Kg, (g + 1) * Kg), slice(g * Cg, (g + 1) * Cg)
        for s in range(S):
            out[:, ks] += np.einsum("ncq,kc->nkq", taps[s][:, cs], w[ks, :, s].astype(np.float64))
    if b is not None:
        out += b[None, :, None]
    return np.maximum(out, 0) if relu else out


def ref_grads(x, w, dy, stride=1, pads=(0, 0), d=1, groups=1):
    """(dx, dw) of :func:`ref_conv1d` for the output gradient ``dy``, in float64."""
    K, Cg, S = w.shape
    Kg = K // groups
    xp, Q, taps = _patches(x, S, stride, pads, d)
    dxp = np.zeros_like(xp)
    dw = np.zeros(w.shape)
    dy = dy.astype(np.float64)
    for g in range(groups):
        ks, cs = slice(g * Kg, (g + 1) * Kg), slice(g * Cg, (g + 1) * Cg)
        for s in range(S):
            dw[ks, :, s] = np.einsum("nkq,ncq->kc", dy[:, ks], taps[s][:, cs])
            span = slice(d * s, d * s + stride * (Q - 1) + 1, stride)
            dxp[:, cs, span] += np.einsum("nkq,kc->ncq", dy[:, ks], w[ks, :, s])
    return dxp[:, :, pads[0] : xp.shape[2] - pads[1]], dw


def close(got, want, scale=None):
    tol = 2e-5 * max(1.0, float(np.abs(want).max()) if scale is None else scale)
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)


# ---------------------------------------------------------------- the DSL kernel


def test_contraction_roles_positions_on_the_columns():
    """The plain NCW formulation: columns the output positions (one run), rows the filters,
    the reduction of one call the taps (B's rows ``dilation`` apart), the batch the channels."""
    kern = ops1d.conv1d(2, 7, 5, 300, 9, dilation=4, bias=True).ir.bind({})
    (c,) = find_all(kern)
    assert (c.n, c.m, c.k, c.batch) == ("q", "k", "s", ("c",))
    assert c.linear("B").coef("s") == 4 and c.linear("B").coef("q") == 1  # B = I
    assert c.init and c.post is not None  # zero init and bias fold into the calls
    # the filter gradient is a BRGEMM over positions: columns the channels (and the taps with
    # dilation 1: one run of S*C elements in D and in Xt), reduction the positions, batch images
    (c,) = find_all(ops1d.conv1d_wgrad(2, 6, 5, 40, 30, 3, dilation=3).ir.bind({}))
    assert (c.n, c.m, c.k, c.batch, c.a, c.b) == ("c", "k", "q", ("n",), "dO", "Xt")
    for d, cols in ((3, "c"), (1, "sc")):
        wk = pd.compile(ops1d.conv1d_wgrad(2, 6, 5, 40, 30, 3, dilation=d), threads=1)
        (rec,) = wk.schedule.contractions
        assert rec.what == "D += dO x Xt"
        assert cols in {v for v, _ in rec.loops}


def test_long_rows_are_not_joined_across_images():
    """NWC: rows are positions. A signal's positions are one run with the next image's, but
    joining them (rows ``m_inner``) would make one call per image, with nothing left to tile or
    run in parallel: rows longer than ``CALL_ROWS`` stay rows of their own."""
    from polydl.analysis.contraction import CALL_ROWS

    (c,) = find_all(ops1d.conv1d(2, 8, 16, CALL_ROWS + 9, 3, layout="nwc").ir.bind({}))
    assert (c.m, c.m_inner, c.n, c.k, c.batch) == ("q", None, "k", "c", ("s",))
    assert "n" in c.outer
    (short,) = find_all(ops1d.conv1d(2, 8, 16, CALL_ROWS - 9, 3, layout="nwc").ir.bind({}))
    assert (short.m, short.m_inner) == ("n", "q")  # one run of 2 x (CALL_ROWS - 11) rows


@pytest.mark.parametrize(
    "shape",
    [
        # N, C, K, W, S, stride, padding, dilation, groups
        (2, 5, 7, 61, 3, 1, 1, 1, 1),
        (1, 3, 4, 97, 1, 2, 0, 1, 1),
        (1, 7, 3, 83, 5, 2, 6, 3, 1),
        (1, 6, 9, 70, 4, 1, (2, 5), 2, 3),
        (1, 3, 3, 150, 51, 1, 25, 1, 1),
    ],
)
def test_ops_conv1d_ncw_guards(shape):
    N, C, K, W, S, st, pad, d, G = shape
    x, w, b = rand(N, C, W), rand(K, C // G, S), rand(K)
    kern = pd.ops.conv1d(N, C, K, W, S, stride=st, padding=pad, dilation=d, groups=G, bias=True)
    pads = ops1d.padding1d(pad, S, d, st)
    want = ref_conv1d(x, w, b, st, pads, d, G)
    out = np.zeros(want.shape, np.float32)
    pd.compile(kern, threads=1)(out, x, w, b)
    close(out, want)


def test_ops_conv1d_nwc_and_phases_layouts():
    N, C, K, W, S, st, d = 2, 5, 7, 53, 6, 2, 3
    x, w, b = rand(N, C, W), rand(K, C, S), rand(K)
    want = ref_conv1d(x, w, b, st, (4, 4), d, relu=True)
    Q = want.shape[2]
    # NWC: the zero border part of the input, filter [S, C, K]
    xt = np.zeros((N, W + 8, C), np.float32)
    xt[:, 4 : 4 + W] = x.transpose(0, 2, 1)
    o = np.zeros((N, Q, K), np.float32)
    kern = pd.ops.conv1d(
        N, C, K, W, S, stride=st, padding=4, dilation=d, bias=True, activation="relu", layout="nwc"
    )
    pd.compile(kern, threads=1)(o, xt, np.ascontiguousarray(w.transpose(2, 1, 0)), b)
    close(o.transpose(0, 2, 1), want)
    # phases: the packing kernels, then the unguarded kernel
    S1, J = ops1d.phases(S, st, d, Q)
    xp, wp = np.zeros((N, C, st, J), np.float32), np.zeros((K, C, st, S1), np.float32)
    pd.ops.pack_phases(N, C, W, Q, S, stride=st, dilation=d, left=4)(xp, x)
    pd.ops.pack_taps(K, C, S, stride=st)(wp, w)
    op = np.zeros((N, K, Q), np.float32)
    kern = pd.ops.conv1d_phases(N, C, K, Q, S, stride=st, dilation=d, bias=True, activation="relu")
    pd.compile(kern, threads=1)(op, xp, wp, b)
    close(op, want)


def test_ops_conv1d_spans_and_pack_spans():
    """Runs of output positions from given offsets of the rows (no guard), and the windows
    with their zero border that the ends of ``pd.nn.conv1d`` read."""
    N, C, K, W, S, d, G = 2, 6, 9, 311, 5, 3, 3
    x, w, b = rand(N, C, W), rand(K, C // G, S), rand(K)
    pl, pr = 7, 6
    want = ref_conv1d(x, w, b, 1, (pl, pr), d, G, relu=True)
    Q = want.shape[2]
    lo, hi = 16, Q - pr  # every tap of these lies in x
    o = np.full((N, K, Q), np.nan, np.float32)
    kern = ops1d.conv1d_spans(
        N,
        C,
        K,
        Q,
        W,
        S,
        span=hi - lo,
        out_start=lo,
        src_start=lo - pl,
        dilation=d,
        groups=G,
        bias=True,
        activation="relu",
    )
    pd.compile(kern, threads=2)(o, x, w, b)
    close(o[:, :, lo:hi], want[:, :, lo:hi])
    assert np.isnan(o[:, :, :lo]).all() and np.isnan(o[:, :, hi:]).all()  # nothing else written
    # both ends: 16 positions each, from windows of 16 + d*(S-1) positions
    E, Le = 16, 16 + d * (S - 1)
    xe = np.zeros((N, C, 2 * Le), np.float32)
    pd.compile(ops1d.pack_spans(N, C, W, 2 * Le, spans=2, width=Le, start=-pl, step=Q - E))(xe, x)
    xp = np.pad(x, ((0, 0), (0, 0), (pl, pr)))
    np.testing.assert_array_equal(xe[:, :, :Le], xp[:, :, :Le])
    np.testing.assert_array_equal(xe[:, :, Le:], xp[:, :, Q - E : Q - E + Le])
    kern = ops1d.conv1d_spans(
        N,
        C,
        K,
        Q,
        2 * Le,
        S,
        spans=2,
        span=E,
        out_step=Q - E,
        src_step=Le,
        dilation=d,
        groups=G,
        bias=True,
        activation="relu",
    )
    pd.compile(kern, threads=2)(o, xe, w, b)
    close(o, want)


# ---------------------------------------------------------------- pd.nn


@pytest.mark.parametrize(
    "shape",
    [
        # N, C, K, W, S, stride, padding, dilation, groups, route
        (2, 15, 15, 1037, 25, 1, "same", 2, 1, "ncw"),
        (1, 13, 11, 300, 51, 1, 100, 4, 1, "ncw"),
        (1, 5, 3, 211, 7, 1, "same", 16, 1, "nwc"),
        (2, 9, 6, 77, 5, 2, 2, 3, 3, "ncw"),
        (1, 6, 6, 90, 3, 2, 1, 1, 6, "nwc"),  # depthwise
        (1, 7, 5, 64, 1, 1, 0, 1, 1, "ncw"),  # no copy: the input itself
        (2, 4, 8, 40, 4, 1, "same", 3, 2, None),
    ],
)
def test_nn_conv1d_and_gradients(shape):
    N, C, K, W, S, st, pad, d, G, route = shape
    x, w, b = rand(N, C, W), rand(K, C // G, S), rand(K)
    pads = ops1d.padding1d(pad, S, d, st)
    want = ref_conv1d(x, w, b, st, pads, d, G, relu=True)
    kw = dict(stride=st, padding=pad, dilation=d, groups=G, threads=2)
    y = pd.nn.conv1d(x, w, b, activation="relu", route=route, **kw)
    assert pd.memory.is_aligned(y) and y.dtype == np.float32
    close(y, want)
    dy = rand(*want.shape)
    want_dx, want_dw = ref_grads(x, w, dy, st, pads, d, G)
    close(pd.nn.conv1d_backward_data(dy, w, W, route=route, **kw), want_dx)
    close(pd.nn.conv1d_backward_weight(x, dy, S, **kw), want_dw)
    # a second call reuses the plan and its scratch buffers: the zero borders are still zero
    x2 = rand(N, C, W)
    close(
        pd.nn.conv1d(x2, w, b, activation="relu", route=route, **kw),
        ref_conv1d(x2, w, b, st, pads, d, G, relu=True),
    )


@pytest.mark.parametrize(
    "shape",
    [
        # N, C, K, W, S, padding, dilation, groups, threads
        (1, 7, 5, 1009, 3, "same", 1, 1, 2),
        (2, 16, 16, 997, 9, "same", 2, 1, 1),
        (1, 5, 6, 613, 5, (7, 2), 3, 1, 2),
        (1, 5, 6, 613, 5, (0, 9), 3, 1, 2),  # the right end only
        (1, 5, 6, 613, 5, (13, 0), 3, 1, 2),  # the left end only
        (2, 6, 9, 401, 4, "same", 5, 3, 2),  # groups, the odd position on the right
        (1, 3, 3, 2003, 51, "same", 8, 1, 2),  # ends 208 positions wide
    ],
)
def test_nn_conv1d_interior_from_the_input(shape):
    """Stride 1 with padding: the interior positions straight from the input, the ends from a
    small zero-bordered copy (``nn1d._spans``); forward and data gradient, against float64."""
    N, C, K, W, S, pad, d, G, threads = shape
    x, w, b = rand(N, C, W), rand(K, C // G, S), rand(K)
    pads = ops1d.padding1d(pad, S, d)
    p = nn1d._forward(x.shape, w.shape, b.shape, 1, pad, d, G, "relu")
    sp = nn1d._spans(p)
    assert sp is not None and sp.lo % nn1d.ALIGN_POSITIONS == 0
    assert sp.count == (pads[0] > 0) + (pads[1] > 0)
    kw = dict(padding=pad, dilation=d, groups=G, threads=threads, route="ncw")
    for _ in range(2):  # the second call on the same plan: the windows' borders stay zero
        x = rand(N, C, W)
        close(
            pd.nn.conv1d(x, w, b, activation="relu", **kw),
            ref_conv1d(x, w, b, 1, pads, d, G, relu=True),
        )
    dy = rand(N, K, p.Q)
    assert nn1d._spans(nn1d._data(dy.shape, w.shape, W, 1, pad, d, G)) is not None
    close(pd.nn.conv1d_backward_data(dy, w, W, **kw), ref_grads(x, w, dy, 1, pads, d, G)[0])


@pytest.mark.parametrize("W", [2048, 1013])  # rows of whole vectors, and odd ones
def test_interior_with_nontemporal_stores(monkeypatch, W):
    """A large output with a short reduction is stored non-temporally by the interior's calls
    (``nn1d._streams``; here for a small one: the caches' share lowered to 0). Where a row does not
    start on a vector, the calls' plain stores run instead (checked at the call)."""
    monkeypatch.setattr(tiles, "NT_SHARE", 0.0)
    N, C, K, S, d = 2, 9, 11, 3, 2
    x, w, b = rand(N, C, W), rand(K, C, S), rand(K)
    p = nn1d._forward(x.shape, w.shape, b.shape, 1, "same", d, 1, "relu")
    assert nn1d._streams(p)
    (entry,) = nn1d._nontemporal(p, 2).schedule.contractions
    assert entry.nontemporal
    monkeypatch.setattr(nn1d, "_plans", type(nn1d._plans)())  # plans built anew
    y = pd.nn.conv1d(x, w, b, padding="same", dilation=d, activation="relu", threads=2)
    close(y, ref_conv1d(x, w, b, 1, ops1d.padding1d("same", S, d), d, relu=True))
    assert not nn1d._streams(nn1d._forward(x.shape, (K, C, 51), None, 1, "same", 1, 1, None))


def test_small_interior_keeps_the_padded_copy():
    """An interior of less than ``MIN_INTERIOR`` of the output (a short input, wide filter):
    the whole input is copied into zero-bordered rows as before."""
    p = nn1d._forward((1, 4, 300), (4, 4, 51), None, 1, "same", 4, 1, None)
    assert nn1d._spans(p) is None
    assert nn1d._spans(nn1d._forward((1, 4, 300), (4, 4, 3), None, 2, 1, 1, 1, None)) is None


def test_route_is_the_cheaper_prediction():
    """Depthwise on a long row: NCW keeps positions on the vector columns, NWC would have one
    channel per call column; the cost model sees it."""
    p = nn1d._forward((1, 16, 4000), (16, 1, 9), None, 1, 4, 1, 16, None)
    costs = nn1d.route_costs(p, 1)
    assert costs["ncw"] < costs["nwc"]
    assert pd.nn.conv1d_route((1, 16, 4000), (16, 1, 9), 1, 4, 1, 16, threads=1) == "ncw"


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_against_torch_autograd():
    torch = pytest.importorskip("torch", reason="torch is an optional dependency")
    N, C, K, W, S, st, pad, d, G = 2, 9, 12, 211, 9, 2, 8, 2, 3
    x, w, b = rand(N, C, W), rand(K, C // G, S), rand(K)
    tx = torch.from_numpy(x).double().requires_grad_()
    tw = torch.from_numpy(w).double().requires_grad_()
    ty = torch.nn.functional.conv1d(
        tx, tw, torch.from_numpy(b).double(), stride=st, padding=pad, dilation=d, groups=G
    )
    dy = rand(*ty.shape)
    ty.backward(torch.from_numpy(dy).double())
    kw = dict(stride=st, padding=pad, dilation=d, groups=G, route="ncw")
    close(pd.nn.conv1d(x, w, b, **kw), ty.detach().numpy())
    close(pd.nn.conv1d_backward_data(dy, w, W, **kw), tx.grad.numpy())
    del kw["route"]
    close(pd.nn.conv1d_backward_weight(x, dy, S, **kw), tw.grad.numpy())
    # padding="same" with an even filter: the odd position on the right, as torch
    w4 = rand(C, C, 4)
    want = torch.nn.functional.conv1d(tx, torch.from_numpy(w4).double(), padding="same", dilation=3)
    close(pd.nn.conv1d(x, w4, padding="same", dilation=3, route="ncw"), want.detach().numpy())


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: pd.nn.conv1d(rand(1, 6, 20), rand(4, 4, 3)),
            r"x has 6 channels \(shape \(1, 6, 20\)\).*w \(shape \(4, 4, 3\)\)",
        ),
        (
            lambda: pd.nn.conv1d(rand(1, 6, 20), rand(5, 3, 3), groups=2),
            r"groups=2 does not divide the 5 filters of w \(shape \(5, 3, 3\)\)",
        ),
        (
            lambda: pd.nn.conv1d(rand(1, 4, 20), rand(4, 4, 3), rand(3)),
            r"bias must have shape \(4,\)",
        ),
        (
            lambda: pd.nn.conv1d(rand(1, 4, 20), rand(4, 4, 3), stride=2, padding="same"),
            "padding='same' needs stride 1",
        ),
        (
            lambda: pd.nn.conv1d(rand(1, 4, 5), rand(4, 4, 3), dilation=4),
            r"empty output .* width 5, filter width 3, dilation 4",
        ),
        (
            lambda: pd.nn.conv1d(rand(1, 4, 20), rand(4, 4, 3), padding=-1),
            "padding must be non-negative",
        ),
        (
            lambda: pd.nn.conv1d_backward_data(rand(1, 4, 17), rand(4, 2, 3), 20),
            r"dy \(shape \(1, 4, 17\)\) has 17 positions, but a width-20 input gives 18",
        ),
        (
            lambda: pd.nn.conv1d_backward_weight(rand(2, 4, 20), rand(1, 4, 18), 3),
            r"dy \(shape \(1, 4, 18\)\) has batch 1, x \(shape \(2, 4, 20\)\) 2",
        ),
    ],
)
def test_errors_name_the_construct_tensor_and_shape(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_stride_must_be_a_positive_int():
    with pytest.raises(ValueError, match="conv1d: stride must be a positive int, got 0"):
        pd.nn.conv1d(rand(1, 4, 20), rand(4, 4, 3), stride=0)
    with pytest.raises(TypeError, match="conv1d: dilation must be an int"):
        pd.nn.conv1d(rand(1, 4, 20), rand(4, 4, 3), dilation=1.5)


# ---------------------------------------------------------------- dilated conv2d


def _dilated(w, dh, dw):
    """The filter ``w`` with ``dh - 1`` (``dw - 1``) zero rows (columns) between its taps: a
    dilated convolution is the plain one with this filter."""
    K, C, R, S = w.shape
    out = np.zeros((K, C, dh * (R - 1) + 1, dw * (S - 1) + 1), w.dtype)
    out[:, :, ::dh, ::dw] = w
    return out


@pytest.mark.parametrize(
    "shape",
    [
        # N, C, K, H, W, R, S, stride, padding, dilation, route
        (1, 3, 5, 11, 13, 3, 3, 1, 2, 2, "rows"),
        (2, 5, 6, 12, 9, 3, 2, 1, 1, (2, 3), "direct"),
        (1, 4, 3, 13, 11, 3, 3, 2, 2, 2, "direct"),
        (1, 6, 6, 10, 10, 3, 3, 1, 2, 2, "blocked"),
    ],
)
def test_dilated_conv2d(shape):
    N, C, K, H, W, R, S, st, pad, dil, route = shape
    x, w, b = rand(N, C, H, W), rand(K, C, R, S), rand(K)
    dh, dw = (dil, dil) if isinstance(dil, int) else dil
    want = conv_ref(x, _dilated(w, dh, dw), b, st, pad, True)
    y = pd.nn.conv2d(x, w, b, st, pad, "relu", dil, route=route)
    close(y, want)
    if route == "direct":  # the DSL kernel itself
        kern = pd.ops.conv2d(N, C, K, H, W, R, S, stride=st, padding=pad, dilation=dil, bias=True)
        out = np.zeros(want.shape, np.float32)
        pd.compile(kern, threads=1)(out, x, w, b)
        close(out, conv_ref(x, _dilated(w, dh, dw), b, st, pad, False))
