"""The resident runner (one Ray actor per partition, ``wb.RayRunner``) computes what the local
executor computes (float64, 1e-9, whatever the row order): the example programs, the GCN on
relations in memory and on Parquet datasets its actors read (the driver reads none), optimizer
steps of partitioned parameters where they live, repeated steps that reuse the key-side work, a
worker killed during an epoch (``test_ray_compare.py`` runs the contract suite and a sample of
the random grid against it)."""
import gc

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest

import workbench as wb
from workbench import programs
from workbench.check import assert_relations_equal as assert_same
from workbench.datasets import graphs, knowledge
from workbench.models import gcn, kge
from workbench.optim import SGD, Adam

ray = pytest.importorskip("ray")
from workbench.execute.partition import MAX_PARTITIONS, split_piece  # noqa: E402
from workbench.execute.ray import RayRunner as TaskRunner  # noqa: E402
from workbench.execute.ray_resident import ResidentRunner  # noqa: E402
from workbench import storage  # noqa: E402

jax.config.update("jax_enable_x64", True)
P = 3


@pytest.fixture(scope="module")
def runner():
    with wb.RayRunner(partitions=P, num_cpus=2) as r:
        yield r
    assert not ray.is_initialized()  # shut down: nothing left running


def check_value_and_grad(runner, f, rels, argnums):
    value, grads = wb.value_and_grad(f, argnums)(*rels)
    rvalue, rgrads = wb.value_and_grad(f, argnums, executor=runner)(*rels)
    assert_same(rvalue, value)
    for g, rg in zip(grads, rgrads):
        assert_same(rg, g)
    return rvalue, rgrads


@pytest.mark.parametrize("partitions, error", [
    (0, ValueError), (MAX_PARTITIONS + 1, ValueError), (True, TypeError), (2.0, TypeError), ("4", TypeError)])
def test_partitions_are_checked_before_any_actor_starts(partitions, error):
    for make in (wb.RayRunner, ResidentRunner, TaskRunner):
        with pytest.raises(error, match=rf"{make.__name__}: partitions must be .*partitions=4"):
            make(partitions=partitions)
    piece = (pl.DataFrame({"i": [0, 1, 2]}), np.zeros((3, 2)))
    with pytest.raises(error, match=r"split_piece: partitions must be .*partitions=4"):
        split_piece(piece, ("i",), partitions)


def test_wb_rayrunner_is_the_resident_runner_on_loopback(runner):
    assert wb.RayRunner is ResidentRunner and isinstance(runner, ResidentRunner)
    assert all(n["NodeManagerAddress"] == "127.0.0.1" for n in ray.nodes())
    assert len(set(runner.pids())) == P  # one actor process per partition


@pytest.mark.parametrize("index", range(len(programs.EXAMPLES)),
                         ids=[m.__name__ for m in programs.EXAMPLES])
def test_example_programs_twice(runner, index):
    """The second run finds every key frame equal to the first's and reuses the matches."""
    prog = programs.examples(seed=3, dtype="float64")[index]
    for _ in range(2):
        check_value_and_grad(runner, prog.fn, prog.rels, prog.argnums)


def test_a_projection_that_collides_across_partitions_is_refused(runner, rng):
    X = wb.from_matrix(rng.normal(size=(4, 4)), block=(1, 1), dtype="float64")
    with pytest.raises(wb.PlanError, match="output keys must stay unique"):
        wb.value_and_grad(lambda X: programs.sum_of_squares(wb.select(X, keys={"row": "row"})),
                          executor=runner)(X)


@pytest.fixture(scope="module")
def graph_dataset(tmp_path_factory):
    g = graphs.sbm(240, 3, 6, 7, seed=2, n_val=40, n_test=80)
    path = tmp_path_factory.mktemp("graph") / "sbm"
    graphs.graph_to_dataset(g, path, partitions=6, dtype="float64")  # 6 shards for 3 partitions
    return g, path


def test_gcn_on_datasets_the_driver_never_reads(runner, graph_dataset):
    """Node, Edge and the targets name Parquet datasets: each actor reads its shards; the loss
    and gradients (Node, W1, W2) are the local executor's on the same data held in memory."""
    g, path = graph_dataset
    rels, targets = graphs.graph_relations(path)
    W1, W2 = gcn.init_params(g.n_features, 5, g.n_classes, seed=0, dtype="float64")
    mem = graphs.to_relations(g, dtype="float64")
    want, wgrads = wb.value_and_grad(gcn.loss_program(mem, None, None, 5e-4), argnums=(0, 1, 2))(mem.node, W1, W2)
    loss = gcn.loss_program(rels, None, None, 5e-4, targets)
    for _ in range(2):
        got, grads = wb.value_and_grad(loss, argnums=(0, 1, 2), executor=runner)(rels.node, W1, W2)
        assert_same(got, want)
        for a, b in zip(grads, wgrads):
            assert_same(a, b)
    for r in (rels.node, rels.edge, targets):
        assert r.node.table._table is None, f"the driver read dataset '{r.name}'"


def test_a_step_frees_its_intermediates_when_it_returns(runner, graph_dataset):
    """After value_and_grad returns, the actors hold the stored relations (the data, the step's
    weights) and nothing of the step's forward and backward: the count holds from step to step,
    and dropping the loss and gradients frees no more than their own slots and the backward's seed."""
    g, path = graph_dataset
    rels, targets = graphs.graph_relations(path)
    W1, W2 = gcn.init_params(g.n_features, 5, g.n_classes, seed=0, dtype="float64")
    step = wb.value_and_grad(gcn.loss_program(rels, None, None, 5e-4, targets), argnums=(1, 2), executor=runner)
    opt = SGD(lr=0.1)
    state, held = opt.init((W1, W2)), []
    for _ in range(3):
        inputs = (W1, W2)  # held while they live (the results' plans read them too)
        loss, grads = step(rels.node, *inputs)
        (W1, W2), state = opt.update(inputs, grads, state)
        held.append(runner.held())
    assert held[-1] == held[-2], held
    results = (loss, *grads)
    result_bytes = sum(np.asarray(r.to_tensor()).nbytes for r in results)
    n_results = len(results)
    del loss, grads, results
    gc.collect()
    after = runner.held()
    # what goes with the results: their own slots, and the backward's one-tuple seed (cotangent 1)
    assert all(n0 - n1 <= n_results + 1 for (n0, _), (n1, _) in zip(held[-1], after)), (held[-1], after)
    assert sum(b for _, b in held[-1]) - sum(b for _, b in after) <= result_bytes + 64, (held[-1], after)


def test_gcn_with_dropout_masks_built_in_memory(runner):
    graph = graphs.karate_club()
    rels = graphs.to_relations(graph, dtype="float64")
    W1, W2 = gcn.init_params(graph.n_features, 8, graph.n_classes, seed=0, dtype="float64")
    rng = np.random.default_rng(0)
    for _ in range(2):  # new masks each step: new key frames equal to the last ones
        m1 = gcn.dropout_mask(rels.node, 0.5, rng, "M1")
        m2 = gcn.dropout_mask(gcn.mask_template(graph.n_nodes, 8, "float64"), 0.5, rng, "M2")
        check_value_and_grad(runner, gcn.loss_program(rels, m1, m2, weight_decay=5e-4),
                             (rels.node, W1, W2), (0, 1, 2))


def test_dropout_masks_are_drawn_by_the_actors(runner):
    """Masks given as arguments (``masked_loss_program``) are drawn by each actor over the node
    keys it holds: the driver never draws them, and the step equals the local one."""
    graph = graphs.karate_club()
    rels = graphs.to_relations(graph, dtype="float64")
    W1, W2 = gcn.init_params(graph.n_features, 8, graph.n_classes, seed=0, dtype="float64")
    program = gcn.masked_loss_program(rels, 5e-4)
    for seed in (3, 4):
        m1 = gcn.dropout_mask(rels.node, 0.5, seed, "M1")
        m2 = gcn.dropout_mask(rels.node, 0.5, seed + 10, "M2", width=8)
        loss, grads = wb.value_and_grad(program, argnums=(1, 2), executor=runner)(rels.node, W1, W2, m1, m2)
        loss, grads = float(loss.to_tensor()), [g.to_tensor() for g in grads]
        assert m1.node.table._table is None and m2.node.table._table is None  # not drawn on the driver
        want_loss, want = wb.value_and_grad(program, argnums=(1, 2))(rels.node, W1, W2, m1, m2)
        np.testing.assert_allclose(loss, float(want_loss.to_tensor()), rtol=1e-9)
        for g, w in zip(grads, want):
            np.testing.assert_allclose(g, w.to_tensor(), rtol=1e-9, atol=1e-12)


def test_backward_drops_intermediates_after_their_last_read(runner, monkeypatch):
    """In the backward run (the last of a step) an intermediate goes as soon as its last reader
    has run, before the step ends: never a stored relation's part, nor a result's."""
    graph = graphs.karate_club()
    rels = graphs.to_relations(graph, dtype="float64")
    W1, W2 = gcn.init_params(graph.n_features, 8, graph.n_classes, seed=0, dtype="float64")
    released, finished = [], []
    real_release, real_finish = runner.release, runner.finish
    monkeypatch.setattr(runner, "release", lambda parts: (released.append(list(parts)), real_release(parts)))
    monkeypatch.setattr(runner, "finish", lambda ctx, tables: (finished.append(len(released)),
                                                                real_finish(ctx, tables)))
    program = gcn.loss_program(rels, None, None, 5e-4)
    loss, grads = wb.value_and_grad(program, argnums=(1, 2), executor=runner)(rels.node, W1, W2)
    early = [p for batch in released[:finished[0]] for p in batch]
    assert len(early) >= 4 * runner.partitions, released  # several intermediates, in every partition
    kept = set(runner.held_elsewhere()) | {p for g in grads for p in g.table().rel.parts}
    assert not kept & set(early)
    want_loss, want = wb.value_and_grad(program, argnums=(1, 2))(rels.node, W1, W2)
    np.testing.assert_allclose(float(loss.to_tensor()), float(want_loss.to_tensor()), rtol=1e-9)
    for g, w in zip(grads, want):
        np.testing.assert_allclose(g.to_tensor(), w.to_tensor(), rtol=1e-9, atol=1e-12)


def _factorization(rng, n=13, m=11, rank=3, density=0.5):
    """NNMF's loss at the observed entries: sum over (i, j) of (<U_i, V_j> - x_ij)^2."""
    mask = rng.uniform(size=(n, m)) < density
    i, j = np.nonzero(mask)
    X = wb.from_frame(pl.DataFrame({"i": i, "j": j, "x": rng.uniform(size=len(i))}), keys=("i", "j"),
                      value="x", extents=(n, m), dtype="float64", name="X")
    U = wb.from_tensor(rng.uniform(size=(n, rank)), keys=("i",), dtype="float64", name="U")
    V = wb.from_tensor(rng.uniform(size=(m, rank)), keys=("j",), dtype="float64", name="V")

    def loss(U, V):
        XU = wb.join(X, U, on={"i": "i"}, keys={"i": "left.i", "j": "left.j"},
                     kernel=lambda x, u: jnp.concatenate([u, x[None]]))
        E = wb.join(XU, V, on={"j": "j"}, keys={"i": "left.i", "j": "left.j"},
                    kernel=lambda xu, v: (jnp.dot(xu[:-1], v) - xu[-1]) ** 2)
        return wb.aggregate(E, by=())
    return loss, U, V


@pytest.mark.parametrize("model", ["distmult", "transe-l1"])
def test_kge_on_datasets_equals_local(runner, tmp_path, model):
    """The third model: a KGE loss (softplus(-score) over the stored triples plus softplus(score)
    over random ones) read from Parquet datasets; the loss and both embedding gradients on the
    runner equal the local executor's (float64)."""
    n_entities, n_relations, dim = 60, 5, 8
    for name, seed in (("pos", 0), ("neg", 1)):
        knowledge.synthetic_dataset(tmp_path / name, n_entities, n_relations, 400, partitions=4,
                                    seed=seed, dtype="float64")
    pos = wb.from_dataset(tmp_path / "pos", name="Pos")
    neg = wb.from_dataset(tmp_path / "neg", name="Neg")
    m = kge.get_model(model)
    E, R = kge.init_embeddings(m, n_entities, n_relations, dim, np.random.default_rng(0))
    Entity = wb.from_tensor(E, keys=("e",), dtype="float64", name="Entity")
    Rel = wb.from_tensor(R, keys=("r",), dtype="float64", name="Rel")
    loss = kge.logistic_loss_program(m, pos, neg)
    value, (gE, gR) = check_value_and_grad(runner, loss, (Entity, Rel), (0, 1))
    assert float(value.to_tensor()) > 0 and float(jnp.abs(gE.table().values).max()) > 0


@pytest.mark.parametrize("rule", ["sgd", "adam"])
def test_partitioned_parameters_update_where_they_live(runner, rng, rule):
    """Three steps of NNMF-style training: the gradients of U and V stay on the actors, which
    apply the optimizer step (projected onto >= 0); the parameters equal workbench.optim's."""
    loss, U, V = _factorization(rng)
    opt = SGD(lr=0.05, momentum=0.5) if rule == "sgd" else Adam(lr=0.05)
    hyper = dict(lr=0.05, momentum=0.5) if rule == "sgd" else dict(lr=0.05)
    lu, lv, state = U, V, opt.init((U, V))
    ru, rv, rstate = U, V, None
    for _ in range(3):
        lval, lgrads = wb.value_and_grad(loss, argnums=(0, 1))(lu, lv)
        (lu, lv), state = opt.update((lu, lv), lgrads, state)
        lu, lv = (p.with_values(jnp.maximum(p.table().values, 0.0)) for p in (lu, lv))
        rval, rgrads = wb.value_and_grad(loss, argnums=(0, 1), executor=runner)(ru, rv)
        assert_same(rval, lval)
        (ru, rv), rstate = runner.update((ru, rv), rgrads, rule, rstate, nonnegative=True, **hyper)
    assert_same(ru, lu)
    assert_same(rv, lv)


def test_an_actor_killed_during_an_epoch(runner, graph_dataset):
    """Actor 1 is killed between the forward and the backward run, and again in the middle of a
    later run: Ray restarts it, it reads its shards again, the run is repeated, and the loss and
    gradients are those of an undisturbed epoch."""
    g, path = graph_dataset
    rels, targets = graphs.graph_relations(path)
    W1, W2 = gcn.init_params(g.n_features, 5, g.n_classes, seed=1, dtype="float64")
    loss = gcn.loss_program(rels, None, None, 0.0, targets)
    want, wgrads = wb.value_and_grad(loss, argnums=(1, 2), executor=runner)(rels.node, W1, W2)
    pid = runner.pids()[1]
    restarts = runner.restarts
    calls = {"run": 0, "flush": 0}
    run, flush = runner.run, runner._flush

    def killing_run(*args, **kwargs):
        calls["run"] += 1
        if calls["run"] == 2:  # the backward run of the first epoch
            ray.kill(runner.actor(1), no_restart=False)
        return run(*args, **kwargs)

    def killing_flush(p, n_out=0):
        if calls["run"] == 3:  # the forward run of the second epoch, after its third call
            calls["flush"] += 1
            if calls["flush"] == 3:
                ray.kill(runner.actor(1), no_restart=False)
        return flush(p, n_out)

    runner.run, runner._flush = killing_run, killing_flush
    try:
        for _ in range(2):
            got, grads = wb.value_and_grad(loss, argnums=(1, 2), executor=runner)(rels.node, W1, W2)
            assert float(got.to_tensor()) == float(want.to_tensor())  # identical, not only close
            for a, b in zip(grads, wgrads):
                np.testing.assert_array_equal(a.to_tensor(), b.to_tensor())
    finally:
        del runner.run, runner._flush
    assert runner.restarts >= restarts + 2
    assert runner.pids()[1] != pid  # a new process, which read its shards again


def test_a_dataset_of_many_shards_loads_with_a_bar_of_rows_per_partition(runner, tmp_path, rng, capsys):
    """Ten tuples written as MAX_SHARDS shards (a count P = 3 does not divide, so every actor
    scans the shards that hold tuples): the loss and gradient are the local executor's, and with
    progress on, the driver shows the rows each partition's actor loaded."""
    X = wb.from_tensor(rng.normal(size=(10, 3)), keys=("i",), dtype="float64", name="X")
    for name in ("Quiet", "Shown"):
        storage.write_relation(X.table(), tmp_path / name, ("i",), name=name, partitions=storage.MAX_SHARDS)
    f = lambda X: programs.sum_of_squares(wb.select(X, kernel=jnp.sin))  # noqa: E731
    capsys.readouterr()
    check_value_and_grad(runner, f, (wb.from_dataset(tmp_path / "Quiet"),), (0,))
    assert "loading" not in capsys.readouterr().err  # off by default
    runner.progress = True
    try:
        check_value_and_grad(runner, f, (wb.from_dataset(tmp_path / "Shown"),), (0,))
    finally:
        runner.progress = False
    err = capsys.readouterr().err
    assert f"loading X hashed on i into {P} partitions" in err  # X: the name of f's argument
    assert "10/10" in err and "partition=" in err
