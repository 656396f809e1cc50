"""The paper's GCN: two graph-convolution layers, ReLU, dropout, softmax cross-entropy over the
training nodes, trained with Adam on the relational backward plan.

    Z = Â relu(Â (X ∘ M1) W1) ∘ M2) W2,   Â = D^-1/2 (A + I) D^-1/2
    loss = mean_{i in train} -log softmax(Z_i)[y_i] + weight_decay / 2 ||W1||²

Relationally: Node(id) -> x, Edge(src, dst) -> Â[dst, src], W1 and W2 one-tuple relations
cross-joined with every node, dropout masks M1(id), M2(id) -> 0 or 1/(1-p) per entry (data drawn
per epoch, joined on id). Message passing joins Edge with the layer's rows on src and sums at
dst. ``dense_loss`` is the same function in dense JAX (``segment_sum`` over the edges): the twin
that gradients are checked against, and the peer in ``bench/gcn_epoch.py``.

The paper trained with hidden 256, Adam lr 0.1 and dropout 0.5 (``PAPER``). The defaults here are
Kipf and Welling's for small citation graphs (hidden 16, lr 0.01, dropout 0.5, weight decay 5e-4
on W1, 200 epochs), which suit the karate club and Cora-sized graphs.

The karate club protocol (``karate``): the two leaders, Mr. Hi (node 0) and the Officer (node
33), are the only labelled nodes; after 200 epochs the other 32 members are the test set.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax.experimental import sparse as jsparse

from workbench.datasets.graphs import (Graph, GraphRelations, karate_club, normalized_edges,
                                       to_relations)
from workbench.masks import MaskTable
from workbench.ops import join, select
from workbench.optim import Adam
from workbench.plan import Scan
from workbench.programs import propagate, softmax_cross_entropy
from workbench.relation import Relation, default_dtype, from_tensor
from workbench.api import jit, value_and_grad
from workbench.progress import progress_bar

PAPER = {"hidden": 256, "lr": 0.1, "dropout": 0.5}  # Tang et al.'s experiments
KARATE_LABELLED = (0, 33)  # Mr. Hi and the Officer, the two clubs' leaders


def karate() -> Graph:
    """Zachary's karate club with labels on nodes 0 and 33 only: no validation nodes, the other
    32 members are the test set (the semi-supervised protocol of Kipf and Welling's demo)."""
    g = karate_club()
    train = np.zeros(g.n_nodes, bool)
    train[list(KARATE_LABELLED)] = True
    return dataclasses.replace(g, name="karate club (labels on nodes 0 and 33)", train=train,
                               val=np.zeros(g.n_nodes, bool), test=~train)


# ---- parameters and dropout masks ----------------------------------------------------------------

def init_params(n_features: int, hidden: int, n_classes: int, seed: int = 0,
                dtype=None) -> tuple[Relation, Relation]:
    """W1 (d x hidden) and W2 (hidden x classes) as one-tuple relations, Glorot uniform:
    U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""
    rng = np.random.default_rng(seed)

    def glorot(fan_in, fan_out):
        a = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-a, a, size=(fan_in, fan_out))

    dtype = dtype or default_dtype()
    return (from_tensor(glorot(n_features, hidden), dtype=dtype, name="W1"),
            from_tensor(glorot(hidden, n_classes), dtype=dtype, name="W2"))


def dropout_mask(like: Relation, p: float, rng: np.random.Generator | int, name: str = "M",
                 width: int | None = None) -> Relation | None:
    """M(id) -> 0 with probability p, else 1/(1-p), per entry (inverted dropout: E[x ∘ M] = x),
    with the keys of ``like`` and its value shape (or vectors of ``width``). None when p == 0.

    The entries are a function of a seed (drawn from ``rng``, or ``rng`` itself when an int)
    and each tuple's keys (``workbench.masks``): a partitioned runner draws each partition where
    it lives, and the mask equals the one drawn whole."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout_mask '{name}': the drop probability must be in [0, 1), got {p}")
    if p == 0:
        return None
    seed = int(rng.integers(2**63)) if isinstance(rng, np.random.Generator) else int(rng)
    shape = like.value_shape if width is None else (int(width),)
    scan = like.node if isinstance(like.node, Scan) else Scan(like.schema, like.table(), name=like.name)
    schema = dataclasses.replace(like.schema, value_shape=shape)
    return Relation(Scan(schema, MaskTable(scan, seed, p, shape, like.dtype), name=name))


def mask_template(n_nodes: int, width: int, dtype=None, name: str = "M") -> Relation:
    """A relation M(id) -> width-vector of ones: the shape of a dropout mask over a layer."""
    return from_tensor(np.ones((n_nodes, width), np.float32), keys=("id",), dtype=dtype or default_dtype(),
                       name=name)


# ---- the relational program ------------------------------------------------------------------------

def _masked(X: Relation, M: Relation | None) -> Relation:
    """X(id) ∘ M(id), joined on id (the identity when there is no mask)."""
    if M is None:
        return X
    return join(X, M, on={"id": "id"}, keys={"id": "left.id"}, kernel=jnp.multiply)


def _times(X: Relation, W: Relation) -> Relation:
    """X(id) @ W: a cross join with the one-tuple weight relation."""
    return join(X, W, on={}, keys={"id": "left.id"}, kernel=jnp.matmul)


def logits(Node: Relation, W1: Relation, W2: Relation, Edge: Relation, drop1: Relation | None = None,
           drop2: Relation | None = None) -> Relation:
    """Z(id) = (Â relu(Â (X ∘ M1) W1) ∘ M2) W2)(id). Each layer multiplies by W first (the
    messages are then hidden- or class-wide, not feature-wide), then sums the messages
    Â[dst, src] h(src) at dst."""
    H = select(propagate(Edge, _times(_masked(Node, drop1), W1)), kernel=jax.nn.relu)
    return propagate(Edge, _times(_masked(H, drop2), W2))


def train_targets(rels: GraphRelations, split: str = "train") -> Relation:
    """Label(id) for the ids of a split only: Label ⋈ Split on id, computed once and stored."""
    T = join(rels.label, getattr(rels, split), on={"id": "id"}, keys={"id": "left.id"},
             kernel=jnp.multiply)
    return T.with_values(T.table().values, name=f"Label_{split}")


def loss_program(rels: GraphRelations, drop1: Relation | None = None, drop2: Relation | None = None,
                 weight_decay: float = 0.0, targets: Relation | None = None) -> Callable:
    """The training loss as a function of (Node, W1, W2); Edge, the training labels and the
    dropout masks are captured constants. Softmax cross-entropy averaged over the training nodes
    (the join with the training labels keeps only them), plus weight_decay / 2 ||W1||²."""
    targets = targets if targets is not None else train_targets(rels)
    Edge = rels.edge

    def gcn_loss(Node: Relation, W1: Relation, W2: Relation) -> Relation:
        loss = softmax_cross_entropy(logits(Node, W1, W2, Edge, drop1, drop2), targets)
        if not weight_decay:
            return loss
        l2 = select(W1, kernel=lambda w: 0.5 * weight_decay * jnp.sum(w * w))
        return join(loss, l2, on={}, kernel=jnp.add)

    return gcn_loss


def masked_loss_program(rels: GraphRelations, weight_decay: float = 0.0,
                        targets: Relation | None = None) -> Callable:
    """The training loss as a function of (Node, W1, W2, M1, M2): the dropout masks are
    arguments, not constants, so one compiled step (``wb.jit``) serves every epoch."""
    targets = targets if targets is not None else train_targets(rels)

    def gcn_loss(Node: Relation, W1: Relation, W2: Relation, M1: Relation, M2: Relation) -> Relation:
        return loss_program(rels, M1, M2, weight_decay, targets)(Node, W1, W2)

    return gcn_loss


# ---- the dense JAX twin ----------------------------------------------------------------------------

class DenseGraph(NamedTuple):
    """The arrays the twin reads: Â as edge lists, the one-hot labels of the training nodes (zero
    rows elsewhere) and the number of training nodes."""

    src: jax.Array
    dst: jax.Array
    w: jax.Array
    y_train: jax.Array
    n_train: jax.Array


def dense_graph(graph: Graph, dtype=None) -> DenseGraph:
    dtype = dtype or default_dtype()
    src, dst, w = normalized_edges(graph)
    y = np.eye(graph.n_classes)[graph.labels] * graph.train[:, None]
    return DenseGraph(jnp.asarray(src, jnp.int32), jnp.asarray(dst, jnp.int32), jnp.asarray(w, dtype),
                      jnp.asarray(y, dtype), jnp.asarray(graph.train.sum(), dtype))


def dense_logits(x, w1, w2, g: DenseGraph, m1=None, m2=None):
    """Z = Â relu(Â (x ∘ m1) w1) ∘ m2) w2 with Â h = segment_sum(w_e h[src_e], dst_e)."""
    def prop(h):
        return jax.ops.segment_sum(g.w[:, None] * h[g.src], g.dst, num_segments=x.shape[0])

    x = x if m1 is None else x * m1
    h = jax.nn.relu(prop(x @ w1))
    h = h if m2 is None else h * m2
    return prop(h @ w2)


def dense_loss(x, w1, w2, g: DenseGraph, m1=None, m2=None, weight_decay: float = 0.0):
    """The twin of ``loss_program``: the same loss with dense arrays."""
    z = dense_logits(x, w1, w2, g, m1, m2)
    nll = -jnp.sum(g.y_train * jax.nn.log_softmax(z), axis=1)
    return jnp.sum(nll) / g.n_train + 0.5 * weight_decay * jnp.sum(w1 * w1)


# ---- evaluation and training -----------------------------------------------------------------------

def jax_peers(graph: Graph, hidden: int, labelled: np.ndarray | None = None, seed: int = 0):
    """The best hand-written JAX programs of one GCN training step, float32, each under
    ``jax.jit(jax.value_and_grad)`` with respect to W1 and W2: (gathers and ``segment_sum``, Â as a
    ``jax.experimental.sparse.BCSR`` matrix), as two callables of no argument. The loss is the
    mean softmax cross-entropy over the ``labelled`` node ids (every node by default); like any
    hand-written program, both compute every row."""
    W1, W2 = init_params(graph.n_features, hidden, graph.n_classes, seed=seed, dtype="float32")
    w1, w2 = W1.table().values[0], W2.table().values[0]
    x = jnp.asarray(graph.features, jnp.float32)
    src, dst, w = normalized_edges(graph)
    y = jnp.asarray(np.eye(graph.n_classes)[graph.labels], jnp.float32)
    n = graph.n_nodes
    mask = np.ones(n, np.float32)  # 1 for a labelled node
    if labelled is not None:
        mask = np.zeros(n, np.float32)
        mask[labelled] = 1.0
    count = float(mask.sum())
    mask = jnp.asarray(mask)
    # dense_loss: sum(-sum(y_train * log_softmax(z))) / n_train, y_train zero on unlabelled rows
    g = DenseGraph(jnp.asarray(src, jnp.int32), jnp.asarray(dst, jnp.int32), jnp.asarray(w, jnp.float32),
                   y * mask[:, None], jnp.asarray(count, jnp.float32))
    seg = jax.jit(jax.value_and_grad(dense_loss, argnums=(1, 2)))
    A = jsparse.BCSR.from_scipy_sparse(sp.csr_matrix((w.astype(np.float32), (dst, src)), shape=(n, n)))

    def bcsr_loss(x, w1, w2, A):  # the same loss with Â as a sparse matrix
        z = A @ (jax.nn.relu(A @ (x @ w1)) @ w2)
        return jnp.sum(mask * -jnp.sum(y * jax.nn.log_softmax(z), axis=1)) / count
    bc = jax.jit(jax.value_and_grad(bcsr_loss, argnums=(1, 2)))
    return (lambda: seg(x, w1, w2, g)), (lambda: bc(x, w1, w2, A))


def accuracy(Z: Relation | np.ndarray, labels: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the nodes in ``mask`` whose largest logit is their label."""
    z = Z.to_tensor() if isinstance(Z, Relation) else np.asarray(Z)
    if not mask.any():
        return float("nan")
    return float(np.mean(np.argmax(z[mask], axis=1) == labels[mask]))


@dataclass
class History:
    """Per epoch: training loss (with dropout), accuracies without dropout, seconds of the
    training step (forward, relational backward, Adam update)."""

    graph: str
    loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    params: tuple[Relation, Relation] | None = None

    @property
    def epochs(self) -> int:
        return len(self.loss)

    def table(self, every: int = 10) -> str:
        """Every ``every``-th epoch and the last: loss, accuracies (validation only when the
        graph has validation nodes), seconds."""
        val = bool(self.val_acc) and not np.all(np.isnan(self.val_acc))
        head = (f"{'epoch':>5} {'loss':>9} {'train':>7}" + (f" {'val':>7}" if val else "")
                + f" {'test':>7} {'seconds':>9}")
        rows = [head, "-" * len(head)]
        for e in range(self.epochs):
            if e % every == 0 or e == self.epochs - 1:
                rows.append(f"{e + 1:>5} {self.loss[e]:>9.4f} {self.train_acc[e]:>7.3f}"
                            + (f" {self.val_acc[e]:>7.3f}" if val else "")
                            + f" {self.test_acc[e]:>7.3f} {self.seconds[e]:>9.4f}")
        return "\n".join(rows)

    def __str__(self) -> str:
        return f"History of {self.graph}, {self.epochs} epochs\n{self.table()}"


def train(graph: Graph, hidden: int = 16, epochs: int = 200, lr: float = 0.01, dropout: float = 0.5,
          weight_decay: float = 5e-4, seed: int = 0, dtype=None,
          callback: Callable[[int, History], None] | None = None, compiled: bool = True,
          progress: bool | None = False) -> History:
    """Train the two-layer GCN on ``graph`` with Adam: every epoch draws fresh dropout masks,
    runs ``wb.value_and_grad`` of the relational loss (the backward is the RJP plan) and updates
    W1 and W2; then evaluates without dropout. ``callback(epoch, history)`` runs after each.
    ``compiled``: the step is ``wb.jit`` of it (one XLA program per epoch); else the interpreter
    runs it node by node. ``progress``: a tqdm bar over the epochs (None: only on a terminal)."""
    dtype = dtype or default_dtype()
    rels = to_relations(graph, dtype=dtype)
    targets = train_targets(rels)
    maybe_jit = jit if compiled else (lambda f: f)
    if dropout:
        step = maybe_jit(value_and_grad(masked_loss_program(rels, weight_decay, targets), argnums=(1, 2)))
    else:
        step = maybe_jit(value_and_grad(loss_program(rels, None, None, weight_decay, targets), argnums=(1, 2)))
    forward = maybe_jit(lambda Node, W1, W2: logits(Node, W1, W2, rels.edge))
    W1, W2 = init_params(graph.n_features, hidden, graph.n_classes, seed=seed, dtype=dtype)
    opt = Adam(lr=lr)
    state = opt.init((W1, W2))
    rng = np.random.default_rng(seed + 1)
    history = History(graph.name)
    bar = progress_bar(epochs, f"GCN {graph.name}", progress)
    for epoch in range(epochs):
        start = time.perf_counter()
        masks = ()
        if dropout:
            masks = (dropout_mask(rels.node, dropout, rng, "M1"),
                     dropout_mask(rels.node, dropout, rng, "M2", width=hidden))
        loss, (g1, g2) = step(rels.node, W1, W2, *masks)
        (W1, W2), state = opt.update((W1, W2), (g1, g2), state)
        W2.table().values.block_until_ready()
        history.seconds.append(time.perf_counter() - start)
        history.loss.append(float(loss.to_tensor()))
        z = forward(rels.node, W1, W2).to_tensor()
        for split, acc in (("train", history.train_acc), ("val", history.val_acc),
                           ("test", history.test_acc)):
            acc.append(accuracy(z, graph.labels, getattr(graph, split)))
        history.params = (W1, W2)
        bar.update(loss=history.loss[-1], train=history.train_acc[-1], test=history.test_acc[-1])
        if callback is not None:
            callback(epoch, history)
    bar.close()
    return history
