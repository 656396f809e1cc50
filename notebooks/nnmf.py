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
# # Non-negative matrix factorization of *Les Misérables*
#
# The matrix: how many chapters each pair of the novel's 77 characters share (Knuth's Stanford
# GraphBase, built by networkx). It is stored as a sparse relation `Entry(i, j) -> x_ij`; here
# every off-diagonal pair is observed, absent pairs as 0. The factors are relations
# `W(i) -> w_i` and `H(j) -> h_j` (vectors of length k), the prediction is the join
# `Entry ⋈_i W ⋈_j H` with kernel `<w_i, h_j>`, evaluated only at the observed entries, and the
# loss is the sum of squared errors there. Its gradient is `dL/dw_i = 2 (D_i - N_i)` with
# `N_i = sum_j x_ij h_j` and `D_i = sum_j <w_i, h_j> h_j`, both a join and a sum.
#
# Two ways to keep the factors non-negative: **projected gradient** (an Adam step on the
# relational gradient, then `max(., 0)`) and **multiplicative updates** (Lee and Seung:
# `w_i <- w_i * N_i / (D_i + eps)`, which never increases the loss).

# %%
import jax

jax.config.update("jax_enable_x64", True)

from pathlib import Path

import numpy as np
from IPython.display import display

import workbench as wb
from workbench import check, references
from workbench.datasets import matrices
from workbench.models import nnmf

FIGURES = Path("..") / "figures"

lesmis = matrices.les_miserables(include_zeros=True)
train, test = matrices.split(lesmis, holdout=0.1, seed=0)
print(lesmis, "|", train.nnz, "training entries,", test.nnz, "held out")
print("source:", lesmis.source)

# %% [markdown]
# ## Training with both methods
# Rank 6, 120 steps each, from the same random start, with a small L2 penalty
# `0.3 (|W|^2 + |H|^2)` in the loss. The loss is the training objective; RMSE is reported on
# the training entries and on the held-out ones.

# %%
RANK, STEPS, L2 = 6, 120, 0.3
runs = {
    "projected": nnmf.train(train, RANK, method="projected", steps=STEPS, lr=0.05, seed=0,
                            test=test, l2=L2, progress=True),
    "multiplicative": nnmf.train(train, RANK, method="multiplicative", steps=STEPS, seed=0,
                                 test=test, l2=L2, progress=True),
}
for run in runs.values():
    print(run)

# %%
steps = list(range(STEPS + 1))
references.draw(
    [references.Curve(f"{name}: training objective", "loss", steps, run.loss, xlabel="step", log=True,
                      extra=[]) for name, run in runs.items()]
    + [references.Curve("RMSE, projected (line) and multiplicative (dots)", "RMSE", steps,
                        runs["projected"].test_rmse, xlabel="step",
                        extra=[(steps[::5], runs["multiplicative"].test_rmse[::5], "multiplicative, held out")])],
    "NNMF, Les Misérables, rank 6, L2 0.3: held-out RMSE in the last panel",
    FIGURES / "notebook_nnmf_methods.png");

# %%
mu = np.asarray(runs["multiplicative"].loss)
assert np.all(np.diff(mu) <= 1e-10 * mu[:-1]), "a multiplicative update increased the loss"
for name, run in runs.items():
    assert run.W.to_tensor().min() >= 0 and run.H.to_tensor().min() >= 0
    assert run.loss[-1] < 0.2 * run.loss[0]
    print(f"{name:>15}: train RMSE {run.rmse[-1]:.3f}, held-out RMSE {run.test_rmse[-1]:.3f}, "
          f"{run.total_seconds:.1f} s")

# %% [markdown]
# Without the penalty the multiplicative updates fit the training entries as well, but factor
# entries that few training entries constrain grow, and the held-out error grows with them:

# %%
plain = nnmf.train(train, RANK, method="multiplicative", steps=STEPS, seed=0, test=test)
print(plain)
print(f"held-out RMSE: lowest {min(plain.test_rmse):.3f} at step {int(np.argmin(plain.test_rmse))}, "
      f"{plain.test_rmse[-1]:.3f} at step {STEPS}")

# %% [markdown]
# ## Against a reference optimizer
#
# The observed entries alone (the 508 co-occurrences, no zeros, no penalty), rank 6, from the
# same start: 1000 projected Adam steps on the relational gradient beside scipy's L-BFGS-B with
# the bounds W, H >= 0 on the dense JAX twin (500 iterations), the reference of
# `python -m workbench check`.

# %%
observed = matrices.les_miserables()
ours = nnmf.train(observed, references.NNMF_RANK, "projected", steps=references.NNMF_STEPS, lr=0.05,
                  dtype="float64", progress=True)
scipy_ref = nnmf.reference(observed, references.NNMF_RANK, max_iter=references.NNMF_SCIPY_ITERATIONS)
print(f"RMSE at the observed entries: workbench {ours.rmse[-1]:.4f} ({ours.total_seconds:.1f} s), "
      f"scipy L-BFGS-B {scipy_ref.rmse:.4f} ({scipy_ref.iterations} iterations, {scipy_ref.seconds:.1f} s)")
references.draw([references.Curve("RMSE at the observed entries", "RMSE", list(range(len(ours.rmse))),
                                  ours.rmse, scipy_ref.rmse, f"scipy L-BFGS-B {scipy_ref.rmse:.4f}",
                                  xlabel="step", log=True)],
                "NNMF, Les Misérables, observed entries, rank 6",
                FIGURES / "notebook_nnmf_reference.png");

# %% [markdown]
# ## Communities: the strongest characters per factor
# Each column of W is a group of characters who appear together; its strongest entries name
# the group (scaled by the column's maximum).

# %%
for name, run in runs.items():
    w = run.W.to_tensor()
    w = w / np.maximum(w.max(axis=0), 1e-12)
    print(f"{name}:")
    for c in np.argsort(-w.sum(axis=0)):
        top = np.argsort(-w[:, c])[:6]
        print(f"  factor {c}: " + ", ".join(f"{lesmis.row_names[i]} ({w[i, c]:.2f})" for i in top))

# %% [markdown]
# ## One gradient against the JAX twin
# The relational gradient (the backward plan that the RJP rules derive) beside `jax.vjp` of the
# dense twin, which gathers `w_i` and `h_j` at the observed entries; at the trained factors of
# the multiplicative run, loss with the L2 penalty, in float64. The multiplicative update's two
# parts give the same gradient: `2 (D - N)`, with `D_i` including `0.3 w_i`.

# %%
Entry = matrices.to_relation(train)
W, H = runs["multiplicative"].W, runs["multiplicative"].H
report = check.against_jax(nnmf.objective(Entry, L2), nnmf.twin(train, L2), W, H, rtol=1e-9,
                           title="NNMF loss: RJP vs jax.vjp")
display(report)
assert report.ok

gW = wb.grad(nnmf.objective(Entry, L2), argnums=0)(W, H)
N, D = nnmf.gradient_parts(Entry, W, H, "W", l2=L2)
gap = np.max(np.abs(gW.to_tensor() - 2 * (D.to_tensor() - N.to_tensor())))
print("max |dL/dW - 2 (D - N)| =", gap)
assert gap < 1e-9 * np.abs(gW.to_tensor()).max() + 1e-12

# %% [markdown]
# ## The forward and backward plans

# %%
forward, backward = wb.plans(nnmf.objective(Entry), W, H, argnums=(0, 1))
print(forward.to_text())

# %%
print(backward.to_text())
