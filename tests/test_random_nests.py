"""Hypothesis writes random affine loop nests; compiled code must match the reference.

Random bounds (affine, max/min, steps, a size ``T`` that shapes no tensor), offsets, strided
and quasi-affine indices (``2 * i``, ``//``, ``%``), every statement op (``=``, ``+=``, ``-=``,
``*=``, ``/=``), statement order and nest structure; extents 1, primes and odd sizes. Tensors are
L x L with L = 2 * N + 8 and T <= N + 2, so every generated access is in bounds by construction.
"""

from __future__ import annotations

import importlib.util
import itertools

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import polydl as pd

_counter = itertools.count()
VARS = "ijk"


@st.composite
def loop(draw, depth: int, outer: list[str]):
    v = VARS[depth]
    lo_choices = ["0", "1"] + [f"{o}" for o in outer] + [f"max(0, {o} - 2)" for o in outer]
    hi_choices = (
        ["N", "N + 2", "T"] + [f"{o} + 1" for o in outer] + [f"min(N, {o} + 3)" for o in outer]
    )
    lo = draw(st.sampled_from(lo_choices))
    hi = draw(st.sampled_from(hi_choices))
    step = draw(st.sampled_from([1, 1, 1, 2, 3]))
    rng = f"range({lo}, {hi})" if step == 1 else f"range({lo}, {hi}, {step})"
    return f"for {v} in {rng}:"


@st.composite
def index(draw, live: list[str]):
    v = draw(st.sampled_from(live))
    kind = draw(st.sampled_from(["plain", "plain", "offset", "stride", "div", "mod", "const"]))
    c = draw(st.integers(0, 4))
    return {
        "plain": v,
        "offset": f"{v} + {c}",
        "stride": f"2 * {v} + {c}",
        "div": f"({v} + {c}) // 2",
        "mod": f"({v} + {c}) % 3",
        "const": str(c),
    }[kind]


@st.composite
def statement(draw, live: list[str]):
    tensors = ["X", "Y", "Z"]
    tgt = draw(st.sampled_from(tensors))
    op = draw(st.sampled_from(["=", "+=", "-=", "*=", "/="]))
    n_reads = draw(st.integers(0, 2))
    terms = []
    for _ in range(n_reads):
        t = draw(st.sampled_from(tensors))
        terms.append(f"{t}[{draw(index(live))}, {draw(index(live))}]")
    const = draw(st.sampled_from(["0.5", "0.25", "1.0", "s"]))
    if op == "*=":
        expr = "0.75"  # keep products bounded
    elif op == "/=":  # a divisor in [1.25, 2.75): quotients stay bounded
        expr = f"1.25 + 0.5 * {terms[0]}" if terms else "1.25"
    elif terms:
        joiner = draw(st.sampled_from([" + ", " - ", " * "]))
        expr = (
            f"{const} * ({joiner.join(terms)})"
            if joiner == " * "
            else f"{const} + {joiner.join(terms)}"
        )
        expr = f"{expr} * 0.5"
    else:
        expr = const
    return f"{tgt}[{draw(index(live))}, {draw(index(live))}] {op} {expr}"


@st.composite
def nest(draw, depth: int = 0, outer: tuple[str, ...] = ()):
    lines = [draw(loop(depth, list(outer)))]
    live = [*outer, VARS[depth]]
    body: list[str] = []
    for _ in range(draw(st.integers(1, 2))):
        if depth < 2 and draw(st.booleans()):
            body += draw(nest(depth + 1, tuple(live)))
        else:
            body.append(draw(statement(live)))
    return lines + ["    " + b for b in body]


@st.composite
def kernel_source(draw):
    body: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        body += draw(nest())
    name = f"rand{next(_counter)}"
    head = (
        f'def {name}(X: pd.f32["L", "L"], Y: pd.f32["L", "L"], Z: pd.f32["L", "L"], '
        'D: pd.f32["N"], s: pd.f32):'
    )
    return name, "\n".join(
        ["import polydl as pd", "", "", "@pd.kernel", head] + ["    " + b for b in body]
    ) + "\n"


def load(tmp_path, name: str, src: str):
    path = tmp_path / f"{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kernel_source(),
    st.sampled_from([1, 2, 3, 5, 7, 9]),
    st.sampled_from([1, 2]),
    st.integers(1, 11),
)
def test_random_nest_matches_reference(tmp_path, source, n, threads, t):
    name, src = source
    kern = load(tmp_path, name, src)
    rng = np.random.default_rng(n)
    t = min(t, n + 2)
    shape = (2 * n + 8, 2 * n + 8)
    args = {t: rng.uniform(0.5, 1.5, shape).astype(np.float32) for t in "XYZ"}
    mine = {k: v.copy() for k, v in args.items()}
    ref = {k: v.copy() for k, v in args.items()}
    d = np.zeros(n, np.float32)  # only binds N
    sizes = {"T": t} if "T" in kern.ir.sizes else {}
    pd.compile(kern, N=n, L=2 * n + 8, threads=threads, **sizes)(**mine, D=d, s=0.5)
    kern.reference(**ref, D=d, s=0.5, **sizes)
    for t in "XYZ":
        np.testing.assert_allclose(mine[t], ref[t], rtol=2e-4, atol=2e-4, err_msg=f"{t}\n{src}")
