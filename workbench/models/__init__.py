"""The paper's models as relational programs, each with its dense JAX twin and a training loop:
a two-layer GCN (``gcn``), non-negative matrix factorization (``nnmf``) and knowledge-graph
embedding (``kge``)."""
