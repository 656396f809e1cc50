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
# # Gradient equivalence: RJP equals VJP
#
# Each program below is written twice: relationally, with `select`, `join` and `aggregate`
# over keyed tensor relations, and as its dense JAX twin. The workbench derives the backward
# pass of the relational program with relation-Jacobian products (RJPs): the backward pass is
# itself a relational plan, run on the same executor. JAX differentiates the twin with
# `jax.vjp`. The tables show, for the output and for every input's gradient, the largest
# absolute and relative difference, in float64.

# %%
import inspect

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np
from IPython.display import Markdown, display

import workbench as wb
from workbench import check, programs

examples = programs.examples(seed=0)
[p.name for p in examples]

# %% [markdown]
# ## The programs, their forward results, and RJP against `jax.vjp`

# %%
for p in examples:
    display(Markdown(f"### {p.name}\n{p.description}\n```python\n{inspect.getsource(p.fn)}```"))
    loss = p.fn(*p.rels)
    twin = float(p.twin(*p.dense))
    print(f"forward: relational {float(loss.to_tensor()):.12f}   JAX twin {twin:.12f}")
    report = check.program_report(p)
    display(report)
    assert report.ok

# %% [markdown]
# ## One gradient next to JAX's
# The GCN's gradient for the first-layer weights, as the relational backward plan computes it
# and as `jax.grad` of the twin computes it.

# %%
gcn = examples[3]
g_rel = wb.grad(gcn.fn, argnums=2)(*gcn.rels).to_tensor()
g_jax = np.asarray(jax.grad(gcn.twin, argnums=2)(*gcn.dense))
print("RJP:\n", np.round(g_rel, 6))
print("jax.grad:\n", np.round(g_jax, 6))
print("max |difference|:", np.max(np.abs(g_rel - g_jax)))
assert np.allclose(g_rel, g_jax, rtol=1e-9, atol=1e-12)

# %% [markdown]
# ## Without a twin: finite differences in one random direction
# `check.finite_differences` compares the directional derivative `<grad f, d>` from the RJP
# with central differences of the relational program itself.

# %%
for p in examples:
    report = check.finite_differences(p.fn, *p.rels, argnums=p.argnums, title=p.name)
    display(report)
    assert report.ok
