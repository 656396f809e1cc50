"""Property tests: relational programs over random shapes, block sizes, key sets and sparsity
(random subsets of tuples dropped) agree with numpy on the dense arrays, zeros for absent tuples.
"""
import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import workbench as wb

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RTOL, ATOL = 1e-10, 1e-12


def sparse(x, keys, mask):
    """Relation over the leading ``mask.ndim`` axes of ``x`` holding the tuples where mask is set."""
    idx = np.nonzero(mask)
    df = pl.DataFrame({k: i.astype(np.int64) for k, i in zip(keys, idx)})
    df = df.with_columns(pl.Series("v", x[idx]))
    return wb.from_frame(df, keys=keys, value="v", extents=mask.shape)


def masks(data, shape):
    """A boolean mask of ``shape`` drawn tuple by tuple (so Hypothesis can shrink it)."""
    n = int(np.prod(shape))
    bits = data.draw(st.lists(st.booleans(), min_size=n, max_size=n), label="mask")
    return np.array(bits, dtype=bool).reshape(shape)


def blocks(x, br, bc):
    """(nr*br, nc*bc) -> (nr, nc, br, bc)."""
    nr, nc = x.shape[0] // br, x.shape[1] // bc
    return x.reshape(nr, br, nc, bc).transpose(0, 2, 1, 3)


def block_mask(mask, br, bc):
    return np.kron(mask, np.ones((br, bc)))


dims = st.integers(1, 3)
seeds = st.integers(0, 2**32 - 1)


# ---- blocked matrix multiply -------------------------------------------------------------------

def matmul(A, B):
    P = wb.join(A, B, on={"col": "row"},
                keys={"row": "left.row", "k": "left.col", "col": "right.col"}, kernel=jnp.matmul)
    return wb.aggregate(P, by=("row", "col"))


@SETTINGS
@given(nr=dims, nk=dims, nc=dims, br=dims, bk=dims, bc=dims, seed=seeds, data=st.data())
def test_blocked_matmul_matches_numpy(nr, nk, nc, br, bk, bc, seed, data):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(nr * br, nk * bk)), rng.normal(size=(nk * bk, nc * bc))
    ma, mb = masks(data, (nr, nk)), masks(data, (nk, nc))
    A = sparse(blocks(a, br, bk), ("row", "col"), ma)
    B = sparse(blocks(b, bk, bc), ("row", "col"), mb)
    C = matmul(A, B)
    assert C.keys == ("row", "col") and C.extents == (nr, nc) and C.value_shape == (br, bc)
    expected = (a * block_mask(ma, br, bk)) @ (b * block_mask(mb, bk, bc))
    np.testing.assert_allclose(wb.to_matrix(C), expected, rtol=RTOL, atol=ATOL)
    # a block of C exists exactly when some inner block pairs up
    assert len(C) == int(((ma.astype(int) @ mb.astype(int)) > 0).sum())


# ---- transpose and key permutations via select --------------------------------------------------

@SETTINGS
@given(nr=dims, nc=dims, br=dims, bc=dims, seed=seeds, data=st.data())
def test_transpose_via_select_matches_numpy(nr, nc, br, bc, seed, data):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(nr * br, nc * bc))
    m = masks(data, (nr, nc))
    A = sparse(blocks(a, br, bc), ("row", "col"), m)
    T = wb.select(A, keys={"row": "col", "col": "row"}, kernel=jnp.transpose)
    assert T.extents == (nc, nr) and T.value_shape == (bc, br)
    np.testing.assert_allclose(wb.to_matrix(T), (a * block_mask(m, br, bc)).T, rtol=RTOL)


@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), seed=seeds, data=st.data())
def test_key_permutation_via_select_matches_numpy(shape, seed, data):
    rng = np.random.default_rng(seed)
    names = ("a", "b", "c")[: len(shape)]
    x = rng.normal(size=(*shape, 2))
    m = masks(data, tuple(shape))
    perm = data.draw(st.permutations(range(len(shape))), label="perm")
    R = sparse(x, names, m)
    P = wb.select(R, keys={names[p]: names[p] for p in perm})
    assert P.keys == tuple(names[p] for p in perm)
    np.testing.assert_allclose(P.to_tensor(),
                               np.transpose(x * m[..., None], (*perm, len(shape))), rtol=RTOL)


# ---- aggregation over key subsets ---------------------------------------------------------------

@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       value_shape=st.sampled_from([(), (2,), (2, 3)]), kernel=st.sampled_from(["sum", "mean"]),
       seed=seeds, data=st.data())
def test_aggregation_over_key_subsets_matches_numpy(shape, value_shape, kernel, seed, data):
    rng = np.random.default_rng(seed)
    names = ("a", "b", "c")[: len(shape)]
    x = rng.normal(size=(*shape, *value_shape))
    m = masks(data, tuple(shape))
    order = data.draw(st.permutations(range(len(shape))), label="order")
    by_axes = order[: data.draw(st.integers(0, len(shape)), label="n_by")]
    by = tuple(names[i] for i in by_axes)
    R = sparse(x, names, m)
    assume(kernel == "sum" or by or m.any())  # the mean of nothing is refused (test_errors.py)
    G = wb.aggregate(R, by=by, kernel=kernel)

    drop = tuple(i for i in range(len(shape)) if i not in by_axes)
    wide = m.reshape(m.shape + (1,) * len(value_shape))
    total = np.sum(x * wide, axis=drop)
    counts = np.sum(m, axis=drop)
    kept = [i for i in range(len(shape)) if i in by_axes]
    perm = [kept.index(i) for i in by_axes]
    total = np.transpose(total, perm + list(range(len(by), total.ndim)))
    counts = np.transpose(counts, perm)
    cw = counts.reshape(counts.shape + (1,) * len(value_shape))
    expected = total / np.maximum(cw, 1) if kernel == "mean" else total
    assert G.keys == by and G.value_shape == value_shape
    np.testing.assert_allclose(G.to_tensor(), expected, rtol=RTOL, atol=ATOL)
    assert len(G) == (int((counts > 0).sum()) if by else 1)


# ---- a GCN layer --------------------------------------------------------------------------------

def _scale(e, v):
    return e * v


def _relu_matmul(v, w):
    return jax.nn.relu(v @ w)


def gcn_layer(Edge, Node, W):
    msg = wb.join(Edge, Node, on={"src": "id"}, keys={"id": "left.dst", "src": "left.src"},
                  kernel=_scale)
    agg = wb.aggregate(msg, by=("id",))
    return wb.join(agg, W, on={}, keys={"id": "left.id"}, kernel=_relu_matmul)


@SETTINGS
@given(n=st.integers(1, 7), d=st.integers(1, 4), h=st.integers(1, 4), seed=seeds, data=st.data())
def test_gcn_layer_matches_numpy(n, d, h, seed, data):
    rng = np.random.default_rng(seed)
    edges = masks(data, (n, n))                 # edges[src, dst]
    present = masks(data, (n,))                 # nodes with features
    w_edge = rng.uniform(0.1, 1.0, size=(n, n))
    x, w = rng.normal(size=(n, d)), rng.normal(size=(d, h))
    Edge = sparse(w_edge, ("src", "dst"), edges)
    Node = sparse(x, ("id",), present)
    H = gcn_layer(Edge, Node, wb.from_tensor(w))
    assert H.keys == ("id",) and H.value_shape == (h,)
    adj = (w_edge * edges).T                    # adj[dst, src]
    expected = np.maximum(adj @ (x * present[:, None]) @ w, 0.0)
    np.testing.assert_allclose(H.to_tensor(shape=(n,)), expected, rtol=RTOL, atol=ATOL)
    # a node has an output exactly when an edge brings it a message from a present node
    assert len(H) == int((edges & present[:, None]).any(axis=0).sum())
