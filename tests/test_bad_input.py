"""Bad and unusual input: a clear error that names the thing at fault and shows the fix, or the
right answer (compared with numpy), never a silently wrong one or a dead process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import pytest

import workbench as wb
from workbench.execute.partition import MAX_PARTITIONS, check_partitions

jax.config.update("jax_enable_x64", True)
ROOT = Path(__file__).resolve().parent.parent


def total(R):
    return wb.aggregate(wb.select(R, kernel=lambda v: jnp.sum(v ** 2)), by=())


# ---- predicates mean the same on every executor: only row-wise ones are accepted ---------------

@pytest.fixture
def six():
    return wb.from_tensor(np.arange(1.0, 7.0), keys=("i",), name="X")


@pytest.mark.parametrize("pred, part", [
    (pl.col("i") == pl.col("i").max(), "Agg"),
    (pl.col("i") > pl.col("i").mean(), "Agg"),
    (pl.col("i").shift(1) > 0, "Shift"),
    (pl.col("i").rank() < 3, "Rank"),
    (pl.len() > 3, "Len"),
    (pl.col("i").cum_sum() > 2, "CumSum"),
    (pl.col("i").over("i") > 1, "Over"),
    (pl.col("i").is_in(pl.col("i") * 2), "is_in over a column"),
    (pl.col("i") == pl.Series([0, 1, 2, 3, 4, 5]), "a Series literal"),
    (pl.col("i").is_unique(), "IsUnique"),
])
def test_a_predicate_that_is_not_row_wise_is_refused(six, pred, part):
    with pytest.raises(wb.PlanError, match=rf"select over 'X': pred .* is not row-wise \(it uses {part}"):
        wb.select(six, pred=pred)


@pytest.mark.parametrize("pred, keep", [
    ((pl.col("i") % 2 == 0) & pl.col("i").is_in([2, 3]), [2]),
    (pl.col("i").is_between(1, 3), [1, 2, 3]),
    (pl.when(pl.col("i") > 3).then(True).otherwise(False), [4, 5]),
    (pl.col("i").cast(pl.Float64).sqrt() > 1.5, [3, 4, 5]),
    (~(pl.col("i") > 1), [0, 1]),
    (pl.all_horizontal(pl.col("i") > 0, pl.col("i") < 3), [1, 2]),
])
def test_row_wise_predicates_keep_the_tuples_numpy_keeps(six, pred, keep):
    x = np.arange(1.0, 7.0)
    loss, g = wb.value_and_grad(lambda X: total(wb.select(X, pred=pred)))(six)
    assert float(loss.to_tensor()) == pytest.approx(float(np.sum(x[keep] ** 2)), rel=1e-12)
    want = np.zeros(6)
    want[keep] = 2 * x[keep]
    np.testing.assert_allclose(g.to_tensor(), want, rtol=1e-12)


# ---- user key names never clash with internal column names -------------------------------------

def test_a_key_named_value_is_refused_where_it_is_named():
    with pytest.raises(wb.RelationError, match="from_tensor: a key cannot be named 'value'.*value_id"):
        wb.from_tensor(np.ones((2, 2)), keys=("value",))
    X = wb.from_tensor(np.ones((2, 2)), keys=("i",), name="X")
    with pytest.raises(wb.PlanError, match="select over 'X': keys: a key cannot be named 'value'"):
        wb.select(X, keys={"value": "i"})
    with pytest.raises(wb.PlanError, match="join of 'X' and 'X': keys: a key cannot be named 'value'"):
        wb.join(X, X, on={"i": "i"}, keys={"value": "left.i"}, kernel=jnp.add)


@pytest.mark.parametrize("name", ["_i", "_g", "_l", "_r", "l:i", "r:j"])
def test_keys_named_like_internal_columns_aggregate_and_join_right(name):
    rng = np.random.default_rng(1)
    ids = np.array([3, 10**9, 7, 10**9, 3, 2**40])  # a sparse key space: the group-by path
    other = np.arange(6)
    x = rng.normal(size=6)
    R = wb.from_frame(pl.DataFrame({name: ids, "t": other, "v": x}), keys=(name, "t"), value="v", name="R")
    S = wb.aggregate(R, by=(name,))
    got = dict(zip(*[S.to_frame()[c].to_list() for c in (name, "value")]))
    want = {k: x[ids == k].sum() for k in np.unique(ids)}
    assert got.keys() == want.keys()
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-12)
    J = wb.join(R, R, on={name: name, "t": "t"}, kernel=jnp.multiply)
    np.testing.assert_allclose(np.sort(J.to_frame()["value"].to_numpy()), np.sort(x * x), rtol=1e-12)
    g = wb.grad(lambda R: total(wb.aggregate(R, by=(name,))))(R)
    sums = {k: x[ids == k].sum() for k in np.unique(ids)}
    gf = g.to_frame()
    np.testing.assert_allclose(gf["value"].to_numpy(), [2 * sums[k] for k in gf[name].to_list()], rtol=1e-12)


# ---- arguments of the wrong kind: the argument and the fix are named ----------------------------

def test_keys_given_as_a_list_names_the_argument_and_shows_a_dict():
    A = wb.from_matrix(np.ones((4, 4)), block=(2, 2), name="A")
    with pytest.raises(wb.PlanError, match=r"join: keys must be a dict of key names, got \['row', 'col'\] "
                                           r"\(list\); write e.g. keys=\{'row': 'left.row'"):
        wb.join(A, A, on={"col": "row"}, keys=["row", "col"], kernel=jnp.matmul)
    with pytest.raises(wb.PlanError, match=r"join: on must be a dict of key names, got \['col', 'row'\]"):
        wb.join(A, A, on=["col", "row"], kernel=jnp.matmul)
    with pytest.raises(wb.PlanError, match=r"select: keys must be a dict of key names, got 'row'"):
        wb.select(A, keys="row")


@pytest.mark.parametrize("argnums", [1.0, "0", None, (0, 1.0), True])
def test_argnums_of_the_wrong_type_names_argnums(argnums):
    X = wb.from_tensor(np.ones(3), keys=("i",))
    with pytest.raises(TypeError, match=r"value_and_grad: argnums must (be an int|hold ints)"):
        wb.value_and_grad(total, argnums=argnums)(X)


@pytest.mark.parametrize("partitions, error, match", [
    ("4", TypeError, r"RayRunner: partitions must be an int .* got '4' \(str\); e.g. partitions=4"),
    (2.5, TypeError, r"RayRunner: partitions must be an int .* got 2.5 \(float\)"),
    (True, TypeError, r"RayRunner: partitions must be an int"),
    (0, ValueError, rf"RayRunner: partitions must be between 1 and {MAX_PARTITIONS}, got 0"),
    (100000, ValueError, rf"RayRunner: partitions must be between 1 and {MAX_PARTITIONS}, got 100000"),
])
def test_partitions_are_checked_when_the_runner_is_built(partitions, error, match):
    with pytest.raises(error, match=match):
        check_partitions(partitions, "RayRunner")
    from workbench.execute.ray import RayRunner  # building one starts nothing

    with pytest.raises(error, match=match):
        RayRunner(partitions=partitions)


def test_render_names_what_it_was_given_and_where_it_could_not_write(tmp_path):
    X = wb.from_tensor(np.ones(3), keys=("i",), name="X")
    with pytest.raises(TypeError, match=r"render: expects a plan .* got Relation; .* wb.plans"):
        wb.render(X)
    forward, _ = wb.plans(total, X)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match=r"render: cannot write the picture to '.*file/plan.svg'.*path=None"):
        wb.render(forward, path=blocker / "plan.svg")


# ---- joins too large for memory are refused before they are built (in a child under a 4 GiB cap) --

CHILD = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
import numpy as np, polars as pl, jax.numpy as jnp, workbench as wb
n, on = int(sys.argv[1]), sys.argv[2] == "on"
ids = np.arange(n) % 3 if on else np.arange(n)
A = wb.from_frame(pl.DataFrame({"i": np.arange(n), "k": ids, "v": np.ones(n, np.float32)}), keys=("i", "k"), value="v", name="A")
B = wb.from_frame(pl.DataFrame({"j": np.arange(n), "k": ids, "v": np.ones(n, np.float32)}), keys=("j", "k"), value="v", name="B")
try:
    C = wb.aggregate(wb.join(A, B, on={"k": "k"} if on else {}, keys={"i": "left.i", "j": "right.j"}, kernel=jnp.multiply), by=())
    print(json.dumps({"value": float(C.to_tensor())}))
except wb.PlanError as e:
    print(json.dumps({"error": str(e)}))
"""


def _child(n: int, on: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(n), on], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_cross_join_too_large_for_memory_is_refused_with_its_size():
    out = _child(60000, "cross")
    assert "error" in out, out
    assert "join of 'A' and 'B' as a cross join (on={}) would produce 3,600,000,000 tuples" in out["error"]
    assert "GiB" in out["error"] and "Join on more keys" in out["error"]


def test_an_equi_join_with_few_distinct_values_is_counted_exactly():
    # 60000 tuples per side on 3 join values: 3 * 20000**2 = 1.2e9 pairs, too many for 4 GiB
    out = _child(60000, "on")
    assert out.get("error", "").startswith("join of 'A' and 'B' on k=k would produce 1,200,000,000 tuples")
    # the same join on 3000 tuples fits: 3 * 1000**2 pairs of 1 * 1
    assert _child(3000, "on") == {"value": 3_000_000.0}
