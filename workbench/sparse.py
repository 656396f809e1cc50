"""Edge relations as sparse matrices: Y = A X for a relation E(row, col) -> scalar weight.

``spmm`` computes the relation ``aggregate(join(E, X, on={col: id}, kernel=e * v), by=row)``:
Y(r) = sum_c E(r, c) X(c), one tuple for each r with at least one edge (r, c) whose c is a key of
X (and, given ``rows``, with r a key of ``rows``). The CSR matrix of E, oriented (row, col), is
built once per edge table and kept while the table lives; the backward's A^T G asks for the
orientation (col, row) of the same table, built from the first by a transpose.

The product is ``jax.experimental.sparse.BCSR @ X`` under ``jax.jit``: on this machine's CPU it
runs 1M edges x 64 features in about 20-40 ms, as fast as scipy's CSR product or faster, and
keeps the result in JAX (no copy back from numpy).
"""
from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import scipy.sparse as sp
from jax.experimental import sparse as jsparse

from workbench.table import Table


@dataclass
class CSR:
    """One orientation of an edge table: the scipy matrix; on the JAX side its rows that hold
    entries only (``indptr`` over ``nonempty``), so the product has exactly the output rows; the
    row of each entry in CSR order, and facts the product reuses."""

    matrix: sp.csr_matrix
    data: jax.Array
    indices: jax.Array
    indptr: jax.Array  # over the rows in ``nonempty``
    nonempty: np.ndarray  # the rows with at least one entry, ascending
    rows: np.ndarray  # row of each stored entry, CSR order
    has_entries: np.ndarray  # bool per row: at least one edge
    finite: bool  # every weight finite (so 0 * w == 0 for a missing column)

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape


_CACHE: dict[int, dict] = {}  # id(edge table) -> {(row key, col key, shape, dtype): CSR}


def _entries(edge: Table) -> dict:
    """The cache of ``edge``, dropped when the table is garbage collected."""
    key = id(edge)
    if key not in _CACHE:
        _CACHE[key] = {}
        weakref.finalize(edge, _CACHE.pop, key, None)
    return _CACHE[key]


def _from_matrix(m: sp.csr_matrix) -> CSR:
    m.sort_indices()
    counts = np.diff(m.indptr)
    nonempty = np.flatnonzero(counts)
    indptr = np.concatenate([[0], np.cumsum(counts[nonempty])]).astype(np.int32)
    return CSR(m, jnp.asarray(m.data), jnp.asarray(m.indices.astype(np.int32)), jnp.asarray(indptr),
               nonempty, np.repeat(np.arange(m.shape[0]), counts), counts > 0,
               bool(np.isfinite(m.data).all()))


def csr(edge: Table, row_key: str, col_key: str, shape: tuple[int, int], dtype: str) -> CSR:
    """The CSR matrix M[row, col] = weight of ``edge``, cached per table and orientation."""
    cache = _entries(edge)
    key = (row_key, col_key, shape, dtype)
    if key not in cache:
        other = cache.get((col_key, row_key, shape[::-1], dtype))
        if other is not None:  # the transpose of the orientation already built
            m = other.matrix.T.tocsr()
        else:
            r, c = edge.keys[row_key].to_numpy(), edge.keys[col_key].to_numpy()
            m = sp.csr_matrix((np.asarray(edge.values, dtype=dtype), (r, c)), shape=shape)
        cache[key] = _from_matrix(m)
    return cache[key]


@functools.partial(jax.jit, static_argnames=("shape",))
def _matmul(data, indices, indptr, x, shape):
    return jsparse.BCSR((data, indices, indptr), shape=shape) @ x


@functools.partial(jax.jit, static_argnames=("shape",))
def _matmul_rows(data, indices, indptr, x, rows, shape):
    return (jsparse.BCSR((data, indices, indptr), shape=shape) @ x)[rows]


@jax.jit
def _scatter(n_like, ids, values):
    return n_like.at[ids].set(values)


def _mask(ids: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, bool)
    out[ids[ids < n]] = True
    return out


def _is_range(ids: np.ndarray, n: int) -> bool:
    return len(ids) == n and bool(np.array_equal(ids, np.arange(n)))


def spmm(edge: Table, row_key: str, col_key: str, shape: tuple[int, int], dense: Table,
         out_key: str, rows: Table | None = None, count: bool = False):
    """The relation Y(out_key = r) = sum_c M[r, c] X(c), M = ``csr(edge, row_key, col_key)``, X =
    ``dense`` (one key). Only rows with an edge to a key of X (and a key of ``rows``) appear.
    With ``count``, returns (table, the number of edges matched: the logical join's rows)."""
    dtype = dense.values.dtype.name
    value_shape = dense.values.shape[1:]
    M = csr(edge, row_key, col_key, shape, dtype)
    n_rows, n_cols = shape
    ids = dense.keys[dense.keys.columns[0]].to_numpy()
    flat = dense.values.reshape(dense.height, int(np.prod(value_shape, dtype=np.int64)))
    present = None  # bool per column: a key of X
    if _is_range(ids, n_cols):
        x = flat
    else:
        present = _mask(ids, n_cols)
        keep = ids < n_cols
        zeros = jnp.zeros((n_cols, flat.shape[1]), flat.dtype)
        x = _scatter(zeros, jnp.asarray(ids[keep]), flat if keep.all() else flat[np.flatnonzero(keep)])
    if present is not None and not M.finite:
        # 0 * inf is nan: drop the edges into missing columns instead of multiplying by zero
        hit = present[M.matrix.indices]
        sub = sp.csr_matrix((M.matrix.data[hit], M.matrix.indices[hit], np.concatenate(
            [[0], np.cumsum(np.bincount(M.rows[hit], minlength=n_rows))])), shape=shape)
        M = _from_matrix(sub)
        present = None
    hit = None if present is None else present[M.matrix.indices]  # per stored edge: X has c
    has = M.has_entries if hit is None else np.bincount(M.rows[hit], minlength=n_rows) > 0
    if rows is not None:
        allowed = _mask(rows.keys[rows.keys.columns[0]].to_numpy(), n_rows)
        if not allowed.all():
            has = has & allowed
            hit = allowed[M.rows] if hit is None else hit & allowed[M.rows]
    out = np.flatnonzero(has)  # a subset of M.nonempty
    compressed = (len(M.nonempty), n_cols)
    if not len(out):
        y = jnp.zeros((0, flat.shape[1]), flat.dtype)
    elif len(out) == len(M.nonempty):
        y = _matmul(M.data, M.indices, M.indptr, x, shape=compressed)
    else:
        at = jnp.asarray(np.searchsorted(M.nonempty, out).astype(np.int32))
        y = _matmul_rows(M.data, M.indices, M.indptr, x, at, shape=compressed)
    table = Table(pl.DataFrame({out_key: out.astype(np.int64)}), y.reshape((len(out), *value_shape)))
    if count:
        return table, int(M.matrix.nnz if hit is None else np.count_nonzero(hit))
    return table
