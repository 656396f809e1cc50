"""Logistic regression on the breast cancer data: relational gradients against the dense twin and
finite differences, the compiled step against the interpreter, and training against a live
scikit-learn fit on the same split."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

import workbench as wb  # noqa: E402
from workbench.check import against_jax, finite_differences  # noqa: E402
from workbench.models import logreg  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return logreg.load()


@pytest.fixture(scope="module")
def history(data):
    return logreg.train(data)


def _point(d, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=d) * 0.3, rng.normal() * 0.5


def _params(w, b):
    W, Bias = logreg.init_params(len(w), "float64")
    return W.with_values(w[None]), Bias.with_values(np.array([b]))


def test_data_split_matches_sklearn(data):
    assert data.x_train.shape == (455, 30) and data.x_test.shape == (114, 30)
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(data.x_train.std(axis=0), 1.0, rtol=1e-12)


@pytest.mark.parametrize("block", [1, 64, 500])  # one row per tuple, padded blocks, one block
def test_gradient_against_twin(data, block):
    X, S = logreg.to_relations(data.x_train, data.y_train, block, "float64")
    W, Bias = _params(*_point(data.n_features))
    report = against_jax(logreg.objective(X, S, C=0.7), logreg.twin(data.x_train, data.y_train, C=0.7),
                         W, Bias, rtol=1e-9)
    assert report.ok, str(report)


def test_gradient_against_finite_differences(data):
    X, S = logreg.to_relations(data.x_train, data.y_train, 64, "float64")
    W, Bias = _params(*_point(data.n_features, seed=1))
    report = finite_differences(logreg.objective(X, S), W, Bias)
    assert report.ok, str(report)


def test_objective_formulas_agree(data):
    w, b = _point(data.n_features, seed=2)
    X, S = logreg.to_relations(data.x_train, data.y_train, 64, "float64")
    rel = float(logreg.objective(X, S, C=2.0)(*_params(w, b)).to_tensor())
    dense = float(logreg.twin(data.x_train, data.y_train, C=2.0)(jnp.asarray(w), b))
    ref = logreg.numpy_objective(w, b, data.x_train, data.y_train, C=2.0)
    assert rel == pytest.approx(ref, rel=1e-12) and dense == pytest.approx(ref, rel=1e-12)


def test_compiled_step_equals_interpreted(data):
    X, S = logreg.to_relations(data.x_train, data.y_train, 64, "float64")
    f = logreg.objective(X, S)
    interpreted = wb.value_and_grad(f, argnums=(0, 1))
    compiled = wb.jit(wb.value_and_grad(f, argnums=(0, 1)))
    for seed in (3, 4):  # the second call reuses the compiled plan with new values
        W, Bias = _params(*_point(data.n_features, seed))
        v1, (gw1, gb1) = interpreted(W, Bias)
        v2, (gw2, gb2) = compiled(W, Bias)
        assert float(v2.to_tensor()) == pytest.approx(float(v1.to_tensor()), rel=1e-12)
        np.testing.assert_allclose(gw2.values_like(W), gw1.values_like(W), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(gb2.values_like(Bias), gb1.values_like(Bias), rtol=1e-10, atol=1e-12)


def test_objective_is_sklearns(data):
    """At scikit-learn's tightly converged solution the gradient of our objective vanishes: the
    formula (sum, C's scaling, unpenalized intercept) is the one scikit-learn minimizes."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=0.5, tol=1e-12, max_iter=10_000).fit(data.x_train, data.y_train)
    w, b = model.coef_[0], float(model.intercept_[0])
    gw, gb = jax.grad(logreg.twin(data.x_train, data.y_train, C=0.5), argnums=(0, 1))(jnp.asarray(w), b)
    scale = np.max(np.abs(jax.grad(logreg.twin(data.x_train, data.y_train, C=0.5))(jnp.zeros(30), 0.0)))
    assert max(np.max(np.abs(gw)), abs(float(gb))) < 1e-6 * scale


def test_training_reaches_sklearn(history):
    ref = history.reference
    assert history.converged, history.stop
    assert history.test_acc == ref.test_acc
    assert abs(history.final_objective - ref.objective) <= 1e-3 * ref.objective
    assert history.final_objective <= ref.objective * (1 + 1e-9)  # no worse than sklearn's
    objective = np.asarray(history.objective)
    assert len(objective) == history.iterations + 1
    assert np.all(np.diff(objective) <= 1e-12 * objective[0])  # Armijo: never increases


def test_training_solution_matches_tight_sklearn(data, history):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(data.x_train, data.y_train)
    np.testing.assert_allclose(history.W.to_tensor(), model.coef_[0], atol=1e-5)
    assert float(history.Bias.to_tensor()) == pytest.approx(float(model.intercept_[0]), abs=1e-5)


def test_training_in_float32_reaches_sklearn(data, history):
    h = logreg.train(data, dtype="float32", with_reference=False)
    assert h.W.dtype == "float32"
    assert abs(h.final_objective - history.reference.objective) <= 1e-3 * history.reference.objective
    assert h.test_acc == history.reference.test_acc


def test_interpreted_training_equals_compiled(data, history):
    h = logreg.train(data, max_iter=5, compiled=False, with_reference=False)
    np.testing.assert_allclose(h.objective, history.objective[:6], rtol=1e-10)


def test_lbfgs_on_a_quadratic():
    a = np.diag([1.0, 10.0, 100.0])
    res = logreg.lbfgs(lambda x: (0.5 * x @ a @ x - x.sum(), a @ x - 1.0), np.zeros(3), gtol=1e-9, ftol=0.0)
    assert res.converged, res.message
    np.testing.assert_allclose(res.x, 1.0 / np.diag(a), rtol=1e-7)


def test_bad_block():
    with pytest.raises(ValueError, match="block"):
        logreg.to_relations(np.zeros((3, 2)), np.zeros(3), block=0)


def test_test_accuracy_is_recorded_every_iteration(data, history):
    assert len(history.test_acc_curve) == history.iterations + 1
    assert history.test_acc_curve[-1] == history.test_acc
    assert history.test_acc_curve[0] < history.test_acc  # w = 0, b = 0 predicts one class
