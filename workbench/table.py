"""The physical form of a relation inside an executor: a Polars frame of int64 key columns and a
JAX array of values whose row i belongs to key row i."""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl


@dataclass(frozen=True)
class Table:
    keys: pl.DataFrame  # one int64 column per key, in schema order; height n
    values: jax.Array  # shape (n, *value_shape)

    @property
    def height(self) -> int:
        return int(self.values.shape[0])  # a frame with no key columns has no height of its own

    @property
    def nbytes(self) -> int:
        return int(self.keys.estimated_size()) + int(self.values.size * self.values.dtype.itemsize)

    def to_frame(self, value: str = "value") -> pl.DataFrame:
        """Keys and a value column (scalar, or a fixed-size Array); JAX -> numpy -> Polars is free."""
        vals = pl.Series(value, np.asarray(self.values))
        if not self.keys.width:
            return pl.DataFrame([vals])
        return self.keys.with_columns(vals)


class ReadOnFirstUse:
    """A Table's ``keys``, ``values`` and ``height`` from ``table()``, which a subclass defines to
    read (a dataset, a partitioned result) the first time it is asked and keep."""

    _table: Table | None = None

    def table(self) -> Table:
        raise NotImplementedError

    @property
    def keys(self) -> pl.DataFrame:
        return self.table().keys

    @property
    def values(self):
        return self.table().values

    @property
    def height(self) -> int:
        return self.table().height

    @property
    def nbytes(self) -> int:
        return self.table().nbytes

    def to_frame(self, value: str = "value") -> pl.DataFrame:
        return self.table().to_frame(value)


def empty_keys(names: tuple[str, ...]) -> pl.DataFrame:
    return pl.DataFrame({k: pl.Series(k, [], dtype=pl.Int64) for k in names})


def make_table(keys: pl.DataFrame, values) -> Table:
    return Table(keys, jnp.asarray(values))


def spare_name(columns, base: str) -> str:
    """A column name that is not in ``columns``: ``base``, ``base_``, ``base__``, ..."""
    taken = set(columns)
    name = base
    while name in taken:
        name += "_"
    return name
