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
# # Training the paper's GCN relationally
#
# The two-layer graph convolutional network of the paper's experiments,
#
# $$Z = \hat A\,\big(\mathrm{relu}(\hat A (X \circ M_1) W_1) \circ M_2\big)\,W_2, \qquad
# \hat A = D^{-1/2}(A + I)\,D^{-1/2},$$
#
# with softmax cross-entropy over the training nodes, written with `join` and `aggregate` over
# the relations `Node(id)`, `Edge(src, dst)` (the normalized weight $\hat A_{dst,src}$) and the
# one-tuple weight relations `W1`, `W2`. Dropout is data: a mask relation `M(id)` of zeros and
# $1/(1-p)$ drawn every epoch and joined on `id`. Every epoch runs `wb.value_and_grad` (the
# backward pass is the plan the RJP rules derive, run on the same executor) and Adam over the
# weight relations.

# %%
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # for the float64 gradient check; training uses float32

import jax.numpy as jnp
import numpy as np

import workbench as wb
from workbench import references
from workbench.check import against_jax
from workbench.datasets import graphs
from workbench.models import gcn

FIGURES = Path("..") / "figures"

# %% [markdown]
# ## Zachary's karate club, labels on two nodes
#
# 34 members, 78 friendships, two clubs after the split. Features are one-hot node ids (as in
# Kipf and Welling). Only the two leaders are labelled: Mr. Hi (node 0) and the Officer (node
# 33). After 200 epochs the test set is the other 32 members. The reference GCN gets 31 of
# the 32 right (0.968; its mean over 100 seeds is 0.9681).

# %%
karate = gcn.karate()
print(karate)
print(karate.source)

# %%
start = time.perf_counter()
history = gcn.train(karate, seed=0, dtype="float32", progress=True)
print(f"{time.perf_counter() - start:.1f} s for {history.epochs} epochs (the first compiles the step)")
print(history.table(every=50))

# %% [markdown]
# The training curves of ten seeds (initial weights and dropout masks), the mean test accuracy
# beside the reference:

# %%
runs = [history] + [gcn.train(karate, seed=s, dtype="float32") for s in range(1, 10)]
finals = [h.test_acc[-1] for h in runs]
print("test accuracy per seed:", [f"{a:.3f}" for a in finals])
print(f"mean over {len(runs)} seeds: {np.mean(finals):.4f}; reference {references.GCN_REFERENCE}")
epochs = list(range(1, history.epochs + 1))
fig = references.draw(
    [references.Curve("training loss (mean of 10 seeds)", "loss", epochs, np.mean([h.loss for h in runs], axis=0)),
     references.Curve("test accuracy, 32 nodes (mean of 10 seeds)", "accuracy", epochs,
                      np.mean([h.test_acc for h in runs], axis=0), references.GCN_REFERENCE,
                      f"reference {references.GCN_REFERENCE}")],
    "GCN, karate club, labels on nodes 0 and 33", FIGURES / "notebook_gcn_karate.png")

# %% [markdown]
# ## A Cora-sized synthetic graph: for speed, not accuracy
#
# Not Cora: a stochastic block model with Cora's size (2,708 nodes, 5,278 undirected edges,
# 1,433 features, 7 classes) and about its edge homophily (0.81), with Gaussian features around a
# class mean. It is here to time an epoch at Cora's size; its accuracies say nothing about
# Cora (the model fits the 140 training nodes and the test accuracy only shows it learns more
# than chance). Real Cora cannot be downloaded here; see the last section for files you supply.

# %%
cora_like = graphs.synthetic_like("cora", seed=0)
print(cora_like)
print("edge homophily:", round(float(np.mean(cora_like.labels[cora_like.src] == cora_like.labels[cora_like.dst])), 3))

# %%
start = time.perf_counter()
history = gcn.train(cora_like, hidden=16, epochs=30, lr=0.05, seed=0, dtype="float32", progress=True)
print(f"{time.perf_counter() - start:.1f} s in all; median training epoch "
      f"{np.median(history.seconds[1:]) * 1000:.0f} ms (forward, relational backward, Adam)")
print(f"after 30 epochs (a sanity check, not a benchmark of accuracy): train accuracy "
      f"{history.train_acc[-1]:.3f}, test {history.test_acc[-1]:.3f}, chance {1 / cora_like.n_classes:.3f}")

# %% [markdown]
# ## The gradient, against the JAX twin
#
# `gcn.dense_loss` computes the same loss with dense arrays and `segment_sum`. With one fixed
# pair of dropout masks, in float64, the relational gradients with respect to the node
# features and both weight matrices equal `jax.vjp`'s.

# %%
rels = graphs.to_relations(karate, dtype="float64")
W1, W2 = gcn.init_params(karate.n_features, 16, karate.n_classes, seed=0, dtype="float64")
rng = np.random.default_rng(0)
M1 = gcn.dropout_mask(rels.node, 0.5, rng, "M1")
M2 = gcn.dropout_mask(gcn.mask_template(karate.n_nodes, 16, "float64"), 0.5, rng, "M2")
loss = gcn.loss_program(rels, M1, M2, weight_decay=5e-4)
dense_graph = gcn.dense_graph(karate, "float64")
m1, m2 = jnp.asarray(M1.to_tensor()), jnp.asarray(M2.to_tensor())
report = against_jax(loss, lambda x, w1, w2: gcn.dense_loss(x, w1, w2, dense_graph, m1, m2, 5e-4),
                     rels.node, W1, W2, title="GCN loss on the karate club: RJP vs jax.vjp")
print(report)
assert report.ok

# %% [markdown]
# ## The forward plan
#
# Message passing is `Edge ⋈ rows` on `src`, summed at `dst`; the weights join every row
# through a cross join with their one tuple; the masks join on `id`; the loss joins the logits
# with the training labels (only training nodes survive the join) and averages.

# %%
plans = wb.plans(loss, rels.node, W1, W2, argnums=(1, 2))
print(plans.forward.to_text())

# %%
print(f"backward plan: {len(plans.backward.to_text().splitlines())} lines of EXPLAIN, "
      f"outputs {plans.backward.names}")

# %% [markdown]
# ## The compiled step
#
# `wb.jit` runs the key plan once (joins, group ids, the sparse matrix of `Edge`) and the forward
# and backward values as one XLA program; `gcn.train` uses it. Its timings show tracing, key
# plan and XLA compile apart, and the step's result equals the interpreter's.

# %%
interpreted = wb.value_and_grad(loss, argnums=(1, 2))
step = wb.jit(interpreted)
step(rels.node, W1, W2)  # builds and compiles the plan
for name, fn in (("interpreted", interpreted), ("compiled", step)):
    start = time.perf_counter()
    for _ in range(10):
        value, (g1, g2) = fn(rels.node, W1, W2)
        g2.table().values.block_until_ready()
    print(f"{name:<12} {(time.perf_counter() - start) / 10 * 1e3:7.2f} ms a step, loss {float(value.to_tensor()):.6f}")
print(step.timings)
want = interpreted(rels.node, W1, W2)[1][0].to_tensor()
print("compiled W1 gradient equals the interpreter's:", np.allclose(g1.to_tensor(), want, rtol=1e-6, atol=1e-9))

# %% [markdown]
# ## Real Cora or CiteSeer
#
# Drop the LINQS files into `datasets/cora/` (`cora.content`, `cora.cites`, from
# https://linqs-data.soe.ucsc.edu/public/lbc/cora.tgz) and this cell trains on them.

# %%
cora_dir = Path("..") / "datasets" / "cora"
try:
    cora = graphs.load_linqs(cora_dir)
except FileNotFoundError as missing:
    print(missing)
else:
    history = gcn.train(cora, epochs=200, seed=0, dtype="float32", progress=True)
    print(history.table(every=20))
