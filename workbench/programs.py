"""The paper's example programs, each written relationally and as its dense JAX twin.

Every ``Program`` carries example input relations, the same inputs as dense arrays, and a twin
that computes the same function with dense linear algebra: the twin is the oracle that
``workbench.check`` compares values and gradients against.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl

from workbench.ops import aggregate, join, select
from workbench.relation import Relation, from_frame, from_matrix, from_tensor


@dataclass
class Program:
    name: str
    fn: Callable  # relations -> relation
    twin: Callable  # dense arrays -> array
    rels: tuple[Relation, ...]
    dense: tuple[np.ndarray, ...]
    layouts: tuple[str, ...]  # per argument: "tensor" (to_tensor) or "matrix" (to_matrix)
    argnums: tuple[int, ...]
    description: str = ""
    constants: dict = field(default_factory=dict)


# ---- building blocks -------------------------------------------------------------------------

def matmul(A: Relation, B: Relation) -> Relation:
    """C(row, col) = sum_k A(row, k) @ B(k, col): join on the inner block index, sum over it."""
    P = join(A, B, on={"col": "row"}, keys={"row": "left.row", "k": "left.col", "col": "right.col"},
             kernel=jnp.matmul)
    return aggregate(P, by=("row", "col"))


def sum_of_squares(R: Relation) -> Relation:
    """sum over tuples of sum(v ** 2): a scalar loss."""
    return aggregate(select(R, kernel=lambda v: jnp.sum(v ** 2)), by=())


def dense_layer(X: Relation, W: Relation, b: Relation, activation=None) -> Relation:
    """X(id) @ W + b, applied per tuple: two cross joins with one-tuple parameter relations."""
    H = join(X, W, on={}, keys={"id": "left.id"}, kernel=jnp.matmul)
    act = activation or (lambda z: z)
    return join(H, b, on={}, keys={"id": "left.id"}, kernel=lambda h, c: act(h + c))


def propagate(Edge: Relation, Node: Relation) -> Relation:
    """(A X)(i) = sum_j w_ij X(j): join the edges with the source node, sum at the destination."""
    msg = join(Edge, Node, on={"src": "id"}, keys={"id": "left.dst", "src": "left.src"},
               kernel=lambda e, v: e * v)
    return aggregate(msg, by=("id",))


def softmax_cross_entropy(Logits: Relation, Labels: Relation) -> Relation:
    """mean over ids of -log softmax(z)[y], labels one-hot."""
    nll = join(Logits, Labels, on={"id": "id"}, keys={"id": "left.id"},
               kernel=lambda z, y: -jnp.sum(y * jax.nn.log_softmax(z)))
    return aggregate(nll, by=(), kernel="mean")


def _dense_adjacency(n, src, dst, w):
    a = np.zeros((n, n))
    np.add.at(a, (dst, src), w)
    return a


# ---- the programs ---------------------------------------------------------------------------

def blocked_matmul(rng, n=6, m=8, p=4, block=(3, 4, 2), dtype=None) -> Program:
    a, b = rng.normal(size=(n, m)), rng.normal(size=(m, p))
    A = from_matrix(a, block=block[:2], dtype=dtype, name="A")
    B = from_matrix(b, block=block[1:], dtype=dtype, name="B")
    return Program("blocked matmul", lambda A, B: sum_of_squares(matmul(A, B)),
                   lambda a, b: jnp.sum((a @ b) ** 2), (A, B), (a, b), ("matrix", "matrix"), (0, 1),
                   "sum((A @ B)^2) over 3x4 and 4x2 blocks")


def logistic_regression(rng, n=20, d=5, dtype=None) -> Program:
    x, theta = rng.normal(size=(n, d)), rng.normal(size=(d,))
    y = (rng.uniform(size=n) < 0.5).astype(np.float64)

    def loss(Rx, Ry, Rt):
        logits = join(Rx, Rt, on={}, keys={"id": "left.id"}, kernel=jnp.dot)
        nll = join(logits, Ry, on={"id": "id"}, keys={"id": "left.id"},
                   kernel=lambda z, t: jnp.logaddexp(0.0, z) - t * z)
        return aggregate(nll, by=(), kernel="mean")

    def twin(x, y, t):
        z = x @ t
        return jnp.mean(jnp.logaddexp(0.0, z) - y * z)

    rels = (from_tensor(x, keys=("id",), dtype=dtype, name="Rx"),
            from_tensor(y, keys=("id",), dtype=dtype, name="Ry"),
            from_tensor(theta, dtype=dtype, name="Rt"))
    return Program("logistic regression", loss, twin, rels, (x, y, theta),
                   ("tensor",) * 3, (0, 2), "mean log-loss of sigmoid(x . theta)")


def mlp(rng, n=16, d=5, h=8, c=3, dtype=None) -> Program:
    x = rng.normal(size=(n, d))
    y = np.eye(c)[rng.integers(0, c, size=n)]
    w1, b1 = rng.normal(size=(d, h)) / np.sqrt(d), rng.normal(size=(h,)) * 0.1
    w2, b2 = rng.normal(size=(h, c)) / np.sqrt(h), rng.normal(size=(c,)) * 0.1

    def loss(X, Y, W1, b1, W2, b2):
        H = dense_layer(X, W1, b1, activation=jnp.tanh)
        return softmax_cross_entropy(dense_layer(H, W2, b2), Y)

    def twin(x, y, w1, b1, w2, b2):
        z = jnp.tanh(x @ w1 + b1) @ w2 + b2
        return jnp.mean(-jnp.sum(y * jax.nn.log_softmax(z), axis=1))

    names = ("X", "Y", "W1", "b1", "W2", "b2")
    arrays = (x, y, w1, b1, w2, b2)
    rels = tuple(from_tensor(a, keys=("id",) if i < 2 else (), dtype=dtype, name=nm)
                 for i, (a, nm) in enumerate(zip(arrays, names)))
    return Program("two-layer MLP", loss, twin, rels, arrays, ("tensor",) * 6, (0, 2, 3, 4, 5),
                   "softmax cross-entropy of tanh(X W1 + b1) W2 + b2")


def gcn(rng, n=10, d=4, h=6, c=3, n_edges=24, dtype=None) -> Program:
    """Two GCN layers over a weighted graph with self-loops: Z = A relu(A X W1) W2, softmax
    cross-entropy. Self-loops give every node a message, so every node has an output tuple."""
    off_diagonal = np.flatnonzero(np.arange(n * n) % (n + 1))
    pairs = np.concatenate([np.arange(n) * (n + 1), rng.choice(off_diagonal, size=n_edges, replace=False)])
    src, dst = pairs // n, pairs % n
    n_edges = len(pairs)
    w_edge = rng.uniform(0.1, 1.0, size=n_edges)
    x = rng.normal(size=(n, d))
    y = np.eye(c)[rng.integers(0, c, size=n)]
    w1, w2 = rng.normal(size=(d, h)) / np.sqrt(d), rng.normal(size=(h, c)) / np.sqrt(h)
    Edge = from_frame(pl.DataFrame({"src": src, "dst": dst, "w": w_edge}), keys=("src", "dst"),
                      value="w", extents=(n, n), dtype=dtype, name="Edge")
    a = _dense_adjacency(n, src, dst, w_edge)

    def loss(Node, Y, W1, W2):
        H = join(propagate(Edge, Node), W1, on={}, keys={"id": "left.id"},
                 kernel=lambda v, m: jax.nn.relu(v @ m))
        Z = join(propagate(Edge, H), W2, on={}, keys={"id": "left.id"}, kernel=jnp.matmul)
        return softmax_cross_entropy(Z, Y)

    def twin(x, y, w1, w2):
        z = a @ jax.nn.relu(a @ x @ w1) @ w2
        return jnp.mean(-jnp.sum(y * jax.nn.log_softmax(z), axis=1))

    rels = (from_tensor(x, keys=("id",), dtype=dtype, name="Node"),
            from_tensor(y, keys=("id",), dtype=dtype, name="Y"),
            from_tensor(w1, dtype=dtype, name="W1"), from_tensor(w2, dtype=dtype, name="W2"))
    return Program("two-layer GCN", loss, twin, rels, (x, y, w1, w2), ("tensor",) * 4, (0, 2, 3),
                   "softmax cross-entropy of A relu(A X W1) W2; Edge is a captured constant",
                   constants={"Edge": Edge})


def used_twice(rng, n=4, block=(2, 2), dtype=None) -> Program:
    a = rng.normal(size=(n, n))
    A = from_matrix(a, block=block, dtype=dtype, name="A")
    return Program("relation used twice", lambda A: sum_of_squares(matmul(A, A)),
                   lambda a: jnp.sum((a @ a) ** 2), (A,), (a,), ("matrix",), (0,),
                   "sum((A @ A)^2): A feeds both sides of one join")


EXAMPLES = (blocked_matmul, logistic_regression, mlp, gcn, used_twice)

# The programs whose plans are drawn in figures/ and kept as golden snapshots in tests/golden/.
FIGURES = {"matmul": blocked_matmul, "logreg": logistic_regression, "gcn": gcn}


def examples(seed: int = 0, dtype=None) -> list[Program]:
    rng = np.random.default_rng(seed)
    return [make(rng, dtype=dtype) for make in EXAMPLES]
