"""Join-then-sum of 2-D blocks as one dense matmul: where the rewrite fires (the blocked matmul
forward and both gradients), where it must not (kernels that are not one dot of the two blocks),
and that the BlockProduct plans give exactly the relations of the plans without the rewrite and
of numpy (float64): full grids, missing blocks, rectangular blocks, keys named otherwise."""
import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest

import workbench as wb
from workbench import blocks, passes, programs, rjp
from workbench.execute import LocalExecutor
from workbench.execute import compiled
from workbench.kernels import Kernel
from workbench.physical import BlockProduct, JoinAggregate
from workbench.plan import Join, toposort
from workbench.table import Table

jax.config.update("jax_enable_x64", True)

# the rules with the rewrite (it joins passes.RULES once the tests that use the blocked matmul as
# their example of other nodes pin their rules), and without it
RULES = passes.RULES if passes.block_products in passes.RULES else passes.RULES + (passes.block_products,)
LOCAL = LocalExecutor(rules=RULES)
WITHOUT = LocalExecutor(rules=[r for r in RULES if r is not passes.block_products])
RTOL = 1e-9


def _products(nodes):
    physical, _ = passes.optimize(nodes, RULES)
    return [n for n in toposort(physical) if isinstance(n, BlockProduct)]


def _rel(dense, block, keys=("row", "col"), keep=None, name="A", rng=None, ids=None):
    """The blocks of ``dense`` as a relation keyed (block row, block column) named ``keys``; only
    the blocks in ``keep`` (all by default); tuples shuffled by ``rng``; block indices i mapped
    to ``ids[0][i]``, ``ids[1][j]`` (sparse key values)."""
    br, bc = block
    nr, nc = dense.shape[0] // br, dense.shape[1] // bc
    cells = [(r, c) for r in range(nr) for c in range(nc) if keep is None or (r, c) in keep]
    if rng is not None:
        cells = [cells[i] for i in rng.permutation(len(cells))]
    ids = ids or (np.arange(nr), np.arange(nc))
    values = np.stack([dense[r * br:(r + 1) * br, c * bc:(c + 1) * bc] for r, c in cells])
    frame = pl.DataFrame({keys[0]: np.array([ids[0][r] for r, _ in cells], np.int64),
                          keys[1]: np.array([ids[1][c] for _, c in cells], np.int64), "v": values})
    return wb.from_frame(frame, keys=keys, value="v",
                         extents=(int(max(ids[0])) + 1, int(max(ids[1])) + 1), name=name)


def _zeroed(dense, block, keep):
    """``dense`` with the blocks not in ``keep`` zeroed: what a relation of the kept blocks holds."""
    if keep is None:
        return dense
    out = np.zeros_like(dense)
    br, bc = block
    for r, c in keep:
        out[r * br:(r + 1) * br, c * bc:(c + 1) * bc] = dense[r * br:(r + 1) * br, c * bc:(c + 1) * bc]
    return out


def _as_dict(table):
    if not table.keys.width:
        return {(): np.asarray(table.values)[0]}
    return {k: v for k, v in zip(table.keys.rows(), np.asarray(table.values))}


def assert_same_relation(a, b):
    """Equal as relations: the same keys (and key names), values within float64 rounding."""
    assert a.keys.columns == b.keys.columns
    ra, rb = _as_dict(a), _as_dict(b)
    assert ra.keys() == rb.keys()
    for k in ra:
        np.testing.assert_allclose(ra[k], rb[k], rtol=RTOL, atol=1e-12)


def _loss(product):
    def loss(X, Z):
        C = product(X, Z)
        return wb.aggregate(wb.select(C, kernel=lambda v: jnp.sum(v * v)), by=())
    return loss


def _run(executor, product, X, Z):
    """C = product(X, Z), the loss sum(C^2) and its gradients, on one context of ``executor``."""
    leaves, loss = wb.trace(_loss(product), X, Z)
    ctx = executor.context()
    C = loss.node.input.input  # aggregate(select(C))
    value, table = executor.run([loss.node, C], ctx)
    nodes = rjp.backward(loss.node, rjp.seed(loss.node), [leaf.node for leaf in leaves])
    return table, value, executor.run(nodes, ctx)


def _check(product, X, Z, x, z, dense_product, out_blocks, x_blocks, z_blocks):
    """BlockProducts fire (forward and both gradients); the rewritten plans give the relations of
    the plans without the rewrite, and numpy's: C's blocks (``out_blocks(key) -> (block rows,
    block cols)`` of ``dense_product(x, z)``), the loss, and the gradients at X's and Z's blocks
    (``x_blocks``, ``z_blocks``: key -> slices of the dense x, z)."""
    leaves, loss = wb.trace(_loss(product), X, Z)
    nodes = rjp.backward(loss.node, rjp.seed(loss.node), [leaf.node for leaf in leaves])
    fired = _products([loss.node] + nodes)
    assert len(fired) == 3
    assert [p.filter for p in fired].count(None) == 1
    C, value, (gX, gZ) = _run(LOCAL, product, X, Z)
    C0, value0, (gX0, gZ0) = _run(WITHOUT, product, X, Z)
    for a, b in ((C, C0), (value, value0), (gX, gX0), (gZ, gZ0)):
        assert_same_relation(a, b)
    dense = dense_product(x, z)
    got = _as_dict(C)
    for key, block in got.items():
        np.testing.assert_allclose(block, dense[out_blocks(key)], rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(np.asarray(value.values)[0], np.sum(dense ** 2), rtol=RTOL)
    dx, dz = jax.grad(lambda x, z: jnp.sum(dense_product(x, z) ** 2), argnums=(0, 1))(x, z)
    for g, d, where in ((gX, dx, x_blocks), (gZ, dz, z_blocks)):
        for key, block in _as_dict(g).items():
            np.testing.assert_allclose(block, np.asarray(d)[where(key)], rtol=RTOL, atol=1e-12)
    return got


def _at(block, order=(0, 1), ids=None):
    """key -> the slices of a dense matrix holding that block (key[order[0]] its block row)."""
    def where(key):
        r, c = key[order[0]], key[order[1]]
        if ids is not None:
            r, c = ids[0].index(r), ids[1].index(c)
        return slice(r * block[0], (r + 1) * block[0]), slice(c * block[1], (c + 1) * block[1])
    return where


# ---- where the rewrite fires ------------------------------------------------------------------

def test_fires_on_the_blocked_matmul_forward_and_both_gradients(rng):
    prog = programs.blocked_matmul(rng)
    A, B = prog.rels[:2]
    leaves, out = wb.trace(_loss(programs.matmul), A, B)
    A, B = leaves  # the traced program's leaves
    (forward,) = _products([out.node])
    assert (forward.x, forward.z, forward.filter) == (A.node, B.node, None)
    assert forward.spec.order == ("row", "col") and forward.spec.contract == (1, 0)
    assert isinstance(forward.replaces[0], Join)
    nodes = rjp.backward(out.node, rjp.seed(out.node), [leaf.node for leaf in leaves])
    # the backward plan reads the forward's C (also a BlockProduct there) and has two of its own
    rest, gA, gB = _products(nodes)
    assert rest.filter is None and rest.spec == forward.spec
    # dA = G B^T: G and B, the groups A's blocks; dB = A^T G: G and A, the groups B's blocks
    assert (gA.z, gA.filter, gA.spec.contract, gA.spec.transpose) == (B.node, A.node, (1, 1), False)
    assert (gB.z, gB.filter, gB.spec.contract, gB.spec.transpose) == (A.node, B.node, (0, 0), True)
    assert gA.x is gB.x  # the cotangent of the product
    physical, _ = passes.optimize(nodes, RULES)
    assert not any(isinstance(n, JoinAggregate) for n in toposort(physical))


def test_the_program_in_the_benchmark_gives_the_same_values(rng):
    prog = programs.blocked_matmul(rng)
    A, B = prog.rels[:2]
    a, b = prog.dense[:2]
    _check(programs.matmul, A, B, a, b, lambda x, z: x @ z, _at((3, 2)), _at((3, 4)), _at((4, 2)))


# ---- values: the rewritten plan, the plan without it, numpy ------------------------------------

@pytest.mark.parametrize("shapes", [((8, 8), (8, 8), (4, 4, 4)),  # square blocks
                                    ((6, 8), (8, 4), (3, 4, 2)),  # rectangular blocks
                                    ((6, 12), (12, 10), (6, 3, 5))])  # 1 x 4 x 2 blocks
def test_full_grids(rng, shapes):
    (n, m), (_, p), (br, bk, bc) = shapes
    x, z = rng.normal(size=(n, m)), rng.normal(size=(m, p))
    X, Z = _rel(x, (br, bk), name="X", rng=rng), _rel(z, (bk, bc), name="Z", rng=rng)
    got = _check(programs.matmul, X, Z, x, z, lambda x, z: x @ z, _at((br, bc)), _at((br, bk)), _at((bk, bc)))
    assert len(got) == (n // br) * (p // bc)


def test_missing_blocks(rng):
    """Half of A's blocks absent (zeros): C's groups are those with a match, its values exact."""
    x, z = rng.normal(size=(12, 8)), rng.normal(size=(8, 6))
    keep = {(0, 0), (1, 1), (2, 0), (2, 1), (3, 3)}  # A is 4 x 4 blocks of 3 x 2
    X, Z = _rel(x, (3, 2), keep=keep, name="A", rng=rng), _rel(z, (2, 3), name="B")
    got = _check(programs.matmul, X, Z, _zeroed(x, (3, 2), keep), z, lambda x, z: x @ z,
                 _at((3, 3)), _at((3, 2)), _at((2, 3)))
    assert {r for r, _ in got} == {0, 1, 2, 3}
    p = blocks.product(_products([programs.matmul(X, Z).node])[0].spec, X.node.table, Z.node.table)
    assert p.mode == "dense" and p.x_at is not None


def test_missing_blocks_on_both_sides_and_in_the_output(rng):
    x, z = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    keep_x = {(0, 0), (0, 1), (1, 0), (3, 2), (3, 3), (2, 1)}
    keep_z = {(0, 0), (1, 0), (1, 3), (2, 2), (3, 1)}
    X = _rel(x, (2, 2), keep=keep_x, name="A", rng=rng)
    Z = _rel(z, (2, 2), keep=keep_z, name="B", rng=rng)
    got = _check(programs.matmul, X, Z, _zeroed(x, (2, 2), keep_x), _zeroed(z, (2, 2), keep_z),
                 lambda x, z: x @ z, _at((2, 2)), _at((2, 2)), _at((2, 2)))
    want = {(r, c) for r, k in keep_x for k2, c in keep_z if k == k2}
    assert set(got) == want


def test_block_diagonal_runs_gathered(rng):
    """Few blocks meet (a block diagonal): the gathered form, same values."""
    n = 6
    x, z = rng.normal(size=(3 * n, 2 * n)), rng.normal(size=(2 * n, 4 * n))
    diag = {(i, i) for i in range(n)}
    X = _rel(x, (3, 2), keep=diag, name="A", rng=rng)
    Z = _rel(z, (2, 4), keep=diag | {(0, 3)}, name="B", rng=rng)
    got = _check(programs.matmul, X, Z, _zeroed(x, (3, 2), diag), _zeroed(z, (2, 4), diag | {(0, 3)}),
                 lambda x, z: x @ z, _at((3, 4)), _at((3, 2)), _at((2, 4)))
    assert set(got) == diag | {(0, 3)}
    p = blocks.product(_products([programs.matmul(X, Z).node])[0].spec, X.node.table, Z.node.table)
    assert p.mode == "gather" and p.matched == n + 1


def test_sparse_block_ids(rng):
    """Block indices that are far-apart ids: laid out over the ids present, not the extents."""
    x, z = rng.normal(size=(6, 4)), rng.normal(size=(4, 6))
    rows, inner, cols = [3, 1000, 70000], [5, 900000], [0, 41, 123456]
    X = _rel(x, (2, 2), name="A", ids=(rows, inner))
    Z = _rel(z, (2, 2), name="B", ids=(inner, cols))
    got = _check(programs.matmul, X, Z, x, z, lambda x, z: x @ z, _at((2, 2), ids=(rows, cols)),
                 _at((2, 2), ids=(rows, inner)), _at((2, 2), ids=(inner, cols)))
    assert set(got) == {(r, c) for r in rows for c in cols}
    p = blocks.product(_products([programs.matmul(X, Z).node])[0].spec, X.node.table, Z.node.table)
    assert p.mode == "dense" and p.out_grid == (3, 3)


def test_keys_named_otherwise_and_a_transposed_kernel(rng):
    """X(i, j) . Z(k, j)^T summed over j, output keys (q <- k, p <- i): z's index first."""
    x, w = rng.normal(size=(6, 8)), rng.normal(size=(10, 8))
    X = _rel(x, (3, 4), keys=("i", "j"), name="X", rng=rng)
    Z = _rel(w, (5, 4), keys=("k", "j"), name="W", rng=rng)

    def product(X, Z):
        P = wb.join(X, Z, on={"j": "j"}, keys={"q": "right.k", "p": "left.i", "j": "left.j"},
                    kernel=lambda a, b: a @ b.T)
        return wb.aggregate(P, by=("q", "p"))
    got = _check(product, X, Z, x, w, lambda x, w: x @ w.T, _at((3, 5), order=(1, 0)),
                 _at((3, 4)), _at((5, 4)))
    assert len(got) == 2 * 2


def test_a_kernel_written_with_transposes(rng):
    """(b^T a^T)^T is a @ b: the dot's operands swapped, each transposed, the result too."""
    x, z = rng.normal(size=(6, 8)), rng.normal(size=(8, 4))
    X, Z = _rel(x, (3, 4), name="A"), _rel(z, (4, 2), name="B")

    def product(X, Z):
        P = wb.join(X, Z, on={"col": "row"}, keys={"row": "left.row", "k": "left.col", "col": "right.col"},
                    kernel=lambda a, b: (b.T @ a.T).T)
        return wb.aggregate(P, by=("row", "col"))
    _check(product, X, Z, x, z, lambda x, z: x @ z, _at((3, 2)), _at((3, 4)), _at((4, 2)))


def test_contracting_the_first_block_axis(rng):
    """einsum('ji,jk->ik'): X(c, a)^T Z(c, b), joined on the row block index."""
    x, z = rng.normal(size=(8, 6)), rng.normal(size=(8, 9))
    keep = {(0, 0), (1, 1), (1, 0), (3, 2), (2, 1)}
    X = _rel(x, (2, 3), keys=("r", "c"), keep=keep, name="X", rng=rng)
    Z = _rel(z, (2, 3), keys=("r", "c"), name="Z", rng=rng)

    def product(X, Z):
        P = wb.join(X, Z, on={"r": "r"}, keys={"a": "left.c", "b": "right.c", "r": "left.r"},
                    kernel=lambda u, v: jnp.einsum("ji,jk->ik", u, v))
        return wb.aggregate(P, by=("a", "b"))
    _check(product, X, Z, _zeroed(x, (2, 3), keep), z, lambda x, z: x.T @ z, _at((3, 3)),
           _at((2, 3)), _at((2, 3)))


def test_a_product_of_a_relation_with_itself(rng):
    x = rng.normal(size=(6, 6))
    X = _rel(x, (3, 3), name="A")
    leaves, loss = wb.trace(lambda X: _loss(programs.matmul)(X, X), X)
    nodes = rjp.backward(loss.node, rjp.seed(loss.node), [leaves[0].node])
    assert len(_products([loss.node] + nodes)) == 3
    for executor in (LOCAL, WITHOUT):
        ctx = executor.context()
        value = executor.run([loss.node], ctx)[0]
        (g,) = executor.run(nodes, ctx)
        np.testing.assert_allclose(np.asarray(value.values)[0], np.sum((x @ x) ** 2), rtol=RTOL)
        dx = jax.grad(lambda x: jnp.sum((x @ x) ** 2))(x)
        for (r, c), block in _as_dict(g).items():
            np.testing.assert_allclose(block, np.asarray(dx)[3 * r:3 * r + 3, 3 * c:3 * c + 3], rtol=RTOL)


def test_nothing_meets(rng):
    """An empty side, or contracted indices that never meet: no tuples, as without the rewrite."""
    empty = wb.from_frame(pl.DataFrame({"row": np.zeros(0, np.int64), "col": np.zeros(0, np.int64),
                                        "v": np.zeros((0, 2, 2))}), keys=("row", "col"), value="v",
                          extents=(3, 3), name="E")
    X = _rel(rng.normal(size=(4, 2)), (2, 2), name="X")  # blocks (0, 0), (1, 0)
    Z = _rel(rng.normal(size=(6, 6)), (2, 2), keep={(1, 1), (2, 2)}, name="Z")
    for left, right in ((empty, Z), (Z, empty), (X, Z)):
        C, value, grads = _run(LOCAL, programs.matmul, left, right)
        C0, value0, grads0 = _run(WITHOUT, programs.matmul, left, right)
        assert C.height == 0 and C.values.shape == (0, 2, 2)
        for a, b in zip((C, value, *grads), (C0, value0, *grads0)):
            assert_same_relation(a, b)


def test_statistics_count_the_join_it_replaces(rng):
    x, z = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    keep = {(0, 0), (0, 1), (1, 1), (2, 3)}
    X, Z = _rel(x, (2, 2), keep=keep, name="A"), _rel(z, (2, 2), name="B")
    C = programs.matmul(X, Z)
    J = C.node.input
    stats: dict = {}
    LOCAL.run([C.node], LOCAL.context(stats=stats))
    assert stats[J].fused and stats[J].rows == len(keep) * 4  # each A block meets 4 B blocks
    plain: dict = {}
    WITHOUT.run([C.node], WITHOUT.context(stats=plain))
    assert plain[J].rows == stats[J].rows and plain[C.node].rows == stats[C.node].rows


# ---- where it must not fire -------------------------------------------------------------------

@pytest.mark.parametrize("kernel", [lambda a, b: a @ b + 1, jnp.multiply, lambda a, b: jnp.tanh(a @ b),
                                    lambda a, b: 2.0 * (a @ b), lambda a, b: a @ a,
                                    lambda a, b: a @ b @ b, lambda a, b: (a @ b).astype(a.dtype) * a,
                                    lambda a, b: jnp.einsum("ij,jk->ik", a, b) + a])
def test_kernels_that_are_not_a_block_product_are_left_alone(rng, kernel):
    x, z = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    X, Z = _rel(x, (2, 2), name="A"), _rel(z, (2, 2), name="B")

    def product(X, Z):
        P = wb.join(X, Z, on={"col": "row"}, keys={"row": "left.row", "k": "left.col", "col": "right.col"},
                    kernel=kernel)
        return wb.aggregate(P, by=("row", "col"))
    leaves, out = wb.trace(_loss(product), X, Z)
    assert _products([out.node]) == []
    # (a gradient may still be one: a @ b + 1's vjp for a is g @ b^T, recognized from its jaxpr)
    C, value, grads = _run(LOCAL, product, X, Z)  # and the plan still runs, as it did
    C0, value0, grads0 = _run(WITHOUT, product, X, Z)
    for a, b in zip((C, value, *grads), (C0, value0, *grads0)):
        assert_same_relation(a, b)


def test_only_gradients_that_are_a_block_product_are_rewritten(rng):
    """a @ b + 1 is not a block product, its gradients are (g @ b^T, a^T @ g); tanh(a @ b)'s are
    not (g * (1 - tanh^2) first)."""
    x, z = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    X, Z = _rel(x, (2, 2), name="A"), _rel(z, (2, 2), name="B")
    for kernel, fired in ((lambda a, b: a @ b + 1, 2), (lambda a, b: jnp.tanh(a @ b), 0)):
        def product(X, Z):
            P = wb.join(X, Z, on={"col": "row"}, keys={"row": "left.row", "k": "left.col", "col": "right.col"},
                        kernel=kernel)
            return wb.aggregate(P, by=("row", "col"))
        leaves, out = wb.trace(_loss(product), X, Z)
        nodes = rjp.backward(out.node, rjp.seed(out.node), [leaf.node for leaf in leaves])
        assert [p.filter is not None for p in _products(nodes)] == [True] * fired


def test_sums_that_are_not_a_block_product_are_left_alone(rng):
    x, z = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    X, Z = _rel(x, (2, 2), name="A"), _rel(z, (2, 2), name="B")
    P = wb.join(X, Z, on={"col": "row"}, keys={"row": "left.row", "k": "left.col", "col": "right.col"},
                kernel=jnp.matmul)
    assert _products([wb.aggregate(P, by=("row", "k")).node]) == []  # summed over a free key
    assert _products([wb.aggregate(P, by=("row",)).node]) == []
    assert _products([wb.aggregate(P, by=("row", "col"), kernel="mean").node]) == []
    both = wb.join(X, Z, on={"row": "row", "col": "col"}, keys={"row": "left.row", "col": "left.col"},
                   kernel=jnp.matmul)  # no free key on either side
    assert _products([wb.aggregate(both, by=("row",)).node]) == []
    cross = wb.join(X, Z, on={}, keys={"r": "left.row", "c": "left.col", "r2": "right.row", "c2": "right.col"},
                    kernel=jnp.matmul)  # nothing contracted
    assert _products([wb.aggregate(cross, by=("r", "c2")).node]) == []
    v = wb.from_tensor(rng.normal(size=(2, 2)), keys=("row",), name="v")  # matrix-vector blocks
    mv = wb.join(X, v, on={"col": "row"}, keys={"row": "left.row", "k": "left.col"}, kernel=jnp.matmul)
    assert _products([wb.aggregate(mv, by=("row",)).node]) == []


def test_block_dot_reads_the_jaxpr():
    f32 = "float32"
    assert passes.block_dot(Kernel(jnp.matmul, arity=2), [(2, 3), (3, 4)], f32) == (0, 1, 1, 0, False, None)
    assert passes.block_dot(Kernel(lambda a, b: b.T @ a.T, arity=2), [(2, 3), (3, 4)], f32) == (1, 0, 0, 1, False, None)
    assert passes.block_dot(Kernel(lambda a, b, g: g @ b.T, arity=3), [(2, 3), (3, 4), (2, 4)], f32) == (2, 1, 1, 1, False, None)
    assert passes.block_dot(Kernel(lambda a, b: a @ b.T, arity=2), [(2, 3), (3, 4)], f32) is None  # no trace
    assert passes.block_dot(Kernel(lambda a, b: a[0] @ b, arity=2), [(2, 3), (3, 4)], f32) is None


# ---- the key and value sides apart -------------------------------------------------------------

def test_apply_product_traces_with_index_arrays_as_arguments(rng):
    x, z = rng.normal(size=(8, 6)), rng.normal(size=(6, 8))
    keep = {(0, 0), (1, 2), (3, 1), (2, 2)}
    X, Z = _rel(x, (2, 2), keep=keep, name="A", rng=rng), _rel(z, (2, 2), name="B", rng=rng)
    C = programs.matmul(X, Z)
    (node,) = _products([C.node])
    p = blocks.product(node.spec, X.node.table, Z.node.table)
    names = [k for k in blocks.INDEX if getattr(p, k) is not None]
    fn = jax.jit(lambda x, z, *index: blocks.apply_product(p, x, z, **dict(zip(names, index))))
    values = fn(X.node.table.values, Z.node.table.values, *[jnp.asarray(getattr(p, k)) for k in names])
    want = LOCAL.run([C.node])[0]
    assert_same_relation(Table(p.out_keys, values), want)
    part = blocks.restrict(p, np.array([0, 2, 3]))
    np.testing.assert_allclose(blocks.run(part, X.node.table.values, Z.node.table.values),
                               np.asarray(values)[[0, 2, 3]], rtol=RTOL)
    assert part.out_keys.equals(p.out_keys[[0, 2, 3]])


@pytest.mark.skipif(passes.block_products not in compiled.RULES,
                    reason="the compiled executor does not run BlockProduct yet")
@pytest.mark.parametrize("keep", [None, {(0, 0), (1, 1), (2, 0), (3, 2)}, {(0, 0), (1, 1), (2, 2)}])
def test_compiled_plans_give_the_interpreters_values(rng, keep):
    x, z = rng.normal(size=(8, 6)), rng.normal(size=(6, 8))
    X, Z = _rel(x, (2, 2), keep=keep, name="A", rng=rng), _rel(z, (2, 2), keep=keep, name="B", rng=rng)
    loss = _loss(programs.matmul)
    value, (gX, gZ) = wb.jit(wb.value_and_grad(loss, argnums=(0, 1)))(X, Z)
    value0, (gX0, gZ0) = wb.value_and_grad(loss, argnums=(0, 1), executor=WITHOUT)(X, Z)
    np.testing.assert_allclose(value.to_tensor(), value0.to_tensor(), rtol=RTOL)
    for g, g0 in ((gX, gX0), (gZ, gZ0)):
        assert_same_relation(g.table(), g0.table())
