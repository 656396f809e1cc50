"""The SQL front end: the paper's queries as written build the plans of the Python API, with the
same values and gradients (against programs.py and the dense JAX twins, rtol 1e-9, float64);
plans printed as SQL read back to the same gradients; errors speak SQL."""
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest

import workbench as wb
from workbench import programs
from workbench.check import against_jax, assert_relations_equal
from workbench.errors import PlanError
from workbench.plan import Add, Aggregate, Join, Select, toposort
from workbench.sql import SQLError

RTOL = 1e-9


def kinds(rel_or_node):
    node = getattr(rel_or_node, "node", rel_or_node)
    return sorted(n.kind for n in toposort([node]))


def assert_grads_equal(got, want, rtol=RTOL):
    for g, w in zip(got, want):
        assert_relations_equal(g, w, rtol=rtol, atol=1e-12)


def sql_program(query, names, functions=None, values=None, **constants):
    """A relational program (positional relations, named ``names``) that runs ``query``."""
    values = values or {}

    def f(*rels):
        given = {n: (r, values[n]) if n in values else r for n, r in zip(names, rels)}
        return wb.sql(query, functions=functions, **given, **constants)
    # parameters named as the relations, so the plans' scans are named so too
    f.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names])
    return f


def round_trip(f, rels, argnums, names, **constants):
    """Gradients of ``f`` and the gradients its backward plan gives when printed as SQL and
    read back through wb.sql."""
    grads = wb.grad(f, argnums=argnums)(*rels)
    _, backward = wb.plans(f, *rels, argnums=argnums)
    script = backward.to_sql()
    again = wb.sql(script, **dict(zip(names, rels)), **constants)
    again = again if isinstance(again, tuple) else (again,)
    return grads, again, script


# ---- the paper's queries, as written -------------------------------------------------------------

MATMUL = """SELECT A.row, B.col, SUM(matrix_multiply(A.mat, B.mat))
            FROM A, B WHERE A.col = B.row GROUP BY A.row, B.col"""
MATMUL_LOSS = f"SELECT SUM(sum_squares(C.value)) FROM ({MATMUL}) AS C"


def test_blocked_matrix_multiply_builds_the_python_plan():
    p = programs.blocked_matmul(np.random.default_rng(0))
    A, B = p.rels
    C = wb.sql(MATMUL, A=(A, "mat"), B=(B, "mat"))
    np.testing.assert_allclose(wb.to_matrix(C), p.dense[0] @ p.dense[1], rtol=RTOL)
    assert_relations_equal(C, programs.matmul(A, B))
    join, = [n for n in toposort([C.node]) if isinstance(n, Join)]
    assert join.on == (("col", "row"),) and join.kernel.name == "matrix_multiply"
    assert isinstance(C.node, Aggregate) and C.node.by == ("row", "col")
    assert C.keys == ("row", "col")


def test_blocked_matrix_multiply_gradients_equal_python_and_jax():
    p = programs.blocked_matmul(np.random.default_rng(1))
    f = sql_program(MATMUL_LOSS, ("A", "B"), values={"A": "mat", "B": "mat"})
    assert kinds(f(*p.rels)) == kinds(p.fn(*p.rels))
    report = against_jax(f, p.twin, *p.rels, dense_args=p.dense, layouts=p.layouts, rtol=RTOL)
    assert report.ok, str(report)
    assert_grads_equal(wb.grad(f, argnums=(0, 1))(*p.rels), wb.grad(p.fn, argnums=(0, 1))(*p.rels))


def test_logistic_regression_query():
    p = programs.logistic_regression(np.random.default_rng(2))
    q = """SELECT AVG(logaddexp(0, dot(x.value, t.value)) - y.value * dot(x.value, t.value))
           FROM Rx x, Ry y, Rt t WHERE x.id = y.id"""
    f = sql_program(q, ("Rx", "Ry", "Rt"))
    # dot(x, t) is computed once at x ⋈ t, as the Python program does: no packed values
    assert kinds(f(*p.rels)) == kinds(p.fn(*p.rels))
    first = [n for n in toposort([f(*p.rels).node]) if isinstance(n, Join)][0]
    assert first.kernel.name == "dot" and first.on == ()
    report = against_jax(f, p.twin, *p.rels, dense_args=p.dense, layouts=p.layouts,
                         argnums=p.argnums, rtol=RTOL)
    assert report.ok, str(report)
    assert_grads_equal(wb.grad(f, argnums=(0, 2))(*p.rels), wb.grad(p.fn, argnums=(0, 2))(*p.rels))


def softmax_cross_entropy(z, y):
    return -jnp.sum(y * jax.nn.log_softmax(z))


GCN = """
WITH H AS (
  SELECT e.dst AS id, relu(matrix_multiply(SUM(e.w * n.value), W1.value)) AS value
  FROM Edge e, Node n, W1 WHERE e.src = n.id GROUP BY e.dst),
Z AS (
  SELECT e.dst AS id, matrix_multiply(SUM(e.w * h.value), W2.value) AS value
  FROM Edge e JOIN H h ON e.src = h.id CROSS JOIN W2 GROUP BY e.dst)
SELECT AVG(softmax_cross_entropy(Z.value, Y.value)) FROM Z, Y WHERE Z.id = Y.id
"""


def gcn_program():
    p = programs.gcn(np.random.default_rng(3))
    f = sql_program(GCN, ("Node", "Y", "W1", "W2"), {"softmax_cross_entropy": softmax_cross_entropy},
                    Edge=(p.constants["Edge"], "w"))
    return p, f


def test_two_layer_gcn_and_its_loss_are_one_query():
    p, f = gcn_program()
    out = f(*p.rels)
    assert kinds(out) == kinds(p.fn(*p.rels))
    report = against_jax(f, p.twin, *p.rels, dense_args=p.dense, layouts=p.layouts,
                         argnums=p.argnums, rtol=RTOL)
    assert report.ok, str(report)
    assert_grads_equal(wb.grad(f, argnums=p.argnums)(*p.rels), wb.grad(p.fn, argnums=p.argnums)(*p.rels))


def normalize(v):
    return v / jnp.sqrt(jnp.sum(v ** 2))


def paper_graph(rng, n=7, d=3, h=4):
    src = np.array([0, 0, 1, 2, 2, 2, 3, 4, 5, 5])  # node 6 has no out-edges: no output tuple
    dst = np.array([1, 2, 3, 0, 4, 5, 6, 6, 0, 1])
    x, w = rng.normal(size=(n, d)), rng.normal(size=(d, h))
    Node = wb.from_frame(pl.DataFrame({"ID": np.arange(n), "vec": list(x)}).with_columns(
        pl.col("vec").cast(pl.Array(pl.Float64, d))), keys=("ID",), value="vec", name="Node")
    Edge = wb.from_frame(pl.DataFrame({"sourceID": src, "destID": dst, "one": np.ones(len(src))}),
                         keys=("sourceID", "destID"), value="one", extents=(n, n), name="Edge")
    return Node, Edge, wb.from_tensor(w, name="W"), x, w, src, dst


PAPER_GCN = """SELECT n1.ID, ReLU(MAT_MUL(AVG(Normalize(n2.vec)), W.value))
               FROM Node n1, Edge e, Node n2, W
               WHERE n1.ID = e.sourceID AND n2.ID = e.destID
               GROUP BY n1.ID"""


def test_the_paper_gcn_layer_with_avg_and_a_registered_kernel(rng):
    Node, Edge, W, x, w, src, dst = paper_graph(rng)

    def f(Node, W):
        layer = wb.sql(PAPER_GCN, Node=(Node, "vec"), Edge=Edge, W=W,
                       functions={"Normalize": normalize})
        return wb.aggregate(wb.select(layer, kernel=lambda v: jnp.sum(v ** 2)), by=())

    def python(Node, W):  # the same layer with the Python API
        nodes = wb.select(Node, kernel=normalize)
        msg = wb.join(Edge, nodes, on={"destID": "ID"}, keys={"ID": "left.sourceID", "d": "left.destID"},
                      kernel=lambda e, v: v)
        avg = wb.aggregate(msg, by=("ID",), kernel="mean")
        layer = wb.join(avg, W, on={}, keys={"ID": "left.ID"},
                        kernel=lambda a, m: jax.nn.relu(a @ m))
        return wb.aggregate(wb.select(layer, kernel=lambda v: jnp.sum(v ** 2)), by=())

    a = np.zeros((len(x), len(x)))
    a[src, dst] = 1.0
    has = a.sum(1) > 0

    def twin(x, w):  # mean over out-neighbours of the normalized features, rows with edges only
        xn = x / jnp.linalg.norm(x, axis=1, keepdims=True)
        mean = (a[has] @ xn) / a[has].sum(1, keepdims=True)
        return jnp.sum(jax.nn.relu(mean @ w) ** 2)

    layer = wb.sql(PAPER_GCN, Node=(Node, "vec"), Edge=Edge, W=W, functions={"normalize": normalize})
    assert layer.keys == ("ID",) and len(layer) == int(has.sum())
    report = against_jax(f, twin, Node, W, rtol=RTOL)
    assert report.ok, str(report)
    assert_grads_equal(wb.grad(f, argnums=(0, 1))(Node, W), wb.grad(python, argnums=(0, 1))(Node, W))
    # join -> select(kernel) -> aggregate -> join with the one-tuple weight (kernel)
    agg, = [n for n in toposort([layer.node]) if isinstance(n, Aggregate)]
    assert agg.reduction == "mean" and agg.by == ("ID",)
    assert isinstance(layer.node, Join) and layer.node.on == () and layer.node.left is agg
    assert layer.node.kernel.name == "relu(mat_mul(AVG(normalize(n2.vec)), W.value))"
    sel, = [n for n in toposort([layer.node]) if isinstance(n, Select)]
    assert sel.kernel.name == "normalize"  # once per node, before the joins


def nnmf_data(rng, n=6, m=5, r=3):
    w, h = rng.uniform(0.1, 1, size=(n, r)), rng.uniform(0.1, 1, size=(m, r))
    mask = rng.uniform(size=(n, m)) < 0.5
    rows, cols = np.nonzero(mask)
    x = rng.uniform(0, 2, size=len(rows))
    Entry = wb.from_frame(pl.DataFrame({"i": rows, "j": cols, "x": x}), keys=("i", "j"), value="x",
                          extents=(n, m), name="M")
    return Entry, wb.from_tensor(w, keys=("i",), name="W"), wb.from_tensor(h, keys=("j",), name="H"), \
        (rows, cols, x)


NNMF = """SELECT SUM(power(M.value - dot(W.value, H.value), 2))
          FROM M, W, H WHERE M.i = W.i AND M.j = H.j"""
NNMF_CTE = """WITH P AS (SELECT M.i, M.j, dot(W.value, H.value) AS value
                         FROM M, W, H WHERE M.i = W.i AND M.j = H.j)
              SELECT SUM(power(M.value - P.value, 2)) FROM P, M WHERE P.i = M.i AND P.j = M.j"""


@pytest.mark.parametrize("query", [NNMF, NNMF_CTE], ids=["one select", "with a CTE"])
def test_nnmf_at_the_observed_entries(rng, query):
    M, W, H, (rows, cols, x) = nnmf_data(rng)
    f = lambda W, H: wb.sql(query, M=M, W=W, H=H)  # noqa: E731

    def python(W, H):  # as workbench.models.nnmf: predict at the entries, then the error
        EW = wb.join(M, W, on={"i": "i"}, kernel=lambda x, w: w)
        P = wb.join(EW, H, on={"j": "j"}, kernel=jnp.dot)
        return wb.aggregate(wb.join(P, M, on={"i": "i", "j": "j"},
                                    kernel=lambda p, x: (x - p) ** 2), by=())

    def twin(w, h):
        return jnp.sum((x - jnp.sum(w[rows] * h[cols], axis=1)) ** 2)

    report = against_jax(f, twin, W, H, rtol=RTOL)
    assert report.ok, str(report)
    assert_grads_equal(wb.grad(f, argnums=(0, 1))(W, H), wb.grad(python, argnums=(0, 1))(W, H))
    grads, again, _ = round_trip(f, (W, H), (0, 1), ("W", "H"))
    assert_grads_equal(again, grads)


def test_a_three_value_expression_packs_the_intermediate(rng):
    M, W, H, _ = nnmf_data(rng)
    out = wb.sql(NNMF, M=M, W=W, H=H)
    first = [n for n in toposort([out.node]) if isinstance(n, Join)][0]
    assert first.kernel.name == "pack(M.value, W.value)" and first.schema.value_shape == (4,)


KGE = """SELECT SUM(softplus(-x.value * reduce_sum(eh.value * w.value * et.value)))
         FROM T x, Entity eh, Rel w, Entity et
         WHERE x.h = eh.e AND x.r = w.r AND x.t = et.e"""


def test_kge_distmult_score_and_logistic_loss(rng):
    ne, nr, d = 6, 3, 4
    trip = np.array([[0, 0, 1], [1, 1, 2], [2, 0, 3], [3, 2, 4], [4, 1, 5], [5, 2, 0], [1, 0, 4]])
    label = rng.choice([-1.0, 1.0], size=len(trip))
    T = wb.from_frame(pl.DataFrame({"h": trip[:, 0], "r": trip[:, 1], "t": trip[:, 2], "y": label}),
                      keys=("h", "r", "t"), value="y", extents=(ne, nr, ne), name="T")
    E, R = rng.normal(size=(ne, d)), rng.normal(size=(nr, d))
    Entity, Rel = wb.from_tensor(E, keys=("e",), name="Entity"), wb.from_tensor(R, keys=("r",), name="Rel")
    f = lambda Entity, Rel: wb.sql(KGE, T=T, Entity=Entity, Rel=Rel)  # noqa: E731

    def python(Entity, Rel):  # as workbench.models.kge.scores, with the labels joined back
        X = wb.join(T, Entity, on={"h": "e"}, kernel=lambda y, e: e)
        X = wb.join(X, Rel, on={"r": "r"}, kernel=jnp.multiply)
        S = wb.join(X, Entity, on={"t": "e"}, kernel=lambda x, e: jnp.sum(x * e))
        return wb.aggregate(wb.join(S, T, on={k: k for k in ("h", "r", "t")},
                                    kernel=lambda s, y: jax.nn.softplus(-y * s)), by=())

    def twin(e, w):
        s = jnp.sum(e[trip[:, 0]] * w[trip[:, 1]] * e[trip[:, 2]], axis=1)
        return jnp.sum(jax.nn.softplus(-label * s))

    report = against_jax(f, twin, Entity, Rel, rtol=RTOL)
    assert report.ok, str(report)
    assert_grads_equal(wb.grad(f, argnums=(0, 1))(Entity, Rel), wb.grad(python, argnums=(0, 1))(Entity, Rel))
    grads, again, _ = round_trip(f, (Entity, Rel), (0, 1), ("Entity", "Rel"))
    assert_grads_equal(again, grads)


# ---- the SQL round trip of plans -----------------------------------------------------------------

def test_backward_plans_as_sql_read_back_to_the_same_gradients():
    p = programs.blocked_matmul(np.random.default_rng(4))
    grads, again, script = round_trip(p.fn, p.rels, (0, 1), ("A", "B"))
    assert_grads_equal(again, grads)
    assert script.outputs == ("grad A", "grad B") and set(script.tables) == {"A", "B"}
    assert {"vjp_left_matmul", "vjp_right_matmul", "pack", "broadcast"} <= set(script.functions)
    assert script.count("WITH") == 2 and "CAST(1.0 AS DOUBLE) AS value" in script
    # the statements share their common CTEs: one join of A and B serves both gradients
    shared = set(toposort([again[0].node])) & set(toposort([again[1].node]))
    assert any(isinstance(n, Join) and n.kernel.name == "matmul" for n in shared)
    np.testing.assert_allclose(wb.to_matrix(again[0]), jax.grad(p.twin)(*p.dense), rtol=RTOL)


@pytest.mark.parametrize("make", [programs.logistic_regression, programs.mlp, programs.gcn,
                                  programs.used_twice], ids=lambda m: m.__name__)
def test_every_example_program_round_trips(make):
    p = make(np.random.default_rng(5))
    names = [r.name for r in p.rels]
    grads, again, _ = round_trip(p.fn, p.rels, p.argnums, names)
    assert len(again) == len(p.argnums)
    assert_grads_equal(again, grads)


def test_a_forward_plan_as_sql_reads_back_to_itself():
    p, f = gcn_program()
    forward, _ = wb.plans(f, *p.rels, argnums=p.argnums)
    script = forward.to_sql()
    assert set(script.tables) == {"Node", "Y", "W1", "W2", "Edge"}
    g = sql_program(script, ("Node", "Y", "W1", "W2"))
    np.testing.assert_allclose(g(*p.rels).to_tensor(), f(*p.rels).to_tensor(), rtol=RTOL)
    assert wb.plans(g, *p.rels, argnums=p.argnums)[0].to_sql() == script  # a fixed point
    assert_grads_equal(wb.grad(g, argnums=p.argnums)(*p.rels), wb.grad(f, argnums=p.argnums)(*p.rels))


def test_predicates_and_mean_round_trip(rng):
    X = wb.from_tensor(rng.normal(size=(5, 4, 3)), keys=("i", "j"), name="X")

    def f(X):
        kept = wb.select(X, kernel=jnp.tanh, pred=((pl.col("i") >= 1) & (pl.col("j") != 2))
                         | (pl.col("i") + pl.col("j") == 0) | (pl.col("i") % 3 == -1 + 3)
                         | ~(pl.col("j") // 2 < pl.lit(5, dtype=pl.Int64)))
        return wb.aggregate(wb.select(wb.aggregate(kept, by=("j",), kernel="mean"),
                                      kernel=lambda v: jnp.sum(v ** 2)), by=())

    grads, again, script = round_trip(f, (X,), (0,), ("X",))
    assert " WHERE " in script and "AVG(t.value)" in script
    assert_grads_equal(again, grads)


def test_a_predicate_sql_cannot_spell_is_named():
    X = wb.from_tensor(np.ones((4, 2)), keys=("i",), name="X")
    def f(X):
        return wb.aggregate(wb.select(X, kernel=jnp.sum, pred=pl.col("i").is_in([1, 2])), by=())
    forward, _ = wb.plans(f, X)
    with pytest.raises(PlanError, match="cannot be written as SQL.*ORs of equalities"):
        forward.to_sql()


def test_to_sql_of_one_output(rng):
    p = programs.blocked_matmul(rng)
    _, backward = wb.plans(p.fn, *p.rels, argnums=(0, 1))
    one = backward.to_sql("grad B")
    assert one.outputs == ("grad B",) and one.count("WITH") == 1
    assert_relations_equal(wb.sql(one, A=p.rels[0], B=p.rels[1]), wb.grad(p.fn, argnums=1)(*p.rels))
    with pytest.raises(PlanError, match="no output named 'grad C'"):
        backward.to_sql("grad C")


# ---- the dialect -------------------------------------------------------------------------------

def test_where_filters_keys_and_join_on_equals_the_comma_join(rng):
    A = wb.from_matrix(rng.normal(size=(6, 8)), block=(2, 2), name="A")
    B = wb.from_matrix(rng.normal(size=(8, 4)), block=(2, 2), name="B")
    got = wb.sql("SELECT A.row AS i, A.col AS j, exp(A.value) FROM A "
                 "WHERE A.row = 0 AND A.col IN (1, 3)", A=A)
    want = wb.select(A, kernel=jnp.exp, pred=(pl.col("row") == 0) & pl.col("col").is_in([1, 3]),
                     keys={"i": "row", "j": "col"})
    assert got.keys == ("i", "j") and len(got) == 2
    assert_relations_equal(got, want)
    comma = wb.sql("SELECT A.row, B.col, SUM(matmul(A.value, B.value)) FROM A, B "
                   "WHERE A.col = B.row AND B.col BETWEEN 0 AND 0 GROUP BY A.row, B.col", A=A, B=B)
    on = wb.sql("SELECT A.row, B.col, SUM(matmul(A.value, B.value)) FROM A JOIN B ON A.col = B.row "
                "WHERE B.col < 1 GROUP BY A.row, B.col", A=A, B=B)
    assert_relations_equal(comma, on)
    assert set(comma.to_frame()["col"]) == {0}


def test_functions_registered_by_name_and_kernels(rng):
    X = wb.from_tensor(rng.normal(size=(4, 3)), keys=("i",), name="X")
    twice = wb.Kernel(lambda v: 2.0 * v, name="twice")
    got = wb.sql("SELECT x.i, TWICE(Relu(x.value)) + 1 FROM X x", X=X, functions={"twice": twice})
    np.testing.assert_allclose(got.to_tensor(), 2 * np.maximum(X.to_tensor(), 0) + 1, rtol=RTOL)
    own = wb.sql("SELECT x.i, relu(x.value) FROM X x", X=X, functions={"relu": jnp.abs})
    np.testing.assert_allclose(own.to_tensor(), np.abs(X.to_tensor()), rtol=RTOL)  # user wins
    exact = wb.sql("SELECT x.i, twice(x.value) FROM X x", X=X, functions={"twice": twice})
    assert exact.node.kernel is twice  # a function applied to the value as is: the kernel itself


def test_value_column_names_and_a_star(rng):
    X = wb.from_tensor(rng.normal(size=(4, 3)), keys=("i",), name="X")
    by_name = wb.sql("SELECT X.i, X.vec FROM X", X=(X, "vec"))
    assert by_name.node is X.node  # an identity query is the relation itself
    assert wb.sql("SELECT * FROM X", X=X).node is X.node
    sub = wb.sql("SELECT s.i, s.h FROM (SELECT X.i, tanh(X.value) AS h FROM X) AS s", X=X)
    np.testing.assert_allclose(sub.to_tensor(), np.tanh(X.to_tensor()), rtol=RTOL)


def test_union_all_summed_by_key_is_an_add(rng):
    a = wb.from_tensor(rng.normal(size=(4,)), keys=("i",), name="a")
    b = wb.from_tensor(rng.normal(size=(4,)), keys=("i",), name="b")
    got = wb.sql("SELECT u.i, SUM(u.value) FROM (SELECT i, value FROM a UNION ALL "
                 "SELECT i, value FROM b) AS u GROUP BY u.i", a=a, b=b)
    assert isinstance(got.node, Add)
    np.testing.assert_allclose(got.to_tensor(), a.to_tensor() + b.to_tensor(), rtol=RTOL)


def test_compiled_steps_take_sql_programs():
    p = programs.blocked_matmul(np.random.default_rng(6))
    f = sql_program(MATMUL_LOSS, ("A", "B"), values={"A": "mat", "B": "mat"})
    step = wb.jit(wb.value_and_grad(f, argnums=(0, 1)))
    value, grads = step(*p.rels)
    want_value, want = wb.value_and_grad(p.fn, argnums=(0, 1))(*p.rels)
    np.testing.assert_allclose(value.to_tensor(), want_value.to_tensor(), rtol=RTOL)
    assert_grads_equal(grads, want)


def test_explain_analyze_of_a_sql_program():
    p = programs.blocked_matmul(np.random.default_rng(7))
    f = sql_program(MATMUL_LOSS, ("A", "B"), values={"A": "mat", "B": "mat"})
    plans = wb.plans(f, *p.rels, argnums=(0, 1), analyze=True)
    text = plans.backward.to_text(analyze=True)
    assert "rows=" in text and "vjp_left(matmul)" not in text and "vjp_left(matrix_multiply)" in text


# ---- errors in SQL terms -----------------------------------------------------------------------

@pytest.fixture
def AB(rng):
    return (wb.from_matrix(rng.normal(size=(4, 4)), block=(2, 2), name="A"),
            wb.from_matrix(rng.normal(size=(4, 4)), block=(2, 2), name="B"))


@pytest.mark.parametrize("query, fragment, hint", [
    ("SELECT C.row, C.value FROM C", "C`", r"unknown table 'C'.*\['A', 'B'\].*C=relation"),
    ("SELECT A.row, A.col, A.mat FROM A", "A.mat", r"unknown column 'mat'.*keys \('row', 'col'\)"),
    ("SELECT A.row, A.col, gelu(A.value) FROM A", "gelu(A.value)",
     r"unknown function 'gelu'.*matrix_multiply.*functions=\{'gelu': fn\}"),
    ("SELECT A.row, B.col, SUM(matmul(A.value, B.value)) FROM A, B WHERE A.col < B.row "
     "GROUP BY A.row, B.col", "A.col < B.row", r"non-equi join.*equalities between keys"),
    ("SELECT A.row, A.col, A.value FROM A LEFT JOIN B ON A.col = B.row", "LEFT JOIN B",
     r"LEFT JOIN.*inner equi-joins"),
    ("SELECT A.row, A.col, A.value FROM A ORDER BY A.row", "ORDER BY", r"ORDER BY is not supported.*Supported"),
    ("SELECT A.row, A.col, A.value FROM A LIMIT 2", "LIMIT 2", r"LIMIT is not supported"),
    ("SELECT A.row, MAX(A.value) FROM A GROUP BY A.row", "MAX(A.value)", r"aggregate MAX.*SUM and AVG"),
    ("SELECT A.row, A.col, A.value, B.value FROM A, B WHERE A.col = B.row", "B.value",
     r"second value expression.*one tensor per tuple"),
    ("SELECT A.row, A.col, A.value FROM A WHERE A.value > 0", "A.value > 0", r"value of 'A'.*keys only"),
    ("SELECT SUM(A.value) FROM A GROUP BY A.row", "GROUP BY A.row", r"'row' is not in the SELECT list"),
    ("SELECT A.row, A.col FROM A", "SELECT A.row, A.col FROM A", r"no value expression"),
    ("SELECT A.row, A.col, A.row * A.value FROM A", "A.row", r"key 'row' of 'A' in a value expression"),
    ("SELECT A.row, A.col, A.value FROM A UNION SELECT B.row, B.col, B.value FROM B", "SELECT A.row",
     r"UNION \(distinct\).*UNION ALL"),
    ("DELETE FROM A", "DELETE FROM A", r"DELETE statement.*SELECT queries"),
    ("SELECT row, B.col, SUM(matmul(A.value, B.value)) FROM A, B WHERE A.col = B.row "
     "GROUP BY row, B.col", "row", r"ambiguous column 'row'.*qualify it"),
    ("SELECT A.row, B.col, SUM(A.value) + SUM(B.value) FROM A, B WHERE A.col = B.row "
     "GROUP BY A.row, B.col", "SUM(A.value) + SUM(B.value)", r"more than one aggregate"),
    ("SELECT A.row FROM", "", r"does not parse"),
])
def test_errors_quote_the_query_and_say_what_is_supported(AB, query, fragment, hint):
    A, B = AB
    with pytest.raises(SQLError, match=hint) as info:
        wb.sql(query, A=A, B=B)
    assert isinstance(info.value, PlanError)
    assert f"`{fragment.lower()}" in str(info.value).lower() or not fragment


def test_a_non_relation_argument_is_refused():
    with pytest.raises(SQLError, match=r"X= must be a workbench Relation"):
        wb.sql("SELECT * FROM X", X=np.ones(3))


def test_functions_whose_names_differ_only_in_case_are_refused():
    X = wb.from_tensor(np.ones((2,)), keys=("i",), name="X")
    with pytest.raises(SQLError, match="differ only in case"):
        wb.sql("SELECT * FROM X", X=X, functions={"f": jnp.sin, "F": jnp.cos})


def test_the_ray_runner_runs_a_sql_program():
    pytest.importorskip("ray")
    from workbench.execute.ray import RayRunner

    p = programs.gcn(np.random.default_rng(3))
    # built-in kernels only: Ray workers import functions by module, and tests are no module
    query = GCN.replace("softmax_cross_entropy(Z.value, Y.value)",
                        "-reduce_sum(Y.value * log_softmax(Z.value))")
    f = sql_program(query, ("Node", "Y", "W1", "W2"), Edge=(p.constants["Edge"], "w"))
    want_value, want = wb.value_and_grad(p.fn, argnums=p.argnums)(*p.rels)
    with RayRunner(partitions=2, num_cpus=2) as runner:
        value, grads = wb.value_and_grad(f, argnums=p.argnums, executor=runner)(*p.rels)
    assert_relations_equal(value, want_value)
    assert_grads_equal(grads, want)


def test_seeds_of_keyed_outputs_and_zero_gradients_round_trip(rng):
    X = wb.from_tensor(rng.normal(size=(4, 3)), keys=("i",), name="X")
    Y = wb.from_tensor(rng.normal(size=(5,)), keys=("j",), name="Y")
    Z = wb.from_tensor(np.float64(2.0), name="Z")

    def f(X, Y, Z):  # keyed output: seeded with ones; Y and Z unused: zero gradients
        return wb.select(X, kernel=jnp.sin)

    _, backward = wb.plans(f, X, Y, Z, argnums=(0, 1, 2))
    script = backward.to_sql()
    assert "ones(t.value)" in script and "zero" in script.tables
    gx, gy, gz = wb.sql(script, X=X, Y=Y, Z=Z)
    np.testing.assert_allclose(gx.to_tensor(), np.cos(X.to_tensor()), rtol=RTOL)
    assert len(gy) == 0 and gy.keys == ("j",)
    assert float(gz.to_tensor()) == 0.0


def test_a_script_warns_of_a_relation_under_a_name_it_does_not_read():
    a, b = np.arange(12.0).reshape(3, 4), np.ones((4, 2))
    A, B = wb.from_matrix(a, block=(3, 2)), wb.from_matrix(b, block=(2, 2))

    def loss(A, B):
        return wb.sql("SELECT SUM(sum_squares(C.value)) FROM (SELECT A.row, B.col, "
                      "SUM(matrix_multiply(A.value, B.value)) FROM A, B WHERE A.col = B.row "
                      "GROUP BY A.row, B.col) AS C", A=A, B=B)

    _, backward = wb.plans(loss, A, B, argnums=(0, 1))
    with pytest.warns(UserWarning, match="\\['b_typo'\\] are not among them"):
        wb.sql(backward.to_sql(), A=A, b_typo=B)
