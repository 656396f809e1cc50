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
# # The paper's experiments, at this machine's scale
#
# Tang et al. (ICML 2023) make four claims with experiments:
#
# 1. **Scaling.** Relational autodiff trains a GCN on graphs where DGL and AliGraph run out of
#    memory, and its epoch time falls as machines are added.
# 2. **Width.** Only the relational system trains the 1024-wide GCN, and width pays: accuracy
#    on ogbn-products grows from 72.5% (hidden 64) to 76.6% (hidden 1024).
# 3. **The other models.** NNMF and knowledge-graph embeddings train the same way, at scale.
# 4. **Correctness.** The backward plan the RJP rules derive computes the gradient: RJP = VJP.
#
# `python -m workbench reproduce` runs one experiment per claim and writes, for each, a figure
# (`figures/paper_<name>.png`), the numbers behind it (`.csv`) and a summary that quotes the
# paper's numbers beside ours (`.md`). This notebook first runs the quickest experiment live, at
# a small size, then shows the full-size figures committed with the project.

# %%
import tempfile
from pathlib import Path

import jax
import numpy as np
from IPython.display import Image, Markdown, display

jax.config.update("jax_enable_x64", True)  # float64 gradients for the RJP = VJP check

from workbench import reproduce

print("experiments:", ", ".join(reproduce.FIGURES))

# %% [markdown]
# ## RJP = VJP, live
#
# The random program grid draws relational programs (selections, joins, aggregations with
# kernels over tensors), derives each program's backward plan with the RJP rules, runs it, and
# compares every gradient with `jax.vjp` of the same program written as dense JAX. The figure
# shows, per program, the largest relative error, in float64 and in float32, beside each
# dtype's machine epsilon. `quick=True` draws a few dozen programs; the committed figure below
# draws about three hundred.

# %%
live = Path(tempfile.mkdtemp(prefix="paper_figures_"))
(figure,) = reproduce.reproduce(out=live, quick=True, only=["rjp_vjp"])
display(Image(filename=str(figure.png)))
eps = {"float64": np.finfo(np.float64).eps, "float32": np.finfo(np.float32).eps}
for dtype in eps:
    errors = [r["max_relative_error"] for r in figure.rows if r["dtype"] == dtype]
    print(f"{dtype}: {len(errors)} programs, largest relative error {max(errors):.3g} "
          f"= {max(errors) / eps[dtype]:.1f} machine epsilons")

# %% [markdown]
# Every error is a few machine epsilons: the two gradients differ only by the order in which
# floating-point sums are taken.
#
# ## The full-size figures
#
# Each was produced by `python -m workbench reproduce` on this 2-core, 24 GiB machine (the
# command, sizes and caps are in each summary). They are read from `figures/`.

# %%
figures = Path("..") / "figures"
for name in reproduce.FIGURES:
    md, png = figures / f"paper_{name}.md", figures / f"paper_{name}.png"
    if md.exists():
        display(Markdown(md.read_text()))
        display(Image(filename=str(png)))
    else:
        display(Markdown(f"*`{name}`: not yet run at full size "
                         f"(`python -m workbench reproduce --only {name}`).*"))
