"""Gradient verification, usable from notebooks and tests.

* ``against_jax``: run a relational program and its dense JAX twin; compare outputs and the
  gradient of every input (RJP from the relational backward plan, VJP from ``jax.vjp``).
* ``finite_differences``: compare the RJP with central differences in one random direction;
  no twin needed.

Both return a ``Report``: one row per quantity with max absolute and relative error, printable
as text and shown as an HTML table in Jupyter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from workbench.relation import Relation, to_matrix
from workbench.api import check_argnums, vjp


@dataclass(frozen=True)
class Row:
    quantity: str
    shape: tuple
    max_abs_err: float
    max_rel_err: float  # max |a - b| / max |b|
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_rel_err) and self.max_rel_err <= self.tolerance)


@dataclass(frozen=True)
class Report:
    title: str
    rows: tuple[Row, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def __str__(self) -> str:
        head = f"{'quantity':<22} {'shape':<14} {'max abs err':>12} {'max rel err':>12}  ok"
        lines = [self.title, head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r.quantity:<22} {str(r.shape):<14} {r.max_abs_err:>12.3e} "
                         f"{r.max_rel_err:>12.3e}  {'yes' if r.ok else 'NO'}")
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        cells = "".join(
            f"<tr><td>{r.quantity}</td><td>{r.shape}</td><td>{r.max_abs_err:.3e}</td>"
            f"<td>{r.max_rel_err:.3e}</td><td>{'✅' if r.ok else '❌'}</td></tr>" for r in self.rows)
        return (f"<b>{self.title}</b><table><tr><th>quantity</th><th>shape</th>"
                f"<th>max abs err</th><th>max rel err</th><th>ok</th></tr>{cells}</table>")


def _row(name: str, got, want, tol: float) -> Row:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise ValueError(f"{name}: the relational result has shape {got.shape}, the twin's "
                         f"{want.shape}; check the layout ('tensor' or 'matrix') of this argument")
    err = float(np.max(np.abs(got - want))) if got.size else 0.0
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    return Row(name, got.shape, err, err / scale if scale > 0 else err, tol)


def default_tolerance(dtype: str) -> float:
    return 1e-9 if dtype == "float64" else 1e-4


def dense(R: Relation, layout: str = "tensor") -> np.ndarray:
    """A relation as the dense array its twin sees: ``to_tensor()`` or blocked ``to_matrix``."""
    return to_matrix(R) if layout == "matrix" else R.to_tensor()


def _random_like(out: Relation, rng) -> Relation:
    """A random cotangent with the keys of ``out``."""
    return out.with_values(rng.normal(size=out.table().values.shape))


def against_jax(f: Callable, twin: Callable, *rels: Relation, dense_args: Sequence | None = None,
                layouts: Sequence[str] | None = None, out_layout: str = "tensor",
                argnums: int | Sequence[int] | None = None, rtol: float | None = None,
                seed: int = 0, title: str | None = None) -> Report:
    """Compare ``f`` (relations -> relation) with ``twin`` (dense arrays -> array): the output, and
    the gradient of every argument in ``argnums`` (all by default) under one random cotangent
    (the cotangent 1 for a scalar loss)."""
    layouts = tuple(layouts) if layouts is not None else ("tensor",) * len(rels)
    nums = check_argnums(argnums if argnums is not None else tuple(range(len(rels))), len(rels), "against_jax")
    xs = [jnp.asarray(a) for a in (dense_args if dense_args is not None else
                                    [dense(r, l) for r, l in zip(rels, layouts)])]
    tol = rtol if rtol is not None else default_tolerance(rels[0].dtype)
    out, pullback = vjp(f, *rels)
    want_out, twin_vjp = jax.vjp(lambda *d: twin(*d), *xs)
    rows = [_row("output", dense(out, out_layout), want_out, tol)]
    ct = _random_like(out, np.random.default_rng(seed)) if (out.keys or out.value_shape) else None
    if ct is None:
        ct = out.with_values(jnp.ones((1,)), name="1")
    grads = pullback(ct)
    want_grads = twin_vjp(jnp.asarray(dense(ct, out_layout), dtype=jnp.asarray(want_out).dtype))
    names = [getattr(r.node, "name", f"arg{i}") for i, r in enumerate(rels)]
    for i in nums:
        rows.append(_row(f"grad {names[i]}", dense(grads[i], layouts[i]), want_grads[i], tol))
    return Report(title or f"{getattr(f, '__name__', 'program')}: RJP vs jax.vjp", tuple(rows))


def _shifted(R: Relation, direction: np.ndarray, eps: float) -> Relation:
    return R.with_values(R.table().values + eps * jnp.asarray(direction, R.dtype))


def finite_differences(f: Callable, *rels: Relation, argnums: int | Sequence[int] | None = None,
                       eps: float | None = None, rtol: float | None = None, seed: int = 0,
                       title: str | None = None) -> Report:
    """Check the RJP in one random direction d: <grad f, d> against
    (f(x + eps d) - f(x - eps d)) / (2 eps), for a scalar ``f`` or <G, f> with a random G."""
    nums = check_argnums(argnums if argnums is not None else tuple(range(len(rels))), len(rels),
                    "finite_differences")
    rng = np.random.default_rng(seed)
    dtype = rels[0].dtype
    eps = eps if eps is not None else (1e-6 if dtype == "float64" else 1e-2)
    tol = rtol if rtol is not None else (1e-5 if dtype == "float64" else 5e-2)
    out, pullback = vjp(f, *rels)
    scalar = not (out.keys or out.value_shape)
    ct = None if scalar else _random_like(out, rng)
    if scalar:
        ct = out.with_values(jnp.ones((1,)), name="1")
    grads = pullback(ct)
    rows = []
    names = [getattr(r.node, "name", f"arg{i}") for i, r in enumerate(rels)]

    def project(o: Relation) -> float:  # <G, out>
        return float(np.sum(ct.to_tensor(shape=o.extents) * o.to_tensor()))

    for i in nums:
        d = rng.normal(size=rels[i].table().values.shape)
        plus = [(_shifted(r, d, eps) if j == i else r) for j, r in enumerate(rels)]
        minus = [(_shifted(r, d, -eps) if j == i else r) for j, r in enumerate(rels)]
        fd = (project(f(*plus)) - project(f(*minus))) / (2 * eps)
        rjp = float(np.sum(grads[i].to_tensor() * rels[i].with_values(d).to_tensor()))  # <grad, d>
        err = abs(rjp - fd)
        rows.append(Row(f"<grad {names[i]}, d>", (), err, err / max(abs(fd), 1e-30), tol))
    name = title or getattr(f, "__name__", "program")
    return Report(f"{name}: RJP vs central differences (eps={eps:g})", tuple(rows))


def program_report(program, rtol: float | None = None) -> Report:
    """``against_jax`` for a ``workbench.programs.Program``."""
    return against_jax(program.fn, program.twin, *program.rels, dense_args=program.dense,
                       layouts=program.layouts, argnums=program.argnums, rtol=rtol,
                       title=f"{program.name}: RJP vs jax.vjp")


def _tuples(r) -> dict:
    """A relation's (or an executor Table's) tuples: key tuple -> value array."""
    table = r.table() if isinstance(r, Relation) else r
    values = np.asarray(table.values)
    if not table.keys.width:
        return {(): values[0]} if len(values) else {}
    return dict(zip(table.keys.rows(), values))


def assert_relations_equal(got, want, rtol: float = 1e-9, atol: float = 1e-12) -> None:
    """Raise AssertionError unless ``got`` and ``want`` (Relations or Tables) hold the same keys,
    with values equal within ``rtol``/``atol``, whatever their row order."""
    if isinstance(got, Relation) and isinstance(want, Relation):
        assert set(got.keys) == set(want.keys), f"keys {got.keys} != {want.keys}"
        assert got.value_shape == want.value_shape, f"value shape {got.value_shape} != {want.value_shape}"
        order = list(want.keys)
        g = dict(zip((tuple(r) for r in got.table().keys.select(order).rows()), np.asarray(got.table().values))) \
            if order else _tuples(got)
        w = _tuples(want)
    else:
        g, w = _tuples(got), _tuples(want)
    assert g.keys() == w.keys(), (f"{len(g.keys() - w.keys())} tuple(s) only in the first, "
                                  f"{len(w.keys() - g.keys())} only in the second")
    for k in w:
        np.testing.assert_allclose(g[k], w[k], rtol=rtol, atol=atol, err_msg=f"at key {k}")
