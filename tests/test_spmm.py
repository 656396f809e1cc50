"""Join-then-sum as a sparse matrix product: where the rewrite fires (GCN forward and backward),
where it must not (kernels that are not a scalar weight times the value), and that the SpMM
plans give exactly the relations of the logical plans run node by node (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest

import workbench as wb
from workbench.check import assert_relations_equal
from workbench import passes, programs, rjp, sparse
from workbench.datasets import graphs
from workbench.execute import LocalExecutor

LOCAL = LocalExecutor()
from workbench.kernels import Kernel
from workbench.models import gcn
from workbench.ops import aggregate, join
from workbench.physical import JoinAggregate, SpMM
from workbench.plan import toposort


def _spmms(nodes):
    physical, _ = passes.optimize(nodes)
    return [n for n in toposort(physical) if isinstance(n, SpMM)]


def assert_same_relation(a, b):
    """Equal as relations within float64 rounding, row order ignored."""
    assert_relations_equal(a, b, rtol=1e-12, atol=1e-14)


def _both(f, rels, argnums):
    """Loss and gradient tables, rewritten (SpMM) and logical, each on a fresh context."""
    out = []
    for optimize in (True, False):
        leaves, loss = wb.trace(f, *rels)
        ctx = LOCAL.context()
        value = LOCAL.run([loss.node], ctx, optimize=optimize)[0]
        nodes = rjp.backward(loss.node, rjp.seed(loss.node), [leaves[i].node for i in argnums])
        out.append((value, LOCAL.run(nodes, ctx, optimize=optimize), nodes))
    return out


def _edges(src, dst, w, n, m=None, name="Edge"):
    return wb.from_frame(pl.DataFrame({"src": np.asarray(src, np.int64), "dst": np.asarray(dst, np.int64),
                                       "w": np.asarray(w, np.float64)}),
                         keys=("src", "dst"), value="w", extents=(n, m or n), name=name)


def _nodes(ids, values, n, name="Node"):
    values = np.asarray(values, np.float64)
    frame = pl.DataFrame({"id": np.asarray(ids, np.int64), "x": values})
    return wb.from_frame(frame, keys=("id",), value="x", extents=(n,), name=name)


# ---- where the rewrite fires ------------------------------------------------------------------

def test_fires_on_the_gcn_program_forward_and_backward(rng):
    prog = programs.gcn(rng)
    leaves, out = wb.trace(prog.fn, *prog.rels)
    forward = _spmms([out.node])
    assert [(s.row_key, s.col_key, s.rows) for s in forward] == [("dst", "src", None)] * 2
    nodes = rjp.backward(out.node, rjp.seed(out.node), [leaves[i].node for i in prog.argnums])
    transposed = [s for s in _spmms(nodes) if s.rows is not None]
    assert [(s.row_key, s.col_key) for s in transposed] == [("src", "dst")] * 2  # A^T G per layer
    assert all(s.edge.name == "Edge" for s in transposed)


def test_fires_on_the_gcn_model_with_dropout():
    g = graphs.karate_club()
    rels = graphs.to_relations(g)
    rng = np.random.default_rng(0)
    W1, W2 = gcn.init_params(g.n_features, 4, g.n_classes)
    m1 = gcn.dropout_mask(rels.node, 0.5, rng, "M1")
    m2 = gcn.dropout_mask(gcn.mask_template(g.n_nodes, 4), 0.5, rng, "M2")
    f = gcn.loss_program(rels, m1, m2, 5e-4)
    leaves, out = wb.trace(f, rels.node, W1, W2)
    assert len(_spmms([out.node])) == 2
    nodes = rjp.backward(out.node, rjp.seed(out.node), [leaves[1].node, leaves[2].node])
    assert len([s for s in _spmms(nodes) if s.rows is not None]) == 2


def test_fires_on_a_fused_join_aggregate_and_with_the_weight_on_the_right():
    E = _edges([0, 1, 2], [1, 2, 0], [0.5, 2.0, 3.0], 3)
    X = wb.from_tensor(np.arange(6.0).reshape(3, 2), keys=("id",), name="X")
    J = join(X, E, on={"id": "src"}, keys={"dst": "right.dst", "src": "right.src"},
             kernel=lambda v, e: v * e)
    S = aggregate(J, by=("dst",))
    (spmm,) = _spmms([S.node])
    assert (spmm.row_key, spmm.col_key, spmm.out_key) == ("dst", "src", "dst")
    fused = JoinAggregate(S.node.schema, J.node, ("dst",))
    assert isinstance(passes.sparse_products([fused])[fused], SpMM)
    assert_same_relation(LOCAL.run([S.node])[0], LOCAL.run([S.node], optimize=False)[0])


# ---- where it must not ------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", [
    lambda e, v: e * v + 1,
    lambda e, v: jnp.tanh(e) * v,
    lambda e, v: e * e * v,
    lambda e, v: 2.0 * v,
    lambda e, v: e + v,
    lambda e, v: e * jnp.ones_like(v),
])
def test_does_not_fire_on_other_kernels(kernel):
    E = _edges([0, 1, 2], [1, 2, 0], [0.5, 2.0, 3.0], 3)
    X = wb.from_tensor(np.arange(6.0).reshape(3, 2), keys=("id",), name="X")
    S = aggregate(join(E, X, on={"src": "id"}, keys={"id": "left.dst", "src": "left.src"},
                       kernel=kernel), by=("id",))
    assert not _spmms([S.node])
    assert_same_relation(LOCAL.run([S.node])[0], LOCAL.run([S.node], optimize=False)[0])


def test_does_not_fire_on_a_matrix_weight_or_a_sum_by_the_joined_key():
    Em = wb.from_tensor(np.ones((3, 3, 2, 2)), keys=("src", "dst"), name="Em")
    X = wb.from_tensor(np.arange(6.0).reshape(3, 2), keys=("id",), name="X")
    M = aggregate(join(Em, X, on={"src": "id"}, keys={"id": "left.dst", "src": "left.src"},
                       kernel=lambda e, v: v @ e), by=("id",))
    assert not _spmms([M.node])
    E = _edges([0, 1, 2], [1, 2, 0], [0.5, 2.0, 3.0], 3)
    by_src = aggregate(join(E, X, on={"src": "id"}, keys={"id": "left.dst", "src": "left.src"},
                            kernel=lambda e, v: e * v), by=("src",))
    assert not _spmms([by_src.node])  # X(c) * sum_r E(r, c): a scaling, not a product


def test_scaling_is_read_from_the_jaxpr():
    f64 = "float64"
    assert passes.is_scaling(Kernel(lambda e, v: e * v, arity=2), [(), (3,)], f64, 0, 1)
    assert passes.is_scaling(Kernel(jnp.multiply, arity=2), [(3, 2), ()], f64, 1, 0)
    assert not passes.is_scaling(Kernel(jnp.multiply, arity=2), [(3,), (3,)], f64, 0, 1)  # not scalar
    assert not passes.is_scaling(Kernel(lambda e, v: v @ e, arity=2), [(3, 3), (3,)], f64, 0, 1)
    assert not passes.is_scaling(Kernel(lambda e, v: jax.nn.relu(e * v), arity=2), [(), (3,)], f64, 0, 1)


# ---- the same relations as the logical plan ---------------------------------------------------

def _propagate_cases():
    rng = np.random.default_rng(3)
    n = 12
    pairs = rng.choice(n * n, size=40, replace=False)
    src, dst = pairs // n, pairs % n
    w = rng.uniform(0.1, 1.0, size=len(pairs))
    full = np.arange(n)
    some = np.sort(rng.choice(n, size=7, replace=False))  # nodes missing from X
    yield "all nodes", _edges(src, dst, w, n), _nodes(full, rng.normal(size=n), n)
    yield "missing nodes", _edges(src, dst, w, n), _nodes(some, rng.normal(size=len(some)), n)
    yield "shuffled keys", _edges(src, dst, w, n), _nodes(rng.permutation(n), rng.normal(size=n), n)
    yield "no edges", _edges([], [], [], n), _nodes(full, rng.normal(size=n), n)
    yield "no nodes", _edges(src, dst, w, n), _nodes([], [], n)
    inf = w.copy()
    inf[np.isin(src, some, invert=True)] = np.inf  # infinite weights only on edges X misses
    yield "infinite weights into missing nodes", _edges(src, dst, inf, n), _nodes(
        some, rng.normal(size=len(some)), n)
    yield "a zero weight is an edge", _edges([0, 1], [1, 2], [0.0, 1.0], 3), _nodes([0, 1, 2], [1.0, 2, 3], 3)
    yield "wider node key space", _edges(src, dst, w, n), _nodes(np.arange(n + 5), rng.normal(size=n + 5), n + 5)


@pytest.mark.parametrize("case", list(_propagate_cases()), ids=lambda c: c[0])
def test_forward_equals_the_logical_plan(case):
    _, E, X = case
    Y = programs.propagate(E, X)
    assert _spmms([Y.node])
    a, b = LOCAL.run([Y.node])[0], LOCAL.run([Y.node], optimize=False)[0]
    assert_same_relation(a, b)
    assert np.isfinite(np.asarray(a.values)).all() or not np.isfinite(np.asarray(b.values)).all()


@pytest.mark.parametrize("case", [c for c in _propagate_cases() if "infinite" not in c[0]],
                         ids=lambda c: c[0])
def test_gradient_equals_the_logical_plan(case):
    """grad of sum((A X)^2 W) over X: A^T G keeps only nodes of X that the forward matched."""
    _, E, X = case
    vec = wb.from_tensor(np.array([1.5, -0.5]), name="V")

    def loss(X, V):
        Y = programs.propagate(E, X)
        Z = join(Y, V, on={}, keys={"id": "left.id"}, kernel=lambda y, v: jnp.sum((y * v) ** 2))
        return aggregate(Z, by=())

    (va, ga, nodes), (vb, gb, _) = _both(loss, (X, vec), (0, 1))
    assert [s for s in _spmms(nodes) if s.rows is not None] or not X.table().height
    assert_same_relation(va, vb)
    for a, b in zip(ga, gb):
        assert_same_relation(a, b)


def test_gcn_program_gradients_equal_the_logical_plan(rng):
    prog = programs.gcn(rng)
    (va, ga, _), (vb, gb, _) = _both(prog.fn, prog.rels, prog.argnums)
    assert_same_relation(va, vb)
    for a, b in zip(ga, gb):
        assert_same_relation(a, b)


def test_gcn_model_gradients_equal_the_logical_plan():
    g = graphs.sbm(60, 3, 4.0, 5, seed=2, train_per_class=5, n_val=10, n_test=10)
    rels = graphs.to_relations(g)
    rng = np.random.default_rng(1)
    W1, W2 = gcn.init_params(g.n_features, 4, g.n_classes)
    m1 = gcn.dropout_mask(rels.node, 0.5, rng, "M1")
    m2 = gcn.dropout_mask(gcn.mask_template(g.n_nodes, 4), 0.5, rng, "M2")
    f = gcn.loss_program(rels, m1, m2, 5e-4)
    (va, ga, _), (vb, gb, _) = _both(f, (rels.node, W1, W2), (0, 1, 2))
    assert_same_relation(va, vb)
    for a, b in zip(ga, gb):
        assert_same_relation(a, b)


def test_the_csr_is_built_once_per_edge_table_and_transposed_for_the_backward(rng):
    prog = programs.gcn(rng)
    edge = prog.constants["Edge"].table()
    sparse.forget(edge)
    _both(prog.fn, prog.rels, prog.argnums)
    first = sparse.cached(edge)
    # (dst, src) for the forward, its transpose (src, dst) for the backward
    assert set(first) == {("dst", "src", (10, 10), "float64"), ("src", "dst", (10, 10), "float64")}
    for _ in range(2):
        _both(prog.fn, prog.rels, prog.argnums)
    assert all(sparse.cached(edge)[k] is m for k, m in first.items())  # never rebuilt


@pytest.mark.parametrize("case", list(_propagate_cases())[:2], ids=lambda c: c[0])
def test_analyze_counts_the_join_tuples_the_product_never_forms(case):
    _, E, X = case
    Y = programs.propagate(E, X)
    ctx = LOCAL.context(stats={})
    LOCAL.run([Y.node], ctx)
    J = Y.node.input
    assert ctx.stats[J].fused
    assert ctx.stats[J].rows == LOCAL.run([J])[0].height
