"""Sparse non-negative matrices for matrix factorization: real co-occurrence data that networkx
builds in code, a synthetic low-rank generator for scale, the relation ``Entry(i, j) -> x_ij``
over the observed entries, and a random split of the observed entries for held-out evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from workbench.relation import Relation, default_dtype, from_frame
from workbench.storage import Dataset, write_distinct


@dataclass(frozen=True, eq=False)
class SparseMatrix:
    """The observed entries of an ``n_rows x n_cols`` matrix: ``x[rows[e], cols[e]] = values[e]``.
    Entries that are not listed are unobserved (not zero)."""

    name: str
    shape: tuple[int, int]
    rows: np.ndarray  # int64, one per observed entry
    cols: np.ndarray  # int64
    values: np.ndarray  # float64
    source: str = ""
    licence: str = ""
    row_names: tuple[str, ...] | None = None
    col_names: tuple[str, ...] | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        rows, cols = np.asarray(self.rows), np.asarray(self.cols)
        values = np.asarray(self.values, dtype=np.float64)
        where = f"SparseMatrix '{self.name}'"
        if not (rows.ndim == cols.ndim == values.ndim == 1 and len(rows) == len(cols) == len(values)):
            raise ValueError(f"{where}: rows, cols and values must be 1-D and of one length, got "
                             f"{rows.shape}, {cols.shape} and {values.shape}")
        if not (np.issubdtype(rows.dtype, np.integer) and np.issubdtype(cols.dtype, np.integer)):
            raise ValueError(f"{where}: rows and cols must be integer indices, got {rows.dtype} and "
                             f"{cols.dtype} (cast them with .astype(np.int64))")
        n_rows, n_cols = (int(s) for s in self.shape)
        for what, ix, n in (("rows", rows, n_rows), ("cols", cols, n_cols)):
            if len(ix) and (ix.min() < 0 or ix.max() >= n):
                raise ValueError(f"{where}: {what} take values in [{ix.min()}, {ix.max()}], outside "
                                 f"0..{n - 1} of shape {(n_rows, n_cols)}; pass a larger shape")
        for what, names, n in (("row_names", self.row_names, n_rows), ("col_names", self.col_names, n_cols)):
            if names is not None and len(names) != n:
                raise ValueError(f"{where}: {len(names)} {what} for {n} indices")
        object.__setattr__(self, "shape", (n_rows, n_cols))
        object.__setattr__(self, "rows", rows.astype(np.int64, copy=False))
        object.__setattr__(self, "cols", cols.astype(np.int64, copy=False))
        object.__setattr__(self, "values", values)

    @property
    def nnz(self) -> int:
        return len(self.values)

    @property
    def density(self) -> float:
        return self.nnz / (self.shape[0] * self.shape[1])

    def to_dense(self, fill: float = 0.0) -> np.ndarray:
        """The matrix with ``fill`` at unobserved entries."""
        out = np.full(self.shape, fill, dtype=np.float64)
        out[self.rows, self.cols] = self.values
        return out

    def subset(self, mask: np.ndarray, name: str | None = None) -> "SparseMatrix":
        """The observed entries selected by a boolean mask or an index array."""
        return SparseMatrix(name or self.name, self.shape, self.rows[mask], self.cols[mask],
                            self.values[mask], self.source, self.licence, self.row_names,
                            self.col_names, dict(self.extra))

    def __repr__(self) -> str:
        return (f"SparseMatrix('{self.name}', shape={self.shape}, nnz={self.nnz}, "
                f"density={self.density:.3g})")


def _from_graph(g, name: str, source: str, licence: str, include_zeros: bool) -> SparseMatrix:
    """The symmetric weighted adjacency of an undirected networkx graph: both (u, v) and (v, u)
    per edge; with ``include_zeros`` every off-diagonal pair is observed, absent edges as 0."""
    import networkx as nx

    nodes = list(g.nodes)
    a = nx.to_numpy_array(g, nodelist=nodes, weight="weight", dtype=np.float64)
    n = len(nodes)
    if include_zeros:
        rows, cols = np.nonzero(~np.eye(n, dtype=bool))
    else:
        rows, cols = np.nonzero(a)
    return SparseMatrix(name, (n, n), rows, cols, a[rows, cols], source, licence,
                        tuple(str(v) for v in nodes), tuple(str(v) for v in nodes))


def les_miserables(include_zeros: bool = False) -> SparseMatrix:
    """Co-occurrence of the 77 characters of Victor Hugo's *Les Misérables*: x_ij = number of
    chapters in which characters i and j both appear (254 pairs, 508 symmetric entries)."""
    import networkx as nx

    return _from_graph(
        nx.les_miserables_graph(), "les_miserables",
        "D. E. Knuth, The Stanford GraphBase (1993), jean.dat; built by networkx.les_miserables_graph",
        "Stanford GraphBase data files may be copied freely (Knuth's notice); networkx BSD-3-Clause",
        include_zeros)


def karate_club_weights(include_zeros: bool = False) -> SparseMatrix:
    """Zachary's karate club: x_ij = number of contexts in which members i and j interacted
    (34 members, 78 pairs, 156 symmetric entries)."""
    import networkx as nx

    return _from_graph(
        nx.karate_club_graph(), "karate_club",
        "W. W. Zachary, J. Anthropol. Res. 33 (1977) 452-473; built by networkx.karate_club_graph",
        "published data; networkx code BSD-3-Clause", include_zeros)


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    x = np.sort(x)
    return x[np.concatenate([[True], x[1:] != x[:-1]])] if len(x) else x


def _unique_pairs(rng: np.random.Generator, n_rows: int, n_cols: int, nnz: int) -> np.ndarray:
    """``nnz`` distinct linear indices of an n_rows x n_cols grid, uniformly at random, sorted."""
    total = n_rows * n_cols
    if nnz * 4 >= total:  # dense enough: a permutation of the grid is cheap
        return np.sort(rng.permutation(total)[:nnz])
    # sparse: draw with replacement, keep the distinct ones, top up (a few rounds at most)
    picked = _sorted_unique(rng.integers(0, total, size=int(nnz * 1.1) + 16))
    while len(picked) < nnz:
        more = rng.integers(0, total, size=nnz - len(picked) + 16)
        picked = _sorted_unique(np.concatenate([picked, more]))
    return np.sort(picked[rng.permutation(len(picked))[:nnz]])


def low_rank(n_rows: int, n_cols: int, rank: int, density: float, noise: float = 0.0,
             seed: int = 0) -> SparseMatrix:
    """x = W H^T (+ noise, clipped at 0) at a random ``density`` fraction of the entries, with
    W, H uniform on [0, 1) / sqrt(rank), so E[x_ij] = 1/4. The true factors are kept in
    ``extra['W']`` and ``extra['H']``."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"low_rank: density must be in (0, 1], got {density}")
    if min(n_rows, n_cols, rank) < 1:
        raise ValueError(f"low_rank: n_rows, n_cols and rank must be positive, got "
                         f"{(n_rows, n_cols, rank)}")
    rng = np.random.default_rng(seed)
    scale = rank ** -0.5
    w = rng.uniform(size=(n_rows, rank)) * scale
    h = rng.uniform(size=(n_cols, rank)) * scale
    nnz = max(1, int(round(density * n_rows * n_cols)))
    flat = _unique_pairs(rng, n_rows, n_cols, nnz)
    rows, cols = flat // n_cols, flat % n_cols
    values = np.einsum("ek,ek->e", w[rows], h[cols])  # x_ij = <w_i, h_j> at the observed entries
    if noise:
        values = np.maximum(values + noise * rng.normal(size=nnz), 0.0)
    return SparseMatrix(f"low_rank_{n_rows}x{n_cols}_r{rank}", (n_rows, n_cols), rows, cols, values,
                        f"synthetic: rank {rank}, density {density}, noise {noise}, seed {seed}",
                        "generated", extra={"W": w, "H": h})


def split(matrix: SparseMatrix, holdout: float, seed: int = 0) -> tuple[SparseMatrix, SparseMatrix]:
    """A random partition of the observed entries: (train, held out), ``holdout`` the fraction
    held out."""
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"split of '{matrix.name}': holdout must be a fraction in (0, 1), got "
                         f"{holdout}")
    n_test = int(round(holdout * matrix.nnz))
    if n_test == 0 or n_test == matrix.nnz:
        raise ValueError(f"split of '{matrix.name}': holdout {holdout} of {matrix.nnz} entries "
                         f"leaves an empty part; choose a fraction that keeps both non-empty")
    test = np.zeros(matrix.nnz, dtype=bool)
    test[np.random.default_rng(seed).permutation(matrix.nnz)[:n_test]] = True
    return (matrix.subset(~test, f"{matrix.name}/train"), matrix.subset(test, f"{matrix.name}/test"))


def to_relation(matrix: SparseMatrix, dtype=None, name: str = "Entry") -> Relation:
    """``Entry(i, j) -> x_ij``: one tuple per observed entry, extents the matrix shape, dtype the
    default float (float64 under JAX's x64 mode) unless given."""
    frame = pl.DataFrame({"i": matrix.rows, "j": matrix.cols, "x": matrix.values})
    return from_frame(frame, keys=("i", "j"), value="x", extents=matrix.shape,
                      dtype=dtype or default_dtype(), name=name)


def low_rank_dataset(path, n_rows: int, n_cols: int, rank: int, nnz: int, noise: float = 0.0,
                     partitions: int = 4, seed: int = 0, chunk: int = 1 << 20, dtype: str = "float32",
                     overwrite: bool = False, progress: bool | None = False) -> Dataset:
    """``Entry(i, j) -> x_ij`` of a SYNTHETIC low-rank matrix (as ``low_rank``: x = W H^T at the
    observed entries, + noise clipped at 0) written as a dataset hashed on ``i``, chunk by chunk:
    about ``nnz`` distinct entries (draws that repeat an entry are dropped), memory O(chunk +
    (n_rows + n_cols) * rank). The true factors are not stored; regenerate them from the seed.
    ``progress=True``: a bar of the rows written."""
    if min(n_rows, n_cols, rank, nnz) < 1:
        raise ValueError(f"low_rank_dataset: n_rows, n_cols, rank and nnz must be positive, got "
                         f"{(n_rows, n_cols, rank, nnz)}")
    rng = np.random.default_rng([seed, 0])
    scale = rank ** -0.5
    w = rng.uniform(size=(n_rows, rank)) * scale
    h = rng.uniform(size=(n_cols, rank)) * scale

    def chunks():
        for k, start in enumerate(range(0, nnz, chunk)):
            r = np.random.default_rng([seed, 1, k])
            m = min(chunk, nnz - start)
            rows, cols = r.integers(0, n_rows, size=m), r.integers(0, n_cols, size=m)
            x = np.einsum("ek,ek->e", w[rows], h[cols])
            if noise:
                x = np.maximum(x + noise * r.normal(size=m), 0.0)
            yield {"i": rows, "j": cols}, x
    return write_distinct(chunks(), path, ("i", "j"), partitions, ("i",), (n_rows, n_cols), dtype,
                          "Entry", overwrite, progress, total=nnz)
