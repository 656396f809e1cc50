"""The partitioned Ray runner computes what the local executor computes: outputs and RJP gradients
of the example programs and the GCN loss, keyless aggregates, broadcast joins, empty partitions.
Relations are compared without regard to row order."""
import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest

import workbench as wb
from workbench.check import assert_relations_equal as assert_same
from workbench import programs
from workbench.datasets import graphs
from workbench.models import gcn
from workbench.physical import JoinAggregate, PairJoin

ray = pytest.importorskip("ray")
from workbench.execute.ray import RayRunner  # noqa: E402

P = 3


@pytest.fixture(scope="module")
def runner():
    with RayRunner(partitions=P, num_cpus=2) as r:
        yield r
    assert not ray.is_initialized()  # shut down: nothing left running


def check_value_and_grad(runner, f, rels, argnums):
    value, grads = wb.value_and_grad(f, argnums)(*rels)
    rvalue, rgrads = wb.value_and_grad(f, argnums, executor=runner)(*rels)
    assert_same(value, rvalue)
    for g, rg in zip(grads, rgrads):
        assert_same(g, rg)


def test_ray_runs_on_loopback(runner):
    assert all(n["NodeManagerAddress"] == "127.0.0.1" for n in ray.nodes())


@pytest.mark.parametrize("index", range(len(programs.EXAMPLES)),
                         ids=[m.__name__ for m in programs.EXAMPLES])
def test_example_programs_match_the_local_executor(runner, index):
    prog = programs.examples(seed=3, dtype="float64")[index]
    check_value_and_grad(runner, prog.fn, prog.rels, prog.argnums)


def test_gcn_model_loss_with_dropout_and_weight_decay(runner):
    graph = graphs.karate_club()
    rels = graphs.to_relations(graph, dtype="float64")
    W1, W2 = gcn.init_params(graph.n_features, 8, graph.n_classes, seed=0, dtype="float64")
    rng = np.random.default_rng(0)
    m1 = gcn.dropout_mask(rels.node, 0.5, rng, "M1")
    m2 = gcn.dropout_mask(gcn.mask_template(graph.n_nodes, 8, "float64"), 0.5, rng, "M2")
    loss = gcn.loss_program(rels, m1, m2, weight_decay=5e-4)
    for _ in range(2):  # the second run reads the stored relations' partitions the first made
        check_value_and_grad(runner, loss, (rels.node, W1, W2), (0, 1, 2))


def test_keyless_sum_and_mean_over_a_keyed_relation(runner, rng):
    X = wb.from_tensor(rng.normal(size=(11, 3)), keys=("i",), dtype="float64")
    for kernel in ("sum", "mean"):
        f = lambda X, kernel=kernel: wb.aggregate(wb.select(X, kernel=lambda v: jnp.sum(v ** 3)),
                                                   by=(), kernel=kernel)
        check_value_and_grad(runner, f, (X,), (0,))


def test_grouped_mean_needs_a_shuffle(runner, rng):
    x = rng.normal(size=(4, 5, 2))
    frame = pl.DataFrame({"a": np.repeat(np.arange(4), 5), "b": np.tile(np.arange(5), 4), "v": x.reshape(20, 2)})
    X = wb.from_frame(frame, keys=("a", "b"), value="v", dtype="float64")
    f = lambda X: programs.sum_of_squares(wb.aggregate(X, by=("b",), kernel="mean"))
    check_value_and_grad(runner, f, (X,), (0,))


def test_cross_join_with_a_weight_and_between_keyed_relations(runner, rng):
    X = wb.from_tensor(rng.normal(size=(7, 3)), keys=("i",), dtype="float64")
    W = wb.from_tensor(rng.normal(size=(3, 2)), dtype="float64")  # one tuple: broadcast
    V = wb.from_tensor(rng.normal(size=(4, 2)), keys=("j",), dtype="float64")

    def f(X, W, V):
        H = wb.join(X, W, on={}, keys={"i": "left.i"}, kernel=jnp.matmul)
        C = wb.join(H, V, on={}, keys={"i": "left.i", "j": "right.j"}, kernel=lambda h, v: jnp.dot(h, v))
        return programs.sum_of_squares(C)

    check_value_and_grad(runner, f, (X, W, V), (0, 1, 2))


def test_empty_partitions_and_an_empty_relation(runner, rng):
    A = wb.from_matrix(rng.normal(size=(2, 2)), block=(1, 2), dtype="float64")  # 2 tuples, 3 partitions
    B = wb.from_matrix(rng.normal(size=(2, 3)), block=(2, 3), dtype="float64")  # 1 tuple
    f = lambda A, B: programs.sum_of_squares(programs.matmul(A, B))
    check_value_and_grad(runner, f, (A, B), (0, 1))
    X = wb.from_tensor(rng.normal(size=(5, 2)), keys=("i",), dtype="float64")
    none = lambda X: programs.sum_of_squares(wb.select(X, pred=pl.col("i") > 10))  # no tuple survives
    check_value_and_grad(runner, none, (X,), (0,))


def test_vjp_with_a_keyed_cotangent(runner, rng):
    prog = programs.examples(seed=1, dtype="float64")[0]
    out, pullback = wb.vjp(programs.matmul, *prog.rels)
    rout, rpullback = wb.vjp(programs.matmul, *prog.rels, executor=runner)
    assert_same(out, rout)
    ct = out.with_values(rng.normal(size=out.table().values.shape))
    for g, rg in zip(pullback(ct), rpullback(ct)):
        assert_same(g, rg)


def test_a_projection_that_collides_across_partitions_is_refused(runner, rng):
    X = wb.from_matrix(rng.normal(size=(4, 4)), block=(1, 1), dtype="float64")
    with pytest.raises(wb.PlanError, match="output keys must stay unique"):
        wb.value_and_grad(lambda X: programs.sum_of_squares(wb.select(X, keys={"row": "row"})), executor=runner)(X)


def test_explain_analyze_shows_rows_per_partition(runner):
    prog = programs.examples(dtype="float64")[3]  # the GCN
    plans = wb.plans(prog.fn, *prog.rels, argnums=prog.argnums, analyze=True, executor=runner)
    text = plans.to_text(analyze=True)
    assert "partitions=[" in text
    for node, st in plans.forward.stats.items():
        assert len(st.partitions) == P and sum(st.partitions) == st.rows
    # the join RJPs ran as the partitioned physical nodes, not as packed pairs
    assert any(isinstance(n, PairJoin) for n in plans.backward.stats)
    assert any(isinstance(n, JoinAggregate) for n in plans.backward.stats)


def test_a_predicate_means_the_same_on_the_runner_as_in_numpy(runner):
    """Six tuples over the partitions: a row-wise predicate gives numpy's loss and gradient; one
    that reads the whole relation (the maximum key) is refused before any partition runs it."""
    import polars as pl

    x = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0])
    X = wb.from_tensor(x, keys=("i",), name="X")
    keep = (np.arange(6) % 2 == 0) | (np.arange(6) == 5)
    f = lambda X: programs.sum_of_squares(wb.select(X, pred=(pl.col("i") % 2 == 0) | (pl.col("i") == 5)))  # noqa: E731
    loss, g = wb.value_and_grad(f, executor=runner)(X)
    assert float(loss.to_tensor()) == pytest.approx(float(np.sum(x[keep] ** 2)), rel=1e-12)
    np.testing.assert_allclose(g.to_tensor(), np.where(keep, 2 * x, 0.0), rtol=1e-12)
    with pytest.raises(wb.PlanError, match="not row-wise"):
        wb.value_and_grad(lambda X: programs.sum_of_squares(
            wb.select(X, pred=pl.col("i") == pl.col("i").max())), executor=runner)(X)


def test_more_partitions_than_the_cluster_can_use_are_refused_at_start(runner):
    """Ray is already running (the fixture's); a second runner asking for far more partitions
    than CPUs is refused when it enters, and leaves that Ray running."""
    from workbench.execute.ray import PARTITIONS_PER_CPU

    cpus = int(ray.cluster_resources()["CPU"])
    with pytest.raises(ValueError, match=rf"RayRunner: partitions={PARTITIONS_PER_CPU * cpus + 1} on a "
                                         rf"cluster of {cpus} CPU\(s\).*at most {PARTITIONS_PER_CPU * cpus}"):
        with RayRunner(partitions=PARTITIONS_PER_CPU * cpus + 1):
            pass
    assert ray.is_initialized()


def test_a_stored_relation_is_read_with_a_bar_when_asked(runner, rng, tmp_path, capsys):
    """The task runner reads a dataset on the driver and splits it: with progress on, a bar of
    the rows read; off (the default), nothing is written. The runner reads first (the local
    executor's read would be kept and reused)."""
    from workbench import storage

    X = wb.from_tensor(rng.normal(size=(12, 2)), keys=("i",), dtype="float64", name="X")
    want = wb.value_and_grad(programs.sum_of_squares)(X)
    for name, progress in (("Quiet", False), ("Shown", True)):
        storage.write_relation(X.table(), tmp_path / name, ("i",), name=name, partitions=5)
        capsys.readouterr()
        runner.progress = progress
        try:
            got = wb.value_and_grad(programs.sum_of_squares, executor=runner)(wb.from_dataset(tmp_path / name))
        finally:
            runner.progress = False
        err = capsys.readouterr().err
        assert ("reading " + name in err and "12/12" in err) if progress else "reading" not in err
        for a, b in zip(got, want):
            assert_same(a, b)
