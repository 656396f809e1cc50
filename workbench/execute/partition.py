"""Hash partitioning, apart from any cluster: a relation in P partitions is P *pieces*, each a
tuple (key frame, values[, more arrays of the same height]). Tuples with equal values of the hash
columns land in the same partition, in every process; a keyless relation (no hash columns) lives
in partition 0."""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np
import polars as pl

from workbench.plan import Schema
from workbench.storage import shard_hash
from workbench.table import Table, empty_keys

# Every operator runs once per partition and a shuffle moves P x P pieces: past a few hundred
# partitions the pieces are tiny and their overhead is all there is (one actor is ~1 GiB of
# runtime besides). A larger count is a mistake, not a plan.
MAX_PARTITIONS = 256


def check_partitions(partitions, where: str) -> int:
    """``partitions`` as a count: an int from 1 to MAX_PARTITIONS, else a clear error."""
    if isinstance(partitions, bool) or not isinstance(partitions, (int, np.integer)):
        raise TypeError(f"{where}: partitions must be an int (the number of hash partitions), got "
                        f"{partitions!r} ({type(partitions).__name__}); e.g. partitions=4")
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ValueError(f"{where}: partitions must be between 1 and {MAX_PARTITIONS}, got "
                         f"{partitions}; use about one or a few per worker process (e.g. partitions=4 "
                         f"on a 4-core machine)")
    return int(partitions)


def empty_piece(schema: Schema):
    keys = empty_keys(schema.keys) if schema.keys else pl.DataFrame()
    return keys, np.zeros((0, *schema.value_shape), schema.dtype)


def concat_pieces(pieces):
    """One piece from several (each a tuple of a key frame and arrays of equal height)."""
    if len(pieces) == 1:
        return pieces[0]
    keys = pl.concat([p[0] for p in pieces]) if pieces[0][0].width else pl.DataFrame()
    return (keys, *(np.concatenate([p[i] for p in pieces]) for i in range(1, len(pieces[0]))))


def piece_table(piece) -> Table:
    return Table(piece[0], jnp.asarray(piece[1]))


def table_piece(t: Table):
    return t.keys, np.asarray(t.values)


def piece_meta(piece) -> tuple[int, int]:
    """(rows, bytes) of a piece."""
    return int(piece[1].shape[0]), int(piece[0].estimated_size()) + int(piece[1].nbytes)


def destinations(keys: pl.DataFrame, cols: Sequence[str], n: int, parts: int) -> np.ndarray:
    """The partition of each row: a hash of the ``cols`` values, the same in every process (all 0
    for no columns); the hash partitioned datasets are written with (``storage.shard_hash``)."""
    return shard_hash(keys, cols, n, parts)  # parts checked where it enters (runners, split_piece)


def split_piece(piece, cols: Sequence[str], parts: int) -> list:
    """Split a piece into ``parts`` pieces by the hash of ``cols``."""
    parts = check_partitions(parts, "split_piece")
    keys, n = piece[0], int(piece[1].shape[0])
    dest = destinations(keys, cols, n, parts)
    order = np.argsort(dest, kind="stable")
    bounds = np.searchsorted(dest[order], np.arange(parts + 1))
    out = []
    for p in range(parts):  # one slice per partition, never per tuple
        rows = order[bounds[p]:bounds[p + 1]]
        out.append((keys[rows] if keys.width else keys, *(a[rows] for a in piece[1:])))
    return out


