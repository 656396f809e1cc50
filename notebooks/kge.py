# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Knowledge-graph embedding on Nations: TransE and DistMult
#
# The parameters are two relations, `Entity(e) -> vec` and `Rel(r) -> vec`; the data are the
# key-only relations `Triple(h, r, t) -> 1.0` of the training triples and, drawn afresh each
# epoch, their corruptions `Neg(h, r, t, n, ch, ct) -> 1.0` (head or tail replaced by a random
# entity). A score is three joins (Entity on the head, Rel on the relation, Entity on the tail),
# and the loss pairs each positive with its negatives by a join on `(h, r, t)`:
#
# * TransE: $s = -\lVert e_h + w_r - e_t \rVert_2$, loss $\operatorname{mean}\,\max(0, \gamma - s_+ + s_-)$
# * DistMult: $s = \langle e_h, w_r, e_t \rangle$, loss $\operatorname{mean}\,\operatorname{softplus}(-s_+) + \operatorname{softplus}(s_-)$
#
# Gradients come from the relational backward plan (`wb.value_and_grad`), updates from Adam over
# the parameter relations. Evaluation ranks every entity as the head and as the tail of each test
# triple, leaving out candidates that form another known triple (filtered MRR and Hits@k).

# %%
import jax

jax.config.update("jax_enable_x64", True)

import numpy as np

import workbench as wb
from workbench import check
from workbench.datasets import knowledge
from workbench.models import kge

nations = knowledge.load("nations")
print(nations.summary())

# %% [markdown]
# ## Training
#
# 32-dimensional embeddings, 4 negatives per triple, one full-batch Adam step per epoch (lr 0.05);
# TransE puts its entities back on the unit sphere after each epoch. The metrics of the same
# embeddings before training are the random baseline.

# %%
runs = {name: kge.train(nations, model=name, dim=32, epochs=60, lr=0.05, negatives=4, seed=0, loss="pairs")
        for name in ("transe", "distmult")}

print(f"{'epoch':>5}  {'TransE loss':>11}  {'DistMult loss':>13}  {'seconds':>8}")
for i, (a, b) in enumerate(zip(runs["transe"].losses, runs["distmult"].losses)):
    print(f"{i + 1:>5}  {a:>11.4f}  {b:>13.4f}  {runs['transe'].seconds[i] + runs['distmult'].seconds[i]:>8.3f}")

# %% [markdown]
# ## Filtered ranking on the test split (201 triples, heads and tails: 402 ranks)

# %%
print(f"{'model':<9} {'embeddings':<10} {'MRR':>6} {'Hits@1':>7} {'Hits@3':>7} {'Hits@10':>8}")
for h in runs.values():
    for label, m in (("random", h.initial), ("trained", h.metrics)):
        print(f"{h.model:<9} {label:<10} {m.mrr:>6.3f} {m.hits_at_1:>7.3f} {m.hits_at_3:>7.3f} "
              f"{m.hits_at_10:>8.3f}")

# %% [markdown]
# ## One gradient against the JAX twin
#
# With one fixed negative sample, the relational loss and its dense twin (gathers `E[h]`,
# `W[r]`, `E[t]`) are compared at the trained TransE embeddings: the output and the gradients
# with respect to both parameter relations. Entity feeds two joins (heads and tails); the
# backward plan adds their RJPs.

# %%
rng = np.random.default_rng(1)
train = nations.train
corrupted = kge.corrupt(train, nations.n_entities, 4, rng)
Pos = knowledge.to_relations(train, nations.n_entities, nations.n_relations)
Neg = kge.negatives_relation(train, corrupted, nations.n_entities, nations.n_relations)
transe = kge.get_model("transe")
loss = kge.loss_program(transe, Pos, Neg)
report = check.against_jax(loss, kge.loss_twin(transe, train, corrupted),
                           runs["transe"].entity, runs["transe"].relation)
print(report)
assert report.ok

# %% [markdown]
# ## The forward plan
#
# The positive and negative scores are two chains of three joins over the same parameter scans;
# a join on `(h, r, t)` pairs them and a mean gives the loss.

# %%
Entity, Rel = runs["transe"].entity, runs["transe"].relation
forward, backward = wb.plans(loss, Entity, Rel, argnums=(0, 1))
print(forward.to_text())
