"""A partitioned runner on Ray: the same plan IR, run over hash-partitioned relations by worker
processes, with the local executor's per-node functions doing the work inside each task.

A relation is P partitions in Ray's object store, each a piece (``workbench.execute.partition``)
hashed on a tuple of its key columns (``by``): tuples with equal ``by`` values share a partition, and a
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
        loss, grads = wb.value_and_grad(f, argnums=(1, 2), executor=runner)(*rels)

Ray is started on loopback only (every server bound to 127.0.0.1, no dashboard) and shut down
on exit, if this runner started it; ``address=`` joins a running cluster instead.

Where the per-partition work runs is a handful of methods (``run_apply``, ``run_split``,
``run_gather``, ``run_partial``, ``run_final``, ``put_piece``, ``scan``, ``gather_parts``): here each
is a task; ``workbench.execute.ray_resident`` runs them as operations of resident actors.
"""
from __future__ import annotations

import functools
import time
import weakref
from dataclasses import dataclass, field, replace

import jax
import polars as pl
import ray

from workbench import passes
from workbench.execute import ray_cluster
from workbench.execute.base import Context, Executor, NodeStats
from workbench.execute.partition import (check_partitions, concat_pieces, empty_piece,
                                         piece_meta, piece_table, split_piece, table_piece)
from workbench.execute.placement import (join_output_columns, keyless_output, pair_columns,
                                         renamed)
from workbench.execute.ray_tasks import apply_task, final_task, gather_task, partial_task, split_task
from workbench.physical import JoinAggregate, PairJoin, SpMM
from workbench.plan import Add, Aggregate, Join, Node, Scan, Schema, Select, toposort
from workbench.storage import as_table
from workbench.table import Table


def fuse_partitionable_pair_joins(outputs):
    """``passes.fuse_pair_joins`` where the runner can co-partition L, R and the cotangent (a join
    RJP whose pairs keep the join keys, or a weight broadcast to every partition)."""
    def visit(node: Node) -> Node:
        fused = passes.as_pair_join(node)
        return fused if fused is not None and pair_columns(fused) is not None else node
    return passes.map_nodes(outputs, visit)


# The runner's rewrites: the logical ones, and the join RJP's physical nodes where partitionable
# (not the local executor's other physical nodes, which need partitionings of their own).
RULES = (passes.drop_identity_selects, passes.common_subexpressions, fuse_partitionable_pair_joins,
         passes.fuse_join_aggregates)


@dataclass(frozen=True)
class MetaAt:
    """The (rows, bytes) of a partition: item ``index`` of the list that ``source`` (an ObjectRef,
    or a queue of operations whose ``ref()`` sends it and gives one) resolves to."""

    source: object
    index: int

    def object_ref(self):
        return self.source if isinstance(self.source, ray.ObjectRef) else self.source.ref()


@dataclass
class Partitioned:
    """A relation as P pieces in the object store, hashed on the key columns ``by``."""

    schema: Schema
    by: tuple[str, ...]
    parts: list  # ObjectRef per partition -> piece
    metas: list  # per partition: (rows, bytes), or an ObjectRef to it

    def sizes(self) -> list[tuple[int, int]]:
        refs = list(dict.fromkeys(m.object_ref() if isinstance(m, MetaAt) else m for m in self.metas
                                  if isinstance(m, (ray.ObjectRef, MetaAt))))
        got = dict(zip(refs, ray.get(refs)))
        return [got[m] if isinstance(m, ray.ObjectRef) else got[m.object_ref()][m.index]
                if isinstance(m, MetaAt) else m for m in self.metas]

    def rows(self) -> list[int]:
        return [r for r, _ in self.sizes()]

    def collect(self) -> Table:
        """Every partition gathered into one Table (rows in partition order)."""
        return piece_table(concat_pieces(ray.get(self.parts)))

    def to_frame(self, value: str = "value") -> pl.DataFrame:
        return self.collect().to_frame(value)


@dataclass
class RayContext(Context):
    """What one run on the runner keeps: partitioned results and stats per node (``Context``),
    and shuffled copies of results per (node, hash columns), which later readers reuse."""

    shuffles: dict = field(default_factory=dict)  # (Node, cols) -> list of ObjectRefs


def _stub(node: Node) -> Node:
    """``node`` as a task needs it: inputs replaced by data-less scans of their schema, no origin
    (so shipping it does not ship the plan above it)."""
    stubs = [Scan(i.schema, None, name=i.display_name) for i in node.inputs]
    node = node.with_inputs(stubs)
    if isinstance(node, JoinAggregate):
        node = replace(node, join=_strip(node.join))
    return _strip(node)


def _strip(node: Node) -> Node:
    """Without the references a task never reads: origin, the pack join a PairJoin replaced, the
    joins a SpMM replaced (whole subplans, with the data of their scans)."""
    extra = {"pairs": None} if isinstance(node, PairJoin) else {"replaces": ()} if isinstance(node, SpMM) else {}
    return replace(node, origin=None, **extra)


PARTITIONS_PER_CPU = 16  # beyond this, tasks on empty or tiny partitions cost more than they give


class RayRunner(Executor):
    """Run plans over ``partitions`` hash partitions on a local Ray instance (a context manager);
    pass it as ``executor=`` to ``wb.value_and_grad``, ``wb.grad``, ``wb.vjp`` or ``wb.plans``.

    ``ray_init`` extends the arguments of ``ray.init``; Ray is started only if it is not running
    and shut down on exit only if this runner started it. ``progress=True`` shows a bar of the
    rows read when a stored relation (a dataset) is first loaded.
    """

    name = "ray"
    rules = RULES

    def __init__(self, partitions: int = 4, num_cpus: int | None = None, address: str | None = None,
                 progress: bool | None = False, **ray_init):
        self.partitions = check_partitions(partitions, type(self).__name__)
        self.progress = progress
        self.num_cpus = num_cpus
        self.address = address
        self.ray_init = ray_init
        self._started = False
        self._stored: dict = {}  # id(scanned Table) -> {hash columns: pieces per partition}

    # ---- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> "RayRunner":
        self._started = ray_cluster.start(self.num_cpus, address=self.address, **self.ray_init)
        cpus = ray_cluster.cpus()
        if self.partitions > PARTITIONS_PER_CPU * cpus:
            self.close()
            raise ValueError(
                f"RayRunner: partitions={self.partitions} on a cluster of {cpus} CPU(s); more than "
                f"{PARTITIONS_PER_CPU} per CPU only adds task overhead (every operator runs one task "
                f"per partition). Use at most {PARTITIONS_PER_CPU * cpus}, e.g. partitions={2 * cpus}.")
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stored.clear()
        if self._started:
            ray.shutdown()
            self._started = False

    # ---- the executor protocol ----------------------------------------------------------------------
    def context(self, stats: dict | None = None) -> RayContext:
        return RayContext(stats=stats)

    def execute(self, outputs: list[Node], ctx: RayContext) -> None:
        """Compute ``outputs``; results stay partitioned in ``ctx.memo``."""
        if not ray.is_initialized():
            raise RuntimeError("RayRunner: Ray is not running; use the runner as a context manager "
                               "(`with RayRunner(partitions=4) as runner: ...`)")
        nodes = toposort(outputs)
        readers = _readers(nodes, ctx) if ctx.last else None
        for node in nodes:
            if node in ctx.memo:
                continue
            start = time.perf_counter()
            result = _run(node, [ctx.memo[i] for i in node.inputs], self, ctx)
            if ctx.stats is not None:
                sizes = result.sizes()  # waits for every partition
                ctx.stats[node] = NodeStats(sum(r for r, _ in sizes), time.perf_counter() - start,
                                            sum(b for _, b in sizes), partitions=tuple(r for r, _ in sizes))
            ctx.memo[node] = result
            if readers is not None:
                self._read(node, readers, set(outputs), ctx)

    def _read(self, node: Node, readers: dict, outputs: set, ctx: RayContext) -> None:
        """``node`` has run in a context's last run: the parts of each input it was the last
        reader of (and of that input's shuffled copies) are released, unless a result still to
        be read, an output or a scan holds them too."""
        dead = []
        for i in set(node.inputs):
            readers[i] -= 1
            if not readers[i] and i not in outputs and not isinstance(i, Scan):
                dead.append(i)
        if not dead:
            return
        live = set(self.held_elsewhere())
        for n, rel in ctx.memo.items():
            if readers.get(n) or n in outputs or isinstance(n, Scan):
                live.update(rel.parts)
        for (n, _), groups in ctx.shuffles.items():
            if readers.get(n) or n in outputs:
                live.update(p for g in groups for p in g)
        gone = set()
        for n in dead:
            gone.update(p for p in ctx.memo[n].parts if p not in live)
            for (m, _), groups in ctx.shuffles.items():
                if m is n:
                    gone.update(p for g in groups for p in g if p not in live)
        self.release(list(gone))

    def held_elsewhere(self) -> list:
        """Parts that outlive every run (stored relations' partitionings): never released."""
        return [p for _, entry in self._stored.values() for made in entry.values()
                for p in (made.parts if isinstance(made, Partitioned) else [x for g in made for x in g])]

    def collect(self, result: "Partitioned") -> Table:
        return self.gather_parts(result)

    # ---- where per-partition work runs: one task each (a subclass may run it elsewhere) ---------
    def put_stub(self, node: Node):
        return ray.put(_stub(node))

    def put_piece(self, p: int, piece):
        """A piece the driver holds, placed as partition ``p``."""
        return ray.put(piece)

    def run_apply(self, p: int, stub, groups: list[list]):
        """``stub`` over partition ``p``; ``groups[i]``: the pieces of input i. (part, meta)."""
        counts = tuple(len(g) for g in groups)
        return apply_task.remote(stub, self._x64, counts, *[r for g in groups for r in g])

    def run_split(self, part, cols: tuple[str, ...]) -> list:
        """A part cut by the hash of ``cols``: one piece per partition."""
        P = self.partitions
        out = split_task.options(num_returns=P).remote(part, cols, P)
        return [out] if P == 1 else list(out)

    def run_gather(self, p: int, check, pieces: list):
        return gather_task.remote(check, *pieces)

    def run_partial(self, part, stub, mean: bool) -> list:
        P = self.partitions
        out = partial_task.options(num_returns=P).remote(stub, self._x64, mean, P, part)
        return [out] if P == 1 else list(out)

    def run_final(self, p: int, stub, mean: bool, pieces: list):
        return final_task.remote(stub, self._x64, mean, *pieces)

    def gather_parts(self, rel: "Partitioned") -> Table:
        return rel.collect()

    def release(self, parts: list) -> None:
        """Parts no later operation reads (partial sums once split): dropped as soon as the
        runner can (tasks' results go when their references do)."""

    def scan(self, node: Scan) -> "Partitioned":
        """A stored relation's partitions: split on the driver (hashed on all its keys) and put in
        the object store, once per runner while the Table lives."""
        by = node.schema.keys

        def split() -> Partitioned:
            pieces = split_piece(table_piece(as_table(node.table, self.progress)), by, self.partitions)
            return Partitioned(node.schema, by, [self.put_piece(p, x) for p, x in enumerate(pieces)],
                               [piece_meta(x) for x in pieces])
        return replace(self.stored(node.table, None, split), schema=node.schema)

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
        maps = [self.run_split(part, cols) for part in rel.parts]
        return [[m[p] for m in maps] for p in range(self.partitions)]

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
        stub = self.put_stub(node)
        parts, metas = [], []
        for p in range(1 if only_first else self.partitions):
            piece, meta = self.run_apply(p, stub, [inp[p] for inp in inputs])
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
        maps = [self.run_split(part, cols) for part in parts]
        check = self.put_stub(node) if getattr(node, "drops_keys", False) else None
        out = [self.run_gather(p, check, [m[p] for m in maps]) for p in range(P)]
        return Partitioned(node.schema, cols, [o[0] for o in out], [o[1] for o in out])

    def _pad(self, schema: Schema, by, parts: list, metas: list) -> Partitioned:
        """A relation computed in partition 0 only: the other partitions are empty."""
        empty = empty_piece(schema)
        rest = range(len(parts), self.partitions)
        return Partitioned(schema, by, parts + [self.put_piece(p, empty) for p in rest],
                           metas + [piece_meta(empty)] * len(rest))


# ---- one function per node type -------------------------------------------------------------------


def _readers(nodes: list[Node], ctx) -> dict:
    """For each node, how many of ``nodes`` still to run read it."""
    readers: dict = {}
    for node in nodes:
        if node not in ctx.memo:
            for i in set(node.inputs):
                readers[i] = readers.get(i, 0) + 1
    return readers


@functools.singledispatch
def _run(node: Node, inputs: list[Partitioned], runner: RayRunner, ctx: RayContext) -> Partitioned:
    raise NotImplementedError(
        f"the Ray runner has no implementation for {type(node).__name__}; it runs logical plans "
        f"(Scan, Select, Join, Aggregate, Add) rewritten by workbench.execute.ray.RULES only")


@_run.register
def _scan(node: Scan, inputs, runner, ctx) -> Partitioned:
    return runner.scan(node)


@_run.register
def _select(node: Select, inputs, runner, ctx) -> Partitioned:
    (R,) = inputs
    if not node.input.schema.keys:  # keyless: one tuple in partition 0
        return runner.apply(node, [[[p] for p in R.parts]], (), only_first=True)
    by = keyless_output(node, renamed(R.by, node.keys)) if R.by else None
    return runner.apply(node, [[[p] for p in R.parts]], by)


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
        by = keyless_output(node, join_output_columns(node, kside, kept.by)) if kept.by else None
        return ([bcast, local] if bside == "left" else [local, bcast]), by, False
    lcols, rcols = tuple(l for l, _ in node.on), tuple(r for _, r in node.on)
    partner = dict(node.on)
    if L.by and set(L.by) <= set(lcols) and R.by == tuple(partner[b] for b in L.by):
        lcols, rcols = L.by, R.by  # already co-partitioned on a subset of the join keys
    left = runner.shuffle(node.left, L, lcols, ctx)
    right = runner.shuffle(node.right, R, rcols, ctx)
    return [left, right], keyless_output(node, join_output_columns(node, "left", lcols)), False


def _pair_layout(node: PairJoin, inputs, runner, ctx):
    lcols, rcols, ccols, pcols = pair_columns(node)
    layout = []
    for n, rel, cols in zip(node.inputs, inputs, (lcols, rcols, ccols)):
        layout.append([[rel.parts[0]]] * runner.partitions if cols is None else runner.shuffle(n, rel, cols, ctx))
    out = {}
    for o, side, k in node.keys:  # side "left": a pair key; "right": a key of C
        out.setdefault(k if side == "left" else next((p for p, c in node.on if c == k), None), o)
    by = tuple(out.get(c) for c in pcols)
    return layout, (None if None in by else keyless_output(node, by)), False


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
    stub = runner.put_stub(node)
    partial = [runner.run_apply(p, stub, [inp[p] for inp in layout])[0] for p in range(runner.partitions)]
    maps = [runner.run_split(part, node.by) for part in partial]
    runner.release(partial)
    final = runner.put_stub(Aggregate(node.schema, node, node.by, "sum"))
    return _final_sums(node, final, False, maps, runner)


@_run.register
def _aggregate(node: Aggregate, inputs, runner, ctx) -> Partitioned:
    (R,) = inputs
    if not node.input.schema.keys:
        return runner.apply(node, [[[p] for p in R.parts]], (), only_first=True)
    if node.by and R.by and set(R.by) <= set(node.by):  # groups never span partitions
        return runner.apply(node, [[[p] for p in R.parts]], R.by)
    # partial sums per partition, shuffled on the group keys, summed again
    partial, mean = runner.put_stub(replace(node, reduction="sum")), node.reduction == "mean"
    maps = [runner.run_partial(part, partial, mean) for part in R.parts]
    return _final_sums(node, partial, mean, maps, runner)


def _final_sums(node: Node, final, mean: bool, maps: list, runner) -> Partitioned:
    """Sum the partial sums shuffled to each partition (``maps[i][p]``: map i's share for p),
    grouped by ``node.by``; a keyless result is one group, in partition 0."""
    n_out = runner.partitions if node.by else 1
    out = [runner.run_final(p, final, mean, [m[p] for m in maps]) for p in range(n_out)]
    parts, metas = [o[0] for o in out], [o[1] for o in out]
    if not node.by:
        return runner._pad(node.schema, (), parts, metas)
    return Partitioned(node.schema, node.by, parts, metas)


@_run.register
def _spmm(node: SpMM, inputs, runner, ctx) -> Partitioned:
    """Y(r) = sum_c E(r, c) X(c) by partition: E hashed on c meets X hashed on its key, the local
    sparse product gives partial sums by r, one piece per partition of r (each made from the
    edges whose r lands there, so no partition holds partial sums of every r at once), shuffled
    on r and summed; with ``rows``, only the r that ``rows`` holds are kept (after the sum, where
    ``rows`` is hashed on r too). Runners whose rules rewrite to SpMM implement
    ``run_product_pieces`` and ``run_sums``."""
    edges = runner.shuffle(node.edge, inputs[0], (node.col_key,), ctx)
    dense = runner.shuffle(node.dense, inputs[1], node.dense.schema.keys, ctx)
    stub = runner.put_stub(replace(node, rows=None))
    maps = [runner.run_product_pieces(p, stub, [edges[p], dense[p]]) for p in range(runner.partitions)]
    keep = None if node.rows is None else runner.shuffle(node.rows, inputs[2], node.rows.schema.keys, ctx)
    final = runner.put_stub(Aggregate(node.schema, node, (node.out_key,), "sum"))
    out = [runner.run_sums(p, final, [m[p] for m in maps], None if keep is None else keep[p])
           for p in range(runner.partitions)]
    return Partitioned(node.schema, (node.out_key,), [o[0] for o in out], [o[1] for o in out])


@_run.register
def _add(node: Add, inputs, runner, ctx) -> Partitioned:
    if not node.schema.keys:
        return runner.apply(node, [[[p] for p in t.parts] for t in inputs], (), only_first=True)
    by = inputs[0].by
    terms = [runner.shuffle(n, t, by, ctx) for n, t in zip(node.terms, inputs)]
    return runner.apply(node, terms, by)
