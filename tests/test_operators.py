"""Select, Join and Aggregation, forward only, each compared with numpy. Relations are compared
through dense tensors or key-sorted frames, never by row order."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest

import workbench as wb


def sparse(x, keys, keep):
    """A relation over the leading axes of ``x`` holding only the tuples where ``keep`` is True."""
    idx = np.nonzero(keep)
    df = pl.DataFrame({k: i.astype(np.int64) for k, i in zip(keys, idx)})
    vals = x[idx]
    df = df.with_columns(pl.Series("v", vals))
    return wb.from_frame(df, keys=keys, value="v", extents=keep.shape)


def key_rows(R):
    return sorted(R.to_frame().select(R.keys).rows())


# ---- Select ------------------------------------------------------------------------------------

def test_select_without_arguments_is_the_identity(rng):
    x = rng.normal(size=(3, 4, 2))
    S = wb.select(wb.from_tensor(x, keys=("i", "j")))
    assert S.keys == ("i", "j") and S.extents == (3, 4) and S.value_shape == (2,)
    np.testing.assert_allclose(S.to_tensor(), x)


def test_select_predicate_on_one_key(rng):
    x = rng.normal(size=(6, 3))
    S = wb.select(wb.from_tensor(x, keys=("i",)), pred=pl.col("i") % 2 == 0)
    assert len(S) == 3
    expected = x.copy()
    expected[1::2] = 0.0
    np.testing.assert_allclose(S.to_tensor(), expected)


def test_select_predicate_relating_two_keys(rng):
    x = rng.normal(size=(4, 5))
    S = wb.select(wb.from_tensor(x, keys=("i", "j")), pred=pl.col("i") < pl.col("j"))
    np.testing.assert_allclose(S.to_tensor(), np.triu(x, k=1))
    assert S.extents == (4, 5)


def test_select_predicate_on_a_keyless_relation(rng):
    w = rng.normal(size=(2, 3))
    W = wb.from_tensor(w)
    kept = wb.select(W, pred=pl.lit(True))
    assert len(kept) == 1
    np.testing.assert_allclose(kept.to_tensor(), w)
    assert len(wb.select(W, pred=pl.lit(False))) == 0


def test_select_predicate_on_a_key_named_like_a_helper_column(rng):
    x = rng.normal(size=(4,))
    S = wb.select(wb.from_tensor(x, keys=("_i",)), pred=pl.col("_i") >= 2)
    np.testing.assert_allclose(S.to_tensor(), np.where(np.arange(4) >= 2, x, 0.0))


def test_select_permutes_keys(rng):
    x = rng.normal(size=(3, 4, 2))
    T = wb.select(wb.from_tensor(x, keys=("i", "j")), keys={"j": "j", "i": "i"})
    assert T.keys == ("j", "i") and T.extents == (4, 3)
    np.testing.assert_allclose(T.to_tensor(), x.transpose(1, 0, 2))


def test_select_renames_keys(rng):
    x = rng.normal(size=(3, 4))
    T = wb.select(wb.from_tensor(x, keys=("i", "j")), keys={"a": "j", "b": "i"})
    assert T.keys == ("a", "b")
    np.testing.assert_allclose(T.to_tensor(), x.T)


def test_select_can_duplicate_a_key(rng):
    x = rng.normal(size=(3,))
    D = wb.select(wb.from_tensor(x, keys=("i",)), keys={"i": "i", "j": "i"})
    np.testing.assert_allclose(D.to_tensor(), np.diag(x))


def test_select_drops_a_key_fixed_by_the_predicate(rng):
    x = rng.normal(size=(3, 4, 2))
    S = wb.select(wb.from_tensor(x, keys=("i", "j")), pred=pl.col("j") == 2, keys={"i": "i"})
    assert S.keys == ("i",) and S.extents == (3,)
    np.testing.assert_allclose(S.to_tensor(), x[:, 2])


def test_select_drops_a_key_with_one_value_in_the_data(rng):
    x = rng.normal(size=(5,))
    R = sparse(x[None, :], ("i", "j"), np.ones((1, 5), bool))
    np.testing.assert_allclose(wb.select(R, keys={"j": "j"}).to_tensor(), x)


def test_select_dropping_keys_that_collide_on_the_data_is_refused(rng):
    R = wb.from_tensor(rng.normal(size=(2, 3)), keys=("i", "j"))
    with pytest.raises(wb.PlanError, match="aggregate"):
        wb.select(R, keys={"i": "i"}).to_tensor()


@pytest.mark.parametrize("kernel,expected", [
    (lambda v: jnp.outer(v, v), lambda x: np.einsum("ni,nj->nij", x, x)),
    (lambda v: jnp.sum(v ** 2), lambda x: np.sum(x ** 2, axis=1)),
    (lambda v: jnp.stack([v, 2 * v]), lambda x: np.stack([x, 2 * x], axis=1)),
    (lambda v: v[:2] * v[1:], lambda x: x[:, :2] * x[:, 1:]),
])
def test_select_kernel_changes_the_value_shape(rng, kernel, expected):
    x = rng.normal(size=(5, 3))
    S = wb.select(wb.from_tensor(x, keys=("i",)), kernel=kernel)
    want = expected(x)
    assert S.value_shape == want.shape[1:]
    np.testing.assert_allclose(S.to_tensor(), want, rtol=1e-12)


def test_select_kernel_with_predicate_and_projection(rng):
    x = rng.normal(size=(4, 3, 2))
    S = wb.select(wb.from_tensor(x, keys=("i", "j")), pred=pl.col("i") != 1,
                  keys={"j": "j", "i": "i"}, kernel=lambda v: jnp.tanh(v).sum())
    expected = np.tanh(x).sum(-1)
    expected[1] = 0.0
    np.testing.assert_allclose(S.to_tensor(), expected.T, rtol=1e-12)


def test_select_kernel_on_scalar_keyless_relation(rng):
    w = rng.normal(size=(3, 3))
    S = wb.select(wb.from_tensor(w), kernel=lambda m: jnp.trace(m @ m))
    assert S.keys == () and S.value_shape == ()
    np.testing.assert_allclose(S.to_tensor(), np.trace(w @ w), rtol=1e-12)


# ---- Join --------------------------------------------------------------------------------------

def test_join_one_to_one(rng):
    x, y = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    X = sparse(x, ("i",), np.array([1, 1, 0, 1, 1, 0], bool))
    Y = sparse(y, ("i",), np.array([1, 0, 1, 1, 1, 1], bool))
    J = wb.join(X, Y, on={"i": "i"}, kernel=lambda a, b: a * b)
    assert J.keys == ("i",)
    assert key_rows(J) == [(0,), (3,), (4,)]
    expected = x * y
    expected[[1, 2, 5]] = 0.0
    np.testing.assert_allclose(J.to_tensor(), expected, rtol=1e-12)


def test_join_one_to_many(rng):
    n = 5
    src = np.array([0, 0, 1, 3, 3, 3, 4])
    dst = np.array([1, 2, 0, 0, 1, 4, 4])
    w = rng.uniform(size=len(src))
    x = rng.normal(size=(n, 3))
    E = wb.from_frame(pl.DataFrame({"src": src, "dst": dst, "w": w}), keys=("src", "dst"), value="w")
    N = wb.from_tensor(x, keys=("id",))
    M = wb.join(E, N, on={"src": "id"}, kernel=lambda e, v: e * v)
    assert M.keys == ("src", "dst") and M.value_shape == (3,)
    expected = np.zeros((n, n, 3))
    expected[src, dst] = w[:, None] * x[src]
    np.testing.assert_allclose(M.to_tensor(), expected, rtol=1e-12)


def test_join_many_to_many(rng):
    a, b = rng.normal(size=(3, 4)), rng.normal(size=(4, 5))
    keep_a, keep_b = rng.uniform(size=a.shape) < 0.7, rng.uniform(size=b.shape) < 0.7
    A, B = sparse(a, ("i", "j"), keep_a), sparse(b, ("j", "k"), keep_b)
    P = wb.join(A, B, on={"j": "j"}, kernel=jnp.multiply)
    assert P.keys == ("i", "j", "k")
    assert len(P) == int(np.einsum("ij,jk->", keep_a.astype(int), keep_b.astype(int)))
    expected = np.einsum("ij,jk->ijk", a * keep_a, b * keep_b)
    np.testing.assert_allclose(P.to_tensor(), expected, rtol=1e-12)


def test_join_on_several_keys_with_different_names(rng):
    l, r = rng.normal(size=(3, 4, 2)), rng.normal(size=(4, 3))
    L = wb.from_tensor(l, keys=("i", "j", "c"))
    R = sparse(r, ("p", "q"), rng.uniform(size=r.shape) < 0.6)
    J = wb.join(L, R, on={"i": "q", "j": "p"}, kernel=lambda u, v: u - v)
    assert J.keys == ("i", "j", "c")                     # right keys are all joined on
    keep = np.zeros((3, 4), bool)
    keep[R.to_frame()["q"].to_numpy(), R.to_frame()["p"].to_numpy()] = True
    expected = (l - r.T[:, :, None]) * keep[:, :, None]
    np.testing.assert_allclose(J.to_tensor(), expected, rtol=1e-12)


def test_join_output_keys_from_either_side(rng):
    l, r = rng.normal(size=(3, 2)), rng.normal(size=(3, 4))
    L, R = wb.from_tensor(l, keys=("a", "b")), wb.from_tensor(r, keys=("x", "y"))
    J = wb.join(L, R, on={"a": "x"}, keys={"y": "right.y", "n": "right.x", "b": "left.b"},
                kernel=jnp.multiply)
    assert J.keys == ("y", "n", "b") and J.extents == (4, 3, 2)
    np.testing.assert_allclose(J.to_tensor(), np.einsum("ab,ay->yab", l, r), rtol=1e-12)


def test_cross_join_with_a_parameter_relation(rng):
    x, w = rng.normal(size=(6, 4)), rng.normal(size=(4, 3))
    X, W = wb.from_tensor(x, keys=("i",)), wb.from_tensor(w)
    right = wb.join(X, W, on={}, kernel=jnp.matmul)
    assert right.keys == ("i",) and right.value_shape == (3,)
    np.testing.assert_allclose(right.to_tensor(), x @ w, rtol=1e-12)
    left = wb.join(W, X, on={}, kernel=lambda m, v: v @ m)   # the parameter on the left
    assert left.keys == ("i",)
    np.testing.assert_allclose(left.to_tensor(), x @ w, rtol=1e-12)
    both = wb.join(W, W, on={}, kernel=lambda a, b: a.T @ b)
    assert both.keys == ()
    np.testing.assert_allclose(both.to_tensor(), w.T @ w, rtol=1e-12)


def test_cross_join_of_two_keyed_relations(rng):
    x, y = rng.normal(size=(3,)), rng.normal(size=(4,))
    J = wb.join(wb.from_tensor(x, keys=("i",)), wb.from_tensor(y, keys=("j",)), kernel=jnp.multiply)
    assert J.keys == ("i", "j")
    np.testing.assert_allclose(J.to_tensor(), np.outer(x, y), rtol=1e-12)


def test_join_default_keys_are_left_then_unjoined_right(rng):
    l, r = rng.normal(size=(2, 3)), rng.normal(size=(3, 4))
    L, R = wb.from_tensor(l, keys=("i", "j")), wb.from_tensor(r, keys=("j", "k"))
    J = wb.join(L, R, on={"j": "j"}, kernel=jnp.add)
    assert J.keys == ("i", "j", "k") and J.extents == (2, 3, 4)
    np.testing.assert_allclose(J.to_tensor(), l[:, :, None] + r[None], rtol=1e-12)
    Jr = wb.join(R, L, on={"j": "j"}, kernel=jnp.add)
    assert Jr.keys == ("j", "k", "i")
    np.testing.assert_allclose(Jr.to_tensor(), r[:, :, None] + l.T[:, None, :], rtol=1e-12)


def test_join_kernel_changes_the_value_shape(rng):
    a, b = rng.normal(size=(4, 2, 3)), rng.normal(size=(4, 3))
    J = wb.join(wb.from_tensor(a, keys=("i",)), wb.from_tensor(b, keys=("i",)), on={"i": "i"},
                kernel=lambda m, v: jnp.sum(m @ v))
    assert J.value_shape == ()
    np.testing.assert_allclose(J.to_tensor(), np.einsum("nij,nj->n", a, b), rtol=1e-12)


# ---- Aggregation ------------------------------------------------------------------------------

KEYS = ("a", "b", "c")
ORDERED_SUBSETS = [p for r in range(4) for s in itertools.combinations(KEYS, r)
                   for p in itertools.permutations(s)]


@pytest.fixture(scope="module")
def sparse_3d():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4, 2, 2))
    keep = rng.uniform(size=(3, 4, 2)) < 0.6
    keep[0, 0, 0] = True
    keep[1, :, :] = False                  # a whole group absent
    return x, keep


def dense_aggregate(x, keep, by, kernel):
    drop = tuple(i for i, k in enumerate(KEYS) if k not in by)
    total = np.sum(x * keep[..., None], axis=drop)
    counts = np.sum(keep, axis=drop)
    kept_axes = [k for k in KEYS if k in by]
    perm = [kept_axes.index(k) for k in by] + [len(by)]
    total, counts = np.transpose(total, perm), np.transpose(counts, perm[:-1])
    if kernel == "mean":
        total = np.where(counts[..., None] > 0, total / np.maximum(counts, 1)[..., None], 0.0)
    return total, counts > 0


@pytest.mark.parametrize("kernel", ["sum", "mean"])
@pytest.mark.parametrize("by", ORDERED_SUBSETS, ids=lambda b: "-".join(b) or "none")
def test_aggregate_over_every_ordered_subset_of_keys(sparse_3d, by, kernel):
    x, keep = sparse_3d
    R = sparse(x, KEYS, keep)
    G = wb.aggregate(R, by=by, kernel=kernel)
    assert G.keys == by
    assert G.extents == tuple(x.shape[KEYS.index(k)] for k in by)
    assert G.value_shape == (2,)
    expected, present = dense_aggregate(x, keep, by, kernel)
    np.testing.assert_allclose(G.to_tensor(), expected, rtol=1e-12, atol=1e-12)
    assert len(G) == int(present.sum())                  # absent groups have no tuple


def test_aggregate_by_a_string_is_one_key(rng):
    x = rng.normal(size=(3, 4))
    G = wb.aggregate(wb.from_tensor(x, keys=("i", "j")), by="j")
    assert G.keys == ("j",)
    np.testing.assert_allclose(G.to_tensor(), x.sum(axis=0), rtol=1e-12)


@pytest.mark.parametrize("kernel", ["sum", "mean"])
def test_aggregate_over_a_large_sparse_key_space(rng, kernel):
    n = 50
    i, j = rng.integers(0, 10_000, size=n), rng.integers(0, 3, size=n)
    i[:10], j[:10] = 7, np.arange(10) % 3                  # several tuples share i == 7
    df = pl.DataFrame({"i": i, "j": j, "v": rng.normal(size=n)}).unique(["i", "j"])
    R = wb.from_frame(df, keys=("i", "j"), value="v", extents=(10_000, 10_000))
    G = wb.aggregate(R, by=("j", "i"), kernel=kernel)
    got = G.to_frame().sort("j", "i")
    agg = pl.col("v").sum() if kernel == "sum" else pl.col("v").mean()
    expected = df.group_by("j", "i").agg(agg).sort("j", "i")
    assert got.select("j", "i").rows() == expected.select("j", "i").rows()
    np.testing.assert_allclose(got["value"].to_numpy(), expected["v"].to_numpy(), rtol=1e-12)


# ---- empty relations ---------------------------------------------------------------------------

def test_a_predicate_that_keeps_nothing(rng):
    x = rng.normal(size=(4, 3))
    E = wb.select(wb.from_tensor(x, keys=("i",)), pred=pl.col("i") > 10)
    assert len(E) == 0
    assert E.to_frame().height == 0
    assert E.frame.collect_schema()["i"] == pl.Int64
    np.testing.assert_array_equal(E.to_tensor(), np.zeros((4, 3)))


def test_a_kernel_applied_to_an_empty_relation(rng):
    x = rng.normal(size=(4, 3))
    E = wb.select(wb.from_tensor(x, keys=("i",)), pred=pl.col("i") < 0)
    K = wb.select(E, kernel=lambda v: jnp.outer(v, v))
    assert K.value_shape == (3, 3)
    assert len(K) == 0
    assert K.to_frame().schema["value"] == pl.Array(pl.Float64, (3, 3))
    np.testing.assert_array_equal(K.to_tensor(), np.zeros((4, 3, 3)))


def test_operators_on_empty_relations(rng):
    x, w = rng.normal(size=(4, 3)), rng.normal(size=(3, 2))
    X = wb.from_tensor(x, keys=("i",))
    E = wb.select(X, pred=pl.col("i") > 10)
    assert len(wb.join(E, X, on={"i": "i"}, kernel=jnp.add)) == 0
    assert len(wb.join(X, E, on={"i": "i"}, kernel=jnp.add)) == 0
    H = wb.join(E, wb.from_tensor(w), on={}, kernel=lambda v, m: jax.nn.relu(v @ m))
    assert len(H) == 0 and H.value_shape == (2,)
    assert len(wb.aggregate(E, by=("i",))) == 0
    total = wb.aggregate(E, by=())                       # the empty sum is zero
    assert len(total) == 1
    np.testing.assert_array_equal(total.to_tensor(), np.zeros(3))


# ---- kernels read the current values of what they capture -----------------------------------

SCALE = 1.0


def _scaled(v):
    return v * SCALE


def test_a_kernel_sees_a_rebound_global(rng):
    global SCALE
    x = rng.normal(size=(5, 2))
    X = wb.from_tensor(x, keys=("i",))
    try:
        for s in (2.0, 3.0, -1.5):
            SCALE = s
            np.testing.assert_allclose(wb.select(X, kernel=_scaled).to_tensor(), s * x)
    finally:
        SCALE = 1.0


def test_a_kernel_sees_captured_arrays_and_lists_mutated_in_place(rng):
    x = rng.normal(size=(4, 3))
    X = wb.from_tensor(x, keys=("i",))
    w = np.ones(3)
    shift = [0.0]

    def make():
        return lambda v: v * w + shift[0]

    np.testing.assert_allclose(wb.select(X, kernel=make()).to_tensor(), x)
    w[:] = [1.0, 2.0, 3.0]
    shift[0] = 0.5
    np.testing.assert_allclose(wb.select(X, kernel=make()).to_tensor(), x * w + 0.5)
