"""Stored relations on disk: hash-partitioned Parquet, written chunk by chunk in bounded memory,
read back one shard at a time.

A dataset is a directory:

    meta.json             keys, extents, value shape and dtype, hash columns, partition count, rows
    part-00000.parquet    the tuples whose hash columns hash to partition 0 (``shard_hash``)
    part-00001.parquet    ...

Each shard holds one int64 column per key and a ``value`` column (a float, or a fixed-size array
holding the value flattened in C order). Tuples with equal values of the hash columns are in one
shard, by the same hash as the partitioned runner's (``shard_hash``), so a runner with the
dataset's partition count (or a divisor of it) reads each partition from its own shards and never
reshuffles them. A shard that no tuple hashes to has no file (``meta.json`` gives it 0 rows):
many shards of a small relation cost nothing. ``DatasetWriter`` appends chunks (each split by the
hash and appended to the shards' Parquet writers: memory is one chunk, whatever the data set's
size); ``Dataset`` opens a directory (``shard(p)``: a LazyFrame of one shard); ``StoredTable`` is
what a TableScan of a dataset holds: the keys and values are read on first use, so a plan over it
can be built, traced and shipped without reading the data.

Long writes and reads show a tqdm bar of the rows written or read when asked (``progress=True``;
``workbench.progress``, the same bar the models' training loops show over their epochs).
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import jax.numpy as jnp
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from workbench.errors import RelationError
from workbench.progress import progress_bar
from workbench.table import ReadOnFirstUse, Table, empty_keys

META = "meta.json"
FORMAT = 1
VALUE = "value"
# A writer keeps one Parquet file open per shard that holds tuples (the usual limit of open
# files, ``ulimit -n``, is 1024 or more), and a runner reads whole shards when its partition
# count divides theirs: 1024 is 4 shards for each of 256 partitions (``MAX_PARTITIONS``).
MAX_SHARDS = 1024


def check_shards(partitions, where: str) -> int:
    """A dataset's shard count: an int from 1 to MAX_SHARDS, else an error that says so."""
    if isinstance(partitions, bool) or not isinstance(partitions, (int, np.integer)):
        raise RelationError(f"{where}: partitions (the number of shards) must be an int, got {partitions!r} "
                            f"({type(partitions).__name__}); e.g. partitions=4")
    if not 1 <= partitions <= MAX_SHARDS:
        raise RelationError(f"{where}: partitions (the number of shards) must be between 1 and {MAX_SHARDS}, "
                            f"got {partitions}; write as many shards as the runner has partitions, or a "
                            f"multiple of it (partitions=16 serves runners of 2, 4, 8 or 16 partitions)")
    return int(partitions)


def shard_hash(keys: pl.DataFrame, cols: Sequence[str], n: int, parts: int) -> np.ndarray:
    """The partition of each row: a hash of the ``cols`` values, the same in every process (all 0
    for no columns). Each column is folded in with the splitmix64 finalizer."""
    h = np.zeros(n, np.uint64)
    if not cols:
        return h.astype(np.int64)
    with np.errstate(over="ignore"):
        for c in cols:
            h = (h ^ keys[c].to_numpy().astype(np.uint64)) + np.uint64(0x9E3779B97F4A7C15)
            h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h ^= h >> np.uint64(31)
    return (h % np.uint64(parts)).astype(np.int64)


def shard_name(p: int) -> str:
    return f"part-{p:05d}.parquet"


@dataclass(frozen=True)
class DatasetMeta:
    """What ``meta.json`` says: enough to build a relation's schema without reading a shard."""

    name: str
    keys: tuple[str, ...]
    extents: tuple[int, ...]
    value_shape: tuple[int, ...]
    dtype: str
    hash_by: tuple[str, ...]
    partitions: int
    rows: tuple[int, ...]  # per shard

    def to_json(self) -> dict:
        return {"format": FORMAT, "name": self.name, "keys": list(self.keys), "extents": list(self.extents),
                "value_shape": list(self.value_shape), "dtype": self.dtype, "hash_by": list(self.hash_by),
                "partitions": self.partitions, "rows": list(self.rows)}

    @classmethod
    def from_json(cls, d: dict, where: str) -> "DatasetMeta":
        try:
            if d.get("format") != FORMAT:
                raise RelationError(f"{where}: format {d.get('format')!r}, this version reads format {FORMAT}")
            return cls(str(d["name"]), tuple(d["keys"]), tuple(int(e) for e in d["extents"]),
                       tuple(int(s) for s in d["value_shape"]), str(d["dtype"]), tuple(d["hash_by"]),
                       int(d["partitions"]), tuple(int(r) for r in d["rows"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise RelationError(f"{where}: malformed metadata ({exc!r}); rewrite the dataset with "
                                f"workbench.storage.DatasetWriter") from None


def arrow_schema(keys: Sequence[str], value_shape: Sequence[int], dtype) -> pa.Schema:
    """A shard's columns: one int64 per key, and ``value`` (a float, or a fixed-size list of the
    value flattened in C order)."""
    value_type = pa.float32() if np.dtype(dtype) == np.float32 else pa.float64()
    fields = [pa.field(k, pa.int64(), nullable=False) for k in keys]
    fields.append(pa.field(VALUE, value_type if not tuple(value_shape)
                           else pa.list_(value_type, math.prod(value_shape)), nullable=False))
    return pa.schema(fields)


def _check_names(keys, hash_by, where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    hash_by = (hash_by,) if isinstance(hash_by, str) else tuple(hash_by)
    for k in keys:
        if not isinstance(k, str) or not k or k == VALUE:
            raise RelationError(f"{where}: key names must be non-empty strings other than '{VALUE}', got {k!r}")
    if len(set(keys)) != len(keys):
        raise RelationError(f"{where}: key names {keys} repeat")
    missing = [c for c in hash_by if c not in keys]
    if missing:
        raise RelationError(f"{where}: hash columns {missing} are not keys {keys}; hash on keys, "
                            f"e.g. hash_by=({keys[0]!r},)" if keys else f"{where}: a keyless relation "
                            f"has no hash columns, got {hash_by}")
    return keys, hash_by


class DatasetWriter:
    """Writes a stored relation as ``partitions`` Parquet shards hashed on ``hash_by`` (default:
    every key), one chunk at a time: ``write(keys, values)`` with a frame (or dict) of integer key
    columns and an array of values, row i for key row i. ``close()`` (or leaving the ``with``
    block) writes ``meta.json`` and returns the ``Dataset``; extents default to max(key) + 1.
    Keys must be unique across chunks: ``close(check_unique=True)`` checks each shard (equal keys
    always share a shard), reading one shard's keys at a time; ``check_unique=False`` when the
    caller knows them unique (or stores a multiset for its own later pass). A shard no tuple
    hashes to is not written. ``progress=True`` shows a bar of the rows written (of ``total``,
    when the caller knows it)."""

    def __init__(self, path, keys: Sequence[str], value_shape: Sequence[int] = (), dtype="float32",
                 partitions: int = 4, hash_by: Sequence[str] | None = None,
                 extents: Sequence[int] | None = None, name: str | None = None, overwrite: bool = False,
                 check_unique: bool = True, progress: bool | None = False, total: int | None = None):
        self.path = Path(path)
        self.check_unique = check_unique
        where = f"DatasetWriter '{self.path}'"
        self.keys, self.hash_by = _check_names(keys, keys if hash_by is None else hash_by, where)
        partitions = check_shards(partitions, where)
        if not self.keys and partitions != 1:
            partitions = 1  # a keyless relation holds one tuple: one shard
        self.partitions = int(partitions)
        self.value_shape = tuple(int(s) for s in value_shape)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise RelationError(f"{where}: dtype must be float32 or float64, got {self.dtype}")
        self.extents = None if extents is None else tuple(int(e) for e in extents)
        if self.extents is not None and len(self.extents) != len(self.keys):
            raise RelationError(f"{where}: extents {self.extents} must give one per key {self.keys}")
        self.name = name or self.path.name
        if self.path.exists():
            if not overwrite:
                raise RelationError(f"{where}: the directory exists; pass overwrite=True to replace it")
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        self._width = math.prod(self.value_shape)
        self._schema = arrow_schema(self.keys, self.value_shape, self.dtype)
        self._writers: list = [None] * self.partitions
        self._rows = [0] * self.partitions
        self._max = [-1] * len(self.keys)
        self._closed = False
        self._bar = progress_bar(total, f"writing {self.name}", progress, unit="rows")

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close(self.check_unique)
        else:  # a failed write leaves no half-written dataset that looks whole
            self._abort()

    def write(self, keys, values) -> None:
        """Append a chunk: ``keys`` a Polars frame or dict of int columns (one per key), ``values``
        an array of shape (rows, *value_shape)."""
        where = f"DatasetWriter '{self.path}'"
        frame = keys if isinstance(keys, pl.DataFrame) else pl.DataFrame(keys) if self.keys else pl.DataFrame()
        values = np.asarray(values)
        n = int(values.shape[0]) if values.ndim else 1
        if values.shape[1:] != self.value_shape:
            raise RelationError(f"{where}: values of shape {values.shape[1:]} per tuple, the dataset holds "
                                f"{self.value_shape}")
        cols = {}
        for i, k in enumerate(self.keys):
            if k not in frame.columns:
                raise RelationError(f"{where}: key column '{k}' missing from the chunk; it has {frame.columns}")
            c = frame[k]
            if not c.dtype.is_integer():
                raise RelationError(f"{where}: key column '{k}' has dtype {c.dtype}; keys must be integers")
            if c.null_count():
                raise RelationError(f"{where}: key column '{k}' has {c.null_count()} nulls")
            if len(c) and c.min() < 0:
                raise RelationError(f"{where}: key column '{k}' has negative keys (min {c.min()})")
            cols[k] = c.cast(pl.Int64)
            if len(c):
                self._max[i] = max(self._max[i], int(c.max()))
        if self.keys and frame.height != n:
            raise RelationError(f"{where}: {frame.height} key rows for {n} values")
        if not n:
            return
        if not np.isfinite(values).all():
            raise RelationError(f"{where}: the chunk holds NaN or infinite values")
        kf = pl.DataFrame(cols) if self.keys else pl.DataFrame()
        flat = values.astype(self.dtype, copy=False).reshape(n, self._width) if self.value_shape \
            else values.astype(self.dtype, copy=False).reshape(n)
        dest = shard_hash(kf, self.hash_by, n, self.partitions)
        order = np.argsort(dest, kind="stable")
        bounds = np.searchsorted(dest[order], np.arange(self.partitions + 1))
        key_arrays = [kf[k].to_numpy() for k in self.keys]
        for p in np.flatnonzero(np.diff(bounds)):  # only the shards this chunk's tuples hash to
            rows = order[bounds[p]:bounds[p + 1]]
            arrays = [pa.array(a[rows]) for a in key_arrays]
            vals = flat[rows]
            if self.value_shape:
                arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(vals.reshape(-1)), self._width))
            else:
                arrays.append(pa.array(vals))
            if self._writers[p] is None:
                self._writers[p] = pq.ParquetWriter(self.path / shard_name(p), self._schema)
            self._writers[p].write_table(pa.Table.from_arrays(arrays, schema=self._schema))
            self._rows[p] += len(rows)
        self._bar.update(n)

    def close(self, check_unique: bool = True) -> "Dataset":
        if self._closed:
            return Dataset(self.path)
        for w in self._writers:
            if w is not None:  # an empty shard has no file
                w.close()
        self._closed = True
        self._bar.close()
        if self.extents is None:
            extents = tuple(m + 1 for m in self._max)
        else:
            extents = self.extents
            for k, m, e in zip(self.keys, self._max, extents):
                if m >= e:
                    self._abort()
                    raise RelationError(f"DatasetWriter '{self.path}': key '{k}' reaches {m}, outside "
                                        f"the given extent {e}")
        if not self.keys and sum(self._rows) != 1:
            self._abort()
            raise RelationError(f"DatasetWriter '{self.path}': a relation without keys holds exactly "
                                f"one tuple, {sum(self._rows)} were written")
        meta = DatasetMeta(self.name, self.keys, extents, self.value_shape, self.dtype.name,
                           self.hash_by, self.partitions, tuple(self._rows))
        (self.path / META).write_text(json.dumps(meta.to_json(), indent=1))
        ds = Dataset(self.path)
        if check_unique and self.keys:
            for p in ds.stored_shards():
                dup = ds.shard(p).select(self.keys).filter(pl.struct(self.keys).is_duplicated()).head(1).collect()
                if dup.height:
                    self._abort()
                    raise RelationError(
                        f"dataset '{self.path}': duplicate keys {self.keys} = {dup.row(0)} (shard {p}); keys "
                        f"must be unique. Combine duplicates before writing (e.g. group_by and sum).")
        return ds

    def _abort(self) -> None:
        for w in self._writers:
            if w is not None:
                try:
                    w.close()
                except Exception:  # noqa: BLE001 - the directory is removed anyway
                    pass
        self._closed = True
        self._bar.close()
        shutil.rmtree(self.path, ignore_errors=True)


class Dataset:
    """An open dataset directory (written by ``DatasetWriter``)."""

    def __init__(self, path):
        self.path = Path(path)
        meta = self.path / META
        if not meta.is_file():
            raise RelationError(f"dataset '{self.path}': no {META} there; write datasets with "
                                f"workbench.storage.DatasetWriter (or a generator's to_dataset)")
        where = f"dataset '{self.path}'"
        self.meta = DatasetMeta.from_json(json.loads(meta.read_text()), where)
        if len(self.meta.rows) != self.meta.partitions:
            raise RelationError(f"{where}: {META} gives rows of {len(self.meta.rows)} shards for "
                                f"{self.meta.partitions} shards; the dataset is damaged, write it again")
        for p in self.stored_shards():
            if not self.shard_path(p).is_file():
                raise RelationError(f"{where}: shard {shard_name(p)} is missing; the dataset is "
                                    f"incomplete, write it again")

    @property
    def rows(self) -> int:
        return sum(self.meta.rows)

    def shard_path(self, p: int) -> Path:
        return self.path / shard_name(p)

    def stored_shards(self) -> list[int]:
        """The shards that hold tuples (an empty shard has no file)."""
        return [p for p, r in enumerate(self.meta.rows) if r]

    def _empty(self) -> pl.DataFrame:
        m = self.meta
        return pl.from_arrow(arrow_schema(m.keys, m.value_shape, m.dtype).empty_table())

    def shard(self, p: int) -> pl.LazyFrame:
        """Shard ``p`` as a LazyFrame: the key columns and ``value`` (no rows if it is empty)."""
        return pl.scan_parquet(self.shard_path(p)) if self.meta.rows[p] else self._empty().lazy()

    def shards(self) -> list[pl.LazyFrame]:
        """One LazyFrame per shard (``shard``), in order."""
        return [self.shard(p) for p in range(self.meta.partitions)]

    def scan(self) -> pl.LazyFrame:
        """The whole relation as one LazyFrame (the shards in order)."""
        stored = self.stored_shards()
        return pl.scan_parquet([self.shard_path(p) for p in stored]) if stored else self._empty().lazy()

    def _to_table(self, frame: pl.DataFrame, dtype: str) -> Table:
        m = self.meta
        keys = frame.select(m.keys) if m.keys else pl.DataFrame()
        if not frame.height:
            return Table(empty_keys(m.keys) if m.keys else keys, jnp.zeros((0, *m.value_shape), dtype))
        col = frame[VALUE]
        if m.value_shape:
            flat = col.explode().to_numpy() if isinstance(col.dtype, pl.List) else col.to_numpy()
            values = np.asarray(flat).reshape((frame.height, *m.value_shape))
        else:
            values = col.to_numpy()
        return Table(keys, jnp.asarray(values, dtype=dtype))

    def read(self, shards: Iterable[int] | None = None, dtype: str | None = None,
             progress: bool | None = False) -> Table:
        """The tuples of ``shards`` (default: all) as one Table, read shard by shard (empty ones
        not at all); ``progress=True``: a bar of the rows read."""
        m = self.meta
        shards = [s for s in (range(m.partitions) if shards is None else shards) if m.rows[s]]
        frames = []
        with progress_bar(sum(m.rows[s] for s in shards), f"reading {m.name}", progress, unit="rows") as bar:
            for s in shards:
                frames.append(pl.read_parquet(self.shard_path(s)))
                bar.update(frames[-1].height, shard=s)
        return self._to_table(pl.concat(frames) if frames else self._empty(), dtype or m.dtype)

    def read_partition(self, p: int, parts: int, cols: Sequence[str], dtype: str | None = None) -> Table:
        """Partition ``p`` of ``parts`` hashed on ``cols``: its own shards when the dataset is hashed
        on ``cols`` into a multiple of ``parts`` shards (shard s holds hash % parts == s % parts);
        otherwise every shard that holds tuples is read in turn and filtered, one at a time."""
        m = self.meta
        where = f"dataset '{self.path}': read_partition"
        if isinstance(parts, bool) or not isinstance(parts, (int, np.integer)) or parts < 1:
            raise RelationError(f"{where}: parts must be a positive int, got {parts!r}")
        if not 0 <= p < parts:
            raise RelationError(f"{where}: partition {p!r} is not one of 0..{parts - 1}")
        dtype = dtype or m.dtype
        if tuple(cols) == m.hash_by and m.partitions % parts == 0:
            return self.read(range(p, m.partitions, parts), dtype)
        pieces = []
        for s in self.stored_shards():
            frame = pl.read_parquet(self.shard_path(s))
            keep = shard_hash(frame, cols, frame.height, parts) == p
            pieces.append(frame.filter(pl.Series(keep)))
        return self._to_table(pl.concat(pieces) if pieces else self._empty(), dtype)

    def __repr__(self) -> str:
        m = self.meta
        return (f"Dataset('{self.path}': {m.name}{m.keys} -> {m.value_shape or 'scalar'} {m.dtype}, "
                f"{self.rows} tuples in {m.partitions} shards hashed on {m.hash_by})")


class StoredTable(ReadOnFirstUse):
    """What the TableScan of a dataset holds: the dataset, and its keys and values once read
    (``keys``, ``values``, ``height`` read the whole dataset on first use, as a Table would hold
    it; a partitioned runner reads ``dataset`` shard by shard instead and never touches them)."""

    def __init__(self, dataset: Dataset, dtype: str):
        self.dataset = dataset
        self.dtype = dtype
        self._table: Table | None = None

    def table(self, progress: bool | None = False) -> Table:
        if self._table is None:
            self._table = self.dataset.read(dtype=self.dtype, progress=progress)
        return self._table

    @property
    def height(self) -> int:
        return self.table().height if self._table is not None else self.dataset.rows

    def __repr__(self) -> str:
        return f"StoredTable({self.dataset!r})"


def as_table(t, progress: bool | None = False) -> Table:
    """A Table from a Table or a StoredTable (reading it; ``progress``: a bar of the rows read)."""
    return t.table(progress) if isinstance(t, StoredTable) else t


def write_relation(table: Table, path, keys: Sequence[str], partitions: int = 4,
                   hash_by: Sequence[str] | None = None, extents=None, name: str | None = None,
                   chunk_rows: int = 1 << 20, overwrite: bool = False, progress: bool | None = False) -> Dataset:
    """A Table (keys and values in memory) written as a dataset, ``chunk_rows`` at a time."""
    values = np.asarray(table.values)
    with DatasetWriter(path, keys, values.shape[1:], values.dtype, partitions, hash_by, extents, name,
                       overwrite, progress=progress, total=len(values) if keys else 1) as w:
        for start in range(0, max(len(values), 1) if keys else 1, chunk_rows):
            stop = start + chunk_rows
            w.write(table.keys[start:stop] if keys else {}, values[start:stop] if keys else values)
    return Dataset(path)


def import_file(source, path, keys: Sequence[str], value: str | None = None, partitions: int = 4,
                hash_by: Sequence[str] | None = None, extents=None, columns: Sequence[str] | None = None,
                dtype="float32", name: str | None = None, chunk_rows: int = 1 << 20,
                overwrite: bool = False, separator: str | None = None, has_header: bool | None = None,
                check_unique: bool = True, progress: bool | None = False) -> Dataset:
    """A CSV (or TSV) or Parquet file of integer key columns (and an optional numeric ``value``
    column; without one every tuple's value is 1.0) written as a dataset, streamed
    ``chunk_rows`` rows at a time. ``columns`` renames the file's columns in order (for a file
    without a header, or other names), e.g. ``columns=("src", "dst")``. ``progress=True``: a bar
    of the rows written (of the file's rows, for Parquet, whose footer counts them)."""
    import pyarrow.csv as pacsv
    import pyarrow.dataset as pads

    source = Path(source)
    where = f"import_file '{source}'"
    if not source.is_file():
        raise FileNotFoundError(f"{where}: no such file")
    suffix = source.suffix.lower()
    if suffix in (".parquet", ".pq"):
        data = pads.dataset(source, format="parquet")
    else:
        sep = separator or ("\t" if suffix in (".tsv", ".tab", ".txt") else ",")
        if has_header is None:  # a first line of numbers is data, not a header
            with open(source) as f:
                first = f.readline().strip().split(sep)
            has_header = not all(x.strip().lstrip("-").isdigit() for x in first if x.strip())
        read = pacsv.ReadOptions(autogenerate_column_names=not has_header and columns is None,
                                 column_names=list(columns) if (columns and not has_header) else None,
                                 block_size=1 << 24)
        data = pads.dataset(source, format=pads.CsvFileFormat(
            parse_options=pacsv.ParseOptions(delimiter=sep), read_options=read))
    names = list(data.schema.names)
    if columns is not None and has_header:
        if len(columns) > len(names):
            raise RelationError(f"{where}: {len(columns)} column names for a file of {len(names)} columns {names}")
        rename = dict(zip(names, columns))
    else:
        rename = {}
    if columns is None and not has_header and suffix not in (".parquet", ".pq"):
        raise RelationError(f"{where}: the file has no header line; name its columns, e.g. "
                            f"columns=({', '.join(repr(k) for k in keys)})")
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    wanted = [*keys] + ([value] if value else [])
    renamed = [rename.get(n, n) for n in names]
    missing = [c for c in wanted if c not in renamed]
    if missing:
        raise RelationError(f"{where}: column(s) {missing} not in the file's columns {renamed}; pass "
                            f"columns=(...) to name them")
    total = data.count_rows() if suffix in (".parquet", ".pq") else None  # a CSV is counted by reading it
    with DatasetWriter(path, keys, (), dtype, partitions, hash_by, extents, name, overwrite,
                       check_unique, progress, total) as w:
        for batch in data.to_batches(batch_size=chunk_rows):
            frame = pl.from_arrow(batch)
            if rename:
                frame = frame.rename({k: v for k, v in rename.items() if k in frame.columns})
            vals = frame[value].cast(pl.Float64).to_numpy() if value else np.ones(frame.height)
            if value and frame[value].null_count():
                raise RelationError(f"{where}: value column '{value}' has nulls")
            w.write(frame.select(keys), vals)
    return Dataset(path)


def write_distinct(chunks, path, keys: Sequence[str], partitions: int = 4,
                   hash_by: Sequence[str] | None = None, extents=None, dtype="float32",
                   name: str | None = None, overwrite: bool = False, progress: bool | None = False,
                   total: int | None = None) -> Dataset:
    """A dataset of scalar tuples from ``chunks`` of (key columns dict, values) that may repeat
    keys: the first tuple of each key is kept. Pass 1 hashes the raw chunks into shards (a
    repeated key always lands in one shard), pass 2 keeps each shard's first tuple per key, one
    shard in memory at a time. ``progress=True``: a bar of the rows of each pass (``total``: the
    rows the chunks hold, when the caller knows)."""
    path = Path(path)
    raw = path.with_name(path.name + ".raw")
    check_shards(partitions, f"write_distinct '{path}'")
    with DatasetWriter(raw, keys, (), dtype, partitions, hash_by, extents, f"{name or path.name} (raw)",
                       overwrite=True, check_unique=False, progress=progress, total=total) as w:
        for k, v in chunks:
            w.write(k, v)
    ds = Dataset(raw)
    try:
        with DatasetWriter(path, keys, (), dtype, partitions, hash_by, extents or ds.meta.extents, name,
                           overwrite, progress=progress) as w:
            for s in ds.stored_shards():  # chunks were written in order: maintain_order keeps the first
                shard = ds.shard(s).unique(subset=list(ds.meta.keys), keep="first", maintain_order=True).collect()
                w.write(shard.select(ds.meta.keys), shard[VALUE].to_numpy())
    finally:
        shutil.rmtree(raw, ignore_errors=True)
    return Dataset(path)
