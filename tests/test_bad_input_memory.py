"""Sparse key ids (hashes, database ids) must cost memory by the number of tuples, never by the
magnitude of the keys. The join-then-sum that runs as a sparse product (``workbench.sparse``)
once sized its CSR matrix by the key extents (max key + 1): three edges between nodes near 2**31
asked for 16 GiB, near 2**40 for 8 TiB.

Each case runs in a child process whose address space is capped at 4 GiB
(``resource.RLIMIT_AS``), so a regression fails the test (MemoryError, non-zero exit) instead of
exhausting the machine. The child prints its results as JSON; the parent checks them against
numpy on the compacted ids, in float64."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import workbench as wb
from workbench import sparse

LIMIT = 4 << 30

CHILD = r"""
import json, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
import polars as pl
import workbench as wb
from workbench import passes, sparse
from workbench.physical import SpMM
from workbench.plan import toposort

case = json.load(sys.stdin)
E = wb.from_frame(pl.DataFrame({"src": np.array(case["src"], np.int64),
                                "dst": np.array(case["dst"], np.int64),
                                "w": np.array(case["w"], np.float64)}),
                  keys=("src", "dst"), value="w", name="Edge")
X = wb.from_frame(pl.DataFrame({"id": np.array(case["ids"], np.int64),
                                "x": np.array(case["x"], np.float64)}),
                  keys=("id",), value="x", name="X")
V = wb.from_tensor(np.array(case["v"], np.float64), name="V")
assert E.extents == (max(case["src"]) + 1, max(case["dst"]) + 1)  # the magnitude of the ids


def propagate(X):
    return wb.aggregate(wb.join(E, X, on={"src": "id"}, keys={"dst": "left.dst", "src": "left.src"},
                                kernel=lambda e, v: e * v), by=("dst",))


def loss(X, V):
    Z = wb.join(propagate(X), V, on={}, keys={"dst": "left.dst"},
                kernel=lambda y, v: jnp.sum((y * v) ** 2))
    return wb.aggregate(Z, by=())


def spmms(plan):
    return [n for n in toposort(passes.optimize(list(plan.outputs))[0]) if isinstance(n, SpMM)]


calls = []
real = sparse.spmm
sparse.spmm = lambda *a, **k: calls.append(a[3]) or real(*a, **k)

forward, backward = wb.plans(loss, X, V, argnums=0)
out = {"forward spmm": [(s.row_key, s.col_key, s.rows is None) for s in spmms(forward)],
       "backward spmm": [(s.row_key, s.col_key, s.rows is None) for s in spmms(backward)]}
Y = propagate(X).table()
out["Y keys"] = Y.keys["dst"].to_list()
out["Y"] = np.asarray(Y.values).tolist()
if case["grad"]:
    value, grad = wb.value_and_grad(loss, 0)(X, V)
    G = grad.table()
    out["loss"] = float(np.asarray(value.table().values).reshape(()))
    out["grad keys"] = G.keys["id"].to_list()
    out["grad"] = np.asarray(G.values).tolist()
out["spmm calls"] = len(calls)
out["extents seen"] = [list(s) for s in calls]
print(json.dumps(out))
"""


def _run_child(case: dict) -> dict:
    root = str(Path(wb.__file__).resolve().parent.parent)  # the workbench this session imports
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(LIMIT)], input=json.dumps(case),
                          env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _graph(base: int, seed: int, infinite: bool = False) -> dict:
    """About 300 nodes with ids near ``base`` (plus a few small ones, so the keys span 0..base),
    1500 distinct random edges; X holds most nodes, shuffled, and some ids no edge touches. With
    ``infinite``, the edges out of nodes X lacks weigh inf (they must be dropped, not * 0)."""
    rng = np.random.default_rng(seed)
    near = base + rng.choice(np.arange(-1000, 1000), size=297, replace=False)
    nodes = np.concatenate([[0, 1, 7], near]).astype(np.int64)
    pairs = rng.choice(len(nodes) ** 2, size=1500, replace=False)
    src, dst = nodes[pairs // len(nodes)], nodes[pairs % len(nodes)]
    w = rng.uniform(0.1, 1.0, size=len(pairs))
    kept = rng.permutation(nodes)[:250]
    isolated = base + np.array([2000, 2001, 5000], np.int64)  # in X, on no edge
    ids = rng.permutation(np.concatenate([kept, isolated]))
    if infinite:
        w[~np.isin(src, ids)] = np.inf
    return {"src": src.tolist(), "dst": dst.tolist(), "w": w.tolist(), "ids": ids.tolist(),
            "x": rng.normal(size=(len(ids), 3)).tolist(), "v": [1.5, -0.5, 0.25],
            "grad": not infinite}


def _reference(case: dict) -> dict:
    """Numpy on the compacted ids: Y = A X over the edges whose source is in X; the loss
    sum((Y v)^2); the gradient A^T G, G = 2 Y v^2, at the nodes of X with an edge out."""
    src, dst, ids = (np.array(case[k], np.int64) for k in ("src", "dst", "ids"))
    w, x, v = (np.array(case[k], np.float64) for k in ("w", "x", "v"))
    keys = np.unique(np.concatenate([src, dst, ids]))
    s, d, i = (np.searchsorted(keys, a) for a in (src, dst, ids))
    xd = np.zeros((len(keys), x.shape[1]))
    xd[i] = x
    matched = np.isin(src, ids)  # the join's tuples
    y = np.zeros_like(xd)
    np.add.at(y, d[matched], w[matched, None] * xd[s[matched]])
    y_rows = np.unique(d[matched])
    g = 2 * y * v ** 2
    gx = np.zeros_like(xd)
    np.add.at(gx, s[matched], w[matched, None] * g[d[matched]])
    g_rows = np.unique(s[matched])
    return {"Y keys": keys[y_rows], "Y": y[y_rows], "loss": float(np.sum((y * v) ** 2)),
            "grad keys": keys[g_rows], "grad": gx[g_rows]}


def _check(got_keys, got_values, want_keys, want_values):
    order = np.argsort(got_keys)
    np.testing.assert_array_equal(np.array(got_keys, np.int64)[order], want_keys)
    assert np.allclose(np.array(got_values)[order], want_values, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("base", [2 ** 31, 2 ** 40], ids=["ids near 2**31", "ids near 2**40"])
def test_propagate_with_huge_ids_runs_in_memory_by_tuples(base):
    case = _graph(base, seed=base % 97)
    got, want = _run_child(case), _reference(case)
    # the join-then-sum ran as the sparse product, forward (A X) and backward (A^T G)
    assert got["forward spmm"] == [["dst", "src", True]]
    assert [s for s in got["backward spmm"] if not s[2]] == [["src", "dst", False]]  # with rows=X
    assert got["spmm calls"] >= 3  # Y; the loss's forward and its gradient
    assert max(max(e) for e in got["extents seen"]) > base  # the extents are the huge ids
    _check(got["Y keys"], got["Y"], want["Y keys"], want["Y"])
    assert np.isclose(got["loss"], want["loss"], rtol=1e-12)
    _check(got["grad keys"], got["grad"], want["grad keys"], want["grad"])


def test_infinite_weights_into_missing_nodes_with_huge_ids():
    case = _graph(2 ** 40, seed=5, infinite=True)
    assert not np.isfinite(case["w"]).all()
    got, want = _run_child(case), _reference(case)
    assert got["forward spmm"] == [["dst", "src", True]]
    _check(got["Y keys"], got["Y"], want["Y keys"], want["Y"])
    assert np.isfinite(got["Y"]).all()


# ---- the sizes of the matrix itself (small enough to run in this process) ---------------------

def _edge_table(src, dst):
    frame = pl.DataFrame({"src": np.asarray(src, np.int64), "dst": np.asarray(dst, np.int64),
                          "w": np.linspace(0.5, 1.5, len(src))})
    return wb.from_frame(frame, keys=("src", "dst"), value="w", name="Edge").table()


def test_the_matrix_is_sized_by_the_distinct_keys_not_the_extents():
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(10 ** 6, size=50, replace=False)) * 1000  # extents up to 1e9
    src, dst = rng.choice(ids, size=200), rng.choice(ids, size=200)
    frame = pl.DataFrame({"src": src, "dst": dst}).unique()
    edge = _edge_table(frame["src"].to_numpy(), frame["dst"].to_numpy())
    M = sparse.csr(edge, "dst", "src", (int(dst.max()) + 1, int(src.max()) + 1), "float64")
    assert M.shape == (len(np.unique(frame["dst"])), len(np.unique(frame["src"])))
    T = sparse.csr(edge, "src", "dst", (int(src.max()) + 1, int(dst.max()) + 1), "float64")
    assert T.shape == M.shape[::-1]


def test_dense_ids_keep_their_keys_as_positions():
    """The fast path for node ids 0..n-1: no remapping, the node values used as they are."""
    n = 64
    src, dst = np.divmod(np.random.default_rng(1).choice(n * n, size=400, replace=False), n)
    M = sparse.csr(_edge_table(src, dst), "dst", "src", (n, n), "float64")
    assert M.row_ids is None and M.col_ids is None
    assert M.shape == (int(dst.max()) + 1, int(src.max()) + 1)
