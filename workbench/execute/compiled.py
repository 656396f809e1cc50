"""The compiled executor: a plan's key work runs once, its value work becomes one XLA program.

Within a training run the keys of the stored relations do not change; only the values of the
arguments (parameters, masks) do. ``CompiledPlan`` splits a plan in two:

- the *key plan*, run once when the plan is built: every join match, group id and gather index,
  computed by the interpreter's own key functions (``select_rows``, ``join_rows``,
  ``group_ids``) on Polars key frames; and every subplan that reads no argument (a loop-invariant
  result, such as a first aggregation over fixed features), computed once by the interpreter and
  kept, as a database keeps a materialized view;
- the *value plan*: a pure function of the arguments' value arrays and those index arrays
  (gathers, ``vmap``-ed kernels, segment sums), traced into one ``jax.jit`` program.

A call then costs one XLA dispatch. The interpreter (``workbench.execute.local``) stays the
reference: both run the same physical nodes, and the random-program grid compares them.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl

from workbench import passes, sparse
from workbench.execute.local import LocalContext, LocalExecutor, group_ids, join_rows, select_rows
from workbench.physical import JoinAggregate, PairJoin, SpMM
from workbench.plan import Add, Aggregate, Join, Node, Scan, Select, toposort
from workbench.table import Table

# The compiled value plan runs joins as gathers and sums as segment sums inside one XLA program;
# the join RJP never builds its packed pairs (PairJoin), a join's kernel runs inside the sum that
# reads it (JoinAggregate), and a sum of edge weights times node values is a sparse matrix
# product (SpMM) when the edges are fixed for the plan (they read no argument).
RULES = (passes.drop_identity_selects, passes.common_subexpressions, passes.fuse_pair_joins,
         passes.fuse_join_aggregates, passes.sparse_products)

# How a kernel argument reaches the kernel: every row in order, a gather of rows, or one row
# shared by every tuple (a one-tuple weight: vmapped with in_axes=None, so XLA runs v @ W over
# the batch as one matrix product).
ALL, GATHER, SHARED = "all", "gather", "shared"


@dataclass
class Timings:
    """Where a compiled plan's time went: built once (optimize, key plan, invariant subplans,
    XLA compile on the first call), then per call."""

    trace: float = 0.0
    optimize: float = 0.0
    keys: float = 0.0
    invariants: float = 0.0
    compile: float = 0.0
    invariant_nodes: int = 0  # nodes computed once, before the first call

    def __str__(self) -> str:
        return (f"trace and derive {self.trace * 1e3:.1f} ms, optimize {self.optimize * 1e3:.1f} ms, key plan {self.keys * 1e3:.1f} ms, "
                f"invariant subplans {self.invariants * 1e3:.1f} ms, XLA compile "
                f"{self.compile * 1e3:.1f} ms")


def _key_table(keys: pl.DataFrame, height: int) -> Table:
    """A table of keys only (values of width 0): what the key functions read."""
    return Table(keys, np.empty((height, 0), np.float32))


def _index(rows: np.ndarray | None, n_in: int, n_out: int, slots: list) -> tuple[str, int | None]:
    """How an input of ``n_in`` rows is read by ``n_out`` output tuples through ``rows``."""
    if rows is None or (n_in == n_out and np.array_equal(rows, np.arange(n_in))):
        return ALL, None
    if n_in == 1 and n_out > 0:
        return SHARED, None
    slots.append(np.asarray(rows, np.int32 if n_in < 2**31 else np.int64))
    return GATHER, len(slots) - 1


class CompiledPlan:
    """``outputs`` (plan nodes) as one compiled function of the values of ``arguments`` (Scan
    nodes among their inputs). ``align[i]``, when given, is a Table whose row order output i is
    returned in (its keys are that table's key frame; rows it lacks are zeros): a gradient lined
    up with its parameter."""

    def __init__(self, outputs: Sequence[Node], arguments: Sequence[Scan],
                 align: Sequence[Table | None] | None = None, rules=RULES):
        self.timings = Timings()
        start = time.perf_counter()
        arguments_set = set(arguments)

        def fixed(node: Node) -> bool:  # reads no argument: its values are known when planning
            return not any(n in arguments_set for n in toposort([node]))

        rules = tuple(functools.partial(r, edge_ok=fixed) if r is passes.sparse_products else r
                      for r in rules)
        physical, _ = passes.optimize(list(outputs), rules)
        self.timings.optimize = time.perf_counter() - start
        position = {node: i for i, node in enumerate(arguments)}
        order = toposort(physical)
        dynamic = set()
        for node in order:
            if node in position or any(i in dynamic for i in node.inputs):
                dynamic.add(node)

        # loop-invariant subplans: computed once by the interpreter, passed in as constants
        start = time.perf_counter()
        frontier = [i for n in order if n in dynamic for i in n.inputs if i not in dynamic]
        frontier += [o for o in physical if o not in dynamic]
        frontier = list(dict.fromkeys(frontier))
        ctx = LocalContext()
        LocalExecutor().execute(frontier, ctx)
        self.timings.invariants = time.perf_counter() - start
        self.timings.invariant_nodes = sum(1 for n in ctx.memo if not isinstance(n, Scan))

        # the key plan: keys and index arrays of every node that reads an argument
        start = time.perf_counter()
        tables: dict[Node, Table] = {}  # node -> its keys (a key-only table, or a constant's table)
        self.constants = [ctx.memo[n].values for n in frontier]
        slot_of = {n: ("const", i) for i, n in enumerate(frontier)}
        for n in frontier:
            tables[n] = ctx.memo[n]
        for node, i in position.items():
            if node in dynamic:
                tables[node] = _key_table(node.table.keys, node.table.height)
                slot_of[node] = ("arg", i)
        self.index: list[np.ndarray] = []
        self.steps: list[tuple[Node, Callable]] = []
        keys_ctx = LocalContext()
        for node in order:
            if node not in dynamic or node in position:
                continue
            out_keys, height, step = self._plan_node(node, [tables[i] for i in node.inputs], keys_ctx)
            tables[node] = _key_table(out_keys, height)
            self.steps.append((node, step))
        self.outputs = physical
        self.out_keys = [tables[o].keys for o in physical]
        self.aligned = [None] * len(physical)
        for i, target in enumerate(align or ()):
            if target is not None:
                self.aligned[i] = self._alignment(tables[physical[i]], target)
                self.out_keys[i] = target.keys
        self.timings.keys = time.perf_counter() - start
        self.slot_of = slot_of
        self.dtypes = [o.schema for o in physical]
        self._fn = jax.jit(self._values)
        self._compiled = None

    # ---- the key plan, one node at a time ------------------------------------------------------
    def _plan_node(self, node: Node, inputs: list[Table], ctx: LocalContext):
        """Output keys and height of ``node``, and its value step: a function of the input value
        arrays and the index arrays."""
        if isinstance(node, Select):
            out, rows = select_rows(node, inputs[0])
            n = inputs[0].height if rows is None else len(rows)
            mode, slot = _index(rows, inputs[0].height, n, self.index)
            return out, n, self._map_step(node, node.kernel, [(mode, slot)], n)
        if isinstance(node, (Join, PairJoin)):
            out, rows = join_rows(node, inputs, ctx)
            n = len(rows[0])
            how = [_index(r, t.height, n, self.index) for r, t in zip(rows, inputs)]
            return out, n, self._map_step(node, node.kernel, how, n)
        if isinstance(node, JoinAggregate):
            keys, rows = join_rows(node.join, inputs, ctx)
            n = len(rows[0])
            how = [_index(r, t.height, n, self.index) for r, t in zip(rows, inputs)]
            per_tuple = self._map_step(node.join, node.join.kernel, how, n)
            ids, out, g = group_ids(keys, node.by, node.schema.extents) if node.by else (None, pl.DataFrame(), 1)
            return out, g, self._sum_step(per_tuple, ids, g, None)
        if isinstance(node, Aggregate):
            t = inputs[0]
            ids, out, g = group_ids(t.keys, node.by, node.schema.extents)
            if not node.by:
                ids = np.zeros(t.height, np.int64)
            counts = None
            if node.reduction == "mean":
                if not node.by and t.height == 0:
                    raise ValueError(f"aggregate mean over '{node.input.display_name}': the relation "
                                     f"is empty, so its mean is undefined")
                counts = np.bincount(ids, minlength=g).astype(node.schema.dtype)
            return out, g, self._sum_step(lambda values, index: values[0], ids if node.by else None, g, counts)
        if isinstance(node, Add):
            first = inputs[0]
            if all(t.height == first.height and t.keys.equals(first.keys) for t in inputs[1:]):
                def add_aligned(values, index):
                    total = values[0]
                    for v in values[1:]:
                        total = total + v
                    return total
                return first.keys, first.height, add_aligned
            keys = pl.concat([t.keys for t in inputs]) if first.keys.width else pl.DataFrame()
            height = sum(t.height for t in inputs)
            ids, out, g = (group_ids(keys, node.schema.keys, node.schema.extents) if first.keys.width
                           else (np.zeros(height, np.int64), pl.DataFrame(), 1))
            return out, g, self._sum_step(lambda values, index: jnp.concatenate(values), ids, g, None)
        if isinstance(node, SpMM):
            rows = inputs[2] if node.rows is not None else None
            p = sparse.product(inputs[0], node.row_key, node.col_key, node.shape, inputs[1],
                               node.out_key, rows, value_shape=node.schema.value_shape)
            slots = {}
            for name in ("data", "indices", "indptr", "x_at", "keep"):
                array = getattr(p, name)
                if array is not None:
                    self.index.append(array)
                    slots[name] = len(self.index) - 1

            def product_step(values, index):
                return sparse.apply_product(p, values[1], **{k: index[i] for k, i in slots.items()})
            return p.out_keys, p.out_keys.height, product_step
        raise NotImplementedError(f"the compiled executor has no implementation for "
                                  f"{type(node).__name__}; it runs plans rewritten by "
                                  f"workbench.execute.compiled.RULES")

    def _map_step(self, node: Node, kernel, how, n: int):
        """A kernel over every output tuple (or a gather / the identity when there is none)."""
        shape, dtype = node.schema.value_shape, node.schema.dtype

        def read(values, index, i):
            mode, slot = how[i]
            return values[i] if mode in (ALL, SHARED) else values[i][index[slot]]

        def step(values, index):
            if kernel is None:
                return read(values, index, 0)
            if n == 0:
                return jnp.zeros((0, *shape), dtype)
            args, axes = [], []
            for i, (mode, _) in enumerate(how):
                if not kernel.uses[i]:  # an argument the kernel never reads: one zero, shared
                    args.append(jnp.zeros(node.inputs[i].schema.value_shape, dtype))
                    axes.append(None)
                elif mode == SHARED:
                    args.append(values[i][0])
                    axes.append(None)
                else:
                    args.append(read(values, index, i))
                    axes.append(0)
            if all(a is None for a in axes):  # one evaluation, broadcast to every tuple
                one = kernel.fn(*args)
                return jnp.broadcast_to(one, (n, *one.shape))
            return jax.vmap(kernel.fn, in_axes=tuple(axes))(*args)

        return step

    def _sum_step(self, per_tuple, ids, g: int, counts):
        """segment_sum of ``per_tuple``'s output by ``ids`` into ``g`` groups (all into one when
        ``ids`` is None); a mean divides by ``counts``."""
        slot = None
        sorted_ids = False
        if ids is not None:
            self.index.append(np.asarray(ids, np.int32 if g < 2**31 else np.int64))
            slot = len(self.index) - 1
            sorted_ids = bool(len(ids) < 2 or np.all(np.diff(ids) >= 0))
        mean = None if counts is None else np.maximum(counts, 1)

        def step(values, index):
            out = per_tuple(values, index)
            if slot is None:
                total = jnp.sum(out, axis=0, keepdims=True)
            else:
                total = jax.ops.segment_sum(out, index[slot], num_segments=g,
                                            indices_are_sorted=sorted_ids)
            if mean is not None:  # mean = sum / |group|
                total = total / jnp.asarray(mean).reshape((g,) + (1,) * (total.ndim - 1))
            return total

        return step

    def _alignment(self, table: Table, target: Table):
        """Positions of ``table``'s rows among ``target``'s (same key names), or None when
        they already are in ``target``'s order."""
        if table.height == target.height and table.keys.select(target.keys.columns).equals(target.keys):
            return None
        if not target.keys.width:
            return None
        lk, rk = "_target_row", "_row"
        joined = target.keys.with_row_index(lk).join(
            table.keys.select(target.keys.columns).with_row_index(rk), on=list(target.keys.columns))
        if joined.height != table.height:
            raise ValueError("a compiled output has tuples its alignment target lacks")
        at = np.empty(table.height, np.int64)
        at[joined[rk].to_numpy()] = joined[lk].to_numpy()
        self.index.append(at.astype(np.int32))
        return len(self.index) - 1, target.height

    # ---- the value plan ----------------------------------------------------------------------
    def _values(self, arguments, constants, index):
        """Every output's values from the arguments' values: the traced program."""
        memo = {}
        for node, (kind, i) in self.slot_of.items():
            memo[node] = arguments[i] if kind == "arg" else constants[i]
        for node, step in self.steps:
            memo[node] = step([memo[i] for i in node.inputs], index)
        outs = []
        for o, how in zip(self.outputs, self.aligned):
            v = memo[o]
            if how is not None:
                slot, n = how
                v = jnp.zeros((n, *v.shape[1:]), v.dtype).at[index[slot]].set(v)
            outs.append(v)
        return outs

    def __call__(self, arguments: Sequence[jax.Array]) -> list[Table]:
        """The outputs' tables for these argument values (same keys as when built)."""
        if self._compiled is None:  # the constants and index arrays move to the device once
            self._fixed = (tuple(jnp.asarray(c) for c in self.constants),
                           tuple(jnp.asarray(i) for i in self.index))
            start = time.perf_counter()
            self._compiled = self._fn.lower(tuple(jnp.asarray(a) for a in arguments), *self._fixed).compile()
            self.timings.compile = time.perf_counter() - start
        values = self._compiled(tuple(arguments), *self._fixed)
        return [Table(k, v) for k, v in zip(self.out_keys, values)]
