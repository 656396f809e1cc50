"""Dropout masks drawn where their partitions live: a mask's values are a function of its seed
and each tuple's keys alone, so a partition computes its share from the keys it holds and the
result equals the mask drawn whole.

    M(k) = keep(seed, k, j) / (1 - p) per entry j,   keep = [u(seed, k, j) >= p]

u is a counter-based generator: a 32-bit integer hash (``lowbias32``, an avalanche mixer) of the
seed, folded with each key column (low and high words) into a hash per tuple, then per entry j
with the golden-ratio step; its top 24 bits are u * 2^24. It is a mixer, not a cipher: fit for
dropout, not for cryptography.

A ``MaskTable`` is the table of such a relation: read whole (local and compiled executors) it
draws every entry on first use; the resident runner draws each partition on the actor that holds
the partition of ``like`` (``ray_actor``'s "mask" operation), so no mask crosses processes.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl

from workbench.plan import Scan
from workbench.table import ReadOnFirstUse, Table

GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: the step between the entries of one tuple


def _mix(x):
    """lowbias32: a bijective avalanche hash of uint32 values."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


@functools.partial(jax.jit, static_argnames=("width", "threshold"))
def _keep(words, seed_words, width: int, threshold: int):
    """keep[i, j] = u(seed, key_i, j) >= p, u's top 24 bits compared with p * 2^24."""
    row = _mix(seed_words[0] ^ _mix(seed_words[1]))
    for w in words:  # fold each key word into the tuple's hash
        row = _mix(row ^ w)
    entry = _mix(row[:, None] + jnp.arange(width, dtype=jnp.uint32)[None, :] * jnp.uint32(GOLDEN))
    return (entry >> 8) >= jnp.uint32(threshold)


def dropout_values(keys: pl.DataFrame, seed: int, p: float, value_shape: tuple[int, ...],
                   dtype: str) -> jax.Array:
    """The values of a dropout mask at ``keys``: per entry 0 with probability p, else 1/(1-p)."""
    n = keys.height
    width = int(np.prod(value_shape, dtype=np.int64))
    words = []
    for col in keys.columns:
        k = keys[col].to_numpy().astype(np.int64).view(np.uint64)
        words += [(k & 0xFFFFFFFF).astype(np.uint32), (k >> 32).astype(np.uint32)]
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    seed_words = jnp.asarray([seed & 0xFFFFFFFF, seed >> 32], jnp.uint32)
    keep = _keep(tuple(jnp.asarray(w) for w in words), seed_words, width, int(round(p * (1 << 24))))
    return (keep.astype(dtype) * jnp.asarray(1.0 / (1.0 - p), dtype)).reshape((n, *value_shape))


class MaskTable(ReadOnFirstUse):
    """The table of a dropout mask over the keys of the relation ``like`` (a scan): drawn from
    (``seed``, keys) on first read, or per partition where ``like``'s partitions live."""

    def __init__(self, like: Scan, seed: int, p: float, value_shape: tuple[int, ...], dtype: str):
        self.like, self.seed, self.p = like, int(seed), float(p)
        self.value_shape, self.dtype = tuple(value_shape), dtype
        self._table: Table | None = None

    def table(self, progress: bool | None = False) -> Table:
        if self._table is None:
            keys = self.like.table.keys
            self._table = Table(keys, dropout_values(keys, self.seed, self.p, self.value_shape, self.dtype))
        return self._table

    @property
    def spec(self) -> tuple:
        """What a partition needs besides its keys: (seed, p, value shape, dtype)."""
        return self.seed, self.p, self.value_shape, self.dtype

    def __repr__(self) -> str:
        return f"MaskTable(seed={self.seed}, p={self.p}, like={self.like.display_name})"
