"""Non-negative matrix factorization: data sets, the relational loss and gradient against the JAX
twin, multiplicative updates against a dense numpy reference, and training."""
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest

import workbench as wb
from workbench import check
from workbench.datasets import matrices
from workbench.models import nnmf


@pytest.fixture(scope="module")
def lesmis():
    return matrices.les_miserables()


def _dense(R):
    return np.asarray(R.to_tensor())


# ---- data ------------------------------------------------------------------------------------

def test_les_miserables_is_the_symmetric_co_occurrence_matrix(lesmis):
    g = nx.les_miserables_graph()
    assert lesmis.shape == (77, 77) and g.number_of_edges() == 254
    assert lesmis.nnz == 2 * 254
    x = lesmis.to_dense()
    np.testing.assert_array_equal(x, x.T)
    assert np.all(np.diag(x) == 0) and lesmis.values.min() >= 1
    v, j = lesmis.row_names.index("Valjean"), lesmis.row_names.index("Javert")
    assert x[v, j] == g["Valjean"]["Javert"]["weight"]
    np.testing.assert_allclose(lesmis.values.sum(), 2 * sum(w for _, _, w in g.edges(data="weight")))
    full = matrices.les_miserables(include_zeros=True)
    assert full.nnz == 77 * 76 and np.count_nonzero(full.values) == 508


def test_karate_club_weights_are_symmetric():
    k = matrices.karate_club_weights()
    assert k.shape == (34, 34) and k.nnz == 2 * 78
    x = k.to_dense()
    np.testing.assert_array_equal(x, x.T)
    assert x[0, 1] == 4.0  # Zachary's count of contexts for members 0 and 1


def test_low_rank_observes_distinct_entries_of_w_h_transpose():
    s = matrices.low_rank(300, 200, 5, density=0.05, noise=0.0, seed=3)
    assert s.nnz == 3000 and s.shape == (300, 200)
    assert len(np.unique(s.rows * 200 + s.cols)) == s.nnz
    full = s.extra["W"] @ s.extra["H"].T
    np.testing.assert_allclose(s.values, full[s.rows, s.cols], rtol=1e-12)
    assert s.values.min() >= 0 and abs(s.values.mean() - 0.25) < 0.02
    noisy = matrices.low_rank(300, 200, 5, density=0.05, noise=0.5, seed=3)
    assert noisy.values.min() == 0.0  # noise is clipped at zero, so entries stay non-negative
    assert not np.allclose(noisy.values, s.values)


def test_low_rank_scales_to_sparse_grids():
    s = matrices.low_rank(200_000, 100_000, 2, density=1e-5, seed=0)  # a 2e10 grid, 2e5 entries
    assert s.nnz == 200_000 and len(np.unique(s.rows * 100_000 + s.cols)) == s.nnz


def test_split_partitions_the_observed_entries(lesmis):
    train, test = matrices.split(lesmis, holdout=0.2, seed=1)
    assert test.nnz == round(0.2 * lesmis.nnz) and train.nnz + test.nnz == lesmis.nnz
    seen = np.concatenate([train.rows * 77 + train.cols, test.rows * 77 + test.cols])
    np.testing.assert_array_equal(np.sort(seen), np.sort(lesmis.rows * 77 + lesmis.cols))
    np.testing.assert_allclose(train.to_dense() + test.to_dense(), lesmis.to_dense())
    with pytest.raises(ValueError, match="holdout"):
        matrices.split(lesmis, holdout=1.5)


def test_to_relation_holds_only_observed_entries(lesmis):
    E = matrices.to_relation(lesmis)
    assert E.keys == ("i", "j") and E.extents == (77, 77) and len(E) == 508
    np.testing.assert_allclose(_dense(E), lesmis.to_dense())


def test_sparse_matrix_refuses_indices_outside_its_shape():
    with pytest.raises(ValueError, match="outside"):
        matrices.SparseMatrix("m", (2, 2), np.array([0, 2]), np.array([0, 1]), np.array([1.0, 2.0]))


# ---- the loss and its gradient -------------------------------------------------------------

@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_relational_gradient_equals_the_jax_twin(lesmis, l2):
    E = matrices.to_relation(lesmis, dtype="float64")
    W, H = nnmf.init_factors(lesmis.shape, 6, mean=3.0, seed=2, dtype="float64")
    report = check.against_jax(nnmf.objective(E, l2), nnmf.twin(lesmis, l2), W, H, rtol=1e-9)
    assert report.ok, report
    value, (gW, gH) = wb.value_and_grad(nnmf.objective(E, l2), argnums=(0, 1))(W, H)
    w, h = _dense(W), _dense(H)
    want, (dw, dh) = jax_value_and_grad(nnmf.twin(lesmis, l2), w, h)
    np.testing.assert_allclose(float(value.to_tensor()), want, rtol=1e-12)
    np.testing.assert_allclose(_dense(gW), dw, rtol=1e-9, atol=1e-9 * np.abs(dw).max())
    np.testing.assert_allclose(_dense(gH), dh, rtol=1e-9, atol=1e-9 * np.abs(dh).max())


def jax_value_and_grad(f, w, h):
    import jax

    value, grads = jax.value_and_grad(f, argnums=(0, 1))(jnp.asarray(w), jnp.asarray(h))
    return float(value), tuple(np.asarray(g) for g in grads)


def test_gradient_is_twice_the_positive_minus_the_negative_part(lesmis):
    l2 = 0.2
    E = matrices.to_relation(lesmis, dtype="float64")
    W, H = nnmf.init_factors(lesmis.shape, 4, mean=3.0, seed=5, dtype="float64")
    gW, gH = wb.grad(nnmf.objective(E, l2), argnums=(0, 1))(W, H)
    for side, g in (("W", gW), ("H", gH)):
        N, D = nnmf.gradient_parts(E, W, H, side, l2)
        np.testing.assert_allclose(_dense(g), 2 * (_dense(D) - _dense(N)), rtol=1e-10, atol=1e-10)


def test_factors_with_wrong_keys_are_refused_by_name(lesmis):
    E = matrices.to_relation(lesmis)
    W, H = nnmf.init_factors(lesmis.shape, 3)
    with pytest.raises(ValueError, match="column factor H.*expected \\('j',\\)"):
        nnmf.predict(E, W, wb.select(H, keys={"i": "j"}))


# ---- keeping factors non-negative ----------------------------------------------------------

def _reference_update(x, mask, w, h, eps):
    """Lee and Seung on the observed entries: W <- W * ((M∘X) H) / ((M∘(W H^T)) H + eps)."""
    w = w * ((mask * x) @ h) / ((mask * (w @ h.T)) @ h + eps)
    h = h * ((mask * x).T @ w) / ((mask * (w @ h.T)).T @ w + eps)
    return w, h


def test_multiplicative_update_equals_the_dense_reference():
    s = matrices.low_rank(40, 30, 3, density=0.06, noise=0.05, seed=4)
    mask = np.zeros(s.shape)
    mask[s.rows, s.cols] = 1.0
    assert (mask.sum(1) == 0).any()  # some rows have no observed entry: their sums are empty
    E = matrices.to_relation(s, dtype="float64")
    W, H = nnmf.init_factors(s.shape, 3, mean=0.25, seed=0, dtype="float64")
    w, h = _dense(W), _dense(H)
    eps = 1e-9
    for _ in range(3):
        W = nnmf.multiplicative_update(E, W, H, "W", eps=eps)
        H = nnmf.multiplicative_update(E, W, H, "H", eps=eps)
        w, h = _reference_update(s.to_dense(), mask, w, h, eps)
        np.testing.assert_allclose(_dense(W), w, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(_dense(H), h, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("l2", [0.0, 0.5])
def test_multiplicative_updates_never_increase_the_loss(lesmis, l2):
    hist = nnmf.train(lesmis, rank=5, method="multiplicative", steps=25, seed=1, l2=l2,
                      dtype="float64")
    loss = np.asarray(hist.loss)
    assert len(loss) == 26
    assert np.all(np.diff(loss) <= 1e-10 * loss[:-1]), np.diff(loss).max()
    assert loss[-1] < 0.1 * loss[0]
    assert _dense(hist.W).min() >= 0 and _dense(hist.H).min() >= 0


def test_projected_gradient_keeps_factors_nonnegative_and_decreases_the_loss(lesmis):
    hist = nnmf.train(lesmis, rank=5, method="projected", steps=40, lr=0.1, seed=1,
                      dtype="float64")
    w, h = _dense(hist.W), _dense(hist.H)
    assert w.min() >= 0 and h.min() >= 0
    assert (w == 0).sum() + (h == 0).sum() > 0  # the projection was active
    assert hist.loss[-1] < 0.2 * hist.loss[0]


def test_project_clips_negative_values_and_keeps_keys():
    R = wb.from_tensor(np.array([[1.0, -2.0], [-0.5, 3.0]]), keys=("i",), name="W")
    P = nnmf.project(R)
    assert P.keys == ("i",) and P.name == "W"
    np.testing.assert_array_equal(_dense(P), [[1.0, 0.0], [0.0, 3.0]])


# ---- training --------------------------------------------------------------------------------

@pytest.mark.parametrize("method, steps", [("multiplicative", 150), ("projected", 200)])
def test_training_recovers_a_noiseless_low_rank_matrix(method, steps):
    s = matrices.low_rank(120, 90, 3, density=0.4, noise=0.0, seed=7)
    train, test = matrices.split(s, holdout=0.1, seed=0)
    hist = nnmf.train(train, rank=3, method=method, steps=steps, lr=0.02, seed=0, test=test,
                      dtype="float64")
    assert len(hist.rmse) == len(hist.test_rmse) == steps + 1 == len(hist.seconds)
    # the values have standard deviation about 0.1; a random start is off by about that much
    assert hist.rmse[0] > 0.05
    assert hist.rmse[-1] < 0.01 and hist.test_rmse[-1] < 0.015, hist


def test_train_refuses_an_unknown_method(lesmis):
    with pytest.raises(ValueError, match="'projected', 'multiplicative'"):
        nnmf.train(lesmis, rank=2, method="als")


def test_scipy_reference_minimizes_the_same_objective():
    """scipy's L-BFGS-B on the dense twin, from train's start: on exact rank-2 data it fits the
    observed entries, and its loss is the twin's loss at its RMSE (no penalty)."""
    m = matrices.low_rank(30, 20, 2, density=0.5, noise=0.0, seed=1)
    ref = nnmf.reference(m, rank=2, max_iter=2000)
    assert ref.rmse < 1e-2 * np.sqrt(np.mean(m.values ** 2)), ref
    assert ref.loss == pytest.approx(ref.rmse ** 2 * m.nnz, rel=1e-6, abs=1e-12)
