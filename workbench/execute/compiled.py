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

Between the two, a *semi-join reduction* (demand-driven pruning): when the outputs read only some
tuples of an intermediate (a loss joined with the labels of a few training nodes reads a few rows
of the logits, which read their neighbours' rows of the layer below, ...), only the rows that can
reach an output are computed. A demand pass walks the value steps from the outputs back, taking
each step's needed rows to the needed rows of its inputs through its index arrays; a restriction
pass then renumbers every intermediate to its needed rows and rewrites the index arrays. Outputs,
arguments and constants stay whole; a plan whose every row is needed is left as it is.

A call then costs one XLA dispatch. The interpreter (``workbench.execute.local``) stays the
reference: both run the same physical nodes, and the random-program grid compares them.
"""
from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl

from workbench import blocks, passes, sparse
from workbench.kernels import LRU
from workbench.execute.local import LocalContext, LocalExecutor, group_ids, join_rows, select_rows
from workbench.physical import BlockProduct, JoinAggregate, PairJoin, SpMM
from workbench.plan import Add, Aggregate, Join, Node, Scan, Select, toposort
from workbench.table import Table

# The compiled value plan runs joins as gathers and sums as segment sums inside one XLA program;
# the join RJP never builds its packed pairs (PairJoin), a join's kernel runs inside the sum that
# reads it (JoinAggregate), and a sum of edge weights times node values is a sparse matrix
# product (SpMM) when the edges are fixed for the plan (they read no argument).
RULES = (passes.drop_identity_selects, passes.common_subexpressions, passes.fuse_pair_joins,
         passes.fuse_join_aggregates, passes.sparse_products, passes.block_products)

# XLA:CPU's YNNPACK library fusions, for single matrix products only. Its default reduce fusion
# can pull a sum that many tuples share (the entity matrix of a 1-N KGE step, summed once from
# one-hot placements) into every reader, redoing it per tuple: a TransE-L1 step at size 128 took
# 0.8 s with it and 0.03 s without. GCN and blocked-matmul steps run alike either way.
XLA_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}

# A plan with a dense block product (one GEMM over the dense matrices its blocks tile) runs
# without YNNPACK, on XLA's own (Eigen) GEMM: a 2048^3 float32 product ran at 0.9-1.0x numpy's
# OpenBLAS speed there, 4-12% faster than through YNNPACK. YNNPACK's dot fusion would also pull
# the kernel after the product (the square in sum((A @ B)^2)) into the GEMM, which then ran about
# 1.5x slower. Other plans keep XLA_OPTIONS (without YNNPACK a GCN step ran 1.1-1.3x slower);
# with no YNNPACK there is no reduce fusion, so the shared sum above is never recomputed.
BLOCK_XLA_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}

# Compiled XLA programs by (program text, kernel fingerprints): plans of one shape share one.
_EXECUTABLES = LRU(64)


def clear_cache() -> None:
    """Forget the compiled programs (``workbench.clear_caches`` clears every cache)."""
    _EXECUTABLES.clear()


# How a kernel argument reaches the kernel: every row in order, a gather of rows, or one row
# shared by every tuple (a one-tuple weight: vmapped with in_axes=None, so XLA runs v @ W over
# the batch as one matrix product).
ALL, GATHER, SHARED = "all", "gather", "shared"


@dataclass
class Timings:
    """Where a compiled plan's time went: built once (optimize, key plan, invariant subplans,
    demand pruning, XLA compile on the first call), then per call. ``rows_full``: the rows of
    every value step as planned; ``rows_computed``: those left after demand pruning."""

    trace: float = 0.0
    optimize: float = 0.0
    keys: float = 0.0
    invariants: float = 0.0
    prune: float = 0.0
    compile: float = 0.0
    invariant_nodes: int = 0  # nodes computed once, before the first call
    rows_full: int = 0  # rows of the value steps before pruning
    rows_computed: int = 0  # rows of the value steps after pruning
    traced: bool = False  # the value program was traced for this plan (not reused from another)

    def __str__(self) -> str:
        return (f"trace and derive {self.trace * 1e3:.1f} ms, optimize {self.optimize * 1e3:.1f} ms, key plan {self.keys * 1e3:.1f} ms, "
                f"invariant subplans {self.invariants * 1e3:.1f} ms, pruning {self.prune * 1e3:.1f} ms, "
                f"XLA compile {self.compile * 1e3:.1f} ms; rows computed {self.rows_computed} of "
                f"{self.rows_full}")


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


def _kernel_arguments(node: Node, kernel, how: list, values, index) -> tuple[list, tuple]:
    """A kernel's arguments over a step's tuples and their ``vmap`` axes: an input the kernel
    never reads is one zero, shared; a one-tuple input (``SHARED``) its one value, shared; any
    other its rows, gathered through its index array when it has one."""
    args, axes = [], []
    for i, (mode, slot) in enumerate(how):
        if not kernel.uses[i]:
            args.append(jnp.zeros(node.inputs[i].schema.value_shape, node.schema.dtype))
            axes.append(None)
        elif mode == SHARED:
            args.append(values[i][0])
            axes.append(None)
        else:
            args.append(values[i] if mode == ALL else values[i][index[slot]])
            axes.append(0)
    return args, tuple(axes)


# ---- value steps, as data: what the demand and restriction passes read and rewrite -------------

@dataclass
class _Map:
    """One value per tuple: ``kernel`` of the input rows each tuple reads (``reads[i]``: None,
    tuple t reads row t; an array, row ``reads[i][t]``); no kernel: the rows of input 0.
    ``node`` gives the schemas (a Select, Join or PairJoin)."""

    node: Node
    kernel: Any
    reads: list
    n: int

    def read(self, i: int) -> bool:  # does the step read input i's values?
        return i == 0 if self.kernel is None else bool(self.kernel.uses[i])


@dataclass
class _Sum:
    """The segment sum, by ``ids`` into ``g`` groups (None: all into one; ids >= g are dropped),
    of ``source``'s tuples: a ``_Map`` (a JoinAggregate), or None: the inputs' rows one after
    another (an Aggregate, a keyed Add). A mean divides by ``counts``."""

    source: _Map | None
    ids: np.ndarray | None
    g: int
    counts: np.ndarray | None


@dataclass
class _AlignedAdd:
    """The sum of inputs lined up row by row (``reads`` as in ``_Map``)."""

    reads: list
    n: int


@dataclass
class _Product:
    """Y = M X of a sparse product's key side ``p`` (input 1 is X; the others give keys only)."""

    p: sparse.Product


@dataclass
class _Blocks:
    """A blocked matrix product of ``p`` (inputs 0 and 1 are x and z; a filter gives keys only)."""

    p: blocks.Product


@dataclass
class _Empty:
    """No row of the node is needed: an array of no rows."""

    shape: tuple
    dtype: Any


def _product_rows(p: sparse.Product, out_rows: np.ndarray):
    """The stored entries of the product's output rows ``out_rows``: (their positions in the BCSR
    arrays, in row order; the indptr over those rows)."""
    indptr = np.asarray(p.indptr).astype(np.int64)
    rows = out_rows if p.keep is None else np.asarray(p.keep)[out_rows]  # rows of the BCSR
    starts, counts = indptr[rows], indptr[rows + 1] - indptr[rows]
    new_indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    entries = np.repeat(starts - new_indptr[:-1], counts) + np.arange(new_indptr[-1])
    return entries, new_indptr


def _product_columns(p: sparse.Product, n_dense: int, entries) -> np.ndarray:
    """The dense rows the stored ``entries`` read (those of X present: a missing column reads
    a zero row)."""
    cols = np.asarray(p.indices)[entries]
    at = cols if p.x_at is None else np.asarray(p.x_at)[cols]
    return at[at < n_dense]


class CompiledPlan:
    """``outputs`` (plan nodes) as one compiled function of the values of ``arguments`` (Scan
    nodes among their inputs). ``align[i]``, when given, is a Table whose row order output i is
    returned in (its keys are that table's key frame; rows it lacks are zeros): a gradient lined
    up with its parameter. ``prune=False`` computes every row of every intermediate (no
    semi-join reduction)."""

    def __init__(self, outputs: Sequence[Node], arguments: Sequence[Scan],
                 align: Sequence[Table | None] | None = None, rules=RULES, prune: bool = True,
                 program=None, invariants: dict | None = None):
        self.timings = Timings()
        # ``program``: a token naming the traced plan this one was made from (the same program
        # over other keys). Two plans of one token whose value steps make the same decisions
        # (``self.static``) over arrays of the same shapes trace to the same XLA program, so the
        # second reuses the first's executable without tracing. ``invariants``: loop-invariant
        # tables already computed for that program, by node (filled in here).
        self.program = program
        self.static: list = []
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
        if invariants is not None:
            ctx.memo.update({n: t for n, t in invariants.items() if n in set(order)})
        LocalExecutor().execute(frontier, ctx)
        if invariants is not None:
            invariants.update({n: ctx.memo[n] for n in frontier if not isinstance(n, Scan)})
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
        self.index: list[np.ndarray | None] = []  # None: an argument's transpose, set per call
        self._arg_t: dict[int, int] = {}  # index slot -> the argument whose transpose it holds
        self._t_cache: dict[int, tuple] = {}  # index slot -> (that argument's array, its transpose)
        specs: list[tuple[Node, Any]] = []
        keys_ctx = LocalContext()
        for node in order:
            if node not in dynamic or node in position:
                continue
            out_keys, height, spec = self._plan_node(node, [tables[i] for i in node.inputs], keys_ctx)
            tables[node] = _key_table(out_keys, height)
            specs.append((node, spec))
        self.outputs = physical
        self.out_keys = [tables[o].keys for o in physical]
        self.aligned = [None] * len(physical)
        for i, target in enumerate(align or ()):
            if target is not None:
                self.aligned[i] = self._alignment(tables[physical[i]], target)
                self.out_keys[i] = target.keys
        self.timings.keys = time.perf_counter() - start

        # semi-join reduction: only the rows that reach an output
        start = time.perf_counter()
        heights = {n: t.height for n, t in tables.items()}
        specs = self._prune(specs, heights, physical, enabled=prune)
        self.heights = heights  # node -> the rows computed (or passed in) for it
        self.timings.prune = time.perf_counter() - start
        start = time.perf_counter()
        self.slot_of = slot_of
        self.steps: list[tuple[Node, Callable]] = [(node, self._build(node, spec, heights))
                                                   for node, spec in specs]
        self.timings.keys += time.perf_counter() - start
        self.dtypes = [o.schema for o in physical]
        dense_blocks = any(isinstance(spec, _Blocks) and spec.p.mode == "dense" for _, spec in specs)
        self.xla_options = BLOCK_XLA_OPTIONS if dense_blocks else XLA_OPTIONS
        self._fn = jax.jit(self._values)
        self._compiled = None
        self._kernel_nodes = [n for n in order if n in dynamic and getattr(n, "kernel", None) is not None
                              and not isinstance(getattr(n, "kernel"), str)]
        self._kernel_nodes += [n.join for n in order if isinstance(n, JoinAggregate) and n in dynamic]

    # ---- the key plan, one node at a time ------------------------------------------------------
    def _plan_node(self, node: Node, inputs: list[Table], ctx: LocalContext):
        """Output keys and height of ``node``, and its value step as data (``_Map``, ``_Sum``,
        ``_AlignedAdd``, ``_Product``): its kernel and index arrays."""
        if isinstance(node, Select):
            out, rows = select_rows(node, inputs[0])
            n = inputs[0].height if rows is None else len(rows)
            return out, n, _Map(node, node.kernel, [rows], n)
        if isinstance(node, (Join, PairJoin)):
            out, rows = join_rows(node, inputs, ctx)
            n = len(rows[0])
            return out, n, _Map(node, node.kernel, list(rows), n)
        if isinstance(node, JoinAggregate):
            keys, rows = join_rows(node.join, inputs, ctx)
            per_tuple = _Map(node.join, node.join.kernel, list(rows), len(rows[0]))
            ids, out, g = group_ids(keys, node.by, node.schema.extents) if node.by else (None, pl.DataFrame(), 1)
            return out, g, _Sum(per_tuple, ids, g, None)
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
            return out, g, _Sum(None, ids if node.by else None, g, counts)
        if isinstance(node, Add):
            first = inputs[0]
            if all(t.height == first.height and t.keys.equals(first.keys) for t in inputs[1:]):
                return first.keys, first.height, _AlignedAdd([None] * len(inputs), first.height)
            keys = pl.concat([t.keys for t in inputs]) if first.keys.width else pl.DataFrame()
            height = sum(t.height for t in inputs)
            ids, out, g = (group_ids(keys, node.schema.keys, node.schema.extents) if first.keys.width
                           else (np.zeros(height, np.int64), pl.DataFrame(), 1))
            return out, g, _Sum(None, ids, g, None)
        if isinstance(node, SpMM):
            rows = inputs[2] if node.rows is not None else None
            p = sparse.product(inputs[0], node.row_key, node.col_key, node.shape, inputs[1],
                               node.out_key, rows, value_shape=node.schema.value_shape)
            return p.out_keys, p.out_keys.height, _Product(p)
        if isinstance(node, BlockProduct):
            p = blocks.product(node.spec, inputs[0], inputs[1],
                               inputs[2] if node.filter is not None else None)
            return p.out_keys, p.n_out, _Blocks(p)
        raise NotImplementedError(f"the compiled executor has no implementation for "
                                  f"{type(node).__name__}; it runs plans rewritten by "
                                  f"workbench.execute.compiled.RULES")

    # ---- semi-join reduction -------------------------------------------------------------------
    def _prune(self, specs, heights: dict, outputs, enabled: bool = True):
        """Restrict every value step to the rows an output can read, in their order (an output
        needs all its rows). Updates ``heights`` and the Timings' row counts; returns the new
        steps (the same list when every row is needed)."""
        need = {node: np.zeros(heights[node], bool) for node, _ in specs}
        for o in outputs:
            if o in need:
                need[o][:] = True
        # a sparse product computes every non-empty row of its matrix, then keeps some (the
        # backward A^T G keeps the rows the forward matched): restricted, it computes those only
        self.timings.rows_full = sum(spec.p.shape[0] if isinstance(spec, _Product) else len(need[node])
                                     for node, spec in specs)
        self.timings.rows_computed = self.timings.rows_full
        if not enabled:
            return specs
        for node, spec in reversed(specs):  # the consumers of a node come after it
            m = need[node]
            if m.any():
                for i, rows in self._demand(node, spec, m, heights):
                    if node.inputs[i] in need:
                        need[node.inputs[i]][rows] = True
        self.timings.rows_computed = sum(int(np.count_nonzero(m)) for m in need.values())
        if self.timings.rows_computed == self.timings.rows_full:  # nothing to prune
            return specs
        sel = {node: np.flatnonzero(m) for node, m in need.items() if not m.all()}
        pos = {}  # pruned node -> position of each of its rows among the kept ones (-1: dropped)
        for node, s in sel.items():
            pos[node] = np.full(heights[node], -1, np.int64)
            pos[node][s] = np.arange(len(s))
        restricted = [(node, self._restrict(node, spec, sel, pos, heights)) for node, spec in specs]
        for node, s in sel.items():
            heights[node] = len(s)
        return restricted

    @staticmethod
    def _demand(node: Node, spec, m: np.ndarray, heights: dict):
        """(input i, its rows that the rows ``m`` (a mask) of ``node`` read), for each input."""
        def through_map(mp: _Map, t):
            for i, r in enumerate(mp.reads):
                if mp.read(i):
                    yield i, (t if r is None else r[t])

        if isinstance(spec, _Map):
            yield from through_map(spec, m)
        elif isinstance(spec, _AlignedAdd):  # the same rows of every term
            yield from ((i, m) for i in range(len(node.inputs)))
        elif isinstance(spec, _Sum):
            t = slice(None) if spec.ids is None else m[spec.ids]  # the tuples of needed groups
            if spec.source is not None:
                yield from through_map(spec.source, t)
            else:  # the inputs one after another
                offset = 0
                for i, inp in enumerate(node.inputs):
                    h = heights[inp]
                    yield i, (t if spec.ids is None else t[offset:offset + h])
                    offset += h
        elif isinstance(spec, _Blocks):  # one dense matmul reads every block of x and z
            yield 0, slice(None)
            yield 1, slice(None)
        elif isinstance(spec, _Product):  # the dense rows the needed rows' entries read
            p = spec.p
            entries = (slice(None) if p.keep is None and m.all()  # every stored entry
                       else _product_rows(p, np.flatnonzero(m))[0])
            yield 1, _product_columns(p, heights[node.inputs[1]], entries)

    @staticmethod
    def _restrict(node: Node, spec, sel: dict, pos: dict, heights: dict):
        """``spec`` computing the rows ``sel[node]`` of ``node`` (all when it is not pruned) from
        its inputs' kept rows (``pos``: the new position of each old row)."""
        s = sel.get(node)
        if s is not None and not len(s):
            return _Empty((0, *node.schema.value_shape), node.schema.dtype)

        def remap(i: int, rows: np.ndarray) -> np.ndarray:
            p = pos.get(node.inputs[i])
            if p is None:
                return rows
            out = p[rows]
            if len(out) and out.min() < 0:
                raise AssertionError(f"semi-join reduction: a needed row of "
                                     f"'{node.inputs[i].display_name}' was pruned")
            return out

        def restrict_map(mp: _Map, t: np.ndarray | None) -> _Map:
            reads = []
            for i, r in enumerate(mp.reads):
                if not mp.read(i):
                    reads.append(None)
                elif t is None and node.inputs[i] not in pos:
                    reads.append(r)
                else:
                    rows = np.arange(mp.n) if r is None else r
                    reads.append(remap(i, rows if t is None else rows[t]))
            return _Map(mp.node, mp.kernel, reads, mp.n if t is None else len(t))

        if isinstance(spec, _Map):
            return restrict_map(spec, s)
        if isinstance(spec, _AlignedAdd):
            rows = np.arange(spec.n) if s is None else s  # the terms are lined up with the output
            reads = [None if s is None and inp not in pos else remap(i, rows)
                     for i, inp in enumerate(node.inputs)]
            return _AlignedAdd(reads, len(rows))
        if isinstance(spec, _Sum):
            g = spec.g if s is None else len(s)
            group = None  # old group -> new group (g: dropped)
            if s is not None:
                group = np.full(spec.g + 1, g, np.int64)
                group[s] = np.arange(g)
            counts = spec.counts if s is None or spec.counts is None else spec.counts[s]
            if spec.source is not None:
                t = None if spec.ids is None or group is None else np.flatnonzero(group[spec.ids] < g)
                ids = spec.ids if t is None else group[spec.ids[t]]
                return _Sum(restrict_map(spec.source, t), ids, g, counts)
            if spec.ids is None:  # one group: every row of the input is needed
                return _Sum(None, None, g, counts)
            parts, offset = [], 0
            for inp in node.inputs:  # each input whole (its kept rows): unneeded groups dropped
                h = heights[inp]
                part = spec.ids[offset:offset + h]
                offset += h
                parts.append(part if inp not in pos else part[sel[inp]])
            ids = np.concatenate(parts) if parts else spec.ids
            return _Sum(None, ids if group is None else group[ids], g, counts)
        if isinstance(spec, _Blocks):  # x and z stay whole (every row is needed)
            return spec if s is None else _Blocks(blocks.restrict(spec.p, s))
        if isinstance(spec, _Product):
            p, dense = spec.p, node.inputs[1]
            if s is None and dense not in pos and p.keep is None:
                return spec
            out_rows = np.arange(p.out_keys.height) if s is None else s
            entries, indptr = _product_rows(p, out_rows)
            used, local = np.unique(np.asarray(p.indices)[entries], return_inverse=True)
            n_dense = heights[dense]
            n_kept = len(sel[dense]) if dense in pos else n_dense
            at = used if p.x_at is None else np.asarray(p.x_at)[used]
            present = at < n_dense
            x_at = np.full(len(used), n_kept, np.int64)  # n_kept: out of range, a zero row
            x_at[present] = remap(1, at[present])
            wide = np.int32 if indptr[-1] < 2**31 else np.int64
            return _Product(replace(  # numpy arrays: they go to the device with the index arrays
                p, data=np.asarray(p.data)[entries], indices=local.reshape(-1).astype(np.int32),
                indptr=indptr.astype(wide), shape=(len(out_rows), len(used)),
                x_at=x_at.astype(np.int32 if n_kept < 2**31 else np.int64), keep=None,
                out_keys=p.out_keys.select(pl.all().gather(out_rows))))
        return spec

    # ---- value steps -----------------------------------------------------------------------------
    def _build(self, node: Node, spec, heights: dict) -> Callable:
        """``spec``'s value step: a function of the input value arrays and the index arrays
        (its own index arrays are appended to ``self.index``)."""
        n_in = [heights[i] for i in node.inputs]
        if isinstance(spec, _Empty):
            shape, dtype = spec.shape, spec.dtype
            self.static.append(("empty", shape, str(dtype)))
            return lambda values, index: jnp.zeros(shape, dtype)
        if isinstance(spec, _Map):
            return self._map_step(spec, n_in)
        if isinstance(spec, _Sum):
            if spec.source is not None and spec.ids is None:
                step = self._outer_sum_step(spec.source, n_in, spec.counts)
                if step is not None:
                    return step
            if spec.source is not None:
                per_tuple = self._map_step(spec.source, n_in)
            else:
                def per_tuple(values, index):
                    return values[0] if len(values) == 1 else jnp.concatenate(values)
            return self._sum_step(per_tuple, spec.ids, spec.g, spec.counts)
        if isinstance(spec, _AlignedAdd):
            how = [_index(r, h, spec.n, self.index) for r, h in zip(spec.reads, n_in)]
            self.static.append(("add", tuple(how), spec.n))

            def add_aligned(values, index):
                terms = [v if mode != GATHER else v[index[slot]] for v, (mode, slot) in zip(values, how)]
                total = terms[0]
                for v in terms[1:]:
                    total = total + v
                return jnp.broadcast_to(total, (spec.n, *total.shape[1:]))
            return add_aligned
        if isinstance(spec, _Product):
            p, slots = spec.p, {}
            for name in ("data", "indices", "indptr", "x_at", "keep"):
                array = getattr(p, name)
                if array is not None:
                    self.index.append(array)
                    slots[name] = len(self.index) - 1
            self.static.append(("product", p.shape, p.out_keys.height, p.value_shape,
                                tuple(sorted(slots.items()))))

            def product_step(values, index):
                return sparse.apply_product(p, values[1], **{k: index[i] for k, i in slots.items()})
            return product_step
        if isinstance(spec, _Blocks):
            p, slots = spec.p, {}
            for name in blocks.INDEX:
                array = getattr(p, name)
                if array is not None:
                    self.index.append(array)
                    slots[name] = len(self.index) - 1
            self.static.append(("blocks", tuple(sorted(blocks.static(p).items())),
                                tuple(sorted(slots.items()))))

            def block_step(values, index):
                return blocks.apply_product(p, values[0], values[1],
                                            **{k: index[i] for k, i in slots.items()})
            return block_step
        raise TypeError(f"no value step for {type(spec).__name__}")

    def _map_step(self, spec: _Map, n_in: list[int]):
        """A kernel over every output tuple (or a gather / the identity when there is none)."""
        node, kernel, n = spec.node, spec.kernel, spec.n
        shape, dtype = node.schema.value_shape, node.schema.dtype
        how = [_index(r, h, n, self.index) if spec.read(i) else (ALL, None)
               for i, (r, h) in enumerate(zip(spec.reads, n_in))]
        self.static.append(("map", n, tuple(how)))

        def read(values, index, i):
            mode, slot = how[i]
            return values[i] if mode in (ALL, SHARED) else values[i][index[slot]]

        def step(values, index):
            if kernel is None:
                return read(values, index, 0)
            if n == 0:
                return jnp.zeros((0, *shape), dtype)
            args, axes = _kernel_arguments(node, kernel, how, values, index)
            if all(a is None for a in axes):  # one evaluation, broadcast to every tuple
                one = kernel.fn(*args)
                return jnp.broadcast_to(one, (n, *one.shape))
            return jax.vmap(kernel.fn, in_axes=axes)(*args)

        return step

    def _outer_sum_step(self, spec: _Map, n_in: list[int], counts):
        """The sum over every tuple of a kernel that ends in an outer product of two per-tuple
        vectors (the weight side of a matmul's VJP) as one GEMM: sum_t outer(a_t, b_t) = A^T B,
        A and B the vectors of every tuple. XLA would otherwise build and reduce the batch of
        outer products. The GEMM writes its longer axis last; the result is transposed after."""
        node, kernel, n = spec.node, spec.kernel, spec.n
        if kernel is None or n == 0:
            return None
        factors = passes.outer_factors(kernel, [i.schema.value_shape for i in node.inputs],
                                       node.schema.dtype)
        if factors is None:
            return None
        how = [_index(r, h, n, self.index) if spec.read(i) else (ALL, None)
               for i, (r, h) in enumerate(zip(spec.reads, n_in))]
        batched = [i for i, (mode, _) in enumerate(how) if kernel.uses[i] and mode != SHARED]
        if not batched:  # one evaluation for every tuple: the general sum step broadcasts it
            return None
        mean = None
        if counts is not None:  # a mean over all tuples: divide by their number
            self.index.append(np.maximum(np.asarray(counts[:1]), 1))
            mean = len(self.index) - 1
        # A factor that is a constant or an argument read whole (node features, or an aggregate
        # of fixed ones computed once) is used transposed: XLA:CPU runs A^T B from a stored A^T as
        # a plain GEMM, about 3x faster than contracting A's long first axis. A constant is
        # transposed here; an argument when a call passes an array it has not seen last time.
        fixed_t = {}
        for side, i in (("a", factors.a_arg), ("b", factors.b_arg)):
            slot = self.slot_of.get(node.inputs[i]) if i is not None and how[i][0] == ALL else None
            if slot is None or not kernel.uses[i] or len(node.inputs[i].schema.value_shape) != 1 \
                    or n_in[i] != n:
                continue
            if slot[0] == "const":
                self.index.append(np.ascontiguousarray(np.asarray(self.constants[slot[1]]).T))
            else:
                self.index.append(None)
                self._arg_t[len(self.index) - 1] = slot[1]
            fixed_t[side] = len(self.index) - 1
            break
        self.static.append(("outer", n, tuple(how), mean, tuple(fixed_t.items())))
        contract = (((0,), (0,)), ((), ()))

        def step(values, index):
            args, axes = _kernel_arguments(node, kernel, how, values, index)
            a, b = jax.vmap(factors.fn, in_axes=axes, out_axes=0)(*args)
            if "a" in fixed_t:  # A^T B with A^T stored
                total = index[fixed_t["a"]] @ b
            elif "b" in fixed_t:  # (B^T A)^T with B^T stored
                total = (index[fixed_t["b"]] @ a).T
            elif a.shape[1] <= b.shape[1]:
                total = jax.lax.dot_general(a, b, contract)  # (p, q) = A^T B
            else:  # B^T A with its long axis last, then (B^T A)^T = A^T B, kept in that order
                total = jax.lax.optimization_barrier(jax.lax.dot_general(b, a, contract)).T
            total = total[None]
            if mean is not None:
                total = total / index[mean][0]
            return total

        return step

    def _sum_step(self, per_tuple, ids, g: int, counts):
        """segment_sum of ``per_tuple``'s output by ``ids`` into ``g`` groups (all into one when
        ``ids`` is None; ids out of range are dropped); a mean divides by ``counts``."""
        slot = None
        sorted_ids = False
        if ids is not None:
            self.index.append(np.asarray(ids, np.int32 if g < 2**31 - 1 else np.int64))
            slot = len(self.index) - 1
            sorted_ids = bool(len(ids) < 2 or np.all(np.diff(ids) >= 0))
        mean = None
        if counts is not None:  # group sizes, for a mean
            self.index.append(np.maximum(counts, 1))
            mean = len(self.index) - 1
        self.static.append(("sum", slot, sorted_ids, g, mean))

        def step(values, index):
            out = per_tuple(values, index)
            if slot is None:
                total = jnp.sum(out, axis=0, keepdims=True)
            else:
                total = jax.ops.segment_sum(out, index[slot], num_segments=g,
                                            indices_are_sorted=sorted_ids)
            if mean is not None:  # mean = sum / |group|
                total = total / index[mean].reshape((g,) + (1,) * (total.ndim - 1))
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

    def _with_transposes(self, arguments, index: tuple) -> tuple:
        """``index`` with the transposes of the arguments that steps read transposed, made when
        an argument's array differs from the last call's (data passed every step is not)."""
        if not self._arg_t:
            return index
        index = list(index)
        for slot, i in self._arg_t.items():
            hit = self._t_cache.get(slot)
            if hit is None or hit[0] is not arguments[i]:
                hit = self._t_cache[slot] = (arguments[i], jnp.transpose(arguments[i]))
            index[slot] = hit[1]
        return tuple(index)

    def __call__(self, arguments: Sequence[jax.Array]) -> list[Table]:
        """The outputs' tables for these argument values (same keys as when built)."""
        arguments = tuple(jnp.asarray(a) for a in arguments)
        if self._compiled is None:  # the constants and index arrays move to the device once
            self._fixed = (tuple(jnp.asarray(c) for c in self.constants),
                           tuple(None if i is None else jnp.asarray(i) for i in self.index))
            start = time.perf_counter()
            fixed = (self._fixed[0], self._with_transposes(arguments, self._fixed[1]))
            # The kernels' fingerprints are part of every key, so state a kernel captures never
            # hides behind a program, and so are the shapes of everything passed in.
            kernels = tuple(n.kernel.key for n in self._kernel_nodes)
            shapes = tuple((a.shape, str(a.dtype)) for a in jax.tree.leaves((arguments, fixed)))

            def lower_and_compile():
                self.timings.traced = True
                lowered = self._fn.lower(arguments, *fixed)
                # a plan rebuilt for new keys of the same shapes (a new batch) lowers to the same
                # program: its executable is reused (inputs a program never reads leave no text)
                key = (hashlib.sha256(lowered.as_text().encode()).digest(), kernels, lowered.in_tree,
                       tuple((a.shape, str(a.dtype)) for a in jax.tree.leaves(lowered.args_info)),
                       tuple(sorted(self.xla_options.items())))
                return None, _EXECUTABLES.get_or_make(key, lambda: (None, lowered.compile(self.xla_options)))

            if self.program is None:
                self._compiled = lower_and_compile()[1]
            else:  # the same program over other keys, deciding alike: no tracing at all
                decisions = (self.program, tuple(self.static), tuple(self.aligned),
                             tuple(self.slot_of.values()), kernels, shapes)
                self._compiled = _EXECUTABLES.get_or_make(decisions, lower_and_compile)
            self.timings.compile = time.perf_counter() - start
        values = self._compiled(arguments, self._fixed[0], self._with_transposes(arguments, self._fixed[1]))
        return [Table(k, v) for k, v in zip(self.out_keys, values)]
