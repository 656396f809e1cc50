"""Plan rewrites: each rule on a before/after pair, and rewritten plans compute the same values."""
import jax.numpy as jnp
import numpy as np
import polars as pl

import workbench as wb
from workbench import passes
from workbench.execute import LocalExecutor

LOCAL = LocalExecutor()
from workbench.plan import Join, Select, toposort


def _join(A, B):
    return wb.join(A, B, on={"col": "row"}, keys={"row": "left.row", "k": "left.col", "col": "right.col"},
                   kernel=jnp.matmul)


def test_identity_select_is_dropped(rng):
    A = wb.from_matrix(rng.normal(size=(4, 4)), block=(2, 2))
    S = wb.select(A, keys={"row": "row", "col": "col"})
    (out,), mapping = passes.optimize([S.node], rules=(passes.drop_identity_selects,))
    assert out is A.node and mapping[S.node] is A.node


def test_reordering_select_is_kept(rng):
    A = wb.from_matrix(rng.normal(size=(4, 4)), block=(2, 2))
    S = wb.select(A, keys={"col": "col", "row": "row"})
    (out,), _ = passes.optimize([S.node], rules=(passes.drop_identity_selects,))
    assert out is S.node


def test_equal_joins_are_computed_once(rng):
    A = wb.from_matrix(rng.normal(size=(4, 4)), block=(2, 2))
    B = wb.from_matrix(rng.normal(size=(4, 4)), block=(2, 2))
    P1, P2 = _join(A, B), _join(A, B)
    total = wb.join(wb.aggregate(P1, by=("row", "col")), wb.aggregate(P2, by=("row", "col")),
                    on={"row": "row", "col": "col"}, kernel=jnp.add)
    (out,), _ = passes.optimize([total.node], rules=(passes.common_subexpressions,))
    assert sum(isinstance(n, Join) for n in toposort([total.node])) == 3
    assert sum(isinstance(n, Join) for n in toposort([out])) == 2
    np.testing.assert_allclose(wb.to_matrix(total), 2 * wb.to_matrix(A) @ wb.to_matrix(B))


def test_different_predicates_are_not_merged(rng):
    A = wb.from_matrix(rng.normal(size=(4, 4)), block=(2, 2))
    S0 = wb.select(A, pred=pl.col("row") == 0)
    S1 = wb.select(A, pred=pl.col("row") == 1)
    outs, _ = passes.optimize([S0.node, S1.node], rules=(passes.common_subexpressions,))
    assert outs[0] is not outs[1] and all(isinstance(o, Select) for o in outs)


def test_results_are_filed_under_logical_nodes(rng):
    A = wb.from_matrix(rng.normal(size=(4, 4)), block=(2, 2))
    S = wb.select(A, keys={"row": "row", "col": "col"})
    ctx = LOCAL.context()
    LOCAL.run([S.node], ctx)
    assert ctx.memo[S.node] is ctx.memo[A.node]
