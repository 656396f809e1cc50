"""The backward loop: accumulation over consumers, symbolic zeros, argnums pruning, reuse of
forward intermediates, gradient schemas, and the errors of the differentiation API."""
import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest

import workbench as wb
from workbench import passes
from workbench.execute import batched
from workbench.errors import KernelError, PlanError
from workbench.execute import LocalExecutor

LOCAL = LocalExecutor()
from workbench.plan import Add, Join, toposort


def matmul(A, B):
    P = wb.join(A, B, on={"col": "row"}, keys={"row": "left.row", "k": "left.col", "col": "right.col"},
                kernel=jnp.matmul)
    return wb.aggregate(P, by=("row", "col"))


def sum_sq(v):
    return jnp.sum(v ** 2)


def loss_of(R):
    return wb.aggregate(wb.select(R, kernel=sum_sq), by=())


def kernel_names(plan):
    return [n.kernel.name for n in plan.nodes() if getattr(n, "kernel", None) is not None
            and not isinstance(n.kernel, str)]


# ---- accumulation --------------------------------------------------------------------------------

def test_cotangents_accumulate_over_every_consumer_including_both_sides_of_a_self_join(rng):
    a = rng.normal(size=(4, 4))
    A = wb.from_matrix(a, block=(2, 2))

    def f(A):  # A feeds the left and the right of one join, and a select
        return wb.join(loss_of(matmul(A, A)), loss_of(wb.select(A, kernel=jnp.sin)), on={},
                       kernel=lambda p, q: p + 3.0 * q)

    g = wb.grad(f)(A)
    ref = jax.grad(lambda a: jnp.sum((a @ a) ** 2) + 3.0 * jnp.sum(jnp.sin(a) ** 2))(a)
    np.testing.assert_allclose(wb.to_matrix(g), ref, rtol=1e-9)
    _, back = wb.plans(f, A)
    (out,) = back.outputs
    assert isinstance(out, Add) and len(out.terms) == 3  # left side, right side, the select


# ---- symbolic zeros and argnums ------------------------------------------------------------------

def _two_branches(n_extra):
    """loss(X, W): a branch over X joined with a branch over W that has n_extra more selects."""
    def f(X, W):
        w = W
        for _ in range(n_extra):
            w = wb.select(w, kernel=jnp.tanh)
        wsum = wb.aggregate(w, by=())
        return loss_of(wb.join(wb.select(X, kernel=jnp.exp), wsum, on={}, keys={"i": "left.i"},
                               kernel=lambda x, s: x * s))
    return f


def test_a_branch_that_needs_no_gradient_builds_no_backward_nodes(rng):
    X = wb.from_tensor(rng.normal(size=(5, 2)), keys=("i",))
    W = wb.from_tensor(rng.normal(size=(3, 2)), keys=("j",))
    sizes = []
    for n_extra in (0, 4):
        fwd, back = wb.plans(_two_branches(n_extra), X, W, argnums=0)
        w_branch = {n for n in fwd.nodes()
                    if not any(x.kind == "scan" and x.name == "X" for x in toposort([n]))}
        assert len(w_branch) >= 2 + n_extra  # the scan of W, its selects and its aggregate
        assert not [n for n in back.nodes() if n.is_backward and n.origin in w_branch]
        sizes.append(sum(n.is_backward for n in back.nodes()))
    assert sizes[0] == sizes[1]  # a longer W branch adds nothing to the backward plan of X
    # with both arguments requested, the W branch does get backward nodes
    fwd, back = wb.plans(_two_branches(4), X, W, argnums=(0, 1))
    assert sum(n.is_backward for n in back.nodes()) > sizes[1] + 4


def test_argnums_prunes_the_other_sides_gradient(rng):
    A = wb.from_matrix(rng.normal(size=(4, 6)), block=(2, 3))
    B = wb.from_matrix(rng.normal(size=(6, 2)), block=(3, 2))
    f = lambda A, B: loss_of(matmul(A, B))  # noqa: E731
    _, only_a = wb.plans(f, A, B, argnums=0)
    _, only_b = wb.plans(f, A, B, argnums=1)
    _, both = wb.plans(f, A, B, argnums=(0, 1))
    assert "vjp_left(matmul)" in kernel_names(only_a) and "vjp_right(matmul)" not in kernel_names(only_a)
    assert "vjp_right(matmul)" in kernel_names(only_b) and "vjp_left(matmul)" not in kernel_names(only_b)
    assert {"vjp_left(matmul)", "vjp_right(matmul)"} <= set(kernel_names(both))
    ga = wb.grad(f, argnums=0)(A, B)
    ga2, _ = wb.grad(f, argnums=(0, 1))(A, B)
    np.testing.assert_allclose(wb.to_matrix(ga), wb.to_matrix(ga2), rtol=1e-12)


def test_a_captured_relation_is_a_constant(rng):
    C = wb.from_tensor(rng.normal(size=(4,)), keys=("i",), name="C")
    X = wb.from_tensor(rng.normal(size=(4,)), keys=("i",), name="X")
    f = lambda X: loss_of(wb.join(X, wb.select(C, kernel=jnp.exp), on={"i": "i"}, kernel=_mul))  # noqa: E731
    fwd, back = wb.plans(f, X)
    assert not [n for n in back.nodes() if n.is_backward and n.origin.kind == "select"
                and n.origin.input is C.node]
    g = wb.grad(f)(X)
    c, x = C.to_tensor(), X.to_tensor()
    np.testing.assert_allclose(g.to_tensor(), 2 * x * np.exp(c) ** 2, rtol=1e-9)


def _mul(a, b):
    return a * b


# ---- the backward plan reads forward results -----------------------------------------------------

def test_backward_plan_reads_forward_joins_by_identity(rng):
    A = wb.from_matrix(rng.normal(size=(4, 6)), block=(2, 3))
    B = wb.from_matrix(rng.normal(size=(6, 2)), block=(3, 2))
    # the blocked-matmul rewrite would compute the forward join inside one matmul: pin the rules
    local = LocalExecutor(rules=[r for r in passes.RULES if r is not passes.block_products])
    fwd, back = wb.plans(lambda A, B: loss_of(matmul(A, B)), A, B, argnums=(0, 1), executor=local)
    (join,) = [n for n in fwd.nodes() if isinstance(n, Join)]
    back_nodes = back.nodes()
    assert any(n is join for n in back_nodes)  # the aggregate's RJP reads the forward join's keys
    pairs = [n for n in back_nodes if isinstance(n, Join) and n.label == "pairs"]
    assert pairs and all(p.left is join.left and p.right is join.right for p in pairs)
    # run both plans in one context: the forward tables are read, not recomputed
    ctx = local.context()
    local.run(list(fwd.outputs), ctx)
    forward_tables = {n: ctx.memo[n] for n in fwd.nodes()}
    n_matches = len(ctx.matches)
    local.run(list(back.outputs), ctx)
    assert all(ctx.memo[n] is t for n, t in forward_tables.items())
    # the re-join of the pairs reuses the forward join's row match
    assert (join.left, join.right, join.on) in ctx.matches
    assert len([k for k in ctx.matches if k[:2] == (join.left, join.right)]) == 1
    assert len(ctx.matches) > n_matches


@pytest.mark.parametrize("identity_select", [False, True])
def test_the_forward_join_kernel_runs_once_per_gradient(rng, monkeypatch, identity_select):
    """Also when a rewrite rebuilds the forward join (an identity select under it is dropped)."""
    calls = []

    def counting(run):
        def apply(kernel, *args, **kw):
            calls.append(kernel.name)
            return run(kernel, *args, **kw)
        return apply

    for name in ("apply", "apply_sum"):  # per-tuple kernels, plain or fused with a sum
        monkeypatch.setattr(batched, name, counting(getattr(batched, name)))
    A = wb.from_matrix(rng.normal(size=(4, 6)), block=(2, 3))
    B = wb.from_matrix(rng.normal(size=(6, 2)), block=(3, 2))
    f = lambda A, B: loss_of(matmul(wb.select(A) if identity_select else A, B))  # noqa: E731
    local = LocalExecutor(rules=[r for r in passes.RULES if r is not passes.block_products])
    ga, gb = wb.grad(f, argnums=(0, 1), executor=local)(A, B)
    assert calls.count("matmul") == 1, calls
    assert calls.count("sum_sq") == 1, calls
    a, b = wb.to_matrix(A), wb.to_matrix(B)
    ra, rb = jax.grad(lambda a, b: jnp.sum((a @ b) ** 2), (0, 1))(a, b)
    np.testing.assert_allclose(wb.to_matrix(ga), ra, rtol=1e-9)
    np.testing.assert_allclose(wb.to_matrix(gb), rb, rtol=1e-9)


# ---- gradient schemas ----------------------------------------------------------------------------

def test_gradients_carry_their_primals_keys_and_extents(rng):
    # R's key space (extent 6) is larger than its join partner's (4), and larger than its data
    L = wb.from_tensor(rng.normal(size=(4, 2)), keys=("i",), name="L")
    R = wb.from_frame(pl.DataFrame({"x": [0, 2, 3], "y": [1, 0, 2], "v": rng.normal(size=3)}),
                      keys=("x", "y"), value="v", extents=(6, 5), name="R")
    W = wb.from_tensor(rng.normal(size=(2,)), name="W")

    def f(L, R, W):
        P = wb.join(L, R, on={"i": "x"}, keys={"y": "right.y", "i": "left.i"},
                    kernel=lambda l, r: jnp.tanh(l * r))
        T = wb.select(P, keys={"a": "i", "b": "y"})  # a permutation: keys back in another order
        Q = wb.join(T, W, on={}, kernel=lambda t, w: t * w)
        return loss_of(Q)

    grads = wb.grad(f, argnums=(0, 1, 2))(L, R, W)
    for g, r in zip(grads, (L, R, W)):
        assert g.keys == r.keys and g.extents == r.extents and g.value_shape == r.value_shape
        assert g.to_tensor().shape == r.to_tensor().shape
    l, r, w = L.to_tensor(), R.to_tensor(), W.to_tensor()
    mask = np.zeros((6, 5), bool)
    mask[[0, 2, 3], [1, 0, 2]] = True

    def twin(l, r, w):
        p = jnp.tanh(l[:, None, :] * r[:4, :, None]) * mask[:4, :, None]
        return jnp.sum((p * w) ** 2)

    refs = jax.grad(twin, (0, 1, 2))(l, r, w)
    for g, ref in zip(grads, refs):
        np.testing.assert_allclose(g.to_tensor(), ref, rtol=1e-9, atol=1e-12)


def test_pullback_is_linear_and_repeatable(rng):
    A = wb.from_matrix(rng.normal(size=(4, 6)), block=(2, 3))
    B = wb.from_matrix(rng.normal(size=(6, 2)), block=(3, 2))
    C, pullback = wb.vjp(matmul, A, B)
    ct = rng.normal(size=(4, 2))
    g1 = pullback(wb.from_matrix(ct, block=(2, 2)))
    g2 = pullback(wb.from_matrix(2.0 * ct, block=(2, 2)))
    g3 = pullback(wb.from_matrix(ct, block=(2, 2)))
    for a, b, c in zip(g1, g2, g3):
        np.testing.assert_allclose(wb.to_matrix(b), 2.0 * wb.to_matrix(a), rtol=1e-12)
        np.testing.assert_allclose(wb.to_matrix(c), wb.to_matrix(a), rtol=1e-12)


# ---- errors --------------------------------------------------------------------------------------

@pytest.fixture
def AB(rng):
    return (wb.from_matrix(rng.normal(size=(4, 4)), block=(2, 2)),
            wb.from_matrix(rng.normal(size=(4, 4)), block=(2, 2)))


def test_grad_of_a_non_scalar_loss_is_refused(AB):
    A, _ = AB
    with pytest.raises(ValueError, match="scalar"):
        wb.grad(lambda A: wb.aggregate(A, by=("row",)))(A)
    with pytest.raises(ValueError, match="scalar"):  # no keys, but a matrix value
        wb.value_and_grad(lambda A: wb.aggregate(A, by=()))(A)


def test_a_kernel_with_integer_output_is_refused(AB):
    A, _ = AB
    with pytest.raises(KernelError, match="differentiable"):
        wb.grad(lambda A: loss_of(wb.select(A, kernel=lambda v: (v > 0).astype(jnp.int32))))(A)
    with pytest.raises(KernelError, match="differentiable"):
        wb.vjp(lambda A, B: wb.join(A, B, on={"row": "row", "col": "col"},
                                    kernel=lambda a, b: jnp.argmax(a + b)), *AB)


@pytest.mark.parametrize("argnums", [2, -3, (0, 5)])
def test_argnums_out_of_range(AB, argnums):
    f = lambda A, B: loss_of(matmul(A, B))  # noqa: E731
    with pytest.raises(ValueError, match="out of range"):
        wb.grad(f, argnums=argnums)(*AB)
    with pytest.raises(ValueError, match="out of range"):
        wb.plans(f, *AB, argnums=argnums)


def test_a_program_must_return_a_relation(AB):
    A, _ = AB
    with pytest.raises(TypeError, match="must return one workbench Relation"):
        wb.grad(lambda A: 1.0)(A)
    with pytest.raises(TypeError, match="must return one workbench Relation"):
        wb.vjp(lambda A: (A, A), A)


def test_arguments_must_be_relations(AB):
    A, _ = AB
    with pytest.raises(TypeError, match="not a workbench Relation"):
        wb.grad(lambda A, b: loss_of(A), argnums=0)(A, np.ones(3))


def test_pullback_refuses_a_cotangent_of_the_wrong_keys_shape_or_dtype(AB):
    C, pullback = wb.vjp(matmul, *AB)  # C(row, col) -> 2x2 block
    ok = np.ones((4, 4))
    pullback(wb.from_matrix(ok, block=(2, 2)))  # the right cotangent is accepted
    with pytest.raises(PlanError, match="cotangent"):  # wrong keys
        pullback(wb.from_tensor(np.ones((2, 2, 2)), keys=("row", "k")))
    with pytest.raises(PlanError, match="cotangent"):  # wrong value shape
        pullback(wb.from_matrix(ok, block=(1, 1)))
    with pytest.raises(PlanError, match="cotangent"):  # wrong dtype
        pullback(wb.from_matrix(ok, block=(2, 2), dtype="float32"))
    with pytest.raises(TypeError, match="cotangent"):  # not a relation
        pullback(np.ones((4, 4)))


def test_a_cotangent_may_list_the_output_keys_in_another_order(rng):
    A = wb.from_matrix(rng.normal(size=(4, 6)), block=(2, 3))
    B = wb.from_matrix(rng.normal(size=(6, 2)), block=(3, 2))
    _, pullback = wb.vjp(matmul, A, B)
    ct = rng.normal(size=(4, 2))
    G = wb.from_matrix(ct, block=(2, 2))
    swapped = wb.select(G, keys={"col": "col", "row": "row"})
    for a, b in zip(pullback(G), pullback(swapped)):
        np.testing.assert_allclose(wb.to_matrix(b), wb.to_matrix(a), rtol=1e-12)
    _, vjp_fn = jax.vjp(lambda a, b: a @ b, wb.to_matrix(A), wb.to_matrix(B))
    for got, want in zip(pullback(swapped), vjp_fn(ct)):
        np.testing.assert_allclose(wb.to_matrix(got), want, rtol=1e-9)


def test_example_programs_are_checked_in_float64_at_rtol_1e_9(rng):
    """tests/test_check.py compares the paper's programs with their twins at this tolerance."""
    from workbench import check, programs

    assert check.default_tolerance("float64") == 1e-9
    for make in programs.EXAMPLES:
        assert all(r.dtype == "float64" for r in make(rng).rels)
    report = check.program_report(programs.used_twice(rng))
    assert report.ok and all(r.tolerance == 1e-9 for r in report.rows)
