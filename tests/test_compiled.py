"""The compiled executor (``wb.jit``) gives the interpreter's results, reuses its key plan across
steps whose arguments keep their keys, and computes loop-invariant subplans once."""
import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest

import workbench as wb
from workbench.check import assert_relations_equal as same
from workbench import programs
from workbench.datasets import graphs
from workbench.models import gcn

jax.config.update("jax_enable_x64", True)


@pytest.mark.parametrize("index", range(len(programs.EXAMPLES)))
def test_examples_compiled_equal_interpreted(index):
    prog = programs.examples(seed=index)[index]
    value, grads = wb.value_and_grad(prog.fn, argnums=prog.argnums)(*prog.rels)
    cvalue, cgrads = wb.jit(wb.value_and_grad(prog.fn, argnums=prog.argnums))(*prog.rels)
    same(value, cvalue)
    for g, cg in zip(grads, cgrads):
        same(g, cg)
    same(prog.fn(*prog.rels), wb.jit(prog.fn)(*prog.rels))


def test_jit_of_grad_returns_gradients_only():
    prog = programs.examples(seed=0)[0]
    grads = wb.jit(wb.grad(prog.fn, argnums=prog.argnums))(*prog.rels)
    for g, want in zip(grads, wb.grad(prog.fn, argnums=prog.argnums)(*prog.rels)):
        same(want, g)


def test_new_values_reuse_the_plan_new_keys_build_another():
    rng = np.random.default_rng(0)
    X = wb.from_tensor(rng.normal(size=(6, 3)), keys=("i",), name="X")
    W = wb.from_tensor(rng.normal(size=(3, 2)), name="W")
    f = lambda X, W: programs.sum_of_squares(wb.join(X, W, on={}, keys={"i": "left.i"}, kernel=jnp.matmul))  # noqa: E731
    step = wb.jit(wb.value_and_grad(f, argnums=(0, 1)))
    step(X, W)
    first = step.timings
    for _ in range(3):  # an optimizer step: new values, the same key frames
        X, W = X.with_values(X.table().values * 0.5), W.with_values(W.table().values + 1.0)
        loss, (gx, gw) = step(X, W)
        assert step.timings is first  # the same plan, not rebuilt
        want, (wx, ww) = wb.value_and_grad(f, argnums=(0, 1))(X, W)
        same(want, loss)
        same(wx, gx)
        same(ww, gw)
    # the same values under fresh keys (a relation rebuilt from data): a new plan, right results
    X2 = wb.from_tensor(X.to_tensor(), keys=("i",), name="X")
    loss2, _ = step(X2, W)
    assert step.timings is not first
    same(wb.value_and_grad(f, argnums=(0, 1))(X2, W)[0], loss2)


def test_a_subset_of_tuples_and_keys_absent_from_the_gradient():
    """A predicate keeps some tuples: the compiled gradient is zero elsewhere, in the primal's
    row order and with its key frame."""
    x = np.arange(1.0, 9.0).reshape(4, 2)
    X = wb.from_tensor(x, keys=("i",), name="X")
    f = lambda X: programs.sum_of_squares(wb.select(X, pred=pl.col("i") >= 2))  # noqa: E731
    g = wb.jit(wb.grad(f))(X)
    assert g.table().keys is X.table().keys
    np.testing.assert_allclose(g.to_tensor(), np.where(np.arange(4)[:, None] >= 2, 2 * x, 0.0))


def test_a_loop_invariant_subplan_is_computed_once():
    """A·X over fixed features reads no argument: the compiled plan holds its result as a
    constant instead of recomputing it in every step."""
    prog = programs.gcn(np.random.default_rng(0))
    Edge = prog.constants["Edge"]
    Node, Y = prog.rels[0], prog.rels[1]

    def loss(W1, W2):
        H = wb.join(programs.propagate(Edge, Node), W1, on={}, keys={"id": "left.id"},
                    kernel=lambda v, m: jax.nn.relu(v @ m))
        Z = wb.join(programs.propagate(Edge, H), W2, on={}, keys={"id": "left.id"}, kernel=jnp.matmul)
        return programs.softmax_cross_entropy(Z, Y)

    step = wb.jit(wb.value_and_grad(loss, argnums=(0, 1)))
    value, grads = step(*prog.rels[2:])
    want, wgrads = wb.value_and_grad(loss, argnums=(0, 1))(*prog.rels[2:])
    same(want, value)
    for a, b in zip(wgrads, grads):
        same(a, b)
    assert step.timings.invariant_nodes >= 1  # A·X (a sparse product), computed before the first step


def test_the_gcn_trains_the_same_compiled_and_interpreted():
    graph = graphs.karate_club()
    a = gcn.train(graph, epochs=5, compiled=False)
    b = gcn.train(graph, epochs=5, compiled=True)
    np.testing.assert_allclose(b.loss, a.loss, rtol=1e-9)
    np.testing.assert_allclose(b.test_acc, a.test_acc)


def test_jit_refuses_what_it_cannot_compile():
    with pytest.raises(TypeError, match="jit: expects a relational program"):
        wb.jit(3)
    X = wb.from_tensor(np.ones(3), keys=("i",))
    with pytest.raises(TypeError, match="jit: argument 0 is a ndarray"):
        wb.jit(programs.sum_of_squares)(np.ones(3))
    with pytest.raises(ValueError, match="scalar loss"):
        wb.jit(wb.grad(lambda X: X))(X)
