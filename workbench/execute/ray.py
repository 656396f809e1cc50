"""A partitioned runner on Ray: the same plan IR, run over hash-partitioned relations by worker
processes, with the local executor's per-node functions doing the work inside each task.

A relation is P partitions in Ray's object store, each a (key frame, values) piece, hashed on a
tuple of its key columns (``by``): tuples with equal ``by`` values share a partition, and a
keyless relation (``by = ()``) lives in partition 0.

    scan       split by a hash of all its keys (on the driver), each piece put in the store; a
               Table is split (and shuffled) once per runner while it lives, however often scanned
    select     per partition; when the select renames the partitioning keys away it is re-hashed
               on its output keys (checking that they stay unique)
    join       a hash shuffle of both sides on the join keys (map tasks with num_returns=P, the
               local join per partition), skipped for a side already hashed on them; a keyless
               side (a weight) or the smaller side of a cross join is broadcast to every partition
    aggregate  per partition when the input is hashed on a subset of the group keys; otherwise
               partial sums (and counts, for a mean) per partition, a shuffle on the group keys,
               and a final sum (mean = sum / count)
    add        per partition over terms hashed alike (re-hashing the others first)

The runner's rewrites are its own ``RULES``: the logical ones (identity selects dropped, common
subexpressions shared) and the join RJP's physical nodes where they partition, a PairJoin when L,
R and the cotangent can be hashed alike (or a weight broadcast) and a JoinAggregate (the local one
per partition gives partial sums, shuffled on the group keys and summed). The local executor's
other physical nodes (sparse products over a whole relation) are not used here. Forward results
stay partitioned in the run's context, so a backward plan reads them (and the shuffles of them a
forward join made) without recomputing; only the outputs asked for are gathered into one Table.

    with RayRunner(partitions=4) as runner:
        loss, grads = runner.value_and_grad(f, argnums=(1, 2))(*rels)

Ray is started on loopback only (every server bound to 127.0.0.1, no dashboard) and shut down
on exit, if this runner started it.
"""
from __future__ import annotations

import functools
import os
import time
import warnings
import weakref
from dataclasses import dataclass, field, replace
from typing import Sequence

# Ray resolves a loopback node address to the machine's external one unless this is off; with it
# off, every Ray server binds to 127.0.0.1. Read when ray is first imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import ray  # noqa: E402

from workbench import passes  # noqa: E402
from workbench.errors import PlanError  # noqa: E402
from workbench.execute.local import Context, NodeStats, _check_unique, _name, run_node  # noqa: E402
from workbench.physical import JoinAggregate, PairJoin  # noqa: E402
from workbench.plan import Add, Aggregate, Join, Node, Scan, Schema, Select, toposort  # noqa: E402
from workbench.table import Table, empty_keys  # noqa: E402



def fuse_partitionable_pair_joins(outputs):
    """``passes.fuse_pair_joins`` where the runner can co-partition L, R and the cotangent (a join
    RJP whose pairs keep the join keys, or a weight broadcast to every partition)."""
    def visit(node: Node) -> Node:
        fused = passes.as_pair_join(node)
        return fused if fused is not None and _pair_columns(fused) is not None else node
    return passes._map_nodes(outputs, visit)


# The runner's rewrites: the logical ones, and the join RJP's physical nodes where partitionable
# (not the local executor's other physical nodes, which need partitionings of their own).
RULES = (passes.drop_identity_selects, passes.common_subexpressions, fuse_partitionable_pair_joins,
         passes.fuse_join_aggregates)

# ---- pieces: one partition's (key frame, values[, counts]) ----------------------------------------


def _empty(schema: Schema):
    keys = empty_keys(schema.keys) if schema.keys else pl.DataFrame()
    return keys, np.zeros((0, *schema.value_shape), schema.dtype)


def _concat(pieces):
    """One piece from several (each a tuple of a key frame and arrays of equal height)."""
    if len(pieces) == 1:
        return pieces[0]
    keys = pl.concat([p[0] for p in pieces]) if pieces[0][0].width else pl.DataFrame()
    return (keys, *(np.concatenate([p[i] for p in pieces]) for i in range(1, len(pieces[0]))))


def _to_table(piece) -> Table:
    return Table(piece[0], jnp.asarray(piece[1]))


def _from_table(t: Table):
    return t.keys, np.asarray(t.values)


def _meta(piece) -> tuple[int, int]:
    """(rows, bytes) of a piece."""
    return int(piece[1].shape[0]), int(piece[0].estimated_size()) + int(piece[1].nbytes)


def _destinations(keys: pl.DataFrame, cols: Sequence[str], n: int, parts: int) -> np.ndarray:
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


def _partition(piece, cols: Sequence[str], parts: int) -> list:
    """Split a piece into ``parts`` pieces by the hash of ``cols``."""
    keys, n = piece[0], int(piece[1].shape[0])
    dest = _destinations(keys, cols, n, parts)
    order = np.argsort(dest, kind="stable")
    bounds = np.searchsorted(dest[order], np.arange(parts + 1))
    out = []
    for p in range(parts):  # one slice per partition, never per tuple
        rows = order[bounds[p]:bounds[p + 1]]
        out.append((keys[rows] if keys.width else keys, *(a[rows] for a in piece[1:])))
    return out


def _setup(x64: bool) -> None:
    """Run a task in the driver's precision."""
    if jax.config.read("jax_enable_x64") != x64:
        jax.config.update("jax_enable_x64", x64)


def _jitted_reference(fn):
    """A jitted function (``jnp.matmul``, ``jax.nn.relu``) by its import path, else by the
    function it wraps: pickling one by value gives a broken copy."""
    import importlib

    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    try:
        if module and name and getattr(importlib.import_module(module), name) is fn:
            return module, name, None
    except (ImportError, AttributeError):
        pass
    return None, None, fn.__wrapped__


def _jitted_restore(ref):
    import importlib

    module, name, wrapped = ref
    return getattr(importlib.import_module(module), name) if module else jax.jit(wrapped)


# ---- tasks ----------------------------------------------------------------------------------------


@ray.remote(num_returns=2)
def _apply_task(node: Node, x64: bool, counts: tuple[int, ...], *pieces):
    """The local executor's function for ``node`` over one partition of each input (each input's
    ``counts[i]`` pieces concatenated). Returns the output piece and its (rows, bytes)."""
    _setup(x64)
    tables, at = [], 0
    for c in counts:
        tables.append(_to_table(_concat(pieces[at:at + c])))
        at += c
    out = _from_table(run_node(node, tables, Context()))
    return out, _meta(out)


@ray.remote
def _split_task(piece, cols: tuple[str, ...], parts: int):
    """The map side of a hash shuffle: ``parts`` pieces (called with num_returns=parts)."""
    out = _partition(piece, cols, parts)
    return out[0] if parts == 1 else tuple(out)


@ray.remote(num_returns=2)
def _gather_task(check: Node | None, *pieces):
    """The reduce side of a shuffle: one piece; with ``check``, its keys must stay unique."""
    out = _concat(pieces)
    if check is not None:
        _check_unique(out[0], int(out[1].shape[0]), check, f"{check.kind} '{_name(check)}'")
    return out, _meta(out)


@ray.remote
def _partial_task(node: Aggregate, x64: bool, mean: bool, parts: int, piece):
    """Partial sums (and counts, for a mean) of one partition, split on the group keys."""
    _setup(x64)
    t = _to_table(piece)
    sums = run_node(node, [t], Context())
    out = (sums.keys, np.asarray(sums.values))
    if mean:
        counts = run_node(node, [Table(t.keys, jnp.ones(t.height, t.values.dtype))], Context())
        out = (*out, np.asarray(counts.values))
    split = _partition(out, node.by, parts)
    return split[0] if parts == 1 else tuple(split)


@ray.remote(num_returns=2)
def _final_task(node: Aggregate, x64: bool, mean: bool, *pieces):
    """Sum the partial sums of one partition's groups; a mean divides by the summed counts."""
    _setup(x64)
    piece = _concat(pieces)
    sums = run_node(node, [_to_table(piece)], Context())
    values = np.asarray(sums.values)
    if mean:
        counts = np.asarray(run_node(node, [Table(piece[0], jnp.asarray(piece[2]))], Context()).values)
        if not node.by and not counts.any():
            raise PlanError(f"aggregate mean over '{_name(node.input)}': the relation is empty, so "
                            f"its mean is undefined")
        values = values / counts.reshape((-1,) + (1,) * (values.ndim - 1))  # mean = sum / |group|
    out = (sums.keys, values)
    return out, _meta(out)


# ---- partitioned relations ------------------------------------------------------------------------


@dataclass
class Partitioned:
    """A relation as P pieces in the object store, hashed on the key columns ``by``."""

    schema: Schema
    by: tuple[str, ...]
    parts: list  # ObjectRef per partition -> piece
    metas: list  # per partition: (rows, bytes), or an ObjectRef to it

    def sizes(self) -> list[tuple[int, int]]:
        refs = [m for m in self.metas if isinstance(m, ray.ObjectRef)]
        got = iter(ray.get(refs))
        return [next(got) if isinstance(m, ray.ObjectRef) else m for m in self.metas]

    def rows(self) -> list[int]:
        return [r for r, _ in self.sizes()]

    def collect(self) -> Table:
        """Every partition gathered into one Table (rows in partition order)."""
        return _to_table(_concat(ray.get(self.parts)))

    def to_frame(self, value: str = "value") -> pl.DataFrame:
        return self.collect().to_frame(value)


@dataclass
class RayContext:
    """What one run on the runner keeps: partitioned results per node (a backward plan reads the
    forward's), shuffled copies of them per (node, hash columns), and stats when analyzing."""

    runner: "RayRunner"
    memo: dict = field(default_factory=dict)  # Node -> Partitioned
    shuffles: dict = field(default_factory=dict)  # (Node, cols) -> list of ObjectRefs
    stats: dict | None = None  # Node -> NodeStats

    def run(self, outputs: Sequence[Node], optimize: bool = True) -> list[Table]:
        return self.runner.run(outputs, self, optimize)


def _stub(node: Node) -> Node:
    """``node`` as a task needs it: inputs replaced by data-less scans of their schema, no origin
    (so shipping it does not ship the plan above it)."""
    stubs = [Scan(i.schema, None, name=_name(i)) for i in node.inputs]
    node = passes._rebuild(node, stubs) if node.inputs else node
    if isinstance(node, JoinAggregate):
        node = replace(node, join=_strip(node.join))
    return _strip(node)


def _strip(node: Node) -> Node:
    """Without the references a task never reads (origin; the pack join a PairJoin replaced)."""
    return replace(node, origin=None, **({"pairs": None} if isinstance(node, PairJoin) else {}))


class RayRunner:
    """Run plans over ``partitions`` hash partitions on a local Ray instance (a context manager).

    ``ray_init`` extends the arguments of ``ray.init``; Ray is started only if it is not running
    and shut down on exit only if this runner started it.
    """

    def __init__(self, partitions: int = 4, num_cpus: int | None = None, **ray_init):
        if partitions < 1:
            raise ValueError(f"RayRunner: partitions must be at least 1, got {partitions}")
        self.partitions = partitions
        self.num_cpus = num_cpus
        self.ray_init = ray_init
        self._started = False
        self._stored: dict = {}  # id(scanned Table) -> {hash columns: pieces per partition}

    # ---- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> "RayRunner":
        if not ray.is_initialized():
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False  # loopback stays loopback (see the top)
            args = dict(num_cpus=self.num_cpus, _node_ip_address="127.0.0.1", include_dashboard=False,
                        log_to_driver=False, configure_logging=False)
            with warnings.catch_warnings():  # Ray starts its servers by fork+exec: no JAX state is shared
                warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
                ray.init(**{**args, **self.ray_init})
            self._started = True
        ray.util.register_serializer(type(jnp.matmul), serializer=_jitted_reference,
                                     deserializer=_jitted_restore)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stored.clear()
        if self._started:
            ray.shutdown()
            self._started = False

    # ---- the API: wb's functions with this runner as the executor ----------------------------------
    def context(self, stats: dict | None = None) -> RayContext:
        return RayContext(self, stats=stats)

    def value_and_grad(self, f, argnums=0):
        from workbench.rjp import value_and_grad

        return value_and_grad(f, argnums, runner=self)

    def grad(self, f, argnums=0):
        from workbench.rjp import grad

        return grad(f, argnums, runner=self)

    def vjp(self, f, *rels):
        from workbench.rjp import vjp

        return vjp(f, *rels, runner=self)

    def plans(self, f, *rels, argnums=0, analyze: bool = False):
        from workbench.rjp import plans

        return plans(f, *rels, argnums=argnums, analyze=analyze, runner=self)

    # ---- running a plan -----------------------------------------------------------------------------
    def run(self, outputs: Sequence[Node], ctx: RayContext | None = None, optimize: bool = True) -> list[Table]:
        """Evaluate ``outputs``; results stay partitioned in ``ctx.memo``, the outputs are gathered."""
        if not ray.is_initialized():
            raise RuntimeError("RayRunner: Ray is not running; use the runner as a context manager "
                               "(`with RayRunner(partitions=4) as runner: ...`)")
        ctx = ctx if ctx is not None else self.context()
        outputs = list(outputs)
        mapping = {}
        if optimize:
            outputs, mapping = _optimize(outputs, ctx)
        for node in toposort(outputs):
            if node in ctx.memo:
                continue
            start = time.perf_counter()
            result = _run(node, [ctx.memo[i] for i in node.inputs], self, ctx)
            if ctx.stats is not None:
                sizes = result.sizes()  # waits for every partition
                ctx.stats[node] = NodeStats(sum(r for r, _ in sizes), time.perf_counter() - start,
                                            sum(b for _, b in sizes), partitions=tuple(r for r, _ in sizes))
            ctx.memo[node] = result
        for logical, node in mapping.items():
            if node in ctx.memo:
                ctx.memo.setdefault(logical, ctx.memo[node])
            if ctx.stats is not None and node in ctx.stats:
                ctx.stats.setdefault(logical, ctx.stats[node])
        return [ctx.memo[o].collect() for o in outputs]

    # ---- helpers the node functions share ------------------------------------------------------------
    @property
    def _x64(self) -> bool:
        return bool(jax.config.read("jax_enable_x64"))

    def shuffle(self, node: Node, rel: Partitioned, cols: tuple[str, ...], ctx: RayContext) -> list:
        """``rel``'s pieces hashed on ``cols``: its own when it already is, else a shuffle (kept in
        ``ctx`` for later readers). The reduce side is left to the consumer (one list per part)."""
        if rel.by == cols:
            return [[p] for p in rel.parts]
        if isinstance(node, Scan):  # stored data: hashed once per runner, whatever run reads it
            return self.stored(node.table, cols, lambda: self._hash_split(rel, cols))
        if (node, cols) not in ctx.shuffles:
            ctx.shuffles[(node, cols)] = self._hash_split(rel, cols)
        return ctx.shuffles[(node, cols)]

    def _hash_split(self, rel: Partitioned, cols: tuple[str, ...]) -> list:
        """The map side of a shuffle: for each partition, its pieces from every input partition."""
        P = self.partitions
        maps = [_split_task.options(num_returns=P).remote(p, cols, P) for p in rel.parts]
        maps = [[m] if P == 1 else list(m) for m in maps]
        return [[m[p] for m in maps] for p in range(P)]

    def stored(self, table: Table, cols, make):
        """The partitioning of a scanned Table on ``cols``, made once and kept while the Table
        lives: constants (edges, labels) and arguments rescanned every step are not re-split."""
        entry = self._stored.get(id(table))
        if entry is None or entry[0]() is not table:
            entry = (weakref.ref(table, lambda _, k=id(table): self._stored.pop(k, None)), {})
            self._stored[id(table)] = entry
        if cols not in entry[1]:
            entry[1][cols] = make()
        return entry[1][cols]

    def apply(self, node: Node, inputs: list[list[list]], by: tuple[str, ...] | None,
              only_first: bool = False) -> Partitioned:
        """Run ``node`` per partition; ``inputs[i][p]`` lists the pieces of input i for partition p.
        ``by``: the output's hash columns, or None when the output has to be re-hashed on its keys.
        ``only_first``: every input lives in partition 0 (keyless), so only it is computed."""
        stub = ray.put(_stub(node))
        counts = tuple(len(inp[0]) for inp in inputs)
        parts, metas = [], []
        for p in range(1 if only_first else self.partitions):
            pieces = [ref for inp in inputs for ref in inp[p]]
            piece, meta = _apply_task.remote(stub, self._x64, counts, *pieces)
            parts.append(piece)
            metas.append(meta)
        if only_first:
            return self._pad(node.schema, by if by is not None else (), parts, metas)
        if by is None:
            return self.rehash(node, node.schema.keys, parts, metas)
        return Partitioned(node.schema, by, parts, metas)

    def rehash(self, node: Node, cols: tuple[str, ...], parts: list, metas) -> Partitioned:
        """Pieces re-hashed on ``cols`` (the node's output keys), checking that they stay unique
        when the node's projection drops keys."""
        P = self.partitions
        maps = [_split_task.options(num_returns=P).remote(p, cols, P) for p in parts]
        maps = [[m] if P == 1 else list(m) for m in maps]
        check = ray.put(_stub(node)) if getattr(node, "drops_keys", False) else None
        out = [_gather_task.remote(check, *[m[p] for m in maps]) for p in range(P)]
        return Partitioned(node.schema, cols, [o[0] for o in out], [o[1] for o in out])

    def _pad(self, schema: Schema, by, parts: list, metas: list) -> Partitioned:
        """A relation computed in partition 0 only: the other partitions are empty."""
        empty = _empty(schema)
        ref = ray.put(empty)
        n = self.partitions - len(parts)
        return Partitioned(schema, by, parts + [ref] * n, metas + [_meta(empty)] * n)


def _optimize(outputs: list[Node], ctx: RayContext):
    """The runner's rewrites; results already computed for a rewritten node are reused."""
    physical, mapping = passes.optimize(outputs, RULES)
    for logical, node in mapping.items():
        if logical in ctx.memo and node not in ctx.memo:
            ctx.memo[node] = ctx.memo[logical]
    return physical, mapping


# ---- one function per node type -------------------------------------------------------------------


@functools.singledispatch
def _run(node: Node, inputs: list[Partitioned], runner: RayRunner, ctx: RayContext) -> Partitioned:
    raise NotImplementedError(
        f"the Ray runner has no implementation for {type(node).__name__}; it runs logical plans "
        f"(Scan, Select, Join, Aggregate, Add) rewritten by workbench.execute.ray.RULES only")


@_run.register
def _scan(node: Scan, inputs, runner, ctx) -> Partitioned:
    by = node.schema.keys  # hashed on all keys; a keyless relation lands in partition 0

    def split() -> Partitioned:
        pieces = _partition(_from_table(node.table), by, runner.partitions)
        return Partitioned(node.schema, by, [ray.put(p) for p in pieces], [_meta(p) for p in pieces])
    return replace(runner.stored(node.table, None, split), schema=node.schema)


def _renamed(by: tuple[str, ...], pairs) -> tuple[str, ...] | None:
    """``by`` under an (out, in) key projection, or None when a column does not survive it."""
    out = []
    for b in by:
        names = [o for o, i in pairs if i == b]
        if not names:
            return None
        out.append(names[0])
    return tuple(out)


def _keyless_output(node: Node, by) -> tuple[str, ...] | None:
    """A keyed output must stay hashed on some key: () is only right for a keyless output."""
    if by == () and node.schema.keys:
        return None
    return by


@_run.register
def _select(node: Select, inputs, runner, ctx) -> Partitioned:
    (R,) = inputs
    if not node.input.schema.keys:  # keyless: one tuple in partition 0
        return runner.apply(node, [[[p] for p in R.parts]], (), only_first=True)
    by = _keyless_output(node, _renamed(R.by, node.keys)) if R.by else None
    return runner.apply(node, [[[p] for p in R.parts]], by)


def _join_by(node: Join, side: str, by: tuple[str, ...]) -> tuple[str, ...] | None:
    """The output keys that carry ``side``'s hash columns ``by`` (directly or through a key
    joined on), or None when the projection drops one."""
    cls = node.pair_classes()
    out_cls = {}
    for o, s, k in node.keys:
        out_cls.setdefault(cls[(s, k)], o)
    names = [out_cls.get(cls[(side, b)]) for b in by]
    return None if any(n is None for n in names) else tuple(names)


def _join_layout(node: Join, inputs, runner, ctx):
    """How a join's inputs meet: (pieces per input per partition, the output's hash columns or
    None, whether only partition 0 holds data)."""
    L, R = inputs
    lkeyless, rkeyless = not node.left.schema.keys, not node.right.schema.keys
    if lkeyless and rkeyless:
        return [[[p] for p in L.parts], [[p] for p in R.parts]], (), True
    if lkeyless or rkeyless or not node.on:
        # broadcast: a keyless side (its one tuple is in partition 0) or the smaller side
        if lkeyless or rkeyless:
            bside = "left" if lkeyless else "right"
            whole = [(L if lkeyless else R).parts[0]]
        else:
            bside = "left" if sum(L.rows()) < sum(R.rows()) else "right"
            whole = list((L if bside == "left" else R).parts)
        kept, kside = (R, "right") if bside == "left" else (L, "left")
        local = [[p] for p in kept.parts]
        bcast = [whole] * runner.partitions
        by = _keyless_output(node, _join_by(node, kside, kept.by)) if kept.by else None
        return ([bcast, local] if bside == "left" else [local, bcast]), by, False
    lcols, rcols = tuple(l for l, _ in node.on), tuple(r for _, r in node.on)
    partner = dict(node.on)
    if L.by and set(L.by) <= set(lcols) and R.by == tuple(partner[b] for b in L.by):
        lcols, rcols = L.by, R.by  # already co-partitioned on a subset of the join keys
    left = runner.shuffle(node.left, L, lcols, ctx)
    right = runner.shuffle(node.right, R, rcols, ctx)
    return [left, right], _keyless_output(node, _join_by(node, "left", lcols)), False


def _pair_columns(node: PairJoin):
    """How a PairJoin is partitioned: hash columns of (L, R, C), None for a broadcast side, and
    the pairs' hash columns; or None when the pairs cannot be co-partitioned with C (then the
    runner leaves the join RJP unfused)."""
    name = {(s, k): o for o, s, k in node.pair_keys}  # (side, key) -> the pairs' key name
    for l, r in node.pair_on:
        name.setdefault(("right", r), name[("left", l)])
    ckey = dict(node.on)  # pair key -> C key
    lkeys, rkeys = node.left.schema.keys, node.right.schema.keys
    if not node.cotangent.schema.keys or (not lkeys and not rkeys):
        return None
    if not lkeys or not rkeys:  # a keyless side (a weight) is broadcast
        side, keys = ("left", lkeys) if lkeys else ("right", rkeys)
        cols = tuple(k for k in keys if name[(side, k)] in ckey)
        if not cols:
            return None
        pcols = tuple(name[(side, k)] for k in cols)
        return ((cols, None) if side == "left" else (None, cols)) + (tuple(ckey[c] for c in pcols), pcols)
    if not node.pair_on or any(name[("left", l)] not in ckey for l, _ in node.pair_on):
        return None
    pcols = tuple(name[("left", l)] for l, _ in node.pair_on)
    return (tuple(l for l, _ in node.pair_on), tuple(r for _, r in node.pair_on),
            tuple(ckey[c] for c in pcols), pcols)


def _pair_layout(node: PairJoin, inputs, runner, ctx):
    lcols, rcols, ccols, pcols = _pair_columns(node)
    layout = []
    for n, rel, cols in zip(node.inputs, inputs, (lcols, rcols, ccols)):
        layout.append([[rel.parts[0]]] * runner.partitions if cols is None else runner.shuffle(n, rel, cols, ctx))
    out = {}
    for o, side, k in node.keys:  # side "left": a pair key; "right": a key of C
        out.setdefault(k if side == "left" else next((p for p, c in node.on if c == k), None), o)
    by = tuple(out.get(c) for c in pcols)
    return layout, (None if None in by else _keyless_output(node, by)), False


def _layout(node, inputs, runner, ctx):
    return (_pair_layout if isinstance(node, PairJoin) else _join_layout)(node, inputs, runner, ctx)


@_run.register
def _join(node: Join, inputs, runner, ctx) -> Partitioned:
    layout, by, only_first = _join_layout(node, inputs, runner, ctx)
    return runner.apply(node, layout, by, only_first)


@_run.register
def _pair_join(node: PairJoin, inputs, runner, ctx) -> Partitioned:
    layout, by, only_first = _pair_layout(node, inputs, runner, ctx)
    return runner.apply(node, layout, by, only_first)


@_run.register
def _join_aggregate(node: JoinAggregate, inputs, runner, ctx) -> Partitioned:
    """The local JoinAggregate per partition of its join; unless the join's output hash columns
    lie within the group keys, those are partial sums, shuffled on the group keys and summed."""
    layout, by, only_first = _layout(node.join, inputs, runner, ctx)
    if only_first or (node.by and by and set(by) <= set(node.by)):
        return runner.apply(node, layout, by if node.by else (), only_first)
    stub = ray.put(_stub(node))
    counts = tuple(len(inp[0]) for inp in layout)
    P = runner.partitions
    partial = [_apply_task.remote(stub, runner._x64, counts, *[r for inp in layout for r in inp[p]])[0]
               for p in range(P)]
    maps = [_split_task.options(num_returns=P).remote(p, node.by, P) for p in partial]
    maps = [[m] if P == 1 else list(m) for m in maps]
    final = ray.put(_stub(Aggregate(node.schema, node, node.by, "sum")))
    return _final_sums(node, final, False, maps, runner)


@_run.register
def _aggregate(node: Aggregate, inputs, runner, ctx) -> Partitioned:
    (R,) = inputs
    P = runner.partitions
    if not node.input.schema.keys:
        return runner.apply(node, [[[p] for p in R.parts]], (), only_first=True)
    if node.by and R.by and set(R.by) <= set(node.by):  # groups never span partitions
        return runner.apply(node, [[[p] for p in R.parts]], R.by)
    # partial sums per partition, shuffled on the group keys, summed again
    partial, mean = ray.put(_stub(replace(node, kernel="sum"))), node.kernel == "mean"
    maps = [_partial_task.options(num_returns=P).remote(partial, runner._x64, mean, P, p) for p in R.parts]
    maps = [[m] if P == 1 else list(m) for m in maps]
    return _final_sums(node, partial, mean, maps, runner)


def _final_sums(node: Node, final, mean: bool, maps: list, runner) -> Partitioned:
    """Sum the partial sums shuffled to each partition (``maps[i][p]``: map i's share for p),
    grouped by ``node.by``; a keyless result is one group, in partition 0."""
    n_out = runner.partitions if node.by else 1
    out = [_final_task.remote(final, runner._x64, mean, *[m[p] for m in maps]) for p in range(n_out)]
    parts, metas = [o[0] for o in out], [o[1] for o in out]
    if not node.by:
        return runner._pad(node.schema, (), parts, metas)
    return Partitioned(node.schema, node.by, parts, metas)


@_run.register
def _add(node: Add, inputs, runner, ctx) -> Partitioned:
    if not node.schema.keys:
        return runner.apply(node, [[[p] for p in t.parts] for t in inputs], (), only_first=True)
    by = inputs[0].by
    terms = [runner.shuffle(n, t, by, ctx) for n, t in zip(node.terms, inputs)]
    return runner.apply(node, terms, by)
