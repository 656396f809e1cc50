"""Knowledge-graph embedding as relational programs: TransE and DistMult.

Parameters are two relations, ``Entity(e) -> vec`` and ``Rel(r) -> vec``. Data are key-only
relations of triples: the positives ``Triple(h, r, t) -> 1.0`` and the negatives drawn each epoch,
``Neg(h, r, t, n, ch, ct) -> 1.0``, the n-th corruption (ch, r, ct) of the positive (h, r, t)
(its head or its tail replaced by a random entity). A score is three joins: the triples with
Entity on the head, with Rel on r, with Entity on the tail, the last kernel giving the score.
Positive and negative scores are paired by a join on (h, r, t), a per-pair loss kernel, and a mean:

    TransE     s(h, r, t) = -||e_h + w_r - e_t||_2     loss = mean relu(margin - s_pos + s_neg)
    TransE-L1  s(h, r, t) = -||e_h + w_r - e_t||_1     (pykeen's default norm; same loss)
    DistMult   s(h, r, t) = <e_h, w_r, e_t>            loss = mean softplus(-s_pos) + softplus(s_neg)

With k negatives per positive, the DistMult pair mean equals mean_pos softplus(-s) + mean_neg
softplus(s). Entity feeds two joins (head and tail), so its gradient is the sum of both RJPs.

1-N scoring (``one_n_loss_program``, the default of ``train``) follows the LCWA training of the
references: inverse relations (``Rel`` has 2 x n_relations rows; (h, r, t) also gives the query
(t, r + n_relations) with target h), and a batch of queries ``Query(q, h, r, t) -> w`` scored
against every entity. The entities meet each query as one tuple, ``EntityMatrix() -> (n, dim)``
(Entity joined with one-hot rows and summed), so a kernel gives a query's whole score vector
(DistMult M x; TransE |x|^2 - 2 M x, then + |e|^2 from ``EntityNorms`` and -sqrt; TransE-L1
-sum |x - M|), and a select takes its max-shifted log-sum-exp; minus the target's score (a join on
t), weighted and summed, it is the mean softmax cross-entropy. Entity's gradient sums its roles
(head, target, matrix row, norm) by the RJP rules.

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
from workbench.progress import progress_bar


# ---- the two models: per-tuple kernels and their dense (broadcasting) score -----------------

def _transe_combine(eh, w):
    return eh + w  # translate the head by the relation


def _transe_score(x, et):
    return -jnp.sqrt(jnp.sum((x - et) ** 2))  # -||e_h + w_r - e_t||_2


def _transe_dense(eh, w, et):
    return -jnp.sqrt(jnp.sum((eh + w - et) ** 2, axis=-1))


def _transe_l1_score(x, et):
    return -jnp.sum(jnp.abs(x - et))  # -||e_h + w_r - e_t||_1


def _transe_l1_dense(eh, w, et):
    return -jnp.sum(jnp.abs(eh + w - et), axis=-1)


def _distmult_combine(eh, w):
    return eh * w


def _distmult_score(x, et):
    return jnp.sum(x * et)  # <e_h, w_r, e_t> = sum_i e_h,i w_r,i e_t,i


def _distmult_dense(eh, w, et):
    return jnp.sum(eh * w * et, axis=-1)


# 1-N scoring: a combined query x against every row of the entity matrix M (n, dim) at once. The
# kernel that reads M touches it only through the product M x, so the RJP with respect to M is an
# outer product per query, which XLA sums over a batch as one matrix product (a per-row score
# vmapped over M would make an elementwise (batch, n, dim) tensor instead, 100x slower).

def _distmult_against_all(x, M):
    return M @ x  # <x, e> for every entity row e: the scores


def _transe_against_all(x, M):
    return jnp.sum(x * x) - 2.0 * (M @ x)  # |x|^2 - 2 <x, e>: ||x - e||^2 without |e|^2


def _transe_l1_against_all(x, M):
    # -||x - e||_1 for every row e: no matrix product gives it, so a batch is an elementwise
    # (batch, n, dim) tensor (forward and RJP); affordable at small dim
    return -jnp.sum(jnp.abs(x[None, :] - M), axis=1)


def _transe_finish(p, norms):
    # ||x - e||^2 = p + |e|^2, floored at 1e-12 (rounding can make it slightly negative, and
    # sqrt has an infinite slope at 0); the score is -||x - e||
    return -jnp.sqrt(jnp.maximum(p + norms, 1e-12))


@dataclass(frozen=True)
class Model:
    name: str
    combine: Callable  # (e_h, w_r) -> x, per tuple
    score: Callable  # (x, e_t) -> scalar score, per tuple
    dense_score: Callable  # (e_h, w_r, e_t) -> score over the last axis, broadcasting
    margin_loss: bool  # True: relu(margin - s_pos + s_neg); False: logistic
    against_all: Callable | None = None  # (x, M) -> (n,): x against every row of M (1-N)
    finish: Callable | None = None  # (against_all, |e|^2 per row) -> scores; None: already scores


MODELS = {
    "transe": Model("TransE", _transe_combine, _transe_score, _transe_dense, True,
                    _transe_against_all, _transe_finish),
    "transe-l1": Model("TransE-L1", _transe_combine, _transe_l1_score, _transe_l1_dense, True,
                       _transe_l1_against_all),
    "distmult": Model("DistMult", _distmult_combine, _distmult_score, _distmult_dense, False,
                      _distmult_against_all),
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


# ---- 1-N scoring: every query against every entity, softmax cross-entropy -----------------------

def reciprocal(triples: np.ndarray, n_relations: int) -> np.ndarray:
    """The training queries of 1-N scoring with inverse relations: each triple (h, r, t) as the
    query (h, r) with target t and as (t, r + n_relations) with target h, shape (2n, 3)."""
    triples = np.asarray(triples, np.int64).reshape(-1, 3)
    inverse = np.stack([triples[:, 2], triples[:, 1] + n_relations, triples[:, 0]], axis=1)
    return np.concatenate([triples, inverse])


def queries_relation(queries: np.ndarray, n_entities: int, n_relations: int, size: int | None = None,
                     name: str = "Query", dtype=None) -> Relation:
    """``Query(q, h, r, t) -> w``: the q-th query (h, r) with target t and weight ``w = 1/n`` (n
    queries), so that the weighted sum of per-query losses is their mean. ``n_relations`` counts
    the relation ids (2x the graph's with inverse relations).

    With ``size``, the relation is padded to exactly ``size`` tuples by queries of weight 0 that
    name every entity as head and as tail and every relation id (``size >= n + max(n_entities,
    n_relations)``): then every batch has the same row counts at every step of its plan (the
    groups by head, relation and tail are always all of them), so a compiled step reuses one XLA
    program across batches; the padding adds nothing to the loss or to the gradients."""
    queries = np.asarray(queries, np.int64).reshape(-1, 3)
    n = len(queries)
    w = np.full(n, 1.0 / max(n, 1))
    if size is not None:
        pad = size - n
        need = max(n_entities, n_relations)
        if pad < need:
            raise ValueError(f"queries_relation '{name}': size {size} leaves room for {pad} padding "
                             f"queries; {n} queries need size >= {n + need}")
        i = np.arange(pad, dtype=np.int64)
        filler = np.stack([i % n_entities, i % n_relations, (i + 1) % n_entities], axis=1)
        queries = np.concatenate([queries, filler])
        w = np.concatenate([w, np.zeros(pad)])
    frame = pl.DataFrame({"q": np.arange(len(queries), dtype=np.int64), "h": queries[:, 0],
                          "r": queries[:, 1], "t": queries[:, 2], "w": w})
    return from_frame(frame, keys=("q", "h", "r", "t"), value="w",
                      extents=(len(queries), n_entities, n_relations, n_entities),
                      dtype=dtype or default_dtype(), name=name)


def one_hot_relation(n_entities: int, dtype=None) -> Relation:
    """``OneHot(e) -> u_e``, the e-th unit vector of length n_entities (data)."""
    return from_tensor(np.eye(n_entities), keys=("e",), dtype=dtype or default_dtype(), name="OneHot")


def _head(w, e):
    return e  # the query's head vector (its weight enters at the end)


def _place(e, u):
    return u[:, None] * e[None, :]  # the entity's vector in its row of an (n, dim) matrix


def entity_matrix(Entity: Relation, OneHot: Relation) -> Relation:
    """``EntityMatrix() -> (n_entities, dim)``: all entity vectors as one tuple, each placed in its
    row by a join with ``OneHot`` and summed by a keyless aggregate. Its RJP hands every row's
    cotangent back to its entity."""
    return aggregate(join(Entity, OneHot, on={"e": "e"}, kernel=_place), by=())


def _place_norm(e, u):
    return u * jnp.sum(e * e)  # |e|^2 in the entity's position of an n-vector


def entity_norms(Entity: Relation, OneHot: Relation) -> Relation:
    """``EntityNorms() -> (n_entities,)``: every entity's squared norm |e|^2 as one tuple, placed
    by a join with ``OneHot`` and summed by a keyless aggregate."""
    return aggregate(join(Entity, OneHot, on={"e": "e"}, kernel=_place_norm), by=())


def all_scores(m: Model, X: Relation, Entity: Relation, OneHot: Relation) -> Relation:
    """``P(keys of X) -> (n_entities,)``: the score of every combined query ``X`` against every
    entity. DistMult: ``X x EntityMatrix`` with kernel M x. TransE: the same join gives
    |x|^2 - 2 M x, and a second cross join with ``EntityNorms`` adds |e|^2 and takes -sqrt."""
    if m.against_all is None:
        raise ValueError(f"all_scores: model {m.name} has no 1-N scoring (Model.against_all)")
    P = join(X, entity_matrix(Entity, OneHot), on={}, kernel=m.against_all)
    if m.finish is not None:
        P = join(P, entity_norms(Entity, OneHot), on={}, kernel=m.finish)
    return P


def logistic_loss_program(m: Model, Pos: Relation, Neg: Relation) -> Callable:
    """The loss of (Entity, Rel) over stored positive and negative triples: mean softplus(-s)
    over ``Pos(h, r, t)`` plus mean softplus(s) over ``Neg(h, r, t)`` (-log sigmoid of each
    side), for triples read from datasets of any size (no pairing of positives with negatives)."""

    def loss(Entity: Relation, Rel: Relation) -> Relation:
        lp = aggregate(select(scores(Pos, Entity, Rel, m), kernel=lambda s: jax.nn.softplus(-s)),
                       by=(), kernel="mean")
        ln = aggregate(select(scores(Neg, Entity, Rel, m), kernel=jax.nn.softplus), by=(), kernel="mean")
        return join(lp, ln, on={}, kernel=jnp.add)

    return loss


def one_n_loss_program(m: Model, Query: Relation, OneHot: Relation) -> Callable:
    """``loss(Entity, Rel)``: the 1-N softmax cross-entropy of the queries ``Query(q, h, r, t) ->
    w`` (w weights each query; 1/B for a batch of B), captured as data:

        X(q, h, r, t)  = combine(Entity(h), Rel(r))                two joins, as for a triple
        P(q, h, r, t)  = (score(X, Entity(e)))_e                    X x EntityMatrix (no key)
        Z(q, h, r, t)  = logsumexp_e P                             a select
        S(q, h, r, t)  = score(X, Entity(t))                        the target's score
        loss           = sum_q w_q (Z - S)                          a join with Query and a sum

    The query meets the entity matrix held as one tuple, a cross join that XLA runs as one matrix
    product over the batch; the log-sum-exp is jax.nn.logsumexp over a query's score vector
    (max-shifted, so large scores do not overflow)."""

    def loss(Entity, Rel):
        X = join(Query, Entity, on={"h": "e"}, kernel=_head)
        X = join(X, Rel, on={"r": "r"}, kernel=m.combine)
        Z = select(all_scores(m, X, Entity, OneHot), kernel=jax.nn.logsumexp)
        S = join(X, Entity, on={"t": "e"}, kernel=m.score)
        ce = join(Z, S, on={k: k for k in Query.keys}, kernel=jnp.subtract)
        weighted = join(ce, Query, on={k: k for k in Query.keys}, kernel=jnp.multiply)
        return aggregate(weighted, by=())

    loss.__name__ = f"{m.name.lower()}_1n_loss"
    return loss


def one_n_loss_twin(m: Model, queries: np.ndarray) -> Callable:
    """The dense twin of ``one_n_loss_program`` (unpadded, weights 1/n): ``loss(E, W)``, the mean
    softmax cross-entropy of the queries' targets among all entities, by gathers."""
    q = jnp.asarray(np.asarray(queries, np.int64))

    def loss(E, W):
        s = m.dense_score(E[q[:, 0]][:, None, :], W[q[:, 1]][:, None, :], E[None])  # (n, n_ent)
        return jnp.mean(jax.nn.logsumexp(s, axis=1) - s[jnp.arange(len(q)), q[:, 2]])

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
    tail_mrr: float = float("nan")  # the first half of the ranks: tail prediction (h, r, ?)
    head_mrr: float = float("nan")  # the second half: head prediction (?, r, t)

    @classmethod
    def from_ranks(cls, ranks: np.ndarray) -> "Metrics":
        """Metrics of ``filtered_ranks``' output: tail ranks, then as many head ranks."""
        ranks = np.asarray(ranks, np.float64)
        half = len(ranks) // 2
        sides = ((float(np.mean(1.0 / ranks[:half])), float(np.mean(1.0 / ranks[half:])))
                 if half and len(ranks) % 2 == 0 else (float("nan"), float("nan")))
        return cls(float(np.mean(1.0 / ranks)), *(float(np.mean(ranks <= k)) for k in (1, 3, 10)),
                   len(ranks), *sides)

    def row(self) -> str:
        return (f"MRR {self.mrr:.3f}  Hits@1 {self.hits_at_1:.3f}  Hits@3 {self.hits_at_3:.3f}  "
                f"Hits@10 {self.hits_at_10:.3f}  (tail {self.tail_mrr:.3f}, head {self.head_mrr:.3f})")


def _codes(h, r, t, n_entities: int, n_relations: int):
    return (h * n_relations + r) * n_entities + t  # one int64 per triple


def filtered_ranks(m: Model, E, W, queries: np.ndarray, known: np.ndarray,
                   batch_cells: int = 1 << 22, reciprocal: bool = False) -> np.ndarray:
    """Rank of each query triple's true tail among all entities (first half of the result) and of
    its true head (second half), leaving out candidates that form another known triple. A
    candidate scoring exactly as the true entity counts one half: rank = 1 + #greater +
    #equal / 2. ``reciprocal``: ``W`` holds 2 x n_relations rows, the second half the inverse
    relations, and heads are predicted as tails of the inverse query (t, r + n_relations, ?)."""
    E, W = jnp.asarray(E), jnp.asarray(W)
    n_ent, n_rel = E.shape[0], W.shape[0]
    if reciprocal:
        if n_rel % 2:
            raise ValueError(f"filtered_ranks: reciprocal scoring needs 2 x n_relations relation "
                             f"rows, got {n_rel}")
        n_rel //= 2
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
                ("head", m.dense_score(et, W[r + n_rel][:, None, :], E[None]) if reciprocal
                 else m.dense_score(E[None], w, et), _codes(cand, r[:, None], t[:, None], n_ent, n_rel), h)):
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
    on one split, both directions (tail and head prediction, as pykeen's "both"), the filter
    being every triple of every split. ``W`` with 2 x n_relations rows holds inverse relations
    (1-N training), and heads are then predicted through them."""
    m = get_model(m) if isinstance(m, str) else m
    if len(triples.split(split)) == 0:
        raise ValueError(f"evaluate: the '{split}' split of '{triples.name}' has no triples; "
                         f"evaluate on another split (split='valid' or 'train')")
    reciprocal = np.shape(W)[0] == 2 * triples.n_relations
    return Metrics.from_ranks(filtered_ranks(m, E, W, triples.split(split), triples.known(),
                                             reciprocal=reciprocal))


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
    loss: str = "pairs"  # the training objective: "pairs" or "1-n"
    validation: list[tuple[int, float]] = field(default_factory=list)  # (epoch, valid MRR)
    best_epoch: int | None = None  # the epoch whose parameters were kept (early stopping)

    def summary(self) -> str:
        loss = f", loss {self.losses[0]:.4f} -> {self.losses[-1]:.4f}" if self.losses else ""
        best = f", best valid epoch {self.best_epoch}" if self.best_epoch is not None else ""
        lines = [f"{self.model} ({self.loss}) on {self.dataset}: {len(self.losses)} epochs, "
                 f"{sum(self.seconds):.1f} s{loss}{best}"]
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


LOSSES = ("1-n", "pairs")


def train(triples: Triples, model: str = "transe", dim: int = 32, epochs: int = 50,
          lr: float = 0.01, negatives: int = 4, seed: int = 0, margin: float = 1.0,
          batch_size: int | None = None, normalize: bool = True, split: str = "test",
          dtype=None, compiled: bool | None = None, loss: str = "1-n", eval_every: int = 10,
          patience: int = 3, progress: bool | None = False) -> History:
    """Train ``model`` ('transe' or 'distmult') on ``triples.train`` with Adam.

    ``loss="1-n"`` (the default; ``train_1n``): 1-N scoring with inverse relations and softmax
    cross-entropy, mini-batches of ``batch_size`` queries (256 by default), early stopping on the
    validation filtered MRR (every ``eval_every`` epochs, ``patience`` evaluations without
    improvement; the best parameters are kept). ``loss="pairs"`` (``train_pairs``): ``negatives``
    corruptions per triple and the pair loss; ``eval_every`` and ``patience`` do not apply.
    ``compiled`` (None: True for 1-N, False for pairs) runs each step as ``wb.jit`` of it.
    ``progress``: a tqdm bar over the epochs (None: only on a terminal)."""
    key = str(loss).lower().replace("_", "-")
    if key in ("1n", "lcwa", "1-n"):
        return train_1n(triples, model=model, dim=dim, epochs=epochs, lr=lr, seed=seed,
                        batch_size=batch_size or 256, normalize=normalize, split=split, dtype=dtype,
                        compiled=True if compiled is None else bool(compiled),
                        eval_every=eval_every, patience=patience, progress=progress)
    if key != "pairs":
        raise ValueError(f"train: unknown loss {loss!r}; choose one of {LOSSES}")
    return train_pairs(triples, model=model, dim=dim, epochs=epochs, lr=lr, negatives=negatives,
                       seed=seed, margin=margin, batch_size=batch_size, normalize=normalize,
                       split=split, dtype=dtype, compiled=bool(compiled), progress=progress)


def _start(triples: Triples, m: Model, dim: int, epochs: int, count_name: str, count: int,
           relation_copies: int, seed: int, dtype):
    """Check a training run's sizes and draw its starting embeddings: (Entity, Rel, rng, dtype),
    Rel with ``relation_copies`` rows per relation (2 with reciprocal relations)."""
    if dim < 1 or epochs < 0 or count < 1:
        raise ValueError(f"train: dim ({dim}) and {count_name} ({count}) must be positive and "
                         f"epochs ({epochs}) non-negative")
    if len(triples.train) == 0:
        raise ValueError(f"train: knowledge graph '{triples.name}' has no training triples")
    rng = np.random.default_rng(seed)
    dtype = dtype or default_dtype()
    E0, W0 = init_embeddings(m, triples.n_entities, relation_copies * triples.n_relations, dim, rng)
    Entity = from_tensor(E0, keys=("e",), dtype=dtype, name="Entity")
    Rel = from_tensor(W0, keys=("r",), dtype=dtype, name="Rel")
    return Entity, Rel, rng, dtype


def train_pairs(triples: Triples, model: str = "transe", dim: int = 32, epochs: int = 50,
                lr: float = 0.01, negatives: int = 4, seed: int = 0, margin: float = 1.0,
                batch_size: int | None = None, normalize: bool = True, split: str = "test",
                dtype=None, compiled: bool = False, progress: bool | None = False) -> History:
    """Train ``model`` ('transe' or 'distmult') on ``triples.train`` with Adam: each epoch draws
    ``negatives`` corruptions per triple, shuffles, and takes one step per batch (``batch_size``
    triples; all of them by default) through the relational backward plan. TransE entities are
    put back on the unit sphere after every epoch (``normalize``). Metrics on ``split`` are
    measured before training (random embeddings) and after. ``compiled``: each step is
    ``wb.jit`` of it, with the batch's positives and negatives as arguments. Fresh negatives
    change the keys every batch, so each batch builds a new key plan, and the number of entities
    a batch touches changes the program's shapes: measured on Nations (batch 256), that costs
    more than the interpreter (2.0 s against 0.6 s an epoch), which is the default here.
    ``progress``: a tqdm bar over the epochs (None: only on a terminal)."""
    m = get_model(model)
    Entity, Rel, rng, dtype = _start(triples, m, dim, epochs, "negatives", negatives, 1, seed, dtype)
    n_ent, n_rel = triples.n_entities, triples.n_relations
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
    bar = progress_bar(epochs, f"{m.name} {triples.name}", progress)
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
        bar.update(loss=history.losses[-1])
    bar.close()
    history.entity, history.relation = Entity, Rel
    if scored:
        history.metrics = evaluate(m, Entity.to_tensor(), Rel.to_tensor(), triples, split)
    return history


def train_1n(triples: Triples, model: str = "distmult", dim: int = 128, epochs: int = 100,
             lr: float = 0.01, seed: int = 0, batch_size: int = 256, normalize: bool = True,
             split: str = "test", dtype=None, compiled: bool = True, eval_every: int = 10,
             patience: int = 3, valid: str = "valid", progress: bool | None = False) -> History:
    """1-N training: the queries are the training triples and their inverses (``reciprocal``),
    shuffled every epoch into batches of ``batch_size``; each step is the relational backward
    plan of ``one_n_loss_program`` on the batch (``Query`` an argument), then Adam. Every batch,
    the last one too, is padded to one size by weight-0 queries (``queries_relation``), so all
    steps have one shape: a compiled step (``compiled``, ``wb.jit`` without pruning) builds a key
    plan for each new batch (its keys are new) but reuses one XLA program. TransE entities are
    put back on the unit sphere after every epoch (``normalize``). Every ``eval_every`` epochs
    the filtered MRR on ``valid`` is measured; the best parameters are kept, and training stops
    after ``patience`` measurements without improvement (no early stopping without a ``valid``
    split, or with ``patience=0``). ``progress``: a tqdm bar over the epochs (None: only on a
    terminal)."""
    m = get_model(model)
    Entity, Rel, rng, dtype = _start(triples, m, dim, epochs, "batch_size", batch_size, 2, seed, dtype)
    n_ent, n_rel = triples.n_entities, 2 * triples.n_relations
    history = History(m.name, triples.name, loss="1-n")
    scored = len(triples.split(split)) > 0
    if scored:
        history.initial = evaluate(m, Entity.to_tensor(), Rel.to_tensor(), triples, split)
    early = eval_every > 0 and patience > 0 and len(triples.split(valid)) > 0
    opt = Adam(lr=lr)
    state = opt.init([Entity, Rel])
    queries = reciprocal(triples.train, triples.n_relations)
    size = min(batch_size, len(queries))
    padded = size + max(n_ent, n_rel)
    OneHot = one_hot_relation(n_ent, dtype)

    def batch_loss(Entity: Relation, Rel: Relation, Query: Relation) -> Relation:
        return one_n_loss_program(m, Query, OneHot)(Entity, Rel)

    step = value_and_grad(batch_loss, argnums=(0, 1))
    step = jit(step, prune=False) if compiled else step
    best, best_mrr, waited = (Entity, Rel), -1.0, 0
    bar = progress_bar(epochs, f"{m.name} {triples.name}", progress)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(len(queries))
        total = 0.0
        for b in range(0, len(order), size):
            rows = order[b:b + size]
            Query = queries_relation(queries[rows], n_ent, n_rel, size=padded, dtype=dtype)
            value, grads = step(Entity, Rel, Query)
            (Entity, Rel), state = opt.update([Entity, Rel], grads, state)
            total += float(value.to_tensor()) * len(rows)
        if m.margin_loss and normalize:
            Entity = unit_rows(Entity)
        history.losses.append(total / len(order))
        history.seconds.append(time.perf_counter() - start)
        if early and (epoch % eval_every == 0 or epoch == epochs):
            mrr = evaluate(m, Entity.to_tensor(), Rel.to_tensor(), triples, valid).mrr
            history.validation.append((epoch, mrr))
            if mrr > best_mrr:
                best, best_mrr, waited, history.best_epoch = (Entity, Rel), mrr, 0, epoch
            else:
                waited += 1
        bar.update(loss=history.losses[-1], **({"valid_mrr": history.validation[-1][1]}
                                               if history.validation else {}))
        if early and waited >= patience:
            break
    bar.close()
    if early and history.best_epoch is not None:
        Entity, Rel = best
    history.entity, history.relation = Entity, Rel
    if scored:
        history.metrics = evaluate(m, Entity.to_tensor(), Rel.to_tensor(), triples, split)
    return history
