"""The resident partition: one Ray actor per partition that holds its shards and a run's
intermediates in its own memory (``slots``), runs a batch of per-partition operations per call,
and keeps the key-side work of a training run between its steps.

Operations (``run``'s ``ops``), each naming slots by the driver's numbers:

    load     read partition p of a dataset from its Parquet shards (the actor reads; nothing
             crosses the driver)
    put      hold a piece the driver sent (a relation built in memory)
    mask     draw a dropout mask over the keys of a held slot (``workbench.masks``)
    apply    the local executor's function for one plan node over held slots and received pieces
    gather   concatenate received pieces (a shuffle's reduce side), optionally checking keys unique
    final    sum partial sums (and counts, for a mean) received from every partition
    split    a held slot cut into P pieces by a hash of some key columns: the call's outputs
    partial  partial sums (and counts) of a held slot, cut by the group keys: the call's outputs
    product  a sparse product's partial sums, one piece per partition of its output key, each
             made from the edges whose row lands there and put in the object store as it is made
             (the call's outputs are their references), so one piece is held at a time
    sums     sum the pieces of partial sums received from every partition (one gather-add pass)
    export   a held slot as a piece: the call's output (a broadcast, or a gathered result)
    update   an optimizer step of a held parameter partition with its gradient, in place
    free     drop slots

Key-side work once per run: every key frame that enters or leaves an operation is replaced by an
equal frame the actor already holds (``_canon``: same columns, height and content), and the plan
node an operation runs reads stub scans chosen by the identity of those frames. The local
executor caches a join's match under its input nodes, so a step whose key frames equal the last
step's reuses every match (and a split reuses its routes, a sparse product its matrix and
output keys, a sum of received pieces its group ids): only values are recomputed.

Keys cross between actors once: a piece one actor sends another carries its key frame the first
time and afterwards only a number (``SentKeys``); the receiver keeps the frames it was sent. A
repeated shuffle thus moves values only. Entries not used in the last few runs are dropped, on
both sides alike; a new ``generation`` (the driver's, after a lost actor or a failed run) drops
them all, so keys are sent again. A piece an actor sends itself stays in its memory (``Stashed``).
Values an operation computes stay JAX arrays in the slots, so the next operation reads them
without a copy; they become numpy only to leave the actor.
"""
from __future__ import annotations

import functools
import itertools
import os
import time
from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import ray

from workbench import sparse
from workbench.errors import PlanError
from workbench.execute.local import LocalContext, check_unique, group_ids, run_node
from workbench.execute.partition import concat_pieces, destinations, empty_piece, piece_meta, table_piece
from workbench.masks import dropout_values
from workbench.plan import Node, Scan
from workbench.storage import Dataset
from workbench.table import Table

WRITES = ("load", "put", "mask", "apply", "gather", "final", "sums", "update")  # operations that write a slot
KEEP_RUNS = 4  # cached key frames, matches and routes unused for this many runs are dropped


class MissingState(RuntimeError):
    """A slot the driver names is not held here: the actor restarted and lost its memory. The
    driver reloads the partitions and runs the step again."""


@dataclass(frozen=True)
class Stashed:
    """A piece an actor sends itself: kept in its memory (``_stash``) until read, not copied
    through the object store."""

    number: int


@dataclass(frozen=True)
class SentKeys:
    """The key frame of a piece one actor sends another: the frame itself (``keys``) the first
    time, afterwards only its ``number``; the receiver looks it up by (sender, number)."""

    sender: int
    number: int
    keys: pl.DataFrame | None = None


class Partition:
    """One partition's state and operations (a plain class; ``PartitionActor`` runs it in Ray)."""

    def __init__(self, index: int):
        self.index = index
        self.incarnation = time.time_ns()  # a restarted actor has a new one
        self.slots: dict[int, tuple] = {}  # slot -> piece (keys, values[, more arrays])
        self.ctx = LocalContext()  # its ``matches`` persist across the steps of a run
        self._frames: dict[tuple, list] = {}  # (columns, height) -> canonical frames
        self._used: dict[int, int] = {}  # id(canonical frame) -> the last run that used it
        self._stubs: dict[tuple, Scan] = {}  # (id(frame), schema, name) -> stub scan
        self._routes: dict[tuple, tuple] = {}  # (id(frame), cols, parts) -> (order, bounds)
        self._cuts: dict[tuple, tuple] = {}  # (id(frame), col, parts) -> (stored edge table, its cut by col's hash)
        self._slices: dict[tuple, list] = {}  # (id(frame), cols, parts) -> the frame's rows per partition
        # entries [objects the key holds the ids of, value, last run]: dropped when unused for KEEP_RUNS runs
        self._sent: dict[tuple, list] = {}  # (id(frame), partition) -> [frame, number, run]
        self._received: dict[tuple, list] = {}  # (sender, number) -> [frame, run]
        self._concats: dict[tuple, list] = {}  # ids of key frames -> [frames, their concatenation, run]
        self._groups: dict[tuple, list] = {}  # ids of key frames -> [frames, a sum's plan (or a semi-join's rows), run]
        self._products: dict[tuple, list] = {}  # (id(edge cut), id(dense keys)) -> [objects, Product, run]
        self._numbers = itertools.count()
        self._stash: dict[int, tuple] = {}  # number -> a piece this actor sent itself, until read
        self.generation = 0
        self._empty = pl.DataFrame()
        self.run_id = 0
        self.params: dict[int, dict] = {}  # slot -> optimizer state of a held parameter
        self.failed: dict[int, Exception] = {}  # slot -> the error of the operation that was to write it
        self.stored: set[int] = set()  # slots of stored relations (loaded or sent): read every step
        self._slot_tables: dict[int, Table] = {}  # their Tables, made once
        self._in_cut_order: set[int] = set()  # stored slots whose rows were put in the order of a cut

    # ---- key identity ------------------------------------------------------------------------
    def _canon(self, frame: pl.DataFrame) -> pl.DataFrame:
        """An equal frame this actor already holds, else ``frame`` itself, remembered."""
        if not frame.width:
            return self._empty
        bucket = self._frames.setdefault((tuple(frame.columns), frame.height), [])
        for f in bucket:
            if f is frame:
                self._used[id(f)] = self.run_id
                return f
        for f in bucket:
            if f.equals(frame):
                self._used[id(f)] = self.run_id
                return f
        bucket.append(frame)
        self._used[id(frame)] = self.run_id
        if len(bucket) > 16:  # many distinct frames of one shape: forget the oldest
            self._drop_frames({id(bucket[0])})
        return frame

    def _stub(self, keys: pl.DataFrame, height: int, node: Node) -> Scan:
        """The stub scan an operation's input is: one per (key frame, schema), so the local
        executor's match cache (keyed by input nodes) is keyed by the key frames."""
        k = (id(keys), height if not keys.width else -1, node.schema, node.display_name)
        stub = self._stubs.get(k)
        if stub is None:
            stub = self._stubs[k] = Scan(node.schema, None, name=node.display_name)
        return stub

    def _drop_frames(self, ids: set) -> None:
        for key in list(self._frames):
            self._frames[key] = [f for f in self._frames[key] if id(f) not in ids]
            if not self._frames[key]:
                del self._frames[key]
        for i in ids:
            self._used.pop(i, None)
        dead = {s for k, s in self._stubs.items() if k[0] in ids}
        self._stubs = {k: s for k, s in self._stubs.items() if k[0] not in ids}
        self._routes = {k: r for k, r in self._routes.items() if k[0] not in ids}
        self._cuts = {k: c for k, c in self._cuts.items() if k[0] not in ids}
        self._slices = {k: c for k, c in self._slices.items() if k[0] not in ids}
        if dead:
            self.ctx.matches = {k: m for k, m in self.ctx.matches.items() if not _mentions(k, dead)}

    def _begin(self, run_id: int, generation: int) -> None:
        if generation != self.generation:  # the driver recovered: every actor sends keys anew
            self.generation = generation
            self._sent.clear()
            self._received.clear()
        if run_id != self.run_id:
            self.run_id = run_id
            self._stash.clear()  # pieces of an earlier run that nothing read (it failed)
            old = {i for i, r in self._used.items() if r < run_id - KEEP_RUNS}
            if old:
                self._drop_frames(old)
            for recent in (self._sent, self._received, self._concats, self._groups, self._products):
                for k in [k for k, e in recent.items() if e[-1] < run_id - KEEP_RUNS]:
                    del recent[k]

    def _recent(self, cache: dict, objects: tuple, make, extra=()):
        """``cache``'s value for ``objects`` (keyed by their identities, and ``extra``), made by
        ``make()`` when absent; marked used in this run."""
        key = (*map(id, objects), *extra)
        entry = cache.get(key)
        if entry is None or any(a is not b for a, b in zip(entry[0], objects)):
            entry = cache[key] = [objects, make(), self.run_id]
        entry[-1] = self.run_id
        return entry[1]

    # ---- keys between actors ---------------------------------------------------------------------
    def _send(self, piece, q: int):
        """``piece`` as sent to partition q: its keys as ``SentKeys``, the frame itself only the
        first time this frame goes to q; to this partition itself, ``Stashed``."""
        if q == self.index:
            number = next(self._numbers)
            self._stash[number] = piece
            return Stashed(number)
        keys = piece[0]
        if not keys.width or not keys.height:
            return piece
        entry = self._sent.get((id(keys), q))
        if entry is not None and entry[0] is keys:
            entry[-1] = self.run_id
            return (SentKeys(self.index, entry[1]), *piece[1:])
        number = next(self._numbers)
        self._sent[(id(keys), q)] = [keys, number, self.run_id]
        return (SentKeys(self.index, number, keys), *piece[1:])

    def _receive(self, piece):
        """A piece another actor sent, with its key frame looked up (``_send``)."""
        if isinstance(piece, Stashed):
            return self._unstash(piece)
        sent = piece[0]
        if not isinstance(sent, SentKeys):
            return piece
        k = (sent.sender, sent.number)
        if sent.keys is not None:
            self._received[k] = [self._canon(sent.keys), self.run_id]
        elif k not in self._received:
            raise MissingState(f"partition {self.index}: the keys numbered {sent.number} that partition "
                               f"{sent.sender} sent earlier are not held here (the worker restarted)")
        entry = self._received[k]
        entry[-1] = self.run_id
        return (entry[0], *piece[1:])

    def _concat(self, pieces: list):
        """One piece from several; the concatenation of the same key frames is made once."""
        if len(pieces) == 1 or not pieces[0][0].width:
            return concat_pieces(pieces)
        frames = tuple(p[0] for p in pieces)
        keys = self._recent(self._concats, frames, lambda: self._canon(pl.concat(frames)))
        return (keys, *(np.concatenate([p[i] for p in pieces]) for i in range(1, len(pieces[0]))))

    # ---- the operations ------------------------------------------------------------------------
    def _piece(self, slot: int):
        try:
            return self.slots[slot]
        except KeyError:
            if slot in self.failed:  # an earlier operation failed: the same error, not a fault
                raise self.failed[slot] from None
            raise MissingState(f"partition {self.index}: slot {slot} is not held (the worker "
                               f"restarted)") from None

    def _hold(self, slot: int, piece) -> tuple[int, int]:
        keys = self._canon(piece[0])
        piece = (keys, *piece[1:])
        self.slots[slot] = piece
        return piece_meta(piece)

    def _inputs(self, specs, args):
        """The pieces named by ``specs``: per input, a list of ("slot", n) or ("arg", i). A stored
        relation's slot alone comes as its one Table (the same object every step, so caches keyed
        by the table, such as a sparse product's CSR, persist)."""
        out = []
        for group in specs:
            if len(group) == 1 and group[0][0] == "slot" and group[0][1] in self.stored:
                slot = group[0][1]
                if slot not in self._slot_tables:  # the slot then holds the Table's array: one copy
                    piece = self._piece(slot)
                    self._slot_tables[slot] = Table(piece[0], jnp.asarray(piece[1]))
                    self.slots[slot] = (piece[0], self._slot_tables[slot].values, *piece[2:])
                out.append(self._slot_tables[slot])
                continue
            pieces = self._pieces(group, args)
            out.append(self._concat(pieces) if pieces else None)
        return out

    def _pieces(self, group, args) -> list:
        """The pieces one input's specs name; a piece another actor put in the object store
        comes as its reference and is read from there (zero-copy for its arrays)."""
        pieces = [self._piece(v) if kind == "slot" else args[v] for kind, v in group]
        return [self._receive(ray.get(x) if isinstance(x, ray.ObjectRef) else x) for x in pieces]

    def _unstash(self, x: Stashed):
        try:
            return self._stash.pop(x.number)
        except KeyError:
            raise MissingState(f"partition {self.index}: the piece it sent itself (number {x.number}) is not "
                               f"held here (the worker restarted)") from None

    def run(self, run_id: int, generation: int, x64: bool, ops: list, args: tuple):
        """Run ``ops`` in order; returns (metas of the slots written, outputs of the last op)."""
        if jax.config.read("jax_enable_x64") != x64:
            jax.config.update("jax_enable_x64", x64)
        self._begin(run_id, generation)
        metas, outputs = [], []
        for at, op in enumerate(ops):
            try:
                self._run_op(op, args, metas, outputs)
            except Exception as exc:  # the slots this batch was to write fail with the same error
                for later in ops[at:]:
                    if later[0] in WRITES:
                        self.failed[later[1]] = exc
                raise
        return metas, outputs

    def _run_op(self, op: tuple, args: tuple, metas: list, outputs: list) -> None:
        kind = op[0]
        if kind == "load":
            _, slot, path, parts, cols, dtype = op
            t = Dataset(path).read_partition(self.index, parts, cols, dtype)
            metas.append(self._hold(slot, table_piece(t)))
            self.stored.add(slot)
        elif kind == "put":
            _, slot, arg = op
            metas.append(self._hold(slot, args[arg]))
            self.stored.add(slot)
        elif kind == "mask":
            _, slot, like_slot, (seed, p, value_shape, dtype) = op
            keys = self._piece(like_slot)[0]
            metas.append(self._hold(slot, (keys, np.asarray(dropout_values(keys, seed, p, value_shape, dtype)))))
        elif kind == "apply":
            _, slot, node_arg, specs = op
            metas.append(self._hold(slot, self._apply(args[node_arg], self._inputs(specs, args))))
        elif kind == "gather":
            _, slot, check_arg, specs, stored = op
            (piece,) = map(_as_piece, self._inputs(specs, args))
            if check_arg is not None:
                check = args[check_arg]
                check_unique(piece[0], int(piece[1].shape[0]), check, f"{check.kind} '{check.display_name}'")
            metas.append(self._hold(slot, piece))
            if stored:  # a stored relation hashed anew: read as one table every step
                self.stored.add(slot)
        elif kind == "final":
            _, slot, node_arg, mean, specs = op
            metas.append(self._hold(slot, self._final(args[node_arg], mean, _as_piece(self._inputs(specs, args)[0]))))
        elif kind == "sums":
            _, slot, node_arg, specs = op
            keep = self._inputs(specs[1:], args)[0] if len(specs) > 1 else None
            metas.append(self._hold(slot, self._sums(args[node_arg], self._pieces(specs[0], args), keep)))
        elif kind == "product":
            _, node_arg, specs, parts = op
            outputs.extend(self._product_pieces(args[node_arg], self._inputs(specs, args), parts))
        elif kind == "split":
            _, slot, cols, parts = op
            outputs.extend(self._split(self._piece(slot), cols, parts))
        elif kind == "partial":
            _, slot, node_arg, mean, parts = op
            outputs.extend(self._partial(args[node_arg], mean, self._piece(slot), parts))
        elif kind == "export":
            piece = self._piece(op[1])
            outputs.append((piece[0], *(np.asarray(a) for a in piece[1:])))
        elif kind == "update":
            _, slot, param_slot, grad_slot, rule, hyper, step = op
            metas.append(self._update(slot, param_slot, grad_slot, rule, hyper, step))
        elif kind == "free":
            for s in op[1]:
                self.slots.pop(s, None)
                self.params.pop(s, None)
                self.failed.pop(s, None)
                self.stored.discard(s)
                self._in_cut_order.discard(s)
                table = self._slot_tables.pop(s, None)
                if table is not None:  # and the cuts of it
                    self._cuts = {k: c for k, c in self._cuts.items() if c[0] is not table}
        else:
            raise ValueError(f"partition {self.index}: unknown operation {kind!r}")

    def _tables(self, node: Node, pieces) -> tuple[Node, list[Table]]:
        tables, stubs = [], []
        for i, piece in zip(node.inputs, pieces):
            if isinstance(piece, Table):
                t = piece
                keys = t.keys
            else:
                keys = self._canon(piece[0])
                t = Table(keys, jnp.asarray(piece[1]))
            tables.append(t)
            stubs.append(self._stub(keys, t.height, i))
        return node.with_inputs(stubs), tables

    def _apply(self, node: Node, pieces):
        """The node's local function; its values stay in JAX for the operations that read them."""
        node, tables = self._tables(node, pieces)
        t = run_node(node, tables, self.ctx)
        return t.keys, t.values

    def _split(self, piece, cols: tuple[str, ...], parts: int) -> list:
        """``piece`` cut by the hash of ``cols``, piece q to be sent to partition q: its route (row
        order and bounds) and the keys of each cut are computed once per key frame."""
        keys = self._canon(piece[0])
        order, bounds = self._route(keys, cols, int(piece[1].shape[0]), parts)
        if keys.width:
            sliced = self._slices.get((id(keys), cols, parts))
            if sliced is None:
                sliced = self._slices[(id(keys), cols, parts)] = [
                    keys[order[bounds[q]:bounds[q + 1]]] for q in range(parts)]
        else:
            sliced = [keys] * parts
        return [self._send((sliced[q], *(np.asarray(a)[order[bounds[q]:bounds[q + 1]]] for a in piece[1:])), q)
                for q in range(parts)]

    def _partial(self, node: Node, mean: bool, piece, parts: int) -> list:
        node, (t,) = self._tables(node, [piece])
        sums = run_node(node, [t], self.ctx)
        out = (sums.keys, np.asarray(sums.values))
        if mean:
            counts = run_node(node, [Table(t.keys, jnp.ones(t.height, t.values.dtype))], self.ctx)
            out = (*out, np.asarray(counts.values))
        return self._split(out, node.by, parts)

    def _final(self, node: Node, mean: bool, piece):
        node, (t,) = self._tables(node, [piece[:2]])
        sums = run_node(node, [t], self.ctx)
        values = np.asarray(sums.values)
        if mean:
            counts = np.asarray(run_node(node, [Table(t.keys, jnp.asarray(piece[2]))], self.ctx).values)
            if not node.by and not counts.any():
                raise PlanError(f"aggregate mean over '{node.input.display_name}': the relation is empty, "
                                f"so its mean is undefined")
            values = values / counts.reshape((-1,) + (1,) * (values.ndim - 1))  # mean = sum / |group|
        return sums.keys, values

    def _route(self, keys: pl.DataFrame, cols: tuple[str, ...], n: int, parts: int) -> tuple:
        """Rows ordered by the partition of their ``cols`` hash, and each partition's bounds in
        that order; computed once per key frame."""
        route = self._routes.get((id(keys), cols, parts))
        if route is None or not keys.width:
            dest = destinations(keys, cols, n, parts)
            order = np.argsort(dest, kind="stable")
            route = (order, np.searchsorted(dest[order], np.arange(parts + 1)))
            if keys.width:
                self._routes[(id(keys), cols, parts)] = route
        return route

    def _product_pieces(self, node, inputs, parts: int) -> list:
        """Y(r) = sum_c M[r, c] X(c) over this partition's edges, as one piece per partition q of
        r: Y_q = M_q X, M_q the edges whose r hashes to q (cut once per edge table, so each cut
        keeps its CSR from step to step). Each Y_q is put in the object store as soon as it is
        made; the references are returned."""
        edge, dense = inputs
        if not isinstance(dense, Table):
            dense = Table(self._canon(dense[0]), jnp.asarray(dense[1]))
        keys = edge.keys if isinstance(edge, Table) else self._canon(edge[0])
        key = (id(keys), node.row_key, parts)
        held = self._cuts.get(key)
        held_cut = isinstance(edge, Table)  # a stored edge table: its cuts never change
        slot = next((s for s, t in self._slot_tables.items() if t is edge), None) if held_cut else None
        if held is not None and held[0] is edge:  # cut in an earlier step
            cut = held[1]
        elif slot is not None and slot not in self._in_cut_order:
            edge, cut = self._cut_in_place(slot, edge, node.row_key, parts)
        else:  # each cut's values go to JAX once, from the piece's (or stored table's) array
            values = np.asarray(edge.values if isinstance(edge, Table) else edge[1])
            order, bounds = self._route(keys, (node.row_key,), len(values), parts)
            cut = []
            for q in range(parts):
                rows = order[bounds[q]:bounds[q + 1]]
                cut.append(Table(keys[rows], jnp.asarray(values[rows])))
            if held_cut:
                self._cuts[key] = (edge, cut)
        refs = []
        for q, e in enumerate(cut):
            if not e.height:
                piece = empty_piece(node.schema)
            else:  # the key side of M_q X (matrix, lookups, output keys): once per dense key frame for a stored cut
                def make(e=e):
                    return sparse.product(e, node.row_key, node.col_key, node.shape, dense, node.out_key)
                p = self._recent(self._products, (e, dense.keys), make, (node.row_key, node.col_key, node.shape,
                                 node.out_key)) if held_cut else make()
                if p.value_shape != dense.values.shape[1:]:  # the same keys, values of another shape
                    p = replace(p, value_shape=tuple(dense.values.shape[1:]))
                piece = table_piece(sparse.product_table(p, dense.values))
            sent = self._send(piece, q)
            refs.append(sent if isinstance(sent, Stashed) else ray.put(sent))
        return refs

    def _cut_in_place(self, slot: int, edge: Table, col: str, parts: int) -> tuple[Table, list]:
        """A stored edge table cut by the hash of ``col`` without a copy: the slot's rows are put
        in the order of the cuts once, and each cut is a slice of them (its values a view)."""
        order, bounds = self._route(edge.keys, (col,), edge.height, parts)
        keys = self._canon(edge.keys[order])
        values = jnp.asarray(np.asarray(edge.values)[order])
        self._drop_frames({id(edge.keys)})  # the old order's route and matches
        table = self._slot_tables[slot] = Table(keys, values)
        self.slots[slot] = (keys, values, *self.slots[slot][2:])
        self._in_cut_order.add(slot)
        view = np.asarray(values)
        cut = [Table(keys.slice(int(bounds[q]), int(bounds[q + 1] - bounds[q])), view[bounds[q]:bounds[q + 1]])
               for q in range(parts)]
        self._cuts[(id(keys), col, parts)] = (table, cut)
        return table, cut

    def _sums(self, node: Node, pieces: list, keep):
        """The sums by ``node.by`` of partial sums received as ``pieces``; with ``keep``, only the
        groups whose keys ``keep`` holds (a semi-join on the keys). Within a piece the group keys
        are distinct (each is a partial sum by those keys): the largest piece's rows are the first
        groups, in its order, and every other piece is gathered per group (a zero row where it
        has none) and added in place, one piece at a time. The group plan is made once per set of key frames; the
        sum stays in JAX for the operation that reads it."""
        pieces = [p for p in pieces if p[1].shape[0]]
        if not pieces:
            keys, values = empty_piece(node.schema)
        else:
            base = max(range(len(pieces)), key=lambda i: pieces[i][1].shape[0])
            pieces = [pieces[base], *pieces[:base], *pieces[base + 1:]]
            frames = tuple(p[0] for p in pieces)
            keys, g, at = self._recent(self._groups, frames, lambda: _sum_plan(frames, node.by, node.schema.extents),
                                       node.by)
            values = _first_piece(pieces[0][1], g)
            for p, rows in zip(pieces[1:], at):  # one piece in JAX memory at a time
                values = _add_piece(values, p[1], rows)
        if keep is not None:
            kk = keep.keys if isinstance(keep, Table) else keep[0]

            def semi():
                wanted = kk.rename(dict(zip(kk.columns, node.by))).select(node.by)
                rows = keys.with_row_index("_row").join(wanted, on=list(node.by), how="semi")["_row"].to_numpy()
                return self._canon(keys[rows]), jnp.asarray(rows)
            keys, rows = self._recent(self._groups, (keys, kk), semi, ("keep",))
            values = values[rows]
        return keys, values

    def _update(self, slot: int, param_slot: int, grad_slot: int, rule: str, hyper: dict, step: int):
        """One optimizer step of the parameter partition in ``param_slot`` with the gradient
        partition in ``grad_slot`` (lined up by key; absent gradient tuples are zero), written to
        ``slot`` with its optimizer state (the old slot is left as it was):

            sgd:  v <- mu v + g;  p <- p - lr v
            adam: m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g²;
                  p <- p - lr m̂ / (sqrt(v̂) + eps),  m̂ = m / (1 - b1^t), v̂ = v / (1 - b2^t)
        """
        keys, p = self._piece(param_slot)[:2]
        dtype = np.asarray(p).dtype
        p = np.asarray(p)
        gkeys, g = self._piece(grad_slot)[:2]
        g = _align(keys, gkeys, np.asarray(g), p.shape)
        state = dict(self.params.get(param_slot, {}))
        self.params[slot] = state
        if rule == "sgd":
            v = hyper["momentum"] * state.get("v", np.zeros_like(p)) + g
            p = p - hyper["lr"] * v
            state["v"] = v
        elif rule == "adam":
            b1, b2 = hyper["b1"], hyper["b2"]
            m = b1 * state.get("m", np.zeros_like(p)) + (1 - b1) * g
            v = b2 * state.get("v", np.zeros_like(p)) + (1 - b2) * g * g
            m_hat, v_hat = m / (1 - b1 ** step), v / (1 - b2 ** step)
            p = p - hyper["lr"] * m_hat / (np.sqrt(v_hat) + hyper["eps"])
            state["m"], state["v"] = m, v
        else:
            raise ValueError(f"partition {self.index}: unknown update rule {rule!r}")
        if hyper.get("nonnegative"):
            p = np.maximum(p, 0.0)  # projected gradient: back onto p >= 0
        self.slots[slot] = (keys, np.asarray(p, dtype=dtype))
        return piece_meta(self.slots[slot])


def _sum_plan(frames: tuple, by: tuple[str, ...], extents: tuple[int, ...]):
    """How ``_sums`` adds pieces with key frames ``frames``: the groups' keys (the first frame's
    rows first, in order), their count, and per later piece the row it gives each group (its
    height where it gives none: a zero row)."""
    ids, keys, g = group_ids(pl.concat([f.select(by) for f in frames]), by, extents)
    n0 = frames[0].height
    rank = np.full(g, -1, np.int64)  # old group -> new group
    rank[ids[:n0]] = np.arange(n0)
    rest = np.flatnonzero(rank < 0)
    rank[rest] = np.arange(n0, g)
    order = np.empty(g, np.int64)
    order[rank] = np.arange(g)
    ids, at, start = rank[ids], [], n0
    for f in frames[1:]:
        n = f.height
        rows = np.full(g, n, np.int32 if n < 2**31 else np.int64)
        rows[ids[start:start + n]] = np.arange(n)
        at.append(jnp.asarray(rows))
        start += n
    return keys[order], g, tuple(at)


@functools.partial(jax.jit, static_argnames=("g",))
def _first_piece(x, g: int):
    """The first piece as groups 0..n0-1 of g, zeros after."""
    return jnp.concatenate([x, jnp.zeros((g - x.shape[0], *x.shape[1:]), x.dtype)])


@functools.partial(jax.jit, donate_argnums=(0,))
def _add_piece(y, x, rows):
    """y + x[rows] in y's memory (a row past x's end reads zeros)."""
    return y + jnp.take(x, rows, axis=0, mode="fill", fill_value=0)


def _as_piece(x):
    """A piece from a piece or a Table."""
    return (x.keys, np.asarray(x.values)) if isinstance(x, Table) else x


def _align(keys: pl.DataFrame, gkeys: pl.DataFrame, g: np.ndarray, shape) -> np.ndarray:
    """Gradient values in the row order of ``keys`` (zeros where the gradient has no tuple)."""
    if keys.width == 0 or (gkeys.height == keys.height and gkeys.select(keys.columns).equals(keys)):
        return g if len(g) else np.zeros(shape, g.dtype)
    out = np.zeros(shape, g.dtype)
    pairs = keys.with_row_index("_p").join(gkeys.select(keys.columns).with_row_index("_g"), on=keys.columns)
    out[pairs["_p"].to_numpy()] = g[pairs["_g"].to_numpy()]
    return out


def _mentions(key, stubs: set) -> bool:
    """Whether a match-cache key (nested tuples of nodes and names) mentions one of ``stubs``."""
    if isinstance(key, tuple):
        return any(_mentions(k, stubs) for k in key)
    return isinstance(key, Scan) and key in stubs


@ray.remote
class PartitionActor:
    """``Partition`` in a Ray actor (see the module docstring)."""

    def __init__(self, index: int):
        self.part = Partition(index)

    def ping(self) -> tuple[int, int]:
        return self.part.index, self.part.incarnation

    def pid(self) -> int:
        return os.getpid()

    def held(self) -> tuple[int, int]:
        """(slots, bytes of their arrays) this partition holds."""
        return len(self.part.slots), sum(int(a.nbytes) for v in self.part.slots.values() for a in v[1:])

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def run(self, run_id: int, generation: int, x64: bool, ops: list, *args):
        metas, outputs = self.part.run(run_id, generation, x64, ops, args)
        return (metas, *outputs) if outputs else metas
