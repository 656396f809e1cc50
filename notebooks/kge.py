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
# # Knowledge-graph embedding on Nations, UMLS and Kinships: TransE and DistMult
#
# The parameters are two relations, `Entity(e) -> vec` and `Rel(r) -> vec`. Training follows
# the references' recipe (1-N scoring, pykeen's LCWA): every training triple $(h, r, t)$ is a
# query $(h, r)$ with target $t$, and with an inverse relation the query $(t, r^{-1})$ with
# target $h$; a batch of queries `Query(q, h, r, t) -> w` is scored against every entity, and
# the loss is the softmax cross-entropy of the target:
#
# * DistMult: $s(h, r, e) = \langle e_h, w_r, e \rangle$: the query $x = e_h \circ w_r$ meets the
#   entity matrix $M$ (one tuple) in a cross join with kernel $Mx$;
# * TransE: $s = -\lVert e_h + w_r - e \rVert_2$, from $|x|^2 - 2Mx$ and the entity norms
#   $|e|^2$ (a second one-tuple relation);
# * TransE-L1: $s = -\lVert e_h + w_r - e \rVert_1$, pykeen's default norm.
#
# Every gradient comes from the relational backward plan (`wb.value_and_grad`, compiled with
# `wb.jit`), every update from Adam over the parameter relations. Evaluation ranks every entity
# as the tail and, through the inverse relation, as the head of each test triple, leaving out
# candidates that form another known triple (filtered MRR, both directions, as pykeen's "both").
# Early stopping keeps the parameters of the best validation MRR.

# %%
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np

import workbench as wb
from workbench import check, references
from workbench.datasets import knowledge
from workbench.models import kge

FIGURES = Path("..") / "figures"
graphs = {name: knowledge.load(name) for name in ("nations", "umls", "kinships")}
for g in graphs.values():
    print(g.summary())

# %% [markdown]
# ## Training on the three graphs
#
# The settings of `python -m workbench check` (`references.KGE_SETTINGS`), with fewer epochs
# here to keep the notebook short; each plot shows the training loss per epoch and the
# validation MRR at every evaluation, with pykeen's test MRR as the line to reach.

# %%
runs = {}
for model, name, epochs in (("distmult", "nations", 30), ("transe-l1", "nations", 30),
                            ("distmult", "umls", 10), ("distmult", "kinships", 10)):
    h = references.train_kge(model, name, epochs=epochs, progress=True)
    runs[model, name] = h
    ref = references.KGE_REFERENCES[model, name]
    references.draw(references.kge_curves(h, ref.pykeen), f"{h.model}, {name}, 1-N",
                    FIGURES / f"notebook_kge_{model}_{name}.png")

# %% [markdown]
# ## Filtered ranking on the test splits, beside pykeen

# %%
print(f"{'model':<10} {'data':<9} {'epochs':>6} {'random MRR':>10} {'MRR':>6} {'Hits@1':>7} "
      f"{'Hits@10':>8} {'pykeen':>7}")
for (model, name), h in runs.items():
    m, ref = h.metrics, references.KGE_REFERENCES[model, name]
    print(f"{h.model:<10} {name:<9} {len(h.losses):>6} {h.initial.mrr:>10.3f} {m.mrr:>6.3f} "
          f"{m.hits_at_1:>7.3f} {m.hits_at_10:>8.3f} {ref.pykeen:>7.3f}")

# %% [markdown]
# ## One gradient against the JAX twin
#
# The 1-N loss of a batch of Nations queries at the trained TransE-L1 embeddings, relational and
# dense (gathers `E[h]`, `W[r]`, and every entity at once), in float64: the output and both
# gradients. Entity enters as head, as target and as the entity matrix; the backward plan adds
# the RJPs of all three roles.

# %%
nations = graphs["nations"]
queries = kge.reciprocal(nations.train, nations.n_relations)[:200]
h = runs["transe-l1", "nations"]
E = wb.from_tensor(np.asarray(h.entity.to_tensor(), np.float64), keys=("e",), name="Entity")
W = wb.from_tensor(np.asarray(h.relation.to_tensor(), np.float64), keys=("r",), name="Rel")
transe_l1 = kge.get_model("transe-l1")
Query = kge.queries_relation(queries, nations.n_entities, 2 * nations.n_relations, dtype="float64")
loss = kge.one_n_loss_program(transe_l1, Query, kge.one_hot_relation(nations.n_entities, "float64"))
report = check.against_jax(loss, kge.one_n_loss_twin(transe_l1, queries), E, W, rtol=1e-9)
print(report)
assert report.ok

# %% [markdown]
# ## The forward plan
#
# Two joins build the combined query from the head and the relation; a cross join with the
# entity matrix (one tuple) scores it against every entity, a select takes the log-sum-exp, a
# join on the target gives its score, and a weighted sum gives the mean cross-entropy.

# %%
forward, backward = wb.plans(loss, E, W, argnums=(0, 1))
print(forward.to_text())
