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
# # The paper's SQL, differentiated
#
# The paper writes its models as SQL over keyed tensor relations, with kernels as functions in
# the query. `wb.sql(query, **relations)` reads such a query and builds the operator plan that
# `wb.select`, `wb.join` and `wb.aggregate` would build, so the result differentiates like any
# relational program. The backward plan that the RJP rules derive is shown here as SQL too, one
# CTE per node, and that SQL reads back to the same gradients.

# %%
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np

import workbench as wb
from workbench import check, programs

# %% [markdown]
# ## The blocked matrix multiply, as written in the paper
# `A(row, col)` and `B(row, col)` hold matrix blocks; the value column is called `mat` here by
# passing `A=(A, "mat")` (it is also `A.value`).

# %%
matmul = programs.blocked_matmul(np.random.default_rng(0))
A, B = matmul.rels
MATMUL = """SELECT A.row, B.col, SUM(matrix_multiply(A.mat, B.mat))
            FROM A, B WHERE A.col = B.row GROUP BY A.row, B.col"""
C = wb.sql(MATMUL, A=(A, "mat"), B=(B, "mat"))
print(C)
print("equals numpy's A @ B:", np.allclose(wb.to_matrix(C), matmul.dense[0] @ matmul.dense[1]))

# %% [markdown]
# A loss over it, `sum((A @ B)^2)`, is one more query around the first, and `wb.plans` derives
# its backward plan as for any relational program.

# %%
LOSS = f"SELECT SUM(sum_squares(C.value)) FROM ({MATMUL}) AS C"


def loss(A, B):
    return wb.sql(LOSS, A=(A, "mat"), B=(B, "mat"))


forward, backward = wb.plans(loss, A, B, argnums=(0, 1))
print(forward.to_text())
print()
print(backward.to_text())

# %%
wb.plans(loss, A, B, argnums=(0, 1))

# %% [markdown]
# ## The backward plan as SQL
# One statement per gradient, one CTE per node, named as in the listing above (`F` forward,
# `B` backward). Kernels are SQL functions: the forward kernels, and the VJP kernels the RJP
# rules emit (`vjp_left_matrix_multiply`, ...), carried with the text in `script.functions`.

# %%
script = backward.to_sql()
print(script)
print("functions:", list(script.functions))
print("tables:", list(script.tables))

# %% [markdown]
# Read back through `wb.sql`, the script gives the gradients `wb.grad` gives, and JAX's.

# %%
gA, gB = wb.sql(script, A=A, B=B)
want = wb.grad(loss, argnums=(0, 1))(A, B)
print("same as wb.grad:", all(np.allclose(wb.to_matrix(g), wb.to_matrix(w)) for g, w in zip((gA, gB), want)))
print("same as jax.grad:", np.allclose(wb.to_matrix(gA), jax.grad(matmul.twin)(*matmul.dense)))

# %% [markdown]
# ## A two-layer GCN and its loss in one query
# CTEs hold the layers; a registered JAX function is the loss kernel. The weights are one-tuple
# relations, read outside the aggregate: each layer lowers to join, aggregate, then a join with
# the weight whose kernel is `relu(matrix_multiply(...))`, the plan `programs.gcn` builds.

# %%
gcn = programs.gcn(np.random.default_rng(3))
GCN = """
WITH H AS (
  SELECT e.dst AS id, relu(matrix_multiply(SUM(e.w * n.value), W1.value)) AS value
  FROM Edge e, Node n, W1 WHERE e.src = n.id GROUP BY e.dst),
Z AS (
  SELECT e.dst AS id, matrix_multiply(SUM(e.w * h.value), W2.value) AS value
  FROM Edge e JOIN H h ON e.src = h.id CROSS JOIN W2 GROUP BY e.dst)
SELECT AVG(softmax_cross_entropy(Z.value, Y.value)) FROM Z, Y WHERE Z.id = Y.id
"""


def softmax_cross_entropy(z, y):
    return -jnp.sum(y * jax.nn.log_softmax(z))


def gcn_loss(Node, Y, W1, W2):
    return wb.sql(GCN, Node=Node, Y=Y, W1=W1, W2=W2, Edge=(gcn.constants["Edge"], "w"),
                  functions={"softmax_cross_entropy": softmax_cross_entropy})


print(wb.plans(gcn_loss, *gcn.rels, argnums=gcn.argnums)[0].to_text())
check.against_jax(gcn_loss, gcn.twin, *gcn.rels, dense_args=gcn.dense, layouts=gcn.layouts,
                  argnums=gcn.argnums, title="GCN as SQL: RJP vs jax.vjp")

# %% [markdown]
# ## The paper's GCN layer
# `SELECT n1.ID, ReLU(MAT_MUL(AVG(Normalize(n2.vec)))) ...` as in the paper, with the weight
# matrix a one-tuple relation `W` in FROM. A relation has one value, so the query lowers to a
# select (`normalize`, once per node), joins, a mean aggregate, and a join with `W` whose
# kernel is `relu(mat_mul(...))`.

# %%
PAPER_GCN = """SELECT n1.id, ReLU(MAT_MUL(AVG(Normalize(n2.vec)), W.value))
               FROM Node n1, Edge e, Node n2, W
               WHERE n1.id = e.src AND n2.id = e.dst
               GROUP BY n1.id"""


def normalize(v):
    return v / jnp.sqrt(jnp.sum(v ** 2))


layer = wb.sql(PAPER_GCN, Node=(gcn.rels[0], "vec"), Edge=gcn.constants["Edge"], W=gcn.rels[2],
               functions={"normalize": normalize})
print(wb.plans(lambda Node: wb.sql(PAPER_GCN, Node=(Node, "vec"), Edge=gcn.constants["Edge"],
                                   W=gcn.rels[2], functions={"normalize": normalize}),
               gcn.rels[0])[0].to_text())

# %% [markdown]
# ## Errors speak SQL
# A query outside the supported subset fails where it is written, quoting the fragment.

# %%
for query in ["SELECT A.row, B.col, SUM(matrix_multiply(A.value, B.value)) FROM A, B "
              "WHERE A.col < B.row GROUP BY A.row, B.col",
              "SELECT A.row, A.col, gelu(A.value) FROM A"]:
    try:
        wb.sql(query, A=A, B=B)
    except wb.SQLError as e:
        print(e, end="\n\n")
