"""Dense NMF of scikit-learn's digits in the blocked layout: the relational loss and gradient
against the dense JAX twin (float64), the multiplicative update against numpy, and training to
within 1% of scikit-learn's NMF run live from the same NNDSVDa start."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import workbench as wb
from workbench.models import nmf_dense as nd

jax.config.update("jax_enable_x64", True)


@pytest.fixture(scope="module")
def digits():
    return nd.load_digits_relation()


@pytest.fixture(scope="module")
def small():
    # 50 rows in blocks of 16 (padded to 64) and the 64 columns in two blocks of 32
    from sklearn.datasets import load_digits

    return nd.blocked(load_digits().data[:50], block_rows=16, block_cols=32, name="digits50")


def _random_factors(data, rank, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(data.shape[0], rank)), rng.uniform(size=(rank, data.shape[1]))


def test_digits_relation_is_the_blocked_padded_matrix(digits):
    assert digits.shape == (1797, 64) and digits.X.keys == ("row", "col")
    assert digits.X.extents == (15, 1) and digits.X.value_shape == (128, 64)
    assert digits.X.dtype == "float64"
    dense = wb.to_matrix(digits.X)
    assert dense.shape == (1920, 64)
    np.testing.assert_array_equal(dense[:1797], digits.x)
    assert not dense[1797:].any()


def test_loss_and_gradient_match_the_jax_twin(small):
    w, h = _random_factors(small, 10)
    W, H = nd.factor_relations(w, h, small)
    assert W.value_shape == (16, 10) and H.value_shape == (10, 32) and H.extents == (2,)
    x = jnp.asarray(small.x)
    want_value, (want_gw, want_gh) = jax.value_and_grad(nd.loss_twin, argnums=(0, 1))(
        jnp.asarray(w), jnp.asarray(h), x)
    for f in (wb.value_and_grad(nd.objective(small.X), argnums=(0, 1)),
              wb.jit(wb.value_and_grad(nd.objective(small.X), argnums=(0, 1)))):
        value, (gW, gH) = f(W, H)
        np.testing.assert_allclose(float(value.to_tensor()), float(want_value), rtol=1e-9)
        gw, gh = nd.dense_factors(gW, gH, small.shape[0])
        np.testing.assert_allclose(gw, want_gw, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(gh, want_gh, rtol=1e-9, atol=1e-9)
        padded = np.asarray(gW.to_tensor()).reshape(-1, 10)[small.shape[0]:]
        assert not padded.any()  # the zero rows padded into W get no gradient


def test_gradient_parts_give_the_relational_gradient(small):
    w, h = _random_factors(small, 4, seed=1)
    W, H = nd.factor_relations(w, h, small)
    _, (gW, gH) = wb.value_and_grad(nd.objective(small.X), argnums=(0, 1))(W, H)
    for side, F, g in (("W", W, gW), ("H", H, gH)):
        N, D = nd.gradient_parts(small.X, W, H, side)
        got = 2 * (D.values_like(F) - N.values_like(F))
        np.testing.assert_allclose(got, g.values_like(F), rtol=1e-9, atol=1e-9)


def test_multiplicative_update_matches_numpy(small):
    w, h = _random_factors(small, 6, seed=2)
    x, eps = small.x, 1e-12
    W, H = nd.factor_relations(w, h, small)
    H = H.with_values(wb.jit(lambda W, H: nd.multiplicative_update(small.X, W, H, "H"))(W, H)
                      .values_like(H))
    W = W.with_values(nd.multiplicative_update(small.X, W, H, "W").values_like(W))  # interpreter
    h1 = h * (w.T @ x) / (w.T @ w @ h + eps)
    w1 = w * (x @ h1.T) / (w @ (h1 @ h1.T) + eps)
    got_w, got_h = nd.dense_factors(W, H, small.shape[0])
    np.testing.assert_allclose(got_h, h1, rtol=1e-9)
    np.testing.assert_allclose(got_w, w1, rtol=1e-9)


def test_training_reaches_scikit_learn_within_one_percent(digits):
    ref = nd.reference(digits)
    assert ref.params["solver"] == "cd" and ref.params["init"] == "nndsvda"
    assert ref.params["max_iter"] == 200 and ref.params["beta_loss"] == "frobenius"
    hist = nd.train(digits, rank=10, iterations=500, target=1.01 * ref.error)
    assert hist.error[-1] <= 1.01 * ref.error, (hist, ref)
    assert np.all(np.diff(hist.error) <= 1e-9 * hist.error[0])  # multiplicative updates never increase it
    w, h = hist.factors()
    assert w.min() >= 0 and h.min() >= 0
    np.testing.assert_allclose(np.linalg.norm(digits.x - w @ h), hist.error[-1], rtol=1e-9)
    padded = np.asarray(hist.W.to_tensor()).reshape(-1, 10)[digits.shape[0]:]
    assert not padded.any()
    # the start is scikit-learn's NNDSVDa: the same error as its initialization
    from sklearn.decomposition._nmf import _initialize_nmf
    w0, h0 = _initialize_nmf(digits.x, 10, init="nndsvda", random_state=0)
    np.testing.assert_allclose(hist.error[0], np.linalg.norm(digits.x - w0 @ h0), rtol=1e-9)
