"""A grid of relational programs drawn by Hypothesis, each differentiated by the RJP rules and
by ``jax.vjp`` of its dense twin.

A program is a list of operator specs (select / join / aggregate over earlier results). It is
interpreted twice: relationally, with ``wb.select`` / ``wb.join`` / ``wb.aggregate`` over sparse
relations, and densely, over arrays with one axis per key, zeros for absent tuples and a boolean
mask of the tuples present. The dense twin applies every kernel under ``jnp.where(mask, ...)``,
since kernels like ``exp`` map an absent (zero) value to a non-zero one. Outputs and the gradient
of every input must agree to rtol 1e-9 in float64.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import workbench as wb

jax.config.update("jax_enable_x64", True)

RTOL, ATOL = 1e-9, 1e-12


# ---- kernels (module level: each compiles once per shape) -------------------------------------

def _square(v):
    return v * v


def _tanh_scale(v):
    return jnp.tanh(1.5 * v)


def _sum_sq(v):
    return jnp.sum(v ** 2)


def _outer(v):
    return jnp.outer(v, v + 1.0)


def _softplus(v):
    return jnp.logaddexp(0.0, v)


SELECT_KERNELS = {
    "exp": jnp.exp, "sin": jnp.sin, "square": _square, "tanh_scale": _tanh_scale,
    "softplus": _softplus, "sum_sq": _sum_sq, "outer": _outer,
}


def _mul(a, b):
    return a * b


def _tanh_mul(a, b):
    return jnp.tanh(a) * b


def _add_exp(a, b):
    return a + jnp.exp(b)


def _sq_diff(a, b):
    return (a - b) ** 2


def _dot(a, b):
    return jnp.dot(a, b)


def _sin_dot(a, b):
    return jnp.sin(jnp.sum(a) * b)


JOIN_KERNELS = {
    "mul": _mul, "tanh_mul": _tanh_mul, "add_exp": _add_exp, "sq_diff": _sq_diff, "dot": _dot,
    "sin_dot": _sin_dot,
}


@functools.lru_cache(maxsize=None)
def _out_shape(fn, *shapes):
    """The kernel's value shape on these argument shapes, or None if it does not apply."""
    try:
        out = jax.eval_shape(fn, *[jax.ShapeDtypeStruct(s, jnp.float64) for s in shapes])
    except Exception:
        return None
    return tuple(out.shape)


# ---- program specs ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Meta:
    keys: tuple[str, ...]
    extents: tuple[int, ...]
    vshape: tuple[int, ...]

    def extent(self, k):
        return self.extents[self.keys.index(k)]


@dataclass(frozen=True)
class Input:
    i: int


@dataclass(frozen=True)
class Sel:
    src: int
    pred: tuple  # ((key, op, const), ...), op in "le" | "ne" | "eq" | "ge"
    keys: tuple | None  # ((out, in), ...) or None
    kernel: str | None


@dataclass(frozen=True)
class Jn:
    left: int
    right: int
    on: tuple  # ((left key, right key), ...)
    keys: tuple  # ((out, side, key), ...)
    kernel: str


@dataclass(frozen=True)
class Agg:
    src: int
    by: tuple
    kind: str


class EmptyMean(Exception):
    """The mean over no tuples is undefined; such a program is not drawn."""


# ---- the relational interpreter ----------------------------------------------------------------

_PRED_OPS = {"le": lambda c, x: c <= x, "ne": lambda c, x: c != x, "eq": lambda c, x: c == x,
             "ge": lambda c, x: c >= x}


def _pred_expr(pred):
    expr = None
    for k, op, c in pred:
        e = _PRED_OPS[op](pl.col(k), c)
        expr = e if expr is None else expr & e
    return expr


def run_relational(spec, rels):
    env = []
    for n in spec:
        if isinstance(n, Input):
            env.append(rels[n.i])
        elif isinstance(n, Sel):
            env.append(wb.select(env[n.src], kernel=SELECT_KERNELS[n.kernel] if n.kernel else None,
                                 pred=_pred_expr(n.pred) if n.pred else None,
                                 keys=dict(n.keys) if n.keys is not None else None))
        elif isinstance(n, Jn):
            env.append(wb.join(env[n.left], env[n.right], on=dict(n.on),
                               keys={o: f"{s}.{k}" for o, s, k in n.keys},
                               kernel=JOIN_KERNELS[n.kernel]))
        else:
            env.append(wb.aggregate(env[n.src], by=n.by, kernel=n.kind))
    return env[-1]


# ---- the dense twin ------------------------------------------------------------------------------

@dataclass
class Dense:
    vals: jax.Array  # extents + vshape, zero where absent
    mask: np.ndarray  # extents, bool
    meta: Meta


def _expand(mask, vshape):
    return mask.reshape(mask.shape + (1,) * len(vshape))


def _per_tuple(fn, *arrays, nkeys):
    """Apply ``fn`` to every key position of equally keyed arrays (key axes first)."""
    ext = arrays[0].shape[:nkeys]
    n = int(np.prod(ext, dtype=np.int64))
    flat = [a.reshape((n,) + a.shape[nkeys:]) for a in arrays]
    shape = _out_shape(fn, *[a.shape[nkeys:] for a in arrays])
    out = jax.vmap(fn)(*flat) if n else jnp.zeros((0,) + shape, jnp.float64)
    return out.reshape(ext + shape)


def _dense_select(d: Dense, n: Sel, meta: Meta) -> Dense:
    keys, vals, mask = d.meta.keys, d.vals, d.mask.copy()
    grids = np.indices(d.meta.extents, dtype=np.int64) if keys else None
    for k, op, c in n.pred:
        mask &= _PRED_OPS[op](grids[keys.index(k)], c)
    if n.kernel is not None:
        vals = _per_tuple(SELECT_KERNELS[n.kernel], vals, nkeys=len(keys))
    vs = vals.shape[len(keys):]
    vals = jnp.where(_expand(mask, vs), vals, 0.0)
    if n.keys is not None:
        # a dropped key is fixed by an "eq" predicate: take that slice (mask keeps the rest)
        ins = [i for _, i in n.keys]
        fixed = {k: c for k, op, c in n.pred if op == "eq"}
        index = tuple(fixed[k] if k not in ins else slice(None) for k in keys)
        vals, mask = vals[index], mask[index]
        kept = [k for k in keys if k in ins]
        perm = [kept.index(i) for i in ins]
        vals = jnp.transpose(vals, perm + list(range(len(perm), vals.ndim)))
        mask = np.transpose(mask, perm)
    return Dense(vals, mask, meta)


def _dense_join(L: Dense, R: Dense, n: Jn, meta: Meta) -> Dense:
    lk, rk = L.meta.keys, R.meta.keys
    partner = {r: l for l, r in n.on}
    # pair space: left keys, then right keys not joined on; a joined class spans min(extents)
    pair = list(lk) + [("right", k) for k in rk if k not in partner]
    ext = [L.meta.extent(k) for k in lk] + [R.meta.extent(k) for k in rk if k not in partner]
    for l, r in n.on:
        ext[lk.index(l)] = min(ext[lk.index(l)], R.meta.extent(r))

    def lift(d: Dense, axis_of):
        """d's arrays over the pair space (size-1 axes where d has no key)."""
        vs = d.meta.vshape
        idx = tuple(slice(0, ext[axis_of(k)]) for k in d.meta.keys)
        vals, mask = d.vals[idx], d.mask[idx]
        pos = [axis_of(k) for k in d.meta.keys]
        order = sorted(range(len(pos)), key=lambda a: pos[a])
        vals = jnp.transpose(vals, order + list(range(len(pos), vals.ndim)))
        mask = np.transpose(mask, order)
        shape = [1] * len(pair)
        for a in order:
            shape[pos[a]] = ext[pos[a]]
        vals = jnp.broadcast_to(vals.reshape(tuple(shape) + vs), tuple(ext) + vs)
        mask = np.broadcast_to(mask.reshape(shape), ext)
        return vals, mask

    lv, lm = lift(L, lk.index)
    rv, rm = lift(R, lambda k: lk.index(partner[k]) if k in partner else pair.index(("right", k)))
    mask = lm & rm
    vals = _per_tuple(JOIN_KERNELS[n.kernel], lv, rv, nkeys=len(pair))
    vs = vals.shape[len(pair):]
    vals = jnp.where(_expand(mask, vs), vals, 0.0)
    # output keys: one per pair axis, in the order of n.keys, padded to the source's extent
    axes = [lk.index(k) if s == "left" else
            (lk.index(partner[k]) if k in partner else pair.index(("right", k))) for _, s, k in n.keys]
    assert sorted(axes) == list(range(len(pair)))
    vals = jnp.transpose(vals, axes + list(range(len(pair), vals.ndim)))
    mask = np.transpose(mask, axes)
    if pair:
        pad = [(0, e - mask.shape[a]) for a, e in enumerate(meta.extents)]
        vals = jnp.pad(vals, pad + [(0, 0)] * len(vs))
        mask = np.pad(mask, pad)
    return Dense(vals, mask, meta)


def _dense_aggregate(d: Dense, n: Agg, meta: Meta) -> Dense:
    keys = d.meta.keys
    drop = tuple(a for a, k in enumerate(keys) if k not in n.by)
    vals, count = jnp.sum(d.vals, axis=drop), d.mask.sum(axis=drop)
    kept = [k for k in keys if k in n.by]
    perm = [kept.index(b) for b in n.by]
    vals = jnp.transpose(vals, perm + list(range(len(perm), vals.ndim)))
    count = np.transpose(count, perm)
    if n.kind == "mean":
        if not n.by and count == 0:
            raise EmptyMean()
        vals = vals / _expand(np.maximum(count, 1), meta.vshape)
    mask = np.ones((), bool) if not n.by else count > 0
    return Dense(vals, np.asarray(mask), meta)


def run_dense(spec, metas, masks, arrays):
    env: list[Dense] = []
    for n, meta in zip(spec, metas):
        if isinstance(n, Input):
            m = masks[n.i]
            env.append(Dense(jnp.where(_expand(m, meta.vshape), arrays[n.i], 0.0), m, meta))
        elif isinstance(n, Sel):
            env.append(_dense_select(env[n.src], n, meta))
        elif isinstance(n, Jn):
            env.append(_dense_join(env[n.left], env[n.right], n, meta))
        else:
            env.append(_dense_aggregate(env[n.src], n, meta))
    return env[-1]


# ---- spec metadata and generators --------------------------------------------------------------

def meta_of(n, env: list[Meta], inputs: list[Meta]) -> Meta:
    if isinstance(n, Input):
        return inputs[n.i]
    if isinstance(n, Sel):
        m = env[n.src]
        keys = m.keys if n.keys is None else tuple(o for o, _ in n.keys)
        ext = m.extents if n.keys is None else tuple(m.extent(i) for _, i in n.keys)
        vs = m.vshape if n.kernel is None else _out_shape(SELECT_KERNELS[n.kernel], m.vshape)
        return Meta(keys, ext, vs)
    if isinstance(n, Jn):
        L, R = env[n.left], env[n.right]
        ext = tuple((L if s == "left" else R).extent(k) for _, s, k in n.keys)
        return Meta(tuple(o for o, _, _ in n.keys), ext,
                    _out_shape(JOIN_KERNELS[n.kernel], L.vshape, R.vshape))
    m = env[n.src]
    return Meta(tuple(n.by), tuple(m.extent(b) for b in n.by), m.vshape)


def metas_of(spec, inputs):
    env = []
    for n in spec:
        env.append(meta_of(n, env, inputs))
    return env


def select_kernels_for(vshape):
    out = [None]
    for name, fn in SELECT_KERNELS.items():
        if name == "outer" and (len(vshape) > 1 or int(np.prod(vshape)) > 3):
            continue  # keep value shapes small
        out.append(name)
    return out


def draw_select(draw, m: Meta, src: int, *, drop=None, permute=None, kernel="any") -> Sel:
    keys = m.keys
    pred = []
    for k in keys:
        if draw(st.booleans()) and draw(st.booleans()):
            pred.append((k, draw(st.sampled_from(["le", "ne", "ge"])), draw(st.integers(0, m.extent(k) - 1))))
    dropped = []
    if keys and (drop if drop is not None else draw(st.integers(0, 3)) == 0):
        k = draw(st.sampled_from(keys))
        pred.append((k, "eq", draw(st.integers(0, m.extent(k) - 1))))
        dropped.append(k)
    kept = [k for k in keys if k not in dropped]
    if permute if permute is not None else draw(st.booleans()):
        kept = list(draw(st.permutations(kept)))
    sel_keys = None
    if dropped or kept != list(keys) or draw(st.booleans()):
        names = [k if not draw(st.integers(0, 4)) == 0 else f"{k}_" for k in kept]
        sel_keys = tuple(zip(names, kept))
    if kernel == "any":
        kernel = draw(st.sampled_from(select_kernels_for(m.vshape)))
    return Sel(src, tuple(pred), sel_keys, kernel)


def draw_join_keys(draw, L: Meta, R: Meta, on) -> tuple:
    """Output keys: every key class once, named after one of its members, in a random order."""
    partner = {r: l for l, r in on}
    classes = [[("left", k)] + [("right", r) for r, l in partner.items() if l == k] for k in L.keys]
    classes += [[("right", k)] for k in R.keys if k not in partner]
    out, used = [], set()
    for members in classes:
        side, k = draw(st.sampled_from(members))
        name = k if k not in used else f"{k}{len(used)}"
        used.add(name)
        out.append((name, side, k))
    return tuple(draw(st.permutations(out)))


def join_kernels_for(ls, rs):
    return [k for k, fn in JOIN_KERNELS.items() if _out_shape(fn, ls, rs) is not None
            and int(np.prod(_out_shape(fn, ls, rs))) <= 9]


def draw_join(draw, L: Meta, R: Meta, li: int, ri: int, on=None) -> Jn | None:
    if on is None:
        rfree = list(R.keys)
        on = []
        for k in draw(st.permutations(L.keys)):
            if rfree and draw(st.booleans()):
                r = draw(st.sampled_from(rfree))
                rfree.remove(r)
                on.append((k, r))
    on = tuple(on)
    kernels = join_kernels_for(L.vshape, R.vshape)
    if not kernels:
        return None
    return Jn(li, ri, on, draw_join_keys(draw, L, R, on), draw(st.sampled_from(kernels)))


def draw_aggregate(draw, m: Meta, src: int, kind=None) -> Agg:
    by = draw(st.permutations(m.keys))
    by = tuple(by[: draw(st.integers(0, len(by)))])
    return Agg(src, by, kind or draw(st.sampled_from(["sum", "mean"])))


VSHAPES = [(), (2,), (3,)]
KEY_POOL = ("i", "j", "k")


@st.composite
def input_meta(draw, nkeys=None, names=None, vshape=None, max_extent=4):
    n = nkeys if nkeys is not None else draw(st.integers(0, 2))
    names = names or tuple(draw(st.permutations(KEY_POOL))[:n])
    ext = tuple(draw(st.integers(1, max_extent)) for _ in names)
    return Meta(tuple(names), ext, vshape if vshape is not None else draw(st.sampled_from(VSHAPES)))


# ---- building data and comparing ---------------------------------------------------------------

def make_inputs(metas, seed, density):
    rng = np.random.default_rng(seed)
    arrays, masks, rels = [], [], []
    for i, m in enumerate(metas):
        x = 0.7 * rng.normal(size=m.extents + m.vshape)
        mask = rng.uniform(size=m.extents) < density if m.keys else np.ones((), bool)
        if m.keys and not mask.any() and rng.uniform() < 0.7:
            mask.flat[rng.integers(mask.size)] = True  # mostly not empty
        x = np.where(_expand(mask, m.vshape), x, 0.0)
        if m.keys:
            idx = np.nonzero(mask)
            df = pl.DataFrame({k: idx[a].astype(np.int64) for a, k in enumerate(m.keys)})
            df = df.with_columns(pl.Series("v", x[mask]))
            rel = wb.from_frame(df, keys=m.keys, value="v", extents=m.extents, dtype="float64",
                                name=f"X{i}")
        else:
            rel = wb.from_tensor(x, name=f"X{i}")
        arrays.append(x)
        masks.append(mask)
        rels.append(rel)
    return arrays, masks, rels


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

def _size(m: Meta) -> int:
    return int(np.prod(m.extents, dtype=np.int64)) * int(np.prod(m.vshape, dtype=np.int64))


@st.composite
def programs(draw):
    """A random DAG: inputs, then operators over any earlier result (a result may be consumed
    several times, a join may take one relation on both sides)."""
    inputs = [draw(input_meta()) for _ in range(draw(st.integers(1, 3)))]
    spec = [Input(i) for i in range(len(inputs))]
    env = list(inputs)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["select", "join", "join", "aggregate"]))
        src = draw(st.integers(0, len(spec) - 1))
        node = None
        if op == "join":
            other = draw(st.integers(0, len(spec) - 1))
            node = draw_join(draw, env[src], env[other], src, other)
            if node is not None:
                m = meta_of(node, env, inputs)
                if len(m.keys) > 4 or _size(m) > 400:
                    node = None
        if node is None and op in ("join", "aggregate"):
            node = draw_aggregate(draw, env[src], src)
        if node is None:
            node = draw_select(draw, env[src], src)
        spec.append(node)
        env.append(meta_of(node, env, inputs))
    return inputs, spec


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

