"""Random relational programs and their dense twins: the grid on which the RJP rules are checked
against ``jax.vjp`` (``tests/test_rjp_grid.py``) and measured (``workbench.reproduce``).

A program is a list of operator specs (select / join / aggregate over earlier results). It is
interpreted twice: relationally, with ``select`` / ``join`` / ``aggregate`` over sparse
relations, and densely, over arrays with one axis per key, zeros for absent tuples and a boolean
mask of the tuples present. The dense twin applies every kernel under ``jnp.where(mask, ...)``,
since kernels like ``exp`` map an absent (zero) value to a non-zero one. Programs are drawn by
Hypothesis strategies (``programs``, ``input_meta``, ``draw_*``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from workbench.api import value_and_grad
from workbench.ops import aggregate, join, select
from workbench.relation import from_frame, from_tensor


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
            env.append(select(env[n.src], kernel=SELECT_KERNELS[n.kernel] if n.kernel else None,
                                 pred=_pred_expr(n.pred) if n.pred else None,
                                 keys=dict(n.keys) if n.keys is not None else None))
        elif isinstance(n, Jn):
            env.append(join(env[n.left], env[n.right], on=dict(n.on),
                               keys={o: f"{s}.{k}" for o, s, k in n.keys},
                               kernel=JOIN_KERNELS[n.kernel]))
        else:
            env.append(aggregate(env[n.src], by=n.by, kernel=n.kind))
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

def make_inputs(metas, seed, density, dtype: str = "float64"):
    """Random data for input ``metas``: (dense arrays, masks of the tuples present, relations in
    ``dtype``); the arrays stay float64."""
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
            rel = from_frame(df, keys=m.keys, value="v", extents=m.extents, dtype=dtype,
                                name=f"X{i}")
        else:
            rel = from_tensor(x, name=f"X{i}", dtype=dtype)
        arrays.append(x)
        masks.append(mask)
        rels.append(rel)
    return arrays, masks, rels


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


# ---- the same programs, measured ----------------------------------------------------------------

def draw_programs(n: int, seed: int = 0) -> list[tuple]:
    """``n`` programs of the grid (``programs``), each with a data seed and density: a list of
    (input metas, spec, data seed, density). Deterministic for a given ``n`` and ``seed``."""
    drawn: list[tuple] = []

    @settings(max_examples=n, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    @given(prog=programs(), data_seed=st.integers(0, 2**31 - 1), density=st.sampled_from([0.3, 0.6, 1.0]))
    def collect(prog, data_seed, density):
        drawn.append((prog[0], prog[1], (data_seed + seed) % 2**31, density))

    collect()
    return drawn[:n]


def _relative(got, want) -> float:
    """max |got - want| / max |want| (the absolute error when the twin is all zero)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    diff = float(np.max(np.abs(got - want))) if want.size else 0.0
    return diff / scale if scale > 0 else diff


def measure(in_metas, spec, seed: int, density: float, dtype: str = "float64") -> float | None:
    """The largest relative error of a grid program differentiated by the RJP rules: the loss
    sum(output^2) and every input's gradient, run relationally in ``dtype``, against ``jax.grad``
    of the dense twin in float64 (needs JAX's x64 mode). None when the program takes a mean over
    no tuples (undefined)."""
    arrays, masks, rels = make_inputs(in_metas, seed, density, dtype)
    last = len(spec) - 1
    spec = list(spec) + [Sel(last, (), None, "sum_sq"), Agg(last + 1, (), "sum")]
    metas = metas_of(spec, in_metas)
    argnums = tuple(range(len(rels)))

    def twin(*xs):
        return run_dense(spec, metas, masks, xs).vals

    try:
        want, want_grads = jax.value_and_grad(twin, argnums=argnums)(*[jnp.asarray(a) for a in arrays])
    except EmptyMean:
        return None
    value, grads = value_and_grad(lambda *rs: run_relational(spec, rs), argnums=argnums)(*rels)
    errors = [_relative(value.to_tensor(), want)]
    errors += [_relative(g.to_tensor(), w) for g, w in zip(grads, want_grads)]
    return max(errors)
