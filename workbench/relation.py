"""Relations: integer keys -> one tensor value each, and their constructors and exports.

A ``Relation`` is a handle on a plan node. Relations built from data are TableScans; the
operators return relations whose node is a new Select, Join or Aggregate over their inputs.
Reading a relation (``to_frame``, ``to_tensor``, ``frame``) runs its plan once, on the default
executor (``set_default_executor``; ``workbench.api`` sets the local one), and keeps the result.
"""
from __future__ import annotations

import contextlib
import contextvars

import math
import os
import sys
import warnings
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl

from workbench.errors import RelationError
from workbench.plan import Node, Scan, Schema, toposort
from workbench.storage import Dataset, StoredTable
from workbench.table import Table, make_table, spare_name

VALUE = "value"  # the value column of to_frame(); no key may take this name

# The executor that runs a relation's plan when it is read (an object with
# ``run(outputs) -> list[Table]``); workbench.api sets the local executor.
_default_executor = None


# The leaves of the program being traced (wb.vjp, wb.grad, wb.jit, ...), or None outside a trace.
_TRACING: contextvars.ContextVar = contextvars.ContextVar("tracing", default=None)


@contextlib.contextmanager
def tracing(leaves) -> Iterator[None]:
    """Inside the block, reading the data of a relation that depends on ``leaves`` is refused:
    it would bake this call's values into the program (and cut the gradient there)."""
    token = _TRACING.set(frozenset(leaves))
    try:
        yield
    finally:
        _TRACING.reset(token)


def set_default_executor(executor) -> None:
    """Run plans of relations that are read (``to_tensor``, ``to_frame``) on ``executor``."""
    global _default_executor
    _default_executor = executor


def default_dtype() -> str:
    """float64 when JAX's x64 mode is on, else float32."""
    return "float64" if jax.config.read("jax_enable_x64") else "float32"


def resolve_dtype(given, source_dtype, what: str, weak: bool = False) -> str:
    """The float dtype a relation built from ``what`` gets.

    An explicit ``given`` dtype is honoured or refused, never changed. Without one, float32 and
    float64 sources keep their dtype; integers, booleans, float16 and ``weak`` sources (Python
    numbers and lists, which have no dtype of their own) get the default float. The one
    conversion: float64 data while JAX's x64 mode is off becomes float32, as JAX itself would
    do, with a UserWarning saying how to keep float64."""
    x64 = jax.config.read("jax_enable_x64")
    if given is not None:
        try:
            dtype = np.dtype(given)
        except TypeError:
            raise RelationError(f"{what}: dtype must be float32 or float64, got {given!r}") from None
        if dtype not in (np.float32, np.float64):
            raise RelationError(f"{what}: dtype must be float32 or float64, got {dtype}")
        if dtype == np.float64 and not x64:
            raise RelationError(
                f"{what}: dtype='float64' was asked for, but JAX's x64 mode is off, so JAX cannot "
                f"hold float64 values. Either turn it on with "
                f"`jax.config.update('jax_enable_x64', True)` before building relations, or pass "
                f"dtype='float32'.")
        return str(dtype)
    source = np.dtype(source_dtype)
    if weak or not np.issubdtype(source, np.floating) or source.itemsize < 4:
        return default_dtype()  # integers, booleans, float16 and Python numbers
    if source.itemsize > 8:  # long double
        source = np.dtype(np.float64)
    if source == np.float64 and not x64:
        _warn_user(f"{what}: float64 values are stored as float32 because JAX's x64 mode is off. "
                   f"To keep float64, run `jax.config.update('jax_enable_x64', True)` before "
                   f"building relations; to silence this warning, pass dtype='float32'.")
        return "float32"
    return str(source)


def _warn_user(message: str) -> None:
    """A UserWarning attributed to the first caller outside the workbench package."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


def _extent_tuple(given, arg: str, keys: Sequence[str], where: str, fix: str) -> tuple[int, ...]:
    """``given`` (a sequence of extents, or one int) as a tuple of non-negative Python ints."""
    if isinstance(given, (int, np.integer)) and not isinstance(given, (bool, np.bool_)):
        given = (given,)
    try:
        items = tuple(given) if not isinstance(given, (str, bytes)) else None
    except TypeError:
        items = None
    if items is None:
        raise RelationError(f"{where}: {arg} must be a sequence of non-negative integers, one per "
                            f"key {tuple(keys)}, got {given!r}; {fix}.")
    out = []
    for i, e in enumerate(items):
        ok = (isinstance(e, (int, float, np.integer, np.floating))
              and not isinstance(e, (bool, np.bool_)) and math.isfinite(e)
              and float(e).is_integer() and e >= 0)
        if not ok:
            which = f"key '{keys[i]}'" if i < len(keys) else f"position {i}"
            raise RelationError(
                f"{where}: {arg}={items} gives {e!r} for {which}; extents must be non-negative "
                f"integers (a key of extent n takes the values 0..n-1); {fix}.")
        out.append(int(e))
    return tuple(out)


def _memory_bytes() -> int:
    """This machine's physical memory in bytes (64 GiB when the OS does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return 64 << 30


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:,.1f} GiB"


INT64_MAX = 2 ** 63 - 1


class Relation:
    """A relation ``R(k1, ..., kn) -> value``: unique int64 keys, one tensor value per tuple."""

    __slots__ = ("node", "_table")

    def __init__(self, node: Node):
        self.node = node
        self._table: Table | None = None

    @classmethod
    def computed(cls, node: Node, table: Table) -> "Relation":
        """A relation over ``node`` whose result ``table`` is already known (an executor's output)."""
        rel = cls(node)
        rel._table = table
        return rel

    @classmethod
    def stored(cls, keys: pl.DataFrame, values, extents: Sequence[int], name: str = "R") -> "Relation":
        """A stored relation (a TableScan) from an int64 key frame and a values array whose row i
        belongs to key row i: no checks beyond the shapes; use from_frame for user data."""
        values = jnp.asarray(values)
        names = tuple(keys.columns)
        if values.shape[0] != (keys.height if names else 1):
            raise RelationError(f"relation '{name}': {values.shape[0]} values for "
                                f"{keys.height if names else 1} key rows")
        schema = Schema(names, tuple(int(e) for e in extents), tuple(values.shape[1:]), str(values.dtype))
        return cls(Scan(schema, Table(keys, values), name=name))

    # ---- schema -------------------------------------------------------------------------
    @property
    def schema(self) -> Schema:
        return self.node.schema

    @property
    def keys(self) -> tuple[str, ...]:
        return self.node.schema.keys

    @property
    def extents(self) -> tuple[int, ...]:
        return self.node.schema.extents

    @property
    def value_shape(self) -> tuple[int, ...]:
        return self.node.schema.value_shape

    @property
    def dtype(self) -> str:
        return self.node.schema.dtype

    @property
    def name(self) -> str:
        return self.node.display_name

    # ---- data ---------------------------------------------------------------------------
    def table(self) -> Table:
        """Run the relation's plan on the default executor (once) and return its table."""
        leaves = _TRACING.get()
        if leaves and self._table is None and any(n in leaves for n in toposort([self.node])) \
                or leaves and self.node in leaves:
            raise RelationError(
                f"relation '{self.name}' is read (to_tensor, to_frame, table, values_like, ...) "
                f"inside the program being traced, and it depends on the program's arguments: its "
                f"values would be fixed at this call and the gradient cut there. Build the "
                f"program from wb.select, wb.join and wb.aggregate only, and read results after "
                f"the call.")
        if self._table is None:
            if isinstance(self.node, Scan):
                self._table = self.node.table
            elif _default_executor is None:
                raise RuntimeError("no executor to run relation plans on; import workbench (its api "
                                   "module sets the local executor as the default)")
            else:
                self._table = _default_executor.run([self.node])[0]
        return self._table

    @property
    def frame(self) -> pl.LazyFrame:
        """A Polars LazyFrame: int64 key columns and a value column (scalar or Array)."""
        return self.to_frame().lazy()

    def to_frame(self) -> pl.DataFrame:
        """Key columns and a ``value`` column; row order is unspecified."""
        return self.table().to_frame(VALUE)

    def to_tensor(self, shape: Sequence[int] | None = None) -> np.ndarray:
        """Dense array of shape ``extents + value_shape`` (or ``shape + value_shape``), zeros for
        absent tuples."""
        where = f"to_tensor of relation '{self.name}'"
        if shape is None:
            extents = tuple(int(e) for e in self.extents)
        else:
            extents = _extent_tuple(shape, "shape", self.keys, where,
                                    "leave shape out to use the relation's extents "
                                    f"{tuple(self.extents)}")
            if len(extents) != len(self.keys):
                raise RelationError(
                    f"to_tensor of relation '{self.name}' with keys {self.keys}: shape {extents} "
                    f"must give one extent per key ({len(self.keys)}).")
        dense = extents + tuple(self.value_shape)
        itemsize = np.dtype(self.dtype).itemsize
        size = math.prod(dense) * itemsize
        memory = _memory_bytes()
        too_big = (f"{where}: a dense array of shape {dense} (extents {extents} of keys "
                   f"{self.keys}, value shape {tuple(self.value_shape)}, {self.dtype}) takes "
                   f"{_gib(size)}")
        advice = ("A relation whose keys are sparse ids is read with to_frame() (one row per tuple); "
                  "to_tensor(shape=...) with smaller extents gives a dense corner of it.")
        if size > memory:
            raise RelationError(f"{too_big}, more than this machine's {_gib(memory)} of memory. "
                                f"{advice}")
        t = self.table()
        try:
            out = np.zeros(dense, dtype=self.dtype)
        except (MemoryError, ValueError) as e:
            raise RelationError(f"{too_big}, which could not be allocated ({e}). {advice}") from None
        if not self.keys:
            if t.height:
                out[...] = np.asarray(t.values[0])
            return out
        idx = tuple(t.keys[k].to_numpy() for k in self.keys)
        for k, ix, ext in zip(self.keys, idx, extents):
            if len(ix) and (ix.min() < 0 or ix.max() >= ext):
                raise RelationError(
                    f"to_tensor of relation '{self.name}': key '{k}' takes values up to {ix.max()}, "
                    f"outside the extent {ext}; pass a larger shape.")
        out[idx] = np.asarray(t.values)
        return out

    def with_values(self, values, name: str | None = None) -> "Relation":
        """A stored relation with this one's keys and extents and other values: row i of
        ``values`` for the i-th tuple of ``self.table()`` (e.g. a parameter after an update)."""
        t = self.table()
        values = jnp.asarray(values, self.dtype)
        if values.shape != t.values.shape:
            raise RelationError(f"with_values of relation '{self.name}': values of shape "
                                f"{values.shape} for {t.height} tuples of shape {self.value_shape}; "
                                f"expected {tuple(t.values.shape)}")
        return Relation(Scan(self.schema, Table(t.keys, values), name=name or self.name))

    def values_like(self, like: "Relation") -> jax.Array:
        """This relation's values in the tuple order of ``like`` (same key names and value
        shape), zeros where this relation has no tuple: a gradient lined up with its primal."""
        if set(self.keys) != set(like.keys) or self.value_shape != like.value_shape:
            raise RelationError(f"values_like: relation '{self.name}' {self.schema.describe()} does "
                                f"not have the keys and value shape of '{like.name}' "
                                f"{like.schema.describe()}")
        t, lt = self.table(), like.table()
        if not like.keys:
            return t.values if t.height else jnp.zeros_like(lt.values)
        mine = t.keys.select(like.keys)
        if mine.equals(lt.keys):
            return t.values
        li, ri = spare_name(like.keys, "_l"), spare_name(like.keys, "_r")
        pairs = lt.keys.with_row_index(li).join(mine.with_row_index(ri), on=list(like.keys))
        if pairs.height != t.height:
            raise RelationError(f"values_like: relation '{self.name}' has {t.height - pairs.height} "
                                f"tuple(s) whose keys '{like.name}' does not have")
        rows = jnp.asarray(pairs[li].to_numpy())
        return jnp.zeros_like(lt.values).at[rows].set(t.values[jnp.asarray(pairs[ri].to_numpy())])

    def __len__(self) -> int:
        return self.table().height

    def __repr__(self) -> str:
        return f"Relation {self.name}{self.schema.describe()}"


# ---- constructors -------------------------------------------------------------------------

def _scan(keys: pl.DataFrame, values: np.ndarray, names: tuple[str, ...], extents: tuple[int, ...],
          dtype: str, name: str) -> Relation:
    schema = Schema(names, extents, tuple(values.shape[1:]), dtype)
    table = make_table(keys, jnp.asarray(values, dtype=dtype))
    return Relation(Scan(schema, table, name=name))


def from_tensor(x, keys: Sequence[str] = (), dtype=None, name: str = "R") -> Relation:
    """The leading ``len(keys)`` axes of ``x`` become keys ``0..n-1``, the rest is the value.

    >>> from_tensor(np.ones((5, 3)), keys=("i",))   # 5 tuples of 3-vectors
    """
    keys = _key_names(keys, "from_tensor")
    weak = not hasattr(x, "dtype")  # Python numbers and lists get the default float
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise RelationError(f"from_tensor '{name}': values must be numeric, got {x.dtype}")
    if np.issubdtype(x.dtype, np.complexfloating):
        raise RelationError(f"from_tensor '{name}': values are complex ({x.dtype}); relation values "
                            f"are real floats. Pass x.real and x.imag as two relations.")
    if x.ndim < len(keys):
        raise RelationError(f"from_tensor '{name}': {len(keys)} keys {keys} need at least "
                            f"{len(keys)} axes, the array has shape {x.shape}")
    dtype = resolve_dtype(dtype, x.dtype, f"from_tensor '{name}'", weak=weak)
    extents = tuple(int(s) for s in x.shape[: len(keys)])
    grid = np.indices(extents, dtype=np.int64).reshape(len(keys), -1) if keys else np.zeros((0, 1), np.int64)
    frame = pl.DataFrame({k: grid[i] for i, k in enumerate(keys)}) if keys else pl.DataFrame()
    values = x.reshape((-1,) + x.shape[len(keys):]) if keys else x[None]
    return _scan(frame, values, keys, extents, dtype, name)


def from_matrix(x, block: Sequence[int], dtype=None, name: str = "A") -> Relation:
    """A matrix stored as blocks ``A(row, col) -> br x bc block``."""
    weak = not hasattr(x, "dtype")
    x = np.asarray(x)
    if weak and dtype is None and (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        dtype = default_dtype()  # Python numbers, as in from_tensor
    if x.ndim != 2:
        raise RelationError(f"from_matrix '{name}': expects a 2-D matrix, got shape {x.shape}")
    if len(block) != 2 or min(block) < 1 or any(int(b) != b for b in block):
        raise RelationError(f"from_matrix '{name}': block must be two positive integers "
                            f"(rows, cols), got {block}")
    br, bc = int(block[0]), int(block[1])
    if x.shape[0] % br or x.shape[1] % bc:
        raise RelationError(
            f"from_matrix '{name}': block shape {(br, bc)} does not divide the matrix shape "
            f"{x.shape}; choose a block whose sides divide {x.shape[0]} and {x.shape[1]}, or pad.")
    nr, nc = x.shape[0] // br, x.shape[1] // bc
    blocks = x.reshape(nr, br, nc, bc).transpose(0, 2, 1, 3)
    return from_tensor(blocks, keys=("row", "col"), dtype=dtype, name=name)


def from_dataset(path, dtype=None, name: str | None = None) -> Relation:
    """A stored relation naming a hash-partitioned Parquet dataset (``workbench.storage``): its
    schema comes from the dataset's metadata and nothing else is read here. The local executor
    reads the whole dataset when a plan first scans it; a partitioned runner's workers read their
    own shards, and the driver never does."""
    ds = path if isinstance(path, Dataset) else Dataset(path)
    m = ds.meta
    where = f"from_dataset '{ds.path}'"
    dtype = resolve_dtype(dtype, m.dtype, where)
    schema = Schema(m.keys, m.extents, m.value_shape, dtype)
    return Relation(Scan(schema, StoredTable(ds, dtype), name=name or m.name))


def to_matrix(R: Relation) -> np.ndarray:
    """Reassemble a blocked matrix from a relation keyed by ``row`` and ``col``."""
    if set(R.keys) != {"row", "col"}:
        raise RelationError(f"to_matrix: relation '{R.name}' has keys {R.keys}; it needs exactly "
                            f"'row' and 'col' (rename them with wb.select(R, keys=...)).")
    shape = R.value_shape if len(R.value_shape) == 2 else (1, 1) if R.value_shape == () else None
    if shape is None:
        raise RelationError(f"to_matrix: relation '{R.name}' holds values of shape "
                            f"{R.value_shape}; blocks must be matrices or scalars.")
    dense = R.to_tensor()
    if R.keys == ("col", "row"):
        dense = np.swapaxes(dense, 0, 1)
    nr, nc = dense.shape[:2]
    dense = dense.reshape(nr, nc, *shape)
    return dense.transpose(0, 2, 1, 3).reshape(nr * shape[0], nc * shape[1])


def from_frame(df, keys: Sequence[str], value: str, extents: Sequence[int] | None = None,
               dtype=None, name: str | None = None) -> Relation:
    """A relation from a Polars DataFrame or LazyFrame with integer key columns and a value column
    holding scalars or fixed-size arrays. Extents default to max(key) + 1."""
    name = name or value
    keys = _key_names(keys, f"from_frame '{name}'")
    if isinstance(df, pl.LazyFrame):
        df = df.collect()
    if not isinstance(df, pl.DataFrame):
        raise RelationError(f"from_frame '{name}': expects a Polars DataFrame or LazyFrame, got "
                            f"{type(df).__name__}")
    for col in (*keys, value):
        if col not in df.columns:
            raise RelationError(f"from_frame '{name}': column '{col}' is not in the frame; its "
                                f"columns are {df.columns}")
    if value in keys:
        raise RelationError(f"from_frame '{name}': column '{value}' cannot be both key and value")
    key_cols = {}
    for k in keys:
        col = df[k]
        if not col.dtype.is_integer():
            raise RelationError(f"from_frame '{name}': key column '{k}' has dtype {col.dtype}; keys "
                                f"must be integers (cast with pl.col('{k}').cast(pl.Int64)).")
        if col.null_count():
            raise RelationError(f"from_frame '{name}': key column '{k}' has {col.null_count()} nulls")
        if len(col) and col.min() < 0:
            raise RelationError(f"from_frame '{name}': key column '{k}' has negative keys "
                                f"(min {col.min()}); keys index a key space 0..extent-1.")
        if len(col) and col.max() > INT64_MAX:
            raise RelationError(
                f"from_frame '{name}': key column '{k}' ({col.dtype}) holds ids up to {col.max()}, "
                f"above the int64 maximum 2**63 - 1; keys are int64. Remap the ids to 0..n-1, e.g. "
                f"df.with_columns(pl.col('{k}').rank('dense') - 1), using one mapping for every "
                f"relation that shares these ids (keep it to translate results back).")
        key_cols[k] = col.cast(pl.Int64)
    frame = pl.DataFrame(key_cols) if keys else pl.DataFrame()
    values = _value_array(df[value], name)
    if not keys and len(values) != 1:
        raise RelationError(f"from_frame '{name}': a relation without keys holds exactly one tuple, "
                            f"the frame has {len(values)} rows")
    if keys and frame.is_duplicated().any():
        dup = frame.filter(frame.is_duplicated()).row(0)
        raise RelationError(f"relation '{name}': duplicate keys {keys} = {dup} (and maybe more); "
                            f"keys must be unique. Combine duplicates first, e.g. "
                            f"wb.aggregate(..., by={keys}) or df.group_by({list(keys)}).")
    if extents is None:
        ext = tuple(int(frame[k].max()) + 1 if frame.height else 0 for k in keys)
    else:
        ext = _extent_tuple(extents, "extents", keys, f"from_frame '{name}'",
                            "leave extents out to use max(key) + 1 for each key")
        if len(ext) != len(keys):
            raise RelationError(f"from_frame '{name}': extents {ext} must give one per key {keys}")
        for k, e in zip(keys, ext):
            if frame.height and frame[k].max() >= e:
                raise RelationError(f"from_frame '{name}': key '{k}' reaches {frame[k].max()}, "
                                    f"outside the given extent {e}")
    dtype = resolve_dtype(dtype, values.dtype, f"from_frame '{name}'")
    return _scan(frame, values, keys, ext, dtype, name)


def _value_array(col: pl.Series, name: str) -> np.ndarray:
    """The value column as an (n, *value_shape) numeric numpy array, or a clear error.

    Values are numbers (integers, floats, booleans) or fixed-size arrays of them: pl.Array of
    any shape, or pl.List nested to any depth (and mixed with pl.Array) as long as every list at
    one depth has the same length; such regular lists are read as the array they spell."""
    where, c, dt = f"from_frame '{name}'", col.name, col.dtype
    if col.null_count():
        raise RelationError(f"{where}: value column '{c}' has {col.null_count()} nulls")
    leaf = dt
    while isinstance(leaf, (pl.List, pl.Array)):
        leaf = leaf.inner
    problem = _leaf_problem(leaf, dt, c)
    if problem:
        raise RelationError(f"{where}: value column '{c}' {problem}")
    n, shape, flat, depth = len(col), [], col, 0
    while isinstance(flat.dtype, (pl.List, pl.Array)):
        if depth and flat.null_count():
            raise _nested_nulls(where, c, flat.null_count())
        depth += 1
        if isinstance(flat.dtype, pl.Array):
            width = flat.dtype.shape[0]
        else:
            lengths = flat.list.len()
            if lengths.n_unique() > 1:
                at = f" at depth {depth}" if depth > 1 else ""
                raise RelationError(
                    f"{where}: value column '{c}' is ragged (lists of lengths "
                    f"{lengths.min()}..{lengths.max()}{at}); every value must have one shape.")
            width = int(lengths[0]) if len(flat) else 0
        shape.append(width)
        if width == 0:  # no elements: the widths of deeper lists are unknown, take 0
            rest = flat.dtype.inner
            while isinstance(rest, (pl.List, pl.Array)):
                shape.append(rest.shape[0] if isinstance(rest, pl.Array) else 0)
                rest = rest.inner
            return np.zeros((n, *shape), dtype=pl.Series([], dtype=leaf).to_numpy().dtype)
        flat = flat.explode()
    if depth and flat.null_count():
        raise _nested_nulls(where, c, flat.null_count())
    arr = flat.to_numpy()
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise RelationError(f"{where}: value column '{c}' holds {dt}, which could not be read as "
                            f"numbers (numpy dtype {arr.dtype}); cast it first, e.g. "
                            f"pl.col('{c}').cast({_dtype_code(dt)}).")
    return arr.reshape((n, *shape))


def _nested_nulls(where: str, c: str, count: int) -> RelationError:
    return RelationError(f"{where}: value column '{c}' has {count} null entries inside its "
                         f"arrays; fill them first (e.g. "
                         f"pl.col('{c}').list.eval(pl.element().fill_null(0.0))).")


def _dtype_code(dt, leaf: str = "pl.Float64") -> str:
    """Polars code for ``dt`` with its innermost (non-list) dtype replaced by ``leaf``."""
    if isinstance(dt, pl.List):
        return f"pl.List({_dtype_code(dt.inner, leaf)})"
    if isinstance(dt, pl.Array):
        sizes = []
        while isinstance(dt, pl.Array):
            sizes.append(dt.shape[0])
            dt = dt.inner
        size = sizes[0] if len(sizes) == 1 else tuple(sizes)
        return f"pl.Array({_dtype_code(dt, leaf)}, {size})"
    return leaf


def _leaf_problem(leaf, dt, c: str) -> str | None:
    """What is wrong with values whose innermost dtype is ``leaf``, with the fix; None if fine."""
    col = f"pl.col('{c}')"
    nested = leaf != dt
    cast = f"{col}.cast({_dtype_code(dt)})"
    if isinstance(leaf, pl.Decimal):
        return (f"holds {dt}; Decimal is not supported, relation values are "
                f"floats. Cast the column first: {cast}.")
    if leaf in (pl.Int128, pl.UInt128):
        return (f"holds {dt}: 128-bit integers, which numpy and JAX do not have. Cast the column "
                f"first: {cast}.")
    if leaf == pl.Boolean or leaf.is_numeric():
        return None
    if leaf in (pl.String, pl.Utf8):
        return (f"holds {dt}; relation values are numbers. If the strings spell numbers, "
                f"parse them with {cast}; if they are labels, encode them as integer ids or "
                f"one-hot vectors.")
    if isinstance(leaf, (pl.Categorical, pl.Enum)):
        return (f"holds {dt} categories; relation values are numbers. Use their integer codes, "
                f"{col}.to_physical(), or one-hot vectors.")
    if leaf.is_temporal():
        e = col if not nested else "pl.element()"
        fix = (f"{e}.dt.epoch('d').cast(pl.Float64) (days since 1970-01-01)" if leaf == pl.Date
               else f"{e}.dt.epoch('s').cast(pl.Float64) (seconds since 1970)" if leaf == pl.Datetime
               else f"{e}.dt.total_seconds(fractional=True)" if leaf == pl.Duration
               else f"{e}.cast(pl.Int64).cast(pl.Float64) (nanoseconds since midnight)")
        inside = f" inside {col}.list.eval(...)" if nested else ""
        return (f"holds {dt}; relation values are numbers. Convert them "
                f"explicitly, e.g. {fix}{inside}.")
    if leaf == pl.Object:
        return (f"holds {dt} (Python objects); relation values are numbers. Convert the objects "
                f"to numbers and build the column with a numeric dtype, e.g. "
                f"pl.Series('{c}', [float(v) for v in values], dtype=pl.Float64).")
    if isinstance(leaf, pl.Struct) and not nested:
        fields = [f.name for f in leaf.fields]
        return (f"holds {dt}; relation values are numbers or arrays. Take one field, "
                f"{col}.struct.field('{fields[0] if fields else 'name'}'), or stack the fields "
                f"into an array, pl.concat_arr([{col}.struct.field(f).cast(pl.Float64) for f in "
                f"{fields}]).")
    return (f"holds {dt}; relation values must be numbers (integers, floats, booleans) or "
            f"fixed-size arrays of numbers, e.g. {col}.cast(pl.Array(pl.Float64, shape)).")


def _key_names(keys, where: str) -> tuple[str, ...]:
    if isinstance(keys, str):
        keys = (keys,)
    keys = tuple(keys)
    for k in keys:
        check_key_name(k, where, RelationError)
    if len(set(keys)) != len(keys):
        raise RelationError(f"{where}: key names {keys} repeat")
    return keys


def check_key_name(k, where: str, error=RelationError) -> None:
    """Key names are non-empty strings other than ``value``, the value column of ``to_frame``."""
    if not isinstance(k, str) or not k:
        raise error(f"{where}: key names must be non-empty strings, got {k!r}")
    if k == VALUE:
        raise error(f"{where}: a key cannot be named '{VALUE}', the name of the value column in "
                    f"to_frame(); rename it, e.g. to '{VALUE}_id'.")
