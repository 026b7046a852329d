"""Conv -> conv fusion (transform/fuse_contractions.py): two contraction nests, the second
multiplying the first's output, computed image by image under their batch loop with the
intermediate in a per-thread scratch buffer of one image. Fused against unfused and NumPy on
odd sizes; the cost model's verdicts (a small-cache target where fusion pays, the host where it
does not at these sizes); an illegal pair refused with the dependence it would reverse."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import polydl as pd
from polydl.target import resolve

rng = np.random.default_rng(12)


def r(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def small_caches():
    """The host with caches of 512 B, 2.25 KiB and 64 KiB: a few-KiB intermediate then lives in
    L3 between the nests and one image of it in L2, so that fusion pays at test sizes."""
    h = resolve(None)
    sizes = (512, 2304, 65536)
    caches = tuple(
        dataclasses.replace(c, size_bytes=b) for c, b in zip(h.caches, sizes, strict=True)
    )
    return dataclasses.replace(h, caches=caches)


def conv_ref(x, w, b=None, padding=0):
    """NCHW cross-correlation in float64."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (padding,) * 2, (padding,) * 2))
    K, C, R, S = w.shape
    N, _, H, W = x.shape
    P, Q = H - R + 1, W - S + 1
    out = np.zeros((N, K, P, Q))
    for i in range(R):
        for j in range(S):
            out += np.einsum("nchw,kc->nkhw", x[:, :, i : i + P, j : j + Q], w[:, :, i, j])
    return out if b is None else out + b[None, :, None, None]


def chain(N, C, K1, K2, H, W, first=(1, 0), second=(3, 1)):
    """conv(R1, pad1) + bias -> relu -> conv(R2, pad2) -> relu, as a pd.graph, and NumPy's."""
    (r1, p1), (r2, p2) = first, second
    w1, b1, w2 = r(K1, C, r1, r1, scale=0.3), r(K1), r(K2, K1, r2, r2, scale=0.2)
    g = pd.graph.Graph("convconv")
    x = g.input("x", (N, C, H, W))
    y = g.relu(g.conv2d(x, w1, b1, padding=p1))
    g.output(g.relu(g.conv2d(y, w2, padding=p2)))

    def ref(xa):
        return np.maximum(conv_ref(np.maximum(conv_ref(xa, w1, b1, p1), 0), w2, None, p2), 0)

    return g, ref


def verdicts(f) -> list[str]:
    return [ln for ln in f.show("fusion").splitlines() if "at depth 1" in ln]


def per_thread(f) -> list[str]:
    return [t.name for t in f.kernel.kernel.temps if t.per_thread]


@pytest.mark.parametrize(
    "N,C,K1,K2,H,W,threads",
    [(3, 5, 7, 9, 7, 11, 1), (4, 3, 6, 5, 13, 5, 2), (4, 7, 9, 4, 5, 7, 2)],
)
def test_conv1x1_then_conv3x3_fused_image_by_image(N, C, K1, K2, H, W, threads):
    g, ref = chain(N, C, K1, K2, H, W)
    f = g.compile(threads=threads, target=small_caches())
    (line,) = verdicts(f)
    assert ": fused at depth 1" in line and "per image" in line
    assert per_thread(f) == ["t0_conv2d"]  # the intermediate holds one image per thread
    tmp = f.kernel.kernel.temps[0]
    assert f.kernel.kernel.shape_of(tmp.name) == (1, K1, H, W)
    # both contractions still BRGEMM calls, under one loop over the images
    micro = [s for s in f.kernel.kernel.statements if s.micro is not None]
    assert {s.micro.c for s in micro} == {"t0_conv2d", "out0"}
    assert f.kernel.show("loops").count(f"for (int c1 = 0; c1 <= {N - 1}; c1++)") == 1
    x = r(N, C, H, W)
    got = f(x)
    np.testing.assert_allclose(got, ref(x), rtol=2e-4, atol=2e-4)
    u = g.compile(threads=threads, target=small_caches(), fuse=False)
    np.testing.assert_allclose(u(x), got, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_conv3x3_then_conv1x1_fused(threads):
    N, C, K1, K2, H, W = 4, 3, 5, 11, 7, 13
    g, ref = chain(N, C, K1, K2, H, W, first=(3, 1), second=(1, 0))
    f = g.compile(threads=threads, target=small_caches())
    (line,) = verdicts(f)
    assert ": fused at depth 1" in line
    assert per_thread(f) == ["t0_conv2d"]
    x = r(N, C, H, W)
    np.testing.assert_allclose(f(x), ref(x), rtol=2e-4, atol=2e-4)


def test_host_caches_hold_a_small_intermediate_so_nothing_fuses():
    """On the host a 7x7 intermediate of 8 channels fits L1 or L2 whole: no cache level to
    gain, the cost model says so and the nests stay apart."""
    g, ref = chain(2, 8, 8, 8, 7, 7)
    f = g.compile(threads=1)
    (line,) = verdicts(f)
    assert ": unprofitable at depth 1" in line and "no cache level saved" in line
    assert not per_thread(f)
    x = r(2, 8, 7, 7)
    np.testing.assert_allclose(f(x), ref(x), rtol=2e-4, atol=2e-4)


def test_one_image_is_tiled_by_rows_instead():
    """One image: the pair is offered block by block of rows (tests/test_fuse_rows.py), where
    this 1x1 -> 3x3 pair's halo is refused."""
    g, ref = chain(1, 5, 7, 9, 7, 11)
    f = g.compile(threads=1, target=small_caches())
    (line,) = verdicts(f)
    assert "illegal" in line and "halo" in line and "one iteration" not in line
    x = r(1, 5, 7, 11)
    np.testing.assert_allclose(f(x), ref(x), rtol=2e-4, atol=2e-4)


def test_fuse_false_disables_it():
    g, ref = chain(3, 5, 7, 9, 7, 11)
    f = g.compile(threads=1, target=small_caches(), fuse=False)
    assert len(f.parts) == 4  # one kernel per operator: no pair to fuse
    assert not any("fused" in ck.show("fusion") for ck, *_ in f.parts)
    assert not any(per_thread_of(ck) for ck, *_ in f.parts)
    x = r(3, 5, 7, 11)
    np.testing.assert_allclose(f(x), ref(x), rtol=2e-4, atol=2e-4)


def per_thread_of(ck) -> list[str]:
    return [t.name for t in ck.kernel.temps if t.per_thread]


def blocked_pair(N, CB, CV, KB1, KV1, KB2, KV2, P, Q, flip=False):
    """A blocked NCHWc 1x1 conv writing the interior of a zero-bordered ``T`` (an argument: the
    caller gives the border) and a 3x3 conv reading it, written by hand in the DSL; ``flip``:
    the consumer reads image ``N - 1 - n`` (fusing at the image loop would reverse that)."""
    Pp, Qp = P + 2, Q + 2

    @pd.kernel
    def blocked(
        O: pd.f32[N, KB2, P, Q, KV2],
        T: pd.f32[N, KB1, Pp, Qp, KV1],
        X: pd.f32[N, CB, P, Q, CV],
        W1: pd.f32[KB1, CB, CV, KV1],
        W2: pd.f32[KB2, KB1, 3, 3, KV1, KV2],
    ):
        for n in range(N):
            for kb in range(KB1):
                for h in range(P):
                    for w in range(Q):
                        for kv in range(KV1):
                            T[n, kb, h + 1, w + 1, kv] = 0.0
                    for cb in range(CB):
                        for w in range(Q):
                            for cv in range(CV):
                                for kv in range(KV1):
                                    T[n, kb, h + 1, w + 1, kv] += (
                                        X[n, cb, h, w, cv] * W1[kb, cb, cv, kv]
                                    )
        for n in range(N):
            for kb in range(KB2):
                for p in range(P):
                    for q in range(Q):
                        for kv in range(KV2):
                            O[n, kb, p, q, kv] = 0.0
                    for cb in range(KB1):
                        for u in range(3):
                            for v in range(3):
                                for q in range(Q):
                                    for cv in range(KV1):
                                        for kv in range(KV2):
                                            if flip:
                                                O[n, kb, p, q, kv] += (
                                                    T[N - 1 - n, cb, p + u, q + v, cv]
                                                    * W2[kb, cb, u, v, cv, kv]
                                                )
                                            else:
                                                O[n, kb, p, q, kv] += (
                                                    T[n, cb, p + u, q + v, cv]
                                                    * W2[kb, cb, u, v, cv, kv]
                                                )

    return blocked


def blocked_ref(X, W1, W2, N, P, Q, flip=False):
    x = X.transpose(0, 1, 4, 2, 3).reshape(N, -1, P, Q)  # NCHW
    KB1, CB, CV, KV1 = W1.shape
    w1 = W1.transpose(0, 3, 1, 2).reshape(KB1 * KV1, CB * CV)[:, :, None, None]
    KB2, _, R, S, _, KV2 = W2.shape
    w2 = W2.transpose(0, 5, 1, 4, 2, 3).reshape(KB2 * KV2, KB1 * KV1, R, S)
    t = conv_ref(x, w1)
    if flip:
        t = t[::-1]
    o = conv_ref(t, w2, None, 1)
    return o.reshape(N, KB2, KV2, P, Q).transpose(0, 1, 3, 4, 2)


def test_dsl_blocked_pair_with_an_argument_intermediate_fuses_in_place():
    N, CB, CV, KB1, KV1, KB2, KV2, P, Q = 3, 1, 5, 2, 3, 1, 7, 5, 7
    k = blocked_pair(N, CB, CV, KB1, KV1, KB2, KV2, P, Q)
    f = pd.compile(k, threads=1, target=small_caches())
    (line,) = [ln for ln in f.show("fusion").splitlines() if "depth 1" in ln]
    assert ": fused at depth 1" in line
    assert not per_thread_of(f)  # T is the caller's: written whole, in place
    X, W1, W2 = r(N, CB, P, Q, CV), r(KB1, CB, CV, KV1), r(KB2, KB1, 3, 3, KV1, KV2)
    outs = []
    for fuse in (True, False):
        g = f if fuse else pd.compile(k, threads=1, target=small_caches(), fuse=False)
        O, T = (
            np.zeros((N, KB2, P, Q, KV2), np.float32),
            np.zeros((N, KB1, P + 2, Q + 2, KV1), np.float32),
        )
        g(O, T, X, W1, W2)
        outs.append(O)
    np.testing.assert_allclose(outs[0], blocked_ref(X, W1, W2, N, P, Q), rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_fusion_that_would_reverse_a_dependence_is_refused():
    N, CB, CV, KB1, KV1, KB2, KV2, P, Q = 3, 1, 5, 2, 3, 1, 7, 5, 7
    k = blocked_pair(N, CB, CV, KB1, KV1, KB2, KV2, P, Q, flip=True)
    f = pd.compile(k, threads=1, target=small_caches())
    (line,) = [ln for ln in f.show("fusion").splitlines() if "T:" in ln]
    assert ": illegal" in line and "T" in line
    X, W1, W2 = r(N, CB, P, Q, CV), r(KB1, CB, CV, KV1), r(KB2, KB1, 3, 3, KV1, KV2)
    O, T = (
        np.zeros((N, KB2, P, Q, KV2), np.float32),
        np.zeros((N, KB1, P + 2, Q + 2, KV1), np.float32),
    )
    f(O, T, X, W1, W2)
    want = blocked_ref(X, W1, W2, N, P, Q, flip=True)
    np.testing.assert_allclose(O, want, rtol=2e-4, atol=2e-4)
