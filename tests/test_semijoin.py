"""Semi-join reduction in the compiled executor: when the outputs read only some tuples (a loss
over a few labelled nodes), only the rows of each intermediate that can reach an output are
computed. Results equal the unpruned plan and the interpreter; ``Timings`` counts the rows."""
import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest

import workbench as wb
from workbench.check import assert_relations_equal as same
from workbench import programs
from workbench.api import trace
from workbench.datasets import graphs
from workbench.execute.compiled import CompiledPlan
from workbench.models import gcn
from workbench.ops import add_node
from workbench.rjp import gradient_nodes, seed

jax.config.update("jax_enable_x64", True)


def check(f, rels, argnums):
    """wb.jit(value_and_grad(f)) equals the interpreter; the pruned plan equals the unpruned one
    built from the same nodes. Returns the jitted step's Timings."""
    want, want_grads = wb.value_and_grad(f, argnums=argnums)(*rels)
    step = wb.jit(wb.value_and_grad(f, argnums=argnums))
    got, got_grads = step(*rels)
    same(want, got)
    for i, w, g in zip(argnums, want_grads, got_grads):
        # the compiled gradient is lined up with its parameter (zeros where the loss does not
        # reach); the interpreter's holds the reached tuples only
        assert g.table().keys is rels[i].table().keys
        np.testing.assert_allclose(g.to_tensor(), w.to_tensor(), rtol=1e-9, atol=1e-12)
    # the same outputs from a plan built without pruning
    leaves, out = trace(f, *rels)
    nodes = [out.node] + gradient_nodes(out.node, seed(out.node), [leaves[i].node for i in argnums])
    align = [None] + [rels[i].table() for i in argnums]
    args = [leaf.node for leaf in leaves]
    values = [r.table().values for r in rels]
    pruned = CompiledPlan(nodes, args, align)(values)
    full_plan = CompiledPlan(nodes, args, align, prune=False)
    assert full_plan.timings.rows_computed == full_plan.timings.rows_full
    for a, b in zip(pruned, full_plan(values)):
        same_table(a, b)
    return step.timings


def same_table(a, b, rtol=1e-9):
    """Two output tables hold the same tuples, whatever the row order."""
    assert a.keys.columns == b.keys.columns and a.height == b.height
    va, vb = np.asarray(a.values), np.asarray(b.values)
    if a.keys.width:
        cols = list(a.keys.columns)
        ia = a.keys.with_row_index("_r").sort(cols)["_r"].to_numpy()
        ib = b.keys.with_row_index("_r").sort(cols)["_r"].to_numpy()
        assert a.keys[ia].equals(b.keys[ib])
        va, vb = va[ia], vb[ib]
    np.testing.assert_allclose(va, vb, rtol=rtol, atol=1e-12)


def labelled_graph(n_nodes=300, n_edges=600, labelled=12, seed_=0):
    g = graphs.sbm(n_nodes, 3, 2 * n_edges / n_nodes, 8, n_edges=n_edges, seed=seed_, name="sbm")
    train = np.zeros(g.n_nodes, bool)
    train[np.random.default_rng(seed_).permutation(g.n_nodes)[:labelled]] = True
    return graphs.Graph("sbm-few", g.n_nodes, g.src, g.dst, g.features, g.labels, g.n_classes, train,
                        np.zeros(g.n_nodes, bool), np.zeros(g.n_nodes, bool))


def components_graph(n_paths=40, length=25, labelled_paths=(3, 17), per_path=2, seed_=0):
    """Disjoint paths; a few nodes of two of them are labelled."""
    rng = np.random.default_rng(seed_)
    n = n_paths * length
    a = np.concatenate([np.arange(p * length, (p + 1) * length - 1) for p in range(n_paths)])
    src, dst = np.concatenate([a, a + 1]), np.concatenate([a + 1, a])
    train = np.zeros(n, bool)
    for p in labelled_paths:
        train[p * length + rng.choice(length, per_path, replace=False)] = True
    return graphs.Graph("paths", n, src, dst, rng.normal(size=(n, 6)), rng.integers(0, 3, n), 3, train,
                        np.zeros(n, bool), np.zeros(n, bool))


# ---- (a) the GCN whose loss reads a few labelled nodes ----------------------------------------------

@pytest.mark.parametrize("dropout", [False, True])
def test_gcn_few_labels_equals_interpreter(dropout):
    g = labelled_graph()
    rels = graphs.to_relations(g)
    W1, W2 = gcn.init_params(g.n_features, 5, g.n_classes, seed=0)
    if dropout:  # masks as arguments: joined on id with the layers, pruned with them
        rng = np.random.default_rng(1)
        M1 = gcn.dropout_mask(rels.node, 0.5, rng, "M1")
        M2 = gcn.dropout_mask(gcn.mask_template(g.n_nodes, 5), 0.5, rng, "M2")
        timings = check(gcn.masked_loss_program(rels, weight_decay=5e-4), (rels.node, W1, W2, M1, M2),
                        (1, 2))
    else:
        timings = check(gcn.loss_program(rels), (rels.node, W1, W2), (1, 2))
    assert 0 < timings.rows_computed < timings.rows_full
    assert "rows computed" in str(timings)


def test_programs_gcn_with_a_few_targets_and_the_node_gradient():
    """programs.gcn with labels on 3 nodes; the gradient of Node (an output: every row kept, rows
    the loss never reaches are zeros) as well as W1, W2."""
    prog = programs.gcn(np.random.default_rng(0), n=12, n_edges=20)
    Node, Y, W1, W2 = prog.rels
    Y3 = wb.select(Y, pred=pl.col("id").is_in([1, 5, 9]))
    Y3 = Y3.with_values(Y3.table().values, name="Y")
    timings = check(prog.fn, (Node, Y3, W1, W2), (0, 2, 3))
    assert timings.rows_computed < timings.rows_full


# ---- (b) a small neighbourhood: the pruning is substantial ------------------------------------------

def test_paths_prune_to_the_two_hop_neighbourhood():
    g = components_graph()
    rels = graphs.to_relations(g)
    W1, W2 = gcn.init_params(g.n_features, 4, g.n_classes, seed=0)
    timings = check(gcn.loss_program(rels), (rels.node, W1, W2), (1, 2))
    # 4 labelled nodes of 1000, each with at most 5 nodes within two hops on a path
    assert timings.rows_computed < 0.05 * timings.rows_full, str(timings)


def test_pruned_rows_on_paths_are_exactly_the_neighbourhood():
    """The forward X W1 is computed for the 2-hop neighbourhood of the labelled nodes only."""
    g = components_graph(n_paths=10, length=10, labelled_paths=(4,), per_path=1)
    rels = graphs.to_relations(g)
    W1, W2 = gcn.init_params(g.n_features, 3, g.n_classes, seed=0)
    f = lambda Node, W1, W2: gcn.logits(Node, W1, W2, rels.edge)  # noqa: E731
    T = gcn.train_targets(rels)
    loss = lambda Node, W1, W2: programs.softmax_cross_entropy(f(Node, W1, W2), T)  # noqa: E731
    leaves, out = trace(loss, rels.node, W1, W2)
    plan = CompiledPlan([out.node], [leaf.node for leaf in leaves])
    (node,) = np.flatnonzero(g.train)
    hood = [v for v in range(node - 2, node + 3) if 40 <= v < 50]
    got = plan([t.table().values for t in (rels.node, W1, W2)])[0]
    np.testing.assert_allclose(np.asarray(got.values), loss(rels.node, W1, W2).table().values, rtol=1e-9)
    # Node x W1 (the first layer's product with its weight) is computed for those rows only
    (xw,) = [n for n, _ in plan.steps if n.inputs == (leaves[0].node, leaves[1].node)]
    assert plan.heights[xw] == len(hood)
    assert plan.timings.rows_computed < 0.1 * plan.timings.rows_full


# ---- (c) nothing to prune ---------------------------------------------------------------------------

def test_every_row_needed_reports_equal_rows():
    g = labelled_graph(n_nodes=120, n_edges=240, labelled=120)
    rels = graphs.to_relations(g)
    W1, W2 = gcn.init_params(g.n_features, 4, g.n_classes, seed=0)
    timings = check(gcn.loss_program(rels, targets=rels.label), (rels.node, W1, W2), (1, 2))
    assert timings.rows_computed == timings.rows_full > 0


@pytest.mark.parametrize("index", range(len(programs.EXAMPLES)))
def test_examples_still_equal_interpreted(index):
    prog = programs.examples(seed=index)[index]
    timings = check(prog.fn, prog.rels, prog.argnums)
    assert timings.rows_computed <= timings.rows_full


def test_logistic_regression_prunes_nothing():
    prog = programs.logistic_regression(np.random.default_rng(0))
    timings = check(prog.fn, prog.rels, prog.argnums)
    assert timings.rows_computed == timings.rows_full


# ---- each kind of step under pruning ----------------------------------------------------------------

def _vectors(n, d, seed_, name, keys=("i",)):
    return wb.from_tensor(np.random.default_rng(seed_).normal(size=(n, d)), keys=keys, name=name)


def test_select_join_and_grouped_mean_pruned():
    """A predicate reads a few rows of a join; a mean by group is read for a few groups."""
    X = wb.from_tensor(np.random.default_rng(0).normal(size=(30, 4, 3)), keys=("i", "j"), name="X")
    W = wb.from_tensor(np.random.default_rng(1).normal(size=(3, 2)), name="W")
    S = wb.from_tensor(np.ones((30, 2)), keys=("i",), name="S")
    S = wb.select(S, pred=pl.col("i").is_in([2, 7, 11, 29]))
    S = S.with_values(S.table().values, name="S")

    def f(X, W):
        H = wb.join(X, W, on={}, keys={"i": "left.i", "j": "left.j"}, kernel=lambda x, w: jnp.tanh(x @ w))
        M = wb.aggregate(H, by=("i",), kernel="mean")
        picked = wb.join(M, S, on={"i": "i"}, keys={"i": "left.i"}, kernel=lambda m, s: m * s)
        few = wb.select(H, pred=pl.col("j") == 1, kernel=jnp.sin)  # every i: more rows of H
        both = wb.join(picked, few, on={"i": "i"}, keys={"i": "left.i"}, kernel=lambda a, b: a * b)
        return wb.join(programs.sum_of_squares(both), programs.sum_of_squares(few), on={},
                       kernel=jnp.add)

    timings = check(f, (X, W), (0, 1))
    assert timings.rows_computed < timings.rows_full


def test_a_relation_read_by_two_consumers_keeps_the_union():
    X = _vectors(40, 3, 0, "X")
    W = wb.from_tensor(np.random.default_rng(1).normal(size=(3, 3)), name="W")

    def f(X, W):
        H = wb.join(X, W, on={}, keys={"i": "left.i"}, kernel=lambda x, w: jnp.tanh(x @ w))
        a = wb.select(H, pred=pl.col("i") < 5, kernel=lambda v: v ** 2)
        b = wb.select(H, pred=(pl.col("i") > 30) & (pl.col("i") % 3 == 0), kernel=jnp.cos)
        return wb.join(wb.aggregate(a, by=()), wb.aggregate(b, by=()), on={}, kernel=lambda u, v: jnp.sum(u * v))

    timings = check(f, (X, W), (0, 1))
    assert timings.rows_computed < timings.rows_full


def test_add_concatenated_and_aligned_pruned():
    """Adds in the forward: a keyed Add of relations with different keys (a concatenation and a
    segment sum) and an aligned Add (same keys), read for a few keys only."""
    X = _vectors(25, 3, 0, "X")
    Y = _vectors(25, 3, 1, "Y")
    T = wb.select(_vectors(25, 3, 2, "T"), pred=pl.col("i").is_in([0, 4, 13, 24]))
    T = T.with_values(T.table().values, name="T")

    def f(X, Y):
        A = wb.select(X, kernel=jnp.sin)
        B = wb.select(Y, pred=pl.col("i") % 2 == 0, kernel=jnp.exp)
        C = wb.select(X, kernel=lambda v: v * v)
        concat = wb.Relation(add_node([A.node, B.node]))  # keys differ: concatenated, summed by i
        aligned = wb.Relation(add_node([A.node, C.node]))  # same keys, same order
        both = wb.join(concat, aligned, on={"i": "i"}, keys={"i": "left.i"}, kernel=lambda a, b: a * b)
        picked = programs.sum_of_squares(wb.join(both, T, on={"i": "i"}, keys={"i": "left.i"},
                                                 kernel=lambda a, t: a * t))
        return wb.join(picked, programs.sum_of_squares(A), on={}, kernel=jnp.add)  # every row of A

    timings = check(f, (X, Y), (0, 1))
    assert timings.rows_computed < timings.rows_full
    same(wb.jit(f)(X, Y), f(X, Y))


def test_a_node_read_for_its_keys_only_is_not_computed():
    """The pullback of mean(exp(x)) reads exp(x)'s keys (the count, the broadcast) but not its
    values: with the cotangent an argument and the gradient the only output, the forward select
    computes no row."""
    X = _vectors(15, 2, 0, "X")
    C = wb.from_tensor(np.array([3.0, 1.0]), name="C")
    f = lambda X, C: wb.aggregate(wb.select(X, kernel=jnp.exp), by=(), kernel="mean")  # noqa: E731
    leaves, out = trace(f, X, C)
    (gx,) = gradient_nodes(out.node, leaves[1].node, [leaves[0].node])
    plan = CompiledPlan([gx], [leaf.node for leaf in leaves], [X.table()])
    (exp_x,) = [n for n, _ in plan.steps if n.inputs == (leaves[0].node,) and "exp" in str(n.params())]
    assert plan.heights[exp_x] == 0
    assert plan.timings.rows_computed == plan.timings.rows_full - 15
    (got,) = plan([X.table().values, C.table().values])
    np.testing.assert_allclose(np.asarray(got.values), np.exp(X.table().values) * [3.0, 1.0] / 15,
                               rtol=1e-12)
