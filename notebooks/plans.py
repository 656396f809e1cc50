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
# # Forward and backward plans
#
# A relational program is a plan: a DAG of TableScan, Select, Join and Aggregate nodes. The
# workbench derives its backward pass with one relation-Jacobian product (RJP) rule per
# operator, and the result is again a relational plan, with one more operator, *add*, that sums
# the cotangents of a relation read twice. This notebook shows both plans as text, as pictures,
# side by side, after execution, and step by step.

# %%
import jax

jax.config.update("jax_enable_x64", True)

import numpy as np

import workbench as wb
from workbench import programs

matmul = programs.blocked_matmul(np.random.default_rng(0))
print(matmul.description)
forward, backward = wb.plans(matmul.fn, *matmul.rels, argnums=(0, 1))

# %% [markdown]
# ## Text: an EXPLAIN-like listing
# Each line shows the node's number (`F` forward, `B` backward), operator, parameters (`on`,
# `keys`, `by`, kernel, predicate) and output schema: keys, value shape and dtype. A kernel is
# labelled with what it computes: its function's name (`matmul`), or the expression of a lambda
# (`sum(v ** 2)`), or the derivative the RJP rule made of it (`vjp(sum(v ** 2))`).
# A backward node names the forward operator whose RJP rule emitted it, and the forward
# results it reads appear as leaves marked `[forward result]`.

# %%
print(forward.to_text())
print()
print(backward.to_text())

# %% [markdown]
# ## Pictures
# Shapes and colours tell the operators apart (scan: cylinder, select: rounded box, join:
# hexagon, aggregate: trapezium, add: ellipse); backward nodes have a red border; edges carry the
# schema that flows along them. A picture wider than the notebook is scaled down to its width:
# the buttons above it zoom in and out, go back to the fitted view, or show it at actual size,
# and dragging pans.

# %%
forward

# %%
backward

# %% [markdown]
# ## Forward and backward side by side
# Each backward node names the forward operator whose RJP rule generated it (`RJP of F3 join`).
# Where the backward plan reads a forward intermediate instead of recomputing it, a small dashed
# node named after that result (`F4`) sits beside the reader.

# %%
both = wb.plans(matmul.fn, *matmul.rels, argnums=(0, 1))
both

# %% [markdown]
# ## EXPLAIN ANALYZE
# With `analyze=True` both plans run once, and every node reports its row count, wall time and
# output size. The first run of a kernel includes its JAX compilation; run again to see warm
# times. `view` shows a plan with options, here the statistics, fitted to the notebook's width.

# %%
gcn = programs.gcn(np.random.default_rng(0))
print(gcn.description)
analyzed = wb.plans(gcn.fn, *gcn.rels, argnums=gcn.argnums, analyze=True)
analyzed = wb.plans(gcn.fn, *gcn.rels, argnums=gcn.argnums, analyze=True)  # warm
print(analyzed.forward.to_text(analyze=True))

# %%
analyzed.view(analyze=True)

# %% [markdown]
# ## Step through the derivation
# The explorer replays the backward loop one forward operator at a time, in reverse topological
# order: the slider sets the step, the current forward operator and the nodes its rule emitted
# are outlined in orange, and the picture is fitted to the window so the backward plan stays in
# view. Choose a node to see its schema, its first tuples, and the jaxpr of its kernel and of
# the kernel's VJP.

# %%
explorer = wb.explore(gcn.fn, *gcn.rels, argnums=gcn.argnums)
explorer.step.value = 1
explorer.widget
