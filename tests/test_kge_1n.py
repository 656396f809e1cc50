"""1-N scoring for knowledge-graph embedding: inverse relations, the relational softmax
cross-entropy over every entity against its dense JAX twin, padded batches, reciprocal
(both-direction) filtered ranks, and 1-N training on Nations."""
import jax
import numpy as np
import pytest

import workbench as wb
from workbench import check
from workbench.datasets import knowledge
from workbench.models import kge


def _tiny(rng, n_ent=6, n_rel=3, dim=4):
    """Eight triples, one a self-loop (h == t): Entity meets head, target and matrix in one row."""
    codes = rng.choice(n_ent * n_rel * n_ent, size=7, replace=False)
    triples = np.stack([codes // (n_rel * n_ent), codes // n_ent % n_rel, codes % n_ent], axis=1)
    triples = np.unique(np.vstack([triples, [[2, 1, 2]]]), axis=0)
    E, W = rng.normal(size=(n_ent, dim)), rng.normal(size=(2 * n_rel, dim))
    return triples, E, W


def test_reciprocal_adds_the_inverse_queries():
    q = kge.reciprocal(np.array([[0, 1, 2], [3, 0, 4]]), n_relations=5)
    np.testing.assert_array_equal(q, [[0, 1, 2], [3, 0, 4], [2, 6, 0], [4, 5, 3]])


@pytest.mark.parametrize("name", ["transe", "transe-l1", "distmult"])
@pytest.mark.parametrize("padded", [False, True])
def test_1n_loss_and_gradients_equal_the_jax_twin(rng, name, padded):
    m = kge.get_model(name)
    triples, E, W = _tiny(rng)
    n_ent, n_rel = E.shape[0], W.shape[0]
    queries = kge.reciprocal(triples, n_rel // 2)
    Q = kge.queries_relation(queries, n_ent, n_rel, size=len(queries) + 9 if padded else None)
    assert len(Q) == len(queries) + (9 if padded else 0)
    loss = kge.one_n_loss_program(m, Q, kge.one_hot_relation(n_ent))
    Entity, Rel = wb.from_tensor(E, keys=("e",), name="Entity"), wb.from_tensor(W, keys=("r",), name="Rel")
    report = check.against_jax(loss, kge.one_n_loss_twin(m, queries), Entity, Rel, rtol=1e-9)
    assert report.ok, str(report)
    assert [r.quantity for r in report.rows] == ["output", "grad Entity", "grad Rel"]


def test_transe_1n_gradient_is_finite_where_a_query_hits_an_entity(rng):
    """x = e_h + w_r equal to an entity's vector: ||x - e|| = 0, where sqrt has an infinite slope.
    The distance is floored at 1e-12 inside the square root, so the gradient stays finite, and
    elsewhere it equals the twin's."""
    m = kge.get_model("transe")
    E, W = rng.normal(size=(4, 3)), rng.normal(size=(2, 3))
    W[0] = E[1] - E[0]  # (0, 0, ?) lands exactly on entity 1
    queries = np.array([[0, 0, 2], [2, 1, 3]])
    Q = kge.queries_relation(queries, 4, 2)
    value, (gE, gW) = wb.value_and_grad(kge.one_n_loss_program(m, Q, kge.one_hot_relation(4)),
                                        argnums=(0, 1))(wb.from_tensor(E, keys=("e",)), wb.from_tensor(W, keys=("r",)))
    assert np.isfinite(gE.to_tensor()).all() and np.isfinite(gW.to_tensor()).all()
    want = float(kge.one_n_loss_twin(m, queries)(E, W))
    assert float(value.to_tensor()) == pytest.approx(want, rel=1e-5)


def test_1n_loss_is_stable_for_large_scores(rng):
    """Scores in the thousands: the log-sum-exp inside one kernel is max-shifted."""
    m = kge.get_model("distmult")
    triples, E, W = _tiny(rng)
    E, W = 30 * E, 30 * W
    queries = kge.reciprocal(triples, W.shape[0] // 2)
    Q = kge.queries_relation(queries, E.shape[0], W.shape[0])
    value, (gE, gW) = wb.value_and_grad(kge.one_n_loss_program(m, Q, kge.one_hot_relation(E.shape[0])),
                                        argnums=(0, 1))(wb.from_tensor(E, keys=("e",)), wb.from_tensor(W, keys=("r",)))
    want = float(kge.one_n_loss_twin(m, queries)(E, W))
    assert want > 100 and np.isfinite(gE.to_tensor()).all() and np.isfinite(gW.to_tensor()).all()
    assert float(value.to_tensor()) == pytest.approx(want, rel=1e-9)


def test_padding_needs_room_for_every_entity_and_relation():
    with pytest.raises(ValueError, match="size >= 12"):
        kge.queries_relation(np.array([[0, 0, 1], [1, 1, 0]]), 4, 10, size=5)


def test_compiled_step_equals_the_interpreter_across_batches(rng):
    m = kge.get_model("distmult")
    triples, E, W = _tiny(rng)
    n_ent, n_rel = E.shape[0], W.shape[0]
    queries = kge.reciprocal(triples, n_rel // 2)
    OneHot = kge.one_hot_relation(n_ent)

    def batch_loss(Entity, Rel, Query):
        return kge.one_n_loss_program(m, Query, OneHot)(Entity, Rel)

    Entity, Rel = wb.from_tensor(E, keys=("e",), name="Entity"), wb.from_tensor(W, keys=("r",), name="Rel")
    step = wb.jit(wb.value_and_grad(batch_loss, argnums=(0, 1)), prune=False)
    for rows in (queries[:5], queries[5:10], queries[10:14]):  # the last batch smaller
        Q = kge.queries_relation(rows, n_ent, n_rel, size=5 + n_rel)
        got, (gE, gW) = step(Entity, Rel, Q)
        twin = kge.one_n_loss_twin(m, rows)

        want, (wE, wW) = jax.value_and_grad(twin, argnums=(0, 1))(E, W)
        np.testing.assert_allclose(float(got.to_tensor()), float(want), rtol=1e-9)
        np.testing.assert_allclose(gE.to_tensor(), wE, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(gW.to_tensor(), wW, rtol=1e-9, atol=1e-12)


def test_reciprocal_ranks_predict_heads_through_the_inverse_relation():
    """DistMult in one dimension, entity values 1..4; relation 0 scores 1, its inverse (row 1)
    scores -1. Query (0, 0, 1): the tail ranking is as without inverses (filtered rank 2). The
    head is predicted from (1, inverse, ?): scores -2, -4, -6, -8, the true head 0 scores -2 and
    is first."""
    m = kge.get_model("distmult")
    E, W = np.array([[1.0], [2.0], [3.0], [4.0]]), np.array([[1.0], [-1.0]])
    query, known = np.array([[0, 0, 1]]), np.array([[0, 0, 1], [0, 0, 3], [2, 0, 1]])
    np.testing.assert_array_equal(kge.filtered_ranks(m, E, W, query, known, reciprocal=True), [2.0, 1.0])
    metrics = kge.Metrics.from_ranks([2.0, 1.0])
    assert (metrics.tail_mrr, metrics.head_mrr, metrics.mrr) == (0.5, 1.0, 0.75)


def test_1n_training_on_nations_beats_random_embeddings():
    T = knowledge.load("nations")
    h = kge.train(T, model="distmult", dim=32, epochs=4, lr=0.01, batch_size=256, seed=0,
                  eval_every=2, patience=2)
    assert h.loss == "1-n" and h.relation.extents == (2 * T.n_relations,)
    assert len(h.losses) == 4 and h.losses[-1] < h.losses[0]
    assert [e for e, _ in h.validation] == [2, 4] and h.best_epoch in (2, 4)
    assert h.metrics.mrr > h.initial.mrr + 0.1
    assert np.isfinite(h.metrics.head_mrr) and np.isfinite(h.metrics.tail_mrr)


def test_transe_l1_1n_training_on_nations_beats_random_embeddings():
    T = knowledge.load("nations")
    h = kge.train(T, model="transe-l1", dim=16, epochs=3, lr=0.02, batch_size=512, seed=0,
                  normalize=False, eval_every=0)
    assert h.model == "TransE-L1" and h.losses[-1] < h.losses[0]
    assert h.metrics.mrr > h.initial.mrr + 0.05


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="pairs"):
        kge.train(knowledge.load("nations"), loss="hinge", epochs=1)
