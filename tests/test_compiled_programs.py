"""Two things the compiled executor does beyond running the plan: a sum over every tuple of an
outer product (a weight gradient) becomes one GEMM, and a program called on new keys of the same
shapes (the next batch) reuses the traced program, its invariant tables and its executable. Both
must give the interpreter's and JAX's results."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import workbench as wb
from workbench import passes
from workbench.check import assert_relations_equal as same
from workbench.kernels import Kernel

jax.config.update("jax_enable_x64", True)


def _factors(fn, *shapes):
    return passes.outer_factors(Kernel(fn, len(shapes)), shapes, "float64")


@pytest.mark.parametrize("fn, direct", [
    (lambda a, b: jnp.outer(a, b), (0, 1)),
    (lambda a, b: a[:, None] * b[None, :], (0, 1)),
    (lambda a, b: jnp.outer(b, a).T, (0, 1)),
    (lambda a, b: jax.lax.dot_general(a, b, (((), ()), ((), ()))), (0, 1)),
    (lambda a, b: jnp.outer(jnp.tanh(a) * 2.0, b + 1.0), (None, None)),  # factors computed
    (lambda a, b: jnp.outer(a, b * 3.0), (0, None)),
])
def test_outer_products_are_recognized_with_their_factors(fn, direct):
    """The factors (a, b) with outer(a, b) = kernel(...), and which arguments they are unchanged
    (the compiled step reads those transposed from storage)."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=3), rng.normal(size=4)
    factors = _factors(fn, (3,), (4,))
    assert factors is not None
    u, v = factors.fn(a, b)
    np.testing.assert_allclose(np.outer(u, v), fn(a, b), rtol=1e-12)
    assert (factors.a_arg, factors.b_arg) == direct


@pytest.mark.parametrize("fn, shapes", [
    (lambda a, b: a * b, ((3,), (3,))),  # elementwise
    (lambda a, b: jnp.outer(a, b) + 1.0, ((3,), (4,))),  # not the last operation
    (lambda a, b: a @ b, ((3, 4), (4, 2))),  # a contraction
    (lambda a, b: jnp.outer(a, b).sum(0), ((3,), (4,))),
])
def test_other_kernels_are_not_outer_products(fn, shapes):
    assert _factors(fn, *shapes) is None


def _layer(X, W, Y):
    """sum over rows i of (tanh(x_i W) - y_i)^2: W's gradient sums an outer product per row."""
    H = wb.join(X, W, on={}, keys={"i": "left.i"}, kernel=lambda x, w: jnp.tanh(x @ w))
    E = wb.join(H, Y, on={"i": "i"}, kernel=lambda h, y: jnp.sum((h - y) ** 2))
    return wb.aggregate(E, by=())


def test_weight_gradient_as_one_gemm_equals_interpreter_and_jax():
    rng = np.random.default_rng(1)
    x, w, y = rng.normal(size=(40, 7)), rng.normal(size=(7, 3)), rng.normal(size=(40, 3))
    X = wb.from_tensor(x, keys=("i",), name="X")
    W, Y = wb.from_tensor(w, name="W"), wb.from_tensor(y, keys=("i",), name="Y")
    step = wb.jit(wb.value_and_grad(_layer, argnums=(0, 1)))
    loss, (gx, gw) = step(X, W, Y)
    want, (wx, ww) = wb.value_and_grad(_layer, argnums=(0, 1))(X, W, Y)
    same(want, loss)
    same(wx, gx)
    same(ww, gw)
    dense = jax.grad(lambda x, w: jnp.sum((jnp.tanh(x @ w) - y) ** 2), argnums=(0, 1))(x, w)
    np.testing.assert_allclose(gw.to_tensor(), dense[1], rtol=1e-9)
    np.testing.assert_allclose(gx.to_tensor(), dense[0], rtol=1e-9)


def test_a_weight_gradient_read_transposed_follows_new_argument_values():
    """W's gradient sums outer(x_i, g_i) over rows: the compiled step reads X transposed, kept
    from call to call while X's array is the same; new values of X give their own gradient."""
    rng = np.random.default_rng(3)
    xs = [rng.normal(size=(30, 6)) for _ in range(2)]
    w, y = rng.normal(size=(6, 4)), rng.normal(size=(30, 4))
    W, Y = wb.from_tensor(w, name="W"), wb.from_tensor(y, keys=("i",), name="Y")
    step = wb.jit(wb.value_and_grad(_layer, argnums=1))
    for x in (xs[0], xs[0], xs[1], xs[0]):
        X = wb.from_tensor(x, keys=("i",), name="X")
        loss, gw = step(X, W, Y)
        want = jax.grad(lambda w: jnp.sum((jnp.tanh(x @ w) - y) ** 2))(w)
        np.testing.assert_allclose(gw.to_tensor(), want, rtol=1e-9)


def _batch(rows, x, y, y_rows=None):
    ids = np.asarray(rows)
    y_ids = ids if y_rows is None else np.asarray(y_rows)  # Y's tuples in another order
    X = wb.from_tensor(x[ids], keys=("i",), name="X")
    Y = wb.from_tensor(y[y_ids], keys=("i",), name="Y")
    # keys are the batch's row ids, not 0..n-1: the key plan differs from batch to batch; the
    # extents are the data set's, so every batch has one schema
    X = wb.from_frame(X.to_frame().with_columns(i=ids), keys=("i",), value="value",
                      extents=(len(x),), name="X")
    Y = wb.from_frame(Y.to_frame().with_columns(i=y_ids), keys=("i",), value="value",
                      extents=(len(x),), name="Y")
    return X, Y


def test_new_batches_of_one_shape_reuse_the_program_and_stay_exact():
    rng = np.random.default_rng(2)
    x, w, y = rng.normal(size=(100, 5)), rng.normal(size=(5, 2)), rng.normal(size=(100, 2))
    W = wb.from_tensor(w, name="W")
    step = wb.jit(wb.value_and_grad(_layer, argnums=(0, 1)))
    traced = []
    for b in range(4):
        rows = rng.permutation(100)[:20]  # a new batch: new keys, the same shapes
        # the last batch stores Y's tuples in another order than X's: the join reads Y through a
        # gather, where the others read it row by row
        X, Y = _batch(rows, x, y, rows[::-1] if b == 3 else None)
        loss, (gx, gw) = step(X, W, Y)
        traced.append(step.timings.traced)
        want, (wx, ww) = wb.value_and_grad(_layer, argnums=(0, 1))(X, W, Y)
        same(want, loss)
        same(wx, gx)
        same(ww, gw)
        dense = jax.grad(lambda w: jnp.sum((jnp.tanh(x[rows] @ w) - y[rows]) ** 2))(w)
        np.testing.assert_allclose(gw.to_tensor(), dense, rtol=1e-9)
    assert traced[0] and not traced[1] and not traced[2]  # traced once for the shuffled batches
    assert len(step._templates) == 1  # one schema: traced and differentiated once
    assert traced[3]  # another decision (a gather): traced again, not a wrong reuse
