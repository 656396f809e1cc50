"""Optimizers over parameter relations, and lining a gradient up with its primal."""
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest

import workbench as wb
from workbench import optim


def test_values_like_reorders_and_fills_absent_tuples_with_zeros():
    P = wb.from_frame(pl.DataFrame({"i": [0, 1, 2, 3], "v": [1.0, 2.0, 3.0, 4.0]}), keys=("i",), value="v")
    G = wb.from_frame(pl.DataFrame({"i": [3, 1], "v": [30.0, 10.0]}), keys=("i",), value="v")
    np.testing.assert_array_equal(np.asarray(G.values_like(P)), [0.0, 10.0, 0.0, 30.0])


def test_values_like_refuses_tuples_the_primal_lacks():
    P = wb.from_frame(pl.DataFrame({"i": [0, 1], "v": [1.0, 2.0]}), keys=("i",), value="v")
    G = wb.from_frame(pl.DataFrame({"i": [1, 5], "v": [1.0, 1.0]}), keys=("i",), value="v")
    with pytest.raises(ValueError, match="1 tuple"):
        G.values_like(P)


def test_with_values_keeps_keys_and_checks_shape(rng):
    X = wb.from_tensor(rng.normal(size=(4, 3)), keys=("i",))
    Y = X.with_values(np.ones((4, 3)))
    assert Y.keys == X.keys and Y.extents == X.extents
    np.testing.assert_array_equal(Y.to_tensor(), np.ones((4, 3)))
    with pytest.raises(ValueError, match="expected"):
        X.with_values(np.ones((3, 3)))


def _quadratic(W, X):
    """sum over i of |x_i . w - 1|^2: a least-squares loss."""
    r = wb.join(X, W, on={}, keys={"i": "left.i"}, kernel=lambda x, w: (jnp.dot(x, w) - 1.0) ** 2)
    return wb.aggregate(r, by=())


def test_adam_matches_the_reference_update(rng):
    x, w = rng.normal(size=(8, 3)), rng.normal(size=(3,))
    X, W = wb.from_tensor(x, keys=("i",)), wb.from_tensor(w)
    opt = optim.Adam(lr=0.05)
    state = opt.init([W])
    m = v = np.zeros(3)
    w_ref = w.copy()
    for t in range(1, 6):
        (gW,) = [wb.grad(_quadratic)(W, X)]
        (W,), state = opt.update([W], [gW], state)
        g = 2 * x.T @ (x @ w_ref - 1.0)
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        w_ref = w_ref - 0.05 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    np.testing.assert_allclose(W.to_tensor(), w_ref, rtol=1e-10)


def test_sgd_with_momentum_reduces_the_loss(rng):
    x = rng.normal(size=(20, 3))
    X, W = wb.from_tensor(x, keys=("i",)), wb.from_tensor(np.zeros(3))
    opt = optim.SGD(lr=0.01, momentum=0.5)
    state = opt.init([W])
    losses = []
    for _ in range(30):
        loss, g = wb.value_and_grad(_quadratic)(W, X)
        losses.append(float(loss.to_tensor()))
        (W,), state = opt.update([W], [g], state)
    best = np.linalg.lstsq(x, np.ones(20), rcond=None)[0]
    optimum = np.sum((x @ best - 1) ** 2)
    assert losses[-1] - optimum < 0.05 * (losses[0] - optimum)  # closes 95% of the gap


def test_update_needs_one_gradient_per_parameter(rng):
    W = wb.from_tensor(np.zeros(3))
    with pytest.raises(ValueError, match="gradient"):
        optim.Adam().update([W], [], optim.Adam().init([W]))
