"""A grid of relational programs drawn by Hypothesis (``workbench.grid``), each differentiated by
the RJP rules and by ``jax.vjp`` of its dense twin.

A program is a list of operator specs (select / join / aggregate over earlier results). It is
interpreted twice: relationally, with ``wb.select`` / ``wb.join`` / ``wb.aggregate`` over sparse
relations, and densely, over arrays with one axis per key, zeros for absent tuples and a boolean
mask of the tuples present. The dense twin applies every kernel under ``jnp.where(mask, ...)``,
since kernels like ``exp`` map an absent (zero) value to a non-zero one. Outputs and the gradient
of every input must agree to rtol 1e-9 in float64.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import workbench as wb
from workbench.grid import (VSHAPES, Agg, EmptyMean, Input, Jn, Meta, Sel, draw_aggregate,
                            draw_join, draw_join_keys, draw_select, input_meta, join_kernels_for,
                            make_inputs, meta_of, metas_of, programs, run_dense, run_relational)

jax.config.update("jax_enable_x64", True)

RTOL, ATOL = 1e-9, 1e-12


def present(R):
    """The set of keys present in relation R."""
    if not R.keys:
        return {()} if len(R) else set()
    return set(R.to_frame().select(R.keys).iter_rows())


def close(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert np.all(np.isfinite(want)), f"{what}: the twin is not finite"
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=what)


def check_program(spec, in_metas, seed, density, scalar=False):
    """Run ``spec`` relationally and densely; compare the output and every input's gradient."""
    metas = metas_of(spec, in_metas)
    arrays, masks, rels = make_inputs(in_metas, seed, density)
    if scalar:  # a scalar loss: sum of squares of the output, differentiated with value_and_grad
        last, m = len(spec) - 1, metas[-1]
        spec = list(spec) + [Sel(last, (), None, "sum_sq"), Agg(last + 1, (), "sum")]
        metas = metas_of(spec, in_metas)

    def twin(*xs):  # dense arrays -> (values, mask of the tuples present)
        d = run_dense(spec, metas, masks, xs)
        return d.vals, d.mask

    try:
        want_out, twin_vjp, want_mask = jax.vjp(twin, *[jnp.asarray(a) for a in arrays], has_aux=True)
    except EmptyMean:
        assume(False)
    f = lambda *rs: run_relational(spec, rs)  # noqa: E731
    if scalar:
        value, grads = wb.value_and_grad(f, argnums=tuple(range(len(rels))))(*rels)
        close(value.to_tensor(), want_out, "loss")
        want_grads = twin_vjp(jnp.ones_like(want_out))
    else:
        out, pullback = wb.vjp(f, *rels)
        assert out.keys == metas[-1].keys and out.extents == metas[-1].extents
        assert out.value_shape == metas[-1].vshape
        close(out.to_tensor(), want_out, "output")
        want_keys = {tuple(int(i) for i in ix) for ix in zip(*np.nonzero(want_mask))} if out.keys \
            else ({()} if want_mask else set())
        assert present(out) == want_keys, "output tuples differ from the twin's"
        rng = np.random.default_rng(seed + 1)
        table = out.table()
        ct_vals = rng.normal(size=table.values.shape)
        if out.keys:
            df = table.keys.with_columns(pl.Series("v", ct_vals))
            ct = wb.from_frame(df, keys=out.keys, value="v", extents=out.extents, dtype="float64")
        else:
            ct = wb.from_tensor(rng.normal(size=out.value_shape))  # even for an empty output
        grads = pullback(ct)
        want_grads = twin_vjp(jnp.asarray(ct.to_tensor()))
    assert len(grads) == len(rels)
    for i, (g, r, w) in enumerate(zip(grads, rels, want_grads)):
        assert g.keys == r.keys and g.extents == r.extents and g.value_shape == r.value_shape, \
            f"grad {i}: schema {g.schema} != primal {r.schema}"
        close(g.to_tensor(), w, f"grad of input {i}")
        if r.keys:  # no gradient tuple where the primal has none
            assert present(g) <= present(r), f"grad {i} has tuples the primal lacks"
        else:
            assert len(g) == 1
    check_compiled(f, rels, scalar, want_out, want_grads, None if scalar else ct)


def check_compiled(f, rels, scalar, want_out, want_grads, ct):
    """The same program compiled (``wb.jit``): one XLA program gives the twin's output and
    gradients. A keyed output is differentiated through <ct, f(rels)>, whose gradient is the
    pullback of the cotangent ``ct``."""
    argnums = tuple(range(len(rels)))
    if scalar:
        value, grads = wb.jit(wb.value_and_grad(f, argnums=argnums))(*rels)
        close(value.to_tensor(), want_out, "compiled loss")
    else:
        close(wb.jit(f)(*rels).to_tensor(), want_out, "compiled output")

        def inner(*rs):
            out = f(*rs)
            paired = wb.join(out, ct, on={k: k for k in out.keys}, kernel=lambda a, b: jnp.sum(a * b))
            return wb.aggregate(paired, by=())

        _, grads = wb.jit(wb.value_and_grad(inner, argnums=argnums))(*rels)
    for i, (g, r, w) in enumerate(zip(grads, rels, want_grads)):
        assert g.keys == r.keys and g.value_shape == r.value_shape
        close(g.to_tensor(), w, f"compiled grad of input {i}")


SETTINGS = dict(deadline=None, derandomize=True, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.data_too_large])
seeds = st.integers(0, 2**31 - 1)
densities = st.sampled_from([0.3, 0.6, 1.0])


# ---- select ------------------------------------------------------------------------------------

@settings(max_examples=40, **SETTINGS)
@given(data=st.data(), seed=seeds, density=densities)
def test_select(data, seed, density):
    """Predicates, key permutations, dropped keys fixed by a predicate, (shape-changing) kernels."""
    draw = data.draw
    m = draw(input_meta(nkeys=draw(st.integers(1, 3))))
    spec = [Input(0), draw_select(draw, m, 0)]
    check_program(spec, [m], seed, density, scalar=draw(st.integers(0, 4)) == 0)


@pytest.mark.parametrize("kind", ["permute", "drop", "kernel_shape", "nonlinear"])
@settings(max_examples=5, **SETTINGS)
@given(data=st.data(), seed=seeds, density=densities)
def test_select_forms(kind, data, seed, density):
    """Each select form on its own, so every one is drawn whatever the grid above draws."""
    draw = data.draw
    m = draw(input_meta(nkeys=2 if kind != "kernel_shape" else 1,
                        vshape=(2,) if kind == "kernel_shape" else None))
    if kind == "permute":
        sel = Sel(0, (), (("b", m.keys[1]), ("a", m.keys[0])), None)
    elif kind == "drop":
        k = m.keys[0]
        sel = Sel(0, ((k, "eq", draw(st.integers(0, m.extents[0] - 1))),), ((m.keys[1], m.keys[1]),),
                  "exp")
    elif kind == "kernel_shape":
        sel = Sel(0, (), None, draw(st.sampled_from(["sum_sq", "outer"])))
    else:
        sel = Sel(0, ((m.keys[1], "le", m.extents[1] // 2),), None, draw(st.sampled_from(["exp", "softplus"])))
    check_program([Input(0), sel], [m], seed, density)


# ---- join --------------------------------------------------------------------------------------

JOIN_KINDS = ["one_to_one", "one_to_many", "many_to_many", "cross_keyless", "keyless_left",
              "cross_keyed", "self_join", "self_join_same_key", "multi_key"]


def join_case(draw, kind):
    """(input metas, spec) for one join of the given kind."""
    vs = lambda: draw(st.sampled_from(VSHAPES))  # noqa: E731
    if kind == "one_to_one":
        L = draw(input_meta(nkeys=1, names=("i",), vshape=vs()))
        R = draw(input_meta(nkeys=1, names=("x",), vshape=vs()))
        on = (("i", "x"),)
    elif kind == "one_to_many":
        L = draw(input_meta(nkeys=1, names=("i",), vshape=vs()))
        R = draw(input_meta(nkeys=2, names=("x", "y"), vshape=vs()))
        on = (("i", "x"),)
        if draw(st.booleans()):  # the many side on the left
            L, R, on = R, L, (("x", "i"),)
    elif kind == "many_to_many":
        L = draw(input_meta(nkeys=2, names=("i", "j"), vshape=vs()))
        R = draw(input_meta(nkeys=2, names=("j", "k"), vshape=vs()))
        on = (("j", "j"),)
    elif kind == "cross_keyless":
        L = draw(input_meta(nkeys=draw(st.integers(1, 2)), vshape=vs()))
        R = draw(input_meta(nkeys=0, vshape=vs()))
        on = ()
    elif kind == "keyless_left":
        L = draw(input_meta(nkeys=0, vshape=vs()))
        R = draw(input_meta(nkeys=draw(st.integers(1, 2)), vshape=vs()))
        on = ()
    elif kind == "cross_keyed":
        L = draw(input_meta(nkeys=1, names=("i",), vshape=vs()))
        R = draw(input_meta(nkeys=1, names=("j",), vshape=vs()))
        on = ()
    elif kind in ("self_join", "self_join_same_key"):
        n = draw(st.integers(1, 3))
        X = draw(input_meta(nkeys=2, names=("i", "j"), vshape=vs(), max_extent=n))
        X = Meta(X.keys, (n, n), X.vshape)  # square: A(i, j) with A(j, k)
        on = (("j", "i"),) if kind == "self_join" else (("i", "i"),)
        kernels = join_kernels_for(X.vshape, X.vshape)
        jn = Jn(0, 0, on, draw_join_keys(draw, X, X, on), draw(st.sampled_from(kernels)))
        return [X], [Input(0), jn]
    else:  # multi_key
        L = draw(input_meta(nkeys=3, names=("i", "j", "k"), vshape=vs(), max_extent=3))
        R = draw(input_meta(nkeys=2, names=("a", "b"), vshape=vs(), max_extent=3))
        on = (("i", "a"), ("k", "b")) if draw(st.booleans()) else (("j", "b"), ("i", "a"))
    jn = draw_join(draw, L, R, 0, 1, on)
    assume(jn is not None)
    return [L, R], [Input(0), Input(1), jn]


@settings(max_examples=70, **SETTINGS)
@given(data=st.data(), seed=seeds, density=densities)
def test_join(data, seed, density):
    """One join of every kind, optionally followed by an aggregate or a scalar loss."""
    draw = data.draw
    kind = draw(st.sampled_from(JOIN_KINDS))
    metas, spec = join_case(draw, kind)
    if draw(st.booleans()):
        spec.append(draw_aggregate(draw, metas_of(spec, metas)[-1], len(spec) - 1))
    check_program(spec, metas, seed, density, scalar=draw(st.integers(0, 3)) == 0)


# ---- aggregate ---------------------------------------------------------------------------------

@settings(max_examples=35, **SETTINGS)
@given(data=st.data(), seed=seeds, density=densities)
def test_aggregate(data, seed, density):
    """Sum and mean over every subset of the keys (none, some, all, in any order)."""
    draw = data.draw
    m = draw(input_meta(nkeys=draw(st.integers(0, 3))))
    spec = [Input(0), draw_aggregate(draw, m, 0)]
    check_program(spec, [m], seed, density, scalar=draw(st.integers(0, 4)) == 0)


# ---- chains and DAGs ---------------------------------------------------------------------------

@settings(max_examples=60, **SETTINGS)
@given(prog=programs(), seed=seeds, density=densities, scalar=st.booleans())
def test_programs(prog, seed, density, scalar):
    inputs, spec = prog
    check_program(spec, inputs, seed, density, scalar=scalar)


@settings(max_examples=20, **SETTINGS)
@given(data=st.data(), seed=seeds, density=densities)
def test_diamond(data, seed, density):
    """X feeds two branches (selects, possibly aggregated) that are joined back on their keys."""
    draw = data.draw
    m = draw(input_meta(nkeys=draw(st.integers(1, 2))))
    a = draw_select(draw, m, 0, drop=False, permute=False)
    b = draw_select(draw, m, 0, drop=False, permute=False)
    a = Sel(0, a.pred, None, a.kernel)
    b = Sel(0, b.pred, None, b.kernel)
    spec = [Input(0), a, b]
    ma, mb = meta_of(a, [m], [m]), meta_of(b, [m], [m])
    assume(join_kernels_for(ma.vshape, mb.vshape))
    jn = draw_join(draw, ma, mb, 1, 2, on=tuple(zip(m.keys, m.keys)))
    spec.append(jn)
    if draw(st.booleans()):
        spec.append(draw_aggregate(draw, metas_of(spec, [m])[-1], 3))
    check_program(spec, [m], seed, density, scalar=draw(st.booleans()))

