"""Resident partitions: the partitioned runner with one Ray actor per partition that keeps its
shards and a run's intermediates in its own memory across the steps of a training run.

The plan is laid out exactly as by the task runner (``workbench.execute.ray``: the same hash
placement, shuffles, broadcasts and partial sums, the local executor's function per node), but
where each node there is a task whose inputs and output pass through the object store, here:

    scan       a dataset (``wb.from_dataset``) is read by each actor from its own Parquet shards;
               the driver reads nothing; a dropout mask (``workbench.masks``) is drawn by each
               actor for the keys it holds. A relation built in memory is split on the driver and
               sent once per runner while it lives. A scan hashed on other columns than the
               dataset's is read again by the actors, filtered on the new hash, not shuffled.
    per node   an operation queued for the actor of each partition; the queue goes out as one
               call when another partition needs its data (a shuffle's map side, a broadcast, a
               gathered result), so a chain of per-partition operators is one call
    results    held by the actors (``slots``); only the outputs asked for are gathered, and only
               when read: a gradient of a partitioned parameter stays where it was computed, and
               ``update`` applies an optimizer step there
    keys       each actor reuses the key-side work of earlier steps whose key frames are equal
               (joins' matches, shuffles' routes; ``ray_actor``): a step recomputes values

Faults: an actor that dies is restarted by Ray (``max_restarts``); the run that lost it is run
again from the start once every actor answers, the actors reloading their shards from storage,
so its results are those of an undisturbed run. Partitioned parameters that ``update`` changed
live only in the actors: a fault then is an error naming them (gather them now and then, e.g.
``storage.write_relation(U.table(), ...)``, to restart from there).

Shuffles send a piece's keys once: later steps send its values and a number the receiver
looks the keys up by (``ray_actor.SentKeys``). After a lost actor or a failed run the driver
starts a new ``generation``, and every actor sends its keys again.

    with ResidentRunner(partitions=4) as runner:        # or wb.RayRunner
        loss, grads = wb.value_and_grad(f, argnums=(1, 2), executor=runner)(*rels)
        (U, V), state = runner.update((U, V), grads, "adam", state, lr=0.01)

Sums of edge-weighted node values (the GCN's Â H) run as the local sparse product per partition
(``rules`` adds ``passes.sparse_products``): edges hashed on their source meet the node values
hashed on their id, the partial sums by destination are shuffled and summed; no per-edge value
is formed, forward or backward.
"""
from __future__ import annotations

import itertools
import time
import weakref
from dataclasses import dataclass, replace

import polars as pl
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from workbench import passes
from workbench.execute.partition import concat_pieces, piece_table
from workbench.execute.ray import RULES, MetaAt, Partitioned, RayContext, RayRunner
from workbench.execute.ray_actor import MissingState, PartitionActor
from workbench.masks import MaskTable
from workbench.plan import Node, Scan
from workbench.progress import progress_bar
from workbench.storage import StoredTable
from workbench.table import ReadOnFirstUse, Table


@dataclass(frozen=True)
class Held:
    """A partition's piece held by the actor of partition ``p`` in ``slot``."""

    p: int
    slot: int


class _Batch:
    """Operations queued for one actor, sent as one call; ``ref()`` sends it if it is not yet."""

    def __init__(self, runner: "ResidentRunner", p: int):
        self.runner, self.p = runner, p
        self.ops: list = []
        self.args: list = []
        self.arg_index: dict = {}
        self.metas = None  # ObjectRef of the list of (rows, bytes), one per slot written
        self.n_metas = 0

    def arg(self, ref) -> int:
        key = id(ref) if not isinstance(ref, ray.ObjectRef) else ref
        if key not in self.arg_index:
            self.arg_index[key] = len(self.args)
            self.args.append(ref)
        return self.arg_index[key]

    def ref(self):
        if self.metas is None:
            self.runner._flush(self.p)
        return self.metas


class _Lease:
    """Slots that results of one run hold; freed on the actors when nothing refers to them."""

    def __init__(self, runner: "ResidentRunner"):
        self.slots: list[Held] = []
        self._finalizer = weakref.finalize(self, _free, weakref.ref(runner), self.slots)


def _helds(made) -> list:
    """The slots a stored partitioning holds (a Partitioned, or pieces per partition)."""
    if isinstance(made, Partitioned):
        return [h for h in made.parts if isinstance(h, Held)]
    return [h for group in made for h in group if isinstance(h, Held)]


def _free(runner_ref, slots: list) -> None:
    runner = runner_ref()
    if runner is not None:
        runner._free(slots)


@dataclass
class ResidentContext(RayContext):
    """A run's context on the resident runner: its slots' lease besides ``RayContext``."""

    lease: _Lease | None = None


EAGER_BYTES = 1 << 24  # results up to this size are gathered when their run ends


class PartitionedTable(ReadOnFirstUse):
    """A result left where it was computed: ``keys``/``values`` gather it on first read, and
    ``ResidentRunner.update`` reads ``rel`` without gathering."""

    def __init__(self, runner: "ResidentRunner", rel: Partitioned, lease: _Lease | None):
        self.runner, self.rel, self.lease = runner, rel, lease
        self._table: Table | None = None

    def table(self) -> Table:
        if self._table is None:
            try:
                self._table = self.runner._gather(self.rel)
            except FAULTS as exc:
                raise RuntimeError(f"ResidentRunner: a partition actor was lost before the result "
                                   f"{self.rel.schema.describe()} was read; run the step again") from exc
        return self._table

    @property
    def nbytes(self) -> int:
        return self.table().nbytes

    def to_frame(self, value: str = "value") -> pl.DataFrame:
        return self.table().to_frame(value)


# Errors that mean a worker (or what it held) was lost, not that the plan is wrong.
FAULTS = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError,
          MissingState)


class ResidentRunner(RayRunner):
    """Run plans over ``partitions`` resident partitions, one Ray actor each (a context manager;
    see the module docstring). ``address`` joins a running cluster (``ray start``) instead of
    starting Ray on loopback; ``max_restarts`` bounds how often Ray restarts a lost actor, and
    ``retries`` how often a run interrupted by a lost actor is run again. ``progress=True``
    shows a bar of the rows each partition's actor loads when a dataset is first read (the
    driver then waits for the loads before it queues more work)."""

    name = "ray-resident"
    # the task runner's rewrites and sparse products: a sum of edge-weighted node values is the
    # local SpMM per partition (partial sums by row, shuffled and summed), never per-edge values
    rules = RULES + (passes.sparse_products,)

    def __init__(self, partitions: int = 4, num_cpus: int | None = None, address: str | None = None,
                 max_restarts: int = 3, retries: int = 2, progress: bool | None = False, **ray_init):
        super().__init__(partitions, num_cpus, address, progress, **ray_init)
        self.max_restarts, self.retries = int(max_restarts), int(retries)
        self._actors: list = []
        self._batches: list[_Batch] = []
        self._slots = itertools.count(1)
        self._exports: dict = {}  # Held -> ObjectRef of its piece (sent, or exported by its actor)
        self._run_id = 0
        self._lease: _Lease | None = None
        self._resident: dict = {}  # id(table) of parameters changed by update -> their names
        self.restarts = 0  # runs run again after a lost actor
        self.generation = 0  # new after a lost actor or a failed run: keys are sent again
        self._pending: list = []  # the calls of the current run, waited for at its end

    # ---- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> "ResidentRunner":
        super().__enter__()
        try:
            self._actors = [self._new_actor(p) for p in range(self.partitions)]
            ray.get([a.ping.remote() for a in self._actors], timeout=300)
        except Exception as exc:
            self.close()
            raise RuntimeError(f"ResidentRunner: the {self.partitions} partition actors did not start "
                               f"({type(exc).__name__}: {exc}); check the cluster's free memory "
                               f"(each actor takes about 1 GiB) or use fewer partitions") from exc
        self._batches = [_Batch(self, p) for p in range(self.partitions)]
        return self

    def _new_actor(self, p: int):
        """Partition p's actor, placed on alive node p mod (nodes), round robin (Ray's soft
        placement put every actor on one node here). An actor whose node is lost is replaced
        on the nodes alive then (``_recover``)."""
        nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0)
        where = NodeAffinitySchedulingStrategy(nodes[p % len(nodes)], soft=False) if nodes else "SPREAD"
        return PartitionActor.options(max_restarts=self.max_restarts, max_task_retries=0, num_cpus=0,
                                      scheduling_strategy=where).remote(p)

    def close(self) -> None:
        for a in self._actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - Ray may be gone already
                pass
        self._actors, self._batches, self._exports = [], [], {}
        super().close()

    def pids(self) -> list[int]:
        """The process id of each partition's actor."""
        return ray.get([a.pid.remote() for a in self._actors])

    def held(self) -> list[tuple[int, int]]:
        """Per partition, the (slots, bytes) its actor holds once the queued operations (frees
        among them) have run: stored relations, results left on the actors, updated parameters."""
        for p in range(self.partitions):
            self._flush(p)
        return ray.get([a.held.remote() for a in self._actors])

    def actor(self, p: int):
        """The actor of partition ``p`` (a Ray actor handle)."""
        return self._actors[p]

    # ---- the run loop: faults run it again -----------------------------------------------------
    def context(self, stats: dict | None = None) -> ResidentContext:
        return ResidentContext(stats=stats, lease=_Lease(self))

    def run(self, outputs, ctx=None, optimize: bool = True):
        ctx = ctx if ctx is not None else self.context()
        if not self._actors:
            raise RuntimeError("ResidentRunner: the runner is not started; use it as a context manager "
                               "(`with ResidentRunner(partitions=4) as runner: ...`)")
        for attempt in itertools.count():
            self._run_id += 1
            self._lease = ctx.lease
            self._pending = []
            try:
                tables = super().run(outputs, ctx, optimize)
                for p in range(self.partitions):
                    self._flush(p)
                ray.get(self._pending)  # a lost actor shows here, inside the run
                return tables
            except FAULTS as exc:
                self.generation += 1
                self._raise_plan_errors()
                if attempt >= self.retries:
                    raise RuntimeError(
                        f"ResidentRunner: a partition actor was lost {attempt + 1} times in one run "
                        f"({type(exc).__name__}); giving up. Ray kills workers when its node runs out "
                        f"of memory (the raylet log says so): use more partitions or more machines, "
                        f"or raise retries=") from exc
                self._recover(exc)
                ctx.memo.clear()
                ctx.shuffles.clear()
                if ctx.stats is not None:
                    ctx.stats.clear()
            except Exception:  # a piece sent in this run may not have been received
                self.generation += 1
                raise
            finally:
                self._lease = None

    def _raise_plan_errors(self) -> None:
        """A lost slot may follow an error of the plan itself (an operation that failed in a
        batch): raise that error, not a fault."""
        for ref in self._pending:
            try:
                ray.get(ref)
            except FAULTS:
                continue
            except Exception:  # noqa: BLE001 - re-raised as it is
                raise

    def _recover(self, exc) -> None:
        """Wait until every actor answers (Ray restarts lost ones; one past its restarts is
        replaced), drop what the driver knows of their memory, and clear their slots."""
        if self._resident:
            raise RuntimeError(
                f"ResidentRunner: a partition actor was lost ({type(exc).__name__}), and the partitioned "
                f"parameters {sorted(set(self._resident.values()))} that update() changed lived only "
                f"there. Restart training from the last parameters you gathered (to_tensor/to_frame) "
                f"or keep parameters on the driver.") from exc
        self.restarts += 1
        deadline = time.monotonic() + 120
        for p in range(self.partitions):
            while True:
                try:
                    ray.get(self._actors[p].ping.remote(), timeout=30)
                    break
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    if time.monotonic() > deadline:
                        self._actors[p] = self._new_actor(p)
                        deadline = time.monotonic() + 120
                    time.sleep(0.2)
        stale = [h for _, entry in self._stored.values() for made in entry.values() for h in _helds(made)]
        self._stored.clear()  # the stored relations are read (or sent) again
        self._exports.clear()
        self._batches = [_Batch(self, p) for p in range(self.partitions)]
        self._free(stale)

    def execute(self, outputs: list[Node], ctx: ResidentContext) -> None:
        super().execute(outputs, ctx)
        for p in range(self.partitions):  # start what is queued
            self._flush(p)

    def finish(self, ctx: ResidentContext, tables) -> None:
        """Free every slot ``ctx``'s runs wrote (the forward's intermediates, the backward's) but
        those of ``tables``, which move to a lease of their own."""
        lease = ctx.lease
        if lease is None:
            return
        kept = _Lease(self)
        for t in tables:  # a gathered result keeps its slots too: ``update`` reads them there
            if isinstance(t, PartitionedTable) and t.lease is lease:
                kept.slots.extend(h for h in t.rel.parts if isinstance(h, Held))
                t.lease = kept
        held = set(kept.slots)
        done = [h for h in lease.slots if h not in held]
        lease.slots.clear()
        self._free(done)

    def collect(self, result: Partitioned):
        """A result stays with the actors; a keyless or small one (a loss, a weight's gradient) is
        gathered now, inside the run, so a lost actor cannot take it later."""
        t = PartitionedTable(self, result, self._lease)
        if not result.schema.keys or sum(b for _, b in result.sizes()) <= EAGER_BYTES:
            t._table = self._gather(result)
        return t

    # ---- queues and slots ---------------------------------------------------------------------
    def _slot(self, p: int) -> Held:
        h = Held(p, next(self._slots))
        (self._lease.slots if self._lease is not None else self._keep).append(h)
        return h

    @property
    def _keep(self) -> list:  # slots outside a run: freed with the runner
        return []

    def _enqueue(self, p: int, op: tuple) -> MetaAt:
        """Queue an operation that writes a slot; its (rows, bytes) come back with the batch."""
        batch = self._batches[p]
        batch.ops.append(op)
        batch.n_metas += 1
        return MetaAt(batch, batch.n_metas - 1)

    def _flush(self, p: int, n_out: int = 0) -> list:
        """Send actor ``p``'s queued operations as one call; returns the last one's outputs."""
        batch = self._batches[p]
        self._batches[p] = _Batch(self, p)
        if not batch.ops:
            batch.metas = ray.put([])
            return []
        out = self._actors[p].run.options(num_returns=1 + n_out).remote(
            self._run_id, self.generation, self._x64, batch.ops, *batch.args)
        if n_out:
            batch.metas, outs = out[0], list(out[1:])
        else:
            batch.metas, outs = out, []
        self._pending.append(batch.metas)
        return outs

    def _spec(self, p: int, piece, batch: _Batch) -> tuple[str, int]:
        """How the actor of ``p`` reads ``piece``: a slot it holds, or an argument of the call."""
        if isinstance(piece, Held):
            if piece.p == p:
                return "slot", piece.slot
            ref = self._exports.get(piece)
            if ref is None:  # held by another partition: exported once (a broadcast)
                self._batches[piece.p].ops.append(("export", piece.slot))
                (ref,) = self._flush(piece.p, 1)
                self._exports[piece] = ref
            return "arg", batch.arg(ref)
        return "arg", batch.arg(piece)

    def _specs(self, p: int, groups: list[list]) -> list:
        batch = self._batches[p]
        specs = [[self._spec(p, x, batch) for x in g] for g in groups]
        return specs, self._batches[p]  # exporting may not flush p's own batch: it is unchanged

    def _free(self, slots: list) -> None:
        if not self._actors or not ray.is_initialized():
            return
        by_p: dict[int, list] = {}
        for h in slots:
            by_p.setdefault(h.p, []).append(h.slot)
            self._exports.pop(h, None)
        for p, s in by_p.items():
            if p < len(self._batches):
                self._batches[p].ops.append(("free", s))

    # ---- the primitives of the task runner, as actor operations ------------------------------------
    def put_stub(self, node: Node):
        return super().put_stub(node)

    def put_piece(self, p: int, piece):
        ref = ray.put(piece)
        h = self._slot(p)
        batch = self._batches[p]
        self._enqueue(p, ("put", h.slot, batch.arg(ref)))
        self._exports[h] = ref  # other partitions read the driver's copy
        return h

    def run_apply(self, p: int, stub, groups: list[list]):
        specs, batch = self._specs(p, groups)
        h = self._slot(p)
        return h, self._enqueue(p, ("apply", h.slot, batch.arg(stub), specs))

    def run_split(self, part: Held, cols: tuple[str, ...]) -> list:
        self._batches[part.p].ops.append(("split", part.slot, tuple(cols), self.partitions))
        return self._flush(part.p, self.partitions)

    def run_gather(self, p: int, check, pieces: list, stored: bool = False):
        """Concatenate ``pieces`` in partition p; ``stored``: a stored relation hashed anew, held
        while the relation lives and read as one table every step (its CSR and cuts kept)."""
        specs, batch = self._specs(p, [pieces])
        h = self._slot(p)
        return h, self._enqueue(p, ("gather", h.slot, None if check is None else batch.arg(check), specs,
                                    stored))

    def run_partial(self, part: Held, stub, mean: bool) -> list:
        batch = self._batches[part.p]
        batch.ops.append(("partial", part.slot, batch.arg(stub), mean, self.partitions))
        return self._flush(part.p, self.partitions)

    def run_final(self, p: int, stub, mean: bool, pieces: list):
        specs, batch = self._specs(p, [pieces])
        h = self._slot(p)
        return h, self._enqueue(p, ("final", h.slot, batch.arg(stub), mean, specs))

    def release(self, parts: list) -> None:
        self._free([h for h in parts if isinstance(h, Held)])

    def run_product_pieces(self, p: int, stub, groups: list[list]) -> list:
        """Partition p's sparse product (edges, dense) as partial sums cut by the hash of the
        output key: one piece per partition, each put in the object store as it is made."""
        specs, batch = self._specs(p, groups)
        self._batches[p].ops.append(("product", batch.arg(stub), specs, self.partitions))
        return self._flush(p, self.partitions)

    def run_sums(self, p: int, stub, pieces: list, keep: list | None):
        """Sum partial sums by the stub's group keys, keeping only groups ``keep`` holds."""
        groups = [pieces] + ([keep] if keep is not None else [])
        specs, batch = self._specs(p, groups)
        h = self._slot(p)
        return h, self._enqueue(p, ("sums", h.slot, batch.arg(stub), specs))

    def _gather(self, rel: Partitioned) -> Table:
        refs = []
        for part in rel.parts:
            ref = self._exports.get(part)
            if ref is None:
                self._batches[part.p].ops.append(("export", part.slot))
                (ref,) = self._flush(part.p, 1)
            refs.append(ref)
        return piece_table(concat_pieces(ray.get(refs)))

    def gather_parts(self, rel: Partitioned) -> Table:
        return self._gather(rel)

    # ---- stored relations ----------------------------------------------------------------------------
    def scan(self, node: Scan) -> Partitioned:
        table = node.table
        if isinstance(table, PartitionedTable) and table.runner is self:  # a result or an updated parameter
            return replace(table.rel, schema=node.schema)
        if isinstance(table, MaskTable):  # drawn by each actor for the keys of its partition of like
            return replace(self.stored(table, None, lambda: self._mask(node, table)), schema=node.schema)
        if not isinstance(table, StoredTable):
            return super().scan(node)
        meta = table.dataset.meta
        by = meta.hash_by if meta.keys else ()
        return replace(self.stored(table, None, lambda: self._load(node, table, by)), schema=node.schema)

    def _mask(self, node: Scan, table: MaskTable) -> Partitioned:
        """A dropout mask drawn by each actor over the keys of its partition of ``table.like``."""
        like = self.scan(table.like)
        parts, metas = [], []
        for p in range(self.partitions):
            h = self._slot(p)
            metas.append(self._enqueue(p, ("mask", h.slot, like.parts[p].slot, table.spec)))
            parts.append(h)
        return Partitioned(node.schema, like.by, parts, metas)

    def _load(self, node: Scan, table: StoredTable, cols: tuple[str, ...]) -> Partitioned:
        """Each actor reads its partition of a dataset, hashed on ``cols``."""
        parts, metas = [], []
        for p in range(self.partitions):
            h = self._slot(p)
            metas.append(self._enqueue(p, ("load", h.slot, str(table.dataset.path), self.partitions,
                                           tuple(cols), table.dtype)))
            parts.append(h)
        if self.progress:
            self._show_loads(node, table, cols, metas)
        return Partitioned(node.schema, tuple(cols), parts, metas)

    def _show_loads(self, node: Scan, table: StoredTable, cols: tuple[str, ...], metas: list[MetaAt]) -> None:
        """A bar of the rows loaded, advanced as each partition's actor reports its load."""
        refs = {m.object_ref(): (p, m.index) for p, m in enumerate(metas)}  # sends the loads
        waiting = list(refs)
        hashed = f" hashed on {', '.join(cols)}" if cols else ""
        desc = f"loading {node.display_name}{hashed} into {self.partitions} partitions"
        with progress_bar(table.dataset.rows, desc, self.progress, unit="rows") as bar:
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                p, index = refs[done[0]]
                rows = ray.get(done[0])[index][0]
                bar.update(rows, partition=p, rows=f"{rows:,}")

    def stored(self, table, cols, make):
        """As the task runner's, with the slots held for the table's lifetime, not the run's."""
        def held():
            made = make()
            weakref.finalize(table, _free, weakref.ref(self), _helds(made))
            return made
        lease, self._lease = self._lease, None
        try:
            return super().stored(table, cols, held)
        finally:
            self._lease = lease

    def shuffle(self, node: Node, rel: Partitioned, cols: tuple[str, ...], ctx) -> list:
        if rel.by == cols:
            return [[p] for p in rel.parts]
        if isinstance(node, Scan) and isinstance(node.table, StoredTable):  # read again, not shuffled
            loaded = self.stored(node.table, cols, lambda: self._load(node, node.table, cols))
            return [[p] for p in loaded.parts]
        if isinstance(node, Scan) and not isinstance(node.table, PartitionedTable):
            def make():  # hashed on cols once, and held by the actors while the table lives
                maps = self._hash_split(rel, cols)
                return [[self.run_gather(p, None, maps[p], stored=True)[0]] for p in range(self.partitions)]
            return self.stored(node.table, cols, make)
        if (node, cols) not in ctx.shuffles:
            maps = self._hash_split(rel, cols)
            ctx.shuffles[(node, cols)] = [[self.run_gather(p, None, maps[p])[0]] for p in range(self.partitions)]
        return ctx.shuffles[(node, cols)]

    # ---- optimizer steps where the partitions live ----------------------------------------------------
    def update(self, params, grads, rule: str, state=None, **hyper):
        """One optimizer step of partitioned parameters, run by the actors that hold them:
        ``params`` are relations (in memory, datasets, or earlier results of ``update``), ``grads``
        their gradients as ``wb.value_and_grad(..., executor=runner)`` returned them (not read:
        they never leave the actors). ``rule`` is "sgd" (``lr``, ``momentum``) or "adam" (``lr``,
        ``b1``, ``b2``, ``eps``); ``nonnegative=True`` projects onto p >= 0 after the step (NNMF's
        projected gradient). Returns (new parameter relations, state); pass the state back on the
        next step. The new relations' values stay on the actors until read."""
        hyper = {"lr": 0.01, "momentum": 0.0, "b1": 0.9, "b2": 0.999, "eps": 1e-8, **hyper}
        if rule not in ("sgd", "adam"):
            raise ValueError(f"ResidentRunner.update: rule must be 'sgd' or 'adam', got {rule!r}")
        if len(params) != len(grads):
            raise ValueError(f"ResidentRunner.update: {len(params)} parameters but {len(grads)} gradients")
        step = (state or {}).get("step", 0) + 1
        out = []
        for param, g in zip(params, grads):
            gt = g.table()
            if not isinstance(gt, PartitionedTable) or gt.runner is not self:
                raise ValueError(f"ResidentRunner.update: the gradient of '{param.name}' was not computed "
                                 f"by this runner; compute it with executor=runner")
            if not param.keys:
                raise ValueError(f"ResidentRunner.update: '{param.name}' has no keys (one tuple); update "
                                 f"it on the driver with workbench.optim")
            if gt.rel.schema.value_shape != param.value_shape or set(gt.rel.schema.keys) != set(param.keys):
                raise ValueError(f"ResidentRunner.update: gradient {gt.rel.schema.describe()} does not match "
                                 f"parameter '{param.name}' {param.schema.describe()}")
            scan = Scan(param.schema, param.node.table, name=param.name) if isinstance(param.node, Scan) \
                else Scan(param.schema, param.table(), name=param.name)
            lease, self._lease = self._lease, None
            try:
                prel = self.scan(scan)
                new_lease = _Lease(self)  # the new values' slots, and the gradient's reshuffled copy
                self._lease = new_lease
                grel = gt.rel
                gparts = grel.parts if grel.by == prel.by else [
                    self.run_gather(p, None, m)[0] for p, m in enumerate(self._hash_split(grel, prel.by))]
                parts, metas = [], []
                for p in range(self.partitions):
                    h = self._slot(p)
                    parts.append(h)
                    metas.append(self._enqueue(p, ("update", h.slot, prel.parts[p].slot, gparts[p].slot, rule,
                                                   hyper, step)))
            finally:
                self._lease = lease
            rel = Partitioned(param.schema, prel.by, parts, metas)
            table = PartitionedTable(self, rel, new_lease)
            self._resident[id(table)] = param.name
            weakref.finalize(table, self._resident.pop, id(table), None)
            out.append(type(param)(Scan(param.schema, table, name=param.name)))
        for p in range(self.partitions):
            self._flush(p)
        return tuple(out), {"step": step}
