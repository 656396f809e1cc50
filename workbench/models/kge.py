"""Knowledge-graph embedding as relational programs: TransE and DistMult.

Parameters are two relations, ``Entity(e) -> vec`` and ``Rel(r) -> vec``. Data are key-only
relations of triples: the positives ``Triple(h, r, t) -> 1.0`` and the negatives drawn each epoch,
``Neg(h, r, t, n, ch, ct) -> 1.0``, the n-th corruption (ch, r, ct) of the positive (h, r, t)
(its head or its tail replaced by a random entity). A score is three joins: the triples with
Entity on the head, with Rel on r, with Entity on the tail, the last kernel giving the score.
Positive and negative scores are paired by a join on (h, r, t), a per-pair loss kernel, and a mean:

    TransE    s(h, r, t) = -||e_h + w_r - e_t||_2      loss = mean relu(margin - s_pos + s_neg)
    DistMult  s(h, r, t) = <e_h, w_r, e_t>             loss = mean softplus(-s_pos) + softplus(s_neg)

With k negatives per positive, the DistMult pair mean equals mean_pos softplus(-s) + mean_neg
softplus(s). Entity feeds two joins (head and tail), so its gradient is the sum of both RJPs.

Each loss has a dense JAX twin (gathers ``E[h]``, ``W[r]``, ``E[t]``). ``train`` runs the
relational backward plan (``wb.value_and_grad``) with Adam; ``evaluate`` ranks every entity as a
replacement head and tail of each test triple, leaving out the other known triples (filtered
MRR and Hits@k), vectorized over triples and entities.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl

from workbench.datasets.knowledge import Triples, to_relations
from workbench.ops import aggregate, join, select
from workbench.optim import Adam
from workbench.relation import Relation, default_dtype, from_frame, from_tensor
from workbench.api import jit, value_and_grad


# ---- the two models: per-tuple kernels and their dense (broadcasting) score -----------------

def _transe_combine(eh, w):
    return eh + w  # translate the head by the relation


def _transe_score(x, et):
    return -jnp.sqrt(jnp.sum((x - et) ** 2))  # -||e_h + w_r - e_t||_2


def _transe_dense(eh, w, et):
    return -jnp.sqrt(jnp.sum((eh + w - et) ** 2, axis=-1))


def _distmult_combine(eh, w):
    return eh * w


def _distmult_score(x, et):
    return jnp.sum(x * et)  # <e_h, w_r, e_t> = sum_i e_h,i w_r,i e_t,i


def _distmult_dense(eh, w, et):
    return jnp.sum(eh * w * et, axis=-1)


@dataclass(frozen=True)
class Model:
    name: str
    combine: Callable  # (e_h, w_r) -> x, per tuple
    score: Callable  # (x, e_t) -> scalar score, per tuple
    dense_score: Callable  # (e_h, w_r, e_t) -> score over the last axis, broadcasting
    margin_loss: bool  # True: relu(margin - s_pos + s_neg); False: logistic


MODELS = {
    "transe": Model("TransE", _transe_combine, _transe_score, _transe_dense, True),
    "distmult": Model("DistMult", _distmult_combine, _distmult_score, _distmult_dense, False),
}


def get_model(name: str) -> Model:
    key = str(name).lower()
    if key not in MODELS:
        raise ValueError(f"unknown KGE model {name!r}; choose one of {tuple(MODELS)}")
    return MODELS[key]


def pair_loss(m: Model, margin: float = 1.0) -> Callable:
    """The loss of one (positive score, negative score) pair."""
    def margin_ranking(sp, sn):
        return jax.nn.relu(margin - sp + sn)  # hinge: s_pos should beat s_neg by the margin

    def logistic(sp, sn):
        return jax.nn.softplus(-sp) + jax.nn.softplus(sn)  # -log sig(s_pos) - log sig(-s_neg)

    return margin_ranking if m.margin_loss else logistic


# ---- data relations ---------------------------------------------------------------------------

def corrupt(triples: np.ndarray, n_entities: int, negatives: int, rng: np.random.Generator) -> np.ndarray:
    """``negatives`` corruptions of each triple, shape (n, negatives, 3): the head or the tail
    (with probability 1/2 each) replaced by a uniformly drawn entity."""
    n = len(triples)
    heads = rng.random((n, negatives)) < 0.5
    drawn = rng.integers(0, n_entities, size=(n, negatives))
    out = np.repeat(np.asarray(triples, np.int64)[:, None, :], negatives, axis=1)
    out[..., 0] = np.where(heads, drawn, out[..., 0])
    out[..., 2] = np.where(heads, out[..., 2], drawn)
    return out


def negatives_relation(triples: np.ndarray, corrupted: np.ndarray, n_entities: int,
                       n_relations: int, name: str = "Neg", dtype=None) -> Relation:
    """``Neg(h, r, t, n, ch, ct) -> 1.0``: the n-th corruption (ch, r, ct) of positive (h, r, t)."""
    triples, corrupted = np.asarray(triples, np.int64), np.asarray(corrupted, np.int64)
    n, k = corrupted.shape[:2]
    if corrupted.shape != (len(triples), k, 3):
        raise ValueError(f"negatives_relation '{name}': corruptions of shape {corrupted.shape} for "
                         f"{len(triples)} triples; expected ({len(triples)}, k, 3)")
    pos = np.repeat(triples, k, axis=0)
    flat = corrupted.reshape(-1, 3)
    frame = pl.DataFrame({"h": pos[:, 0], "r": pos[:, 1], "t": pos[:, 2],
                          "n": np.tile(np.arange(k, dtype=np.int64), n),
                          "ch": flat[:, 0], "ct": flat[:, 2], "one": np.ones(n * k)})
    return from_frame(frame, keys=("h", "r", "t", "n", "ch", "ct"), value="one",
                      extents=(n_entities, n_relations, n_entities, k, n_entities, n_entities),
                      dtype=dtype or default_dtype(), name=name)


# ---- the relational programs and their twins --------------------------------------------------

def _embed(one, e):
    return one * e  # the triple's value 1.0 times the entity's vector


def scores(T: Relation, Entity: Relation, Rel: Relation, m: Model, head: str = "h",
           tail: str = "t") -> Relation:
    """S(keys of T) = score(Entity(head), Rel(r), Entity(tail)): three joins, keys of T kept."""
    X = join(T, Entity, on={head: "e"}, kernel=_embed)  # e_h
    X = join(X, Rel, on={"r": "r"}, kernel=m.combine)  # e_h + w_r (TransE), e_h * w_r (DistMult)
    return join(X, Entity, on={tail: "e"}, kernel=m.score)


def loss_program(m: Model, Pos: Relation, Neg: Relation, margin: float = 1.0) -> Callable:
    """``loss(Entity, Rel)``: the mean pair loss over the positives ``Pos(h, r, t)`` and their
    negatives ``Neg(h, r, t, n, ch, ct)``, both captured as data."""
    per_pair = pair_loss(m, margin)

    def loss(Entity, Rel):
        sp = scores(Pos, Entity, Rel, m)
        sn = scores(Neg, Entity, Rel, m, head="ch", tail="ct")
        pairs = join(sp, sn, on={"h": "h", "r": "r", "t": "t"}, kernel=per_pair)  # (h, r, t, n, ch, ct)
        return aggregate(pairs, by=(), kernel="mean")

    loss.__name__ = f"{m.name.lower()}_loss"
    return loss


def loss_twin(m: Model, triples: np.ndarray, corrupted: np.ndarray, margin: float = 1.0) -> Callable:
    """The dense twin of ``loss_program``: ``loss(E, W)`` on embedding matrices, by gathers."""
    per_pair = pair_loss(m, margin)
    pos = jnp.asarray(np.asarray(triples, np.int64))
    neg = jnp.asarray(np.asarray(corrupted, np.int64))  # (n, k, 3)

    def loss(E, W):
        sp = m.dense_score(E[pos[:, 0]], W[pos[:, 1]], E[pos[:, 2]])  # (n,)
        sn = m.dense_score(E[neg[..., 0]], W[neg[..., 1]], E[neg[..., 2]])  # (n, k)
        return jnp.mean(per_pair(sp[:, None], sn))

    return loss


# ---- evaluation -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Metrics:
    """Filtered ranking metrics over head and tail replacement of every evaluated triple."""

    mrr: float
    hits_at_1: float
    hits_at_3: float
    hits_at_10: float
    n_ranks: int

    @classmethod
    def from_ranks(cls, ranks: np.ndarray) -> "Metrics":
        ranks = np.asarray(ranks, np.float64)
        return cls(float(np.mean(1.0 / ranks)), *(float(np.mean(ranks <= k)) for k in (1, 3, 10)),
                   len(ranks))

    def row(self) -> str:
        return (f"MRR {self.mrr:.3f}  Hits@1 {self.hits_at_1:.3f}  Hits@3 {self.hits_at_3:.3f}  "
                f"Hits@10 {self.hits_at_10:.3f}")


def _codes(h, r, t, n_entities: int, n_relations: int):
    return (h * n_relations + r) * n_entities + t  # one int64 per triple


def filtered_ranks(m: Model, E, W, queries: np.ndarray, known: np.ndarray,
                   batch_cells: int = 1 << 22) -> np.ndarray:
    """Rank of each query triple's true tail among all entities (first half of the result) and of
    its true head (second half), leaving out candidates that form another known triple. A
    candidate scoring exactly as the true entity counts one half: rank = 1 + #greater +
    #equal / 2."""
    E, W = jnp.asarray(E), jnp.asarray(W)
    n_ent, n_rel = E.shape[0], W.shape[0]
    queries = np.asarray(queries, np.int64)
    known_codes = np.unique(_codes(*np.asarray(known, np.int64).T, n_ent, n_rel))
    cand = np.arange(n_ent, dtype=np.int64)
    step = max(1, batch_cells // max(1, n_ent * E.shape[1]))
    out = {"tail": [], "head": []}
    for start in range(0, len(queries), step):  # batches of queries, all candidates at once
        h, r, t = queries[start:start + step].T
        eh, w, et = E[h][:, None, :], W[r][:, None, :], E[t][:, None, :]
        for side, s, codes, true in (
                ("tail", m.dense_score(eh, w, E[None]), _codes(h[:, None], r[:, None], cand, n_ent, n_rel), t),
                ("head", m.dense_score(E[None], w, et), _codes(cand, r[:, None], t[:, None], n_ent, n_rel), h)):
            s = np.asarray(s)
            other = ~np.isin(codes, known_codes)  # candidates that are not known triples
            target = s[np.arange(len(true)), true][:, None]
            greater = np.sum((s > target) & other, axis=1)
            equal = np.sum((s == target) & other, axis=1)
            out[side].append(1.0 + greater + 0.5 * equal)
    return np.concatenate([np.concatenate(out["tail"] or [np.zeros(0)]),
                           np.concatenate(out["head"] or [np.zeros(0)])])


def evaluate(m: Model | str, E, W, triples: Triples, split: str = "test") -> Metrics:
    """Filtered MRR and Hits@1/3/10 of embeddings ``E`` (entities x dim), ``W`` (relations x dim)
    on one split, the filter being every triple of every split."""
    m = get_model(m) if isinstance(m, str) else m
    if len(triples.split(split)) == 0:
        raise ValueError(f"evaluate: the '{split}' split of '{triples.name}' has no triples; "
                         f"evaluate on another split (split='valid' or 'train')")
    return Metrics.from_ranks(filtered_ranks(m, E, W, triples.split(split), triples.known()))


# ---- training ---------------------------------------------------------------------------------

@dataclass
class History:
    model: str
    dataset: str
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    seconds: list[float] = field(default_factory=list)  # wall time per epoch
    initial: Metrics | None = None  # the random embeddings before training: the baseline
    metrics: Metrics | None = None  # after training
    entity: Relation | None = None
    relation: Relation | None = None

    def summary(self) -> str:
        loss = f", loss {self.losses[0]:.4f} -> {self.losses[-1]:.4f}" if self.losses else ""
        lines = [f"{self.model} on {self.dataset}: {len(self.losses)} epochs, "
                 f"{sum(self.seconds):.1f} s{loss}"]
        if self.initial is not None:
            lines.append(f"  random embeddings  {self.initial.row()}")
        if self.metrics is not None:
            lines.append(f"  trained            {self.metrics.row()}")
        return "\n".join(lines)

    __repr__ = summary


def init_embeddings(m: Model, n_entities: int, n_relations: int, dim: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """TransE: uniform in +-6/sqrt(dim) (Bordes et al. 2013), rows of unit norm; DistMult:
    normal with standard deviation 1/sqrt(dim)."""
    if m.margin_loss:
        bound = 6.0 / np.sqrt(dim)
        E = rng.uniform(-bound, bound, size=(n_entities, dim))
        W = rng.uniform(-bound, bound, size=(n_relations, dim))
        return E / np.linalg.norm(E, axis=1, keepdims=True), W / np.linalg.norm(W, axis=1, keepdims=True)
    return (rng.normal(size=(n_entities, dim)) / np.sqrt(dim),
            rng.normal(size=(n_relations, dim)) / np.sqrt(dim))


def unit_rows(Entity: Relation) -> Relation:
    """Entity with every vector scaled to unit norm: a select with e / ||e||."""
    unit = select(Entity, kernel=lambda e: e / jnp.sqrt(jnp.sum(e ** 2)))
    return Entity.with_values(unit.values_like(Entity))


def train(triples: Triples, model: str = "transe", dim: int = 32, epochs: int = 50,
          lr: float = 0.01, negatives: int = 4, seed: int = 0, margin: float = 1.0,
          batch_size: int | None = None, normalize: bool = True, split: str = "test",
          dtype=None, compiled: bool = False) -> History:
    """Train ``model`` ('transe' or 'distmult') on ``triples.train`` with Adam: each epoch draws
    ``negatives`` corruptions per triple, shuffles, and takes one step per batch (``batch_size``
    triples; all of them by default) through the relational backward plan. TransE entities are
    put back on the unit sphere after every epoch (``normalize``). Metrics on ``split`` are
    measured before training (random embeddings) and after. ``compiled``: each step is
    ``wb.jit`` of it, with the batch's positives and negatives as arguments. Fresh negatives
    change the keys every batch, so each batch builds a new key plan, and the number of entities
    a batch touches changes the program's shapes: measured on Nations (batch 256), that costs
    more than the interpreter (2.0 s against 0.6 s an epoch), which is the default here."""
    m = get_model(model)
    if dim < 1 or epochs < 0 or negatives < 1:
        raise ValueError(f"train: dim ({dim}) and negatives ({negatives}) must be positive and "
                         f"epochs ({epochs}) non-negative")
    if len(triples.train) == 0:
        raise ValueError(f"train: knowledge graph '{triples.name}' has no training triples")
    rng = np.random.default_rng(seed)
    dtype = dtype or default_dtype()
    n_ent, n_rel = triples.n_entities, triples.n_relations
    E0, W0 = init_embeddings(m, n_ent, n_rel, dim, rng)
    Entity = from_tensor(E0, keys=("e",), dtype=dtype, name="Entity")
    Rel = from_tensor(W0, keys=("r",), dtype=dtype, name="Rel")
    history = History(m.name, triples.name)
    scored = len(triples.split(split)) > 0  # no metrics for an empty split
    if scored:
        history.initial = evaluate(m, Entity.to_tensor(), Rel.to_tensor(), triples, split)
    opt = Adam(lr=lr)
    state = opt.init([Entity, Rel])
    train_set = triples.train
    size = batch_size or len(train_set)

    def batch_loss(Entity: Relation, Rel: Relation, Pos: Relation, Neg: Relation) -> Relation:
        return loss_program(m, Pos, Neg, margin)(Entity, Rel)

    step = value_and_grad(batch_loss, argnums=(0, 1))
    step = jit(step, prune=False) if compiled else step  # new keys every batch: keep shapes
    for _ in range(epochs):
        start = time.perf_counter()
        order = rng.permutation(len(train_set))
        corrupted = corrupt(train_set, n_ent, negatives, rng)
        total = 0.0
        for b in range(0, len(order), size):
            rows = order[b:b + size]
            Pos = to_relations(train_set[rows], n_ent, n_rel, name="Triple", dtype=dtype)
            Neg = negatives_relation(train_set[rows], corrupted[rows], n_ent, n_rel, dtype=dtype)
            value, grads = step(Entity, Rel, Pos, Neg)
            (Entity, Rel), state = opt.update([Entity, Rel], grads, state)
            total += float(value.to_tensor()) * len(rows)
        if m.margin_loss and normalize:
            Entity = unit_rows(Entity)
        history.losses.append(total / len(order))
        history.seconds.append(time.perf_counter() - start)
    history.entity, history.relation = Entity, Rel
    if scored:
        history.metrics = evaluate(m, Entity.to_tensor(), Rel.to_tensor(), triples, split)
    return history
