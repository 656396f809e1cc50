"""The paper's models as relational programs, each with its dense JAX twin and a training loop:
logistic regression on breast cancer (``logreg``), a two-layer GCN (``gcn``), non-negative matrix
factorization at observed entries (``nnmf``) and of a dense blocked matrix, digits
(``nmf_dense``), and knowledge-graph embedding (``kge``)."""
