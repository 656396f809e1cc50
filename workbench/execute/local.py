"""The local executor: one function per plan node type, vectorized over whole relations.

Keys live in Polars (joins, filters, group ids); values live in JAX arrays (kernels under
``jax.vmap``, gathers and segment sums under ``jax.jit``). No Python loop runs per tuple.
"""
from __future__ import annotations

import functools
import os
import resource
import time
from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np
import polars as pl

from workbench import blocks, sparse
from workbench.errors import PlanError
from workbench.execute import batched as K
from workbench.execute.base import Context, Executor, NodeStats
from workbench.physical import BlockProduct, JoinAggregate, PairJoin, SpMM
from workbench.plan import Add, Aggregate, Join, Node, Scan, Select, toposort
from workbench.storage import as_table
from workbench.table import Table, spare_name


@dataclass
class LocalContext(Context):
    """A local run's context: results and stats per node (``Context``), and the row pairings of
    joins, so a re-join of the same inputs (the join RJP's) reuses the forward match."""

    matches: dict = field(default_factory=dict)  # (left node, right node, on) -> (li, ri, frame)


class LocalExecutor(Executor):
    """The interpreter: one process, node by node, Polars for keys and JAX for values. It is the
    reference every other executor is compared with, and it times each node (EXPLAIN ANALYZE)."""

    name = "local"

    def context(self, stats: dict | None = None) -> LocalContext:
        return LocalContext(stats=stats)

    def execute(self, outputs, ctx: LocalContext) -> None:
        for node in toposort(list(outputs)):
            if node in ctx.memo:
                continue
            inputs = [ctx.memo[i] for i in node.inputs]
            start = time.perf_counter()
            table = run_node(node, inputs, ctx)
            if ctx.stats is not None:
                table.values.block_until_ready()
                ctx.stats[node] = NodeStats(table.height, time.perf_counter() - start, table.nbytes)
            ctx.memo[node] = table


@functools.singledispatch
def run_node(node: Node, inputs: list[Table], ctx: LocalContext) -> Table:
    raise NotImplementedError(f"the local executor has no implementation for {type(node).__name__}")


@run_node.register
def _scan(node: Scan, inputs, ctx) -> Table:
    return as_table(node.table)  # a dataset's scan reads it here, once


def check_unique(keys: pl.DataFrame, height: int, node: Node, what: str) -> None:
    """A key projection that drops keys must still give every tuple its own key."""
    dup = height > 1 if keys.width == 0 else bool(keys.is_duplicated().any())
    if dup:
        example = "()" if keys.width == 0 else str(keys.filter(keys.is_duplicated()).row(0))
        raise PlanError(
            f"{what}: the output key projection maps several tuples to one key {node.schema.keys} = "
            f"{example}; output keys must stay unique. To combine those tuples, keep the keys and "
            f"use wb.aggregate(..., by={node.schema.keys}).")


def select_rows(node: Select, t: Table) -> tuple[pl.DataFrame, np.ndarray | None]:
    """A select's output keys, and the input rows it keeps (None: all, in order)."""
    keys, rows = t.keys, None
    if node.pred is not None:
        idx = "_i" + "_" * max((len(c) for c in keys.columns), default=0)  # a name no key has
        # a keyless relation's key frame has no rows: number its tuples explicitly
        base = keys.with_row_index(idx) if keys.width else pl.DataFrame(
            {idx: np.arange(t.height, dtype=np.uint32)})
        try:
            kept = base.filter(node.pred)
        except pl.exceptions.PolarsError as exc:
            raise PlanError(
                f"select over '{node.input.display_name}': pred {node.pred} failed on the key columns "
                f"{keys.columns}: {exc}. pred must be one boolean Polars expression over key "
                f"columns, e.g. pl.col('row') == 0.") from exc
        rows = kept[idx].to_numpy()
        keys = kept
    out = keys.select([pl.col(i).alias(o) for o, i in node.keys]) if node.keys else pl.DataFrame()
    n = t.height if rows is None else len(rows)
    if node.drops_keys:
        check_unique(out, n, node, f"select over '{node.input.display_name}'")
    return out, rows


@run_node.register
def _select(node: Select, inputs, ctx) -> Table:
    (t,) = inputs
    out, rows = select_rows(node, t)
    if node.kernel is not None:
        values = K.apply(node.kernel, [(t.values, rows)], [node.input.schema.value_shape], t.values.dtype.name)
    elif rows is not None:
        values = K.gather(t.values, rows)
    else:
        values = t.values
    return Table(out, values)


def _match(node: Join, lt: Table, rt: Table, ctx: LocalContext):
    """Row pairs (li, ri) of the equi-join, and a frame with every key of both sides."""
    return _match_keys(node.left, node.right, node.on, lt.keys, lt.height, rt.keys, rt.height, ctx,
                       what=f"join of '{node.left.display_name}' and '{node.right.display_name}'",
                       value_bytes=value_bytes(node))


def value_bytes(node: Node) -> int:
    """Bytes of one tuple's value."""
    s = node.schema
    return int(np.prod(s.value_shape, dtype=np.int64)) * np.dtype(s.dtype).itemsize


def memory_limit() -> int:
    """Bytes this process may allocate: physical memory, or the address-space limit if lower."""
    limit = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return min(limit, soft) if soft not in (resource.RLIM_INFINITY, -1) else limit


def count_join_tuples(lkeys: pl.DataFrame, lheight: int, rkeys: pl.DataFrame, rheight: int, on) -> int:
    """The exact number of tuples an equi-join produces: sum over join values of the count on
    the left times the count on the right (a cross join: the product of the heights)."""
    if not on or not lkeys.width or not rkeys.width:
        return lheight * rheight
    lcols, rcols = [l for l, _ in on], [r for _, r in on]
    left = lkeys.group_by(lcols).agg(pl.len().alias("n_left"))
    right = rkeys.group_by(rcols).agg(pl.len().alias("n_right"))
    both = left.join(right, left_on=lcols, right_on=rcols)
    return int(both.select((pl.col("n_left").cast(pl.Int64) * pl.col("n_right")).sum()).item() or 0)


def check_join_fits(lkeys, lheight: int, rkeys, rheight: int, on, what: str, value_bytes: int) -> None:
    """Refuse a join whose output cannot fit in memory, before building it. Per output tuple:
    both sides' keys, two row indices and the value."""
    per_row = 8 * (lkeys.width + rkeys.width + 2) + value_bytes
    limit = memory_limit()
    if lheight * rheight * per_row <= limit // 2:  # even a cross join fits: nothing to count
        return
    rows = count_join_tuples(lkeys, lheight, rkeys, rheight, on)
    if rows * per_row > limit // 2:
        kind = f"on {', '.join(f'{l}={r}' for l, r in on)}" if on else "as a cross join (on={})"
        raise PlanError(
            f"{what} {kind} would produce {rows:,} tuples, about {rows * per_row / 2**30:,.1f} GiB "
            f"of keys and values, more than this process can hold ({limit / 2**30:,.1f} GiB). Join "
            f"on more keys, filter the inputs first, or aggregate before joining.")


def _match_keys(left, right, on, lkeys: pl.DataFrame, lheight: int, rkeys: pl.DataFrame,
                rheight: int, ctx: LocalContext, what: str = "join", value_bytes: int = 0):
    """The match of two key frames, cached in ``ctx.matches`` under (left, right, on)."""
    cache_key = (left, right, on)
    if cache_key in ctx.matches:
        return ctx.matches[cache_key]
    check_join_fits(lkeys, lheight, rkeys, rheight, on, what, value_bytes)
    lk = lkeys.rename({k: "l:" + k for k in lkeys.columns})
    rk = rkeys.rename({k: "r:" + k for k in rkeys.columns})
    if lk.width == 0 or rk.width == 0:  # a keyless side holds at most one tuple: a broadcast
        li = np.repeat(np.arange(lheight), rheight)
        ri = np.tile(np.arange(rheight), lheight)
        frame = pl.concat([lk[li] if lk.width else pl.DataFrame(), rk[ri] if rk.width else pl.DataFrame()],
                          how="horizontal") if (lk.width or rk.width) else pl.DataFrame()
    elif on and _aligned(lkeys, lheight, rkeys, rheight, on):
        li = ri = np.arange(lheight)
        frame = pl.concat([lk, rk], how="horizontal")
    else:
        lk, rk = lk.with_row_index("_l"), rk.with_row_index("_r")
        if on:
            frame = lk.join(rk, left_on=["l:" + l for l, _ in on], right_on=["r:" + r for _, r in on],
                            how="inner", coalesce=False, maintain_order="left")
        else:
            frame = lk.join(rk, how="cross")
        li, ri = frame["_l"].to_numpy(), frame["_r"].to_numpy()
    ctx.matches[cache_key] = (li, ri, frame)
    return li, ri, frame


def _aligned(lkeys: pl.DataFrame, lheight: int, rkeys: pl.DataFrame, rheight: int, on) -> bool:
    """Whether the equi-join is the identity pairing: ``on`` covers every right key (unique per
    tuple) and row i of both sides carries the same joined values, so row i matches row i only.
    A backward plan often joins relations derived row by row from one forward match (inner joins
    keep the left order), and this check costs a column comparison instead of a hash join."""
    if lheight != rheight or {r for _, r in on} != set(rkeys.columns):
        return False
    return all(np.array_equal(lkeys[l].to_numpy(), rkeys[r].to_numpy()) for l, r in on)


def _project(frame: pl.DataFrame, keys) -> pl.DataFrame:
    """The output key frame of a join: (out, side, key) triples over a match frame."""
    prefix = {"left": "l:", "right": "r:"}
    return frame.select([pl.col(prefix[s] + k).alias(o) for o, s, k in keys]) if keys else pl.DataFrame()


@run_node.register
def _join(node: Join, inputs, ctx) -> Table:
    out, args, shapes = _join_parts(node, inputs, ctx)
    return Table(out, K.apply(node.kernel, args, shapes, node.schema.dtype))


@run_node.register
def _pair_join(node: PairJoin, inputs, ctx) -> Table:
    out, args, shapes = _join_parts(node, inputs, ctx)
    return Table(out, K.apply(node.kernel, args, shapes, node.schema.dtype))


@run_node.register
def _join_aggregate(node: JoinAggregate, inputs, ctx) -> Table:
    keys, args, shapes = _join_parts(node.join, inputs, ctx)
    _fused(ctx, node.join, len(args[0][1]) if args[0][1] is not None else args[0][0].shape[0])
    if node.by:
        ids, out, g = group_ids(keys, node.by, node.schema.extents)
    else:
        ids, out, g = None, pl.DataFrame(), 1
    return Table(out, K.apply_sum(node.join.kernel, args, shapes, node.schema.dtype, ids, g))


@run_node.register
def _spmm(node: SpMM, inputs, ctx) -> Table:
    rows = inputs[2] if node.rows is not None else None
    args = (inputs[0], node.row_key, node.col_key, node.shape, inputs[1], node.out_key, rows)
    if ctx.stats is None:
        return sparse.spmm(*args)
    table, matched = sparse.spmm(*args, count=True)
    for join in node.replaces:  # one tuple per matched edge, never formed
        _fused(ctx, join, matched)
    return table


@run_node.register
def _block_product(node: BlockProduct, inputs, ctx) -> Table:
    x, z = inputs[0], inputs[1]
    p = blocks.product(node.spec, x, z, inputs[2] if node.filter is not None else None)
    for join in node.replaces:  # one tuple per pair of blocks that meet, never formed
        _fused(ctx, join, p.matched)
        _fused(ctx, getattr(join, "pairs", None), p.matched)  # a PairJoin's pairs, never built
    return Table(p.out_keys, blocks.run(p, x.values, z.values))


def _fused(ctx: LocalContext, node: Node | None, rows: int) -> None:
    """Statistics of a node a physical node computes inside itself: its rows; no time or bytes
    of its own (they are the physical node's)."""
    if ctx.stats is not None and node is not None:
        ctx.stats.setdefault(node, NodeStats(rows, 0.0, 0, fused=True))


def _join_parts(node: Node, inputs, ctx):
    """A join's output keys, and its kernel's arguments as (values, rows) with their shapes."""
    out, rows = join_rows(node, inputs, ctx)
    args = [(t.values, r) for t, r in zip(inputs, rows)]
    return out, args, [n.schema.value_shape for n in node.inputs]


def join_rows(node: Node, inputs, ctx) -> tuple[pl.DataFrame, list[np.ndarray]]:
    """A join's (Join or PairJoin) output keys, and for each input the row each output tuple
    reads. Only the inputs' keys and heights are used."""
    if isinstance(node, PairJoin):
        # the pairs of (L, R) under the forward join's match, joined with the cotangent C; the
        # kernel reads L's and R's values through the composed row indices: no packed pairs
        lt, rt, ct = inputs
        li, ri, frame = _match_keys(node.left, node.right, node.pair_on, lt.keys, lt.height,
                                    rt.keys, rt.height, ctx)
        pairs = ("pairs", node.left, node.right, node.pair_on, node.pair_keys)
        if (pairs, node.cotangent, node.on) in ctx.matches:
            ti, ci, frame2 = ctx.matches[(pairs, node.cotangent, node.on)]
        else:
            ti, ci, frame2 = _match_keys(pairs, node.cotangent, node.on, _project(frame, node.pair_keys),
                                         len(li), ct.keys, ct.height, ctx)
        _fused(ctx, node.pairs, len(li))
        out = _project(frame2, node.keys)
        if node.drops_keys:
            check_unique(out, len(ti), node, f"join of the pairs of '{node.left.display_name}' and "
                                              f"'{node.right.display_name}' with '{node.cotangent.display_name}'")
        return out, [li[ti], ri[ti], ci]
    lt, rt = inputs
    li, ri, frame = _match(node, lt, rt, ctx)
    out = _project(frame, node.keys)
    if node.drops_keys:
        check_unique(out, len(li), node, f"join of '{node.left.display_name}' and '{node.right.display_name}'")
    return out, [li, ri]


def group_ids(keys: pl.DataFrame, by: tuple[str, ...], extents: tuple[int, ...]):
    """For each row, the index of its group; and the groups' keys (one row per group)."""
    n = keys.height
    size = int(np.prod(extents, dtype=np.float64)) if by else 1
    if not by:
        return np.zeros(n, np.int64), pl.DataFrame(), 1
    if size <= 4 * n + 4096:  # dense key space: linear index, bincount, compress
        lin = np.zeros(n, np.int64)
        for k, e in zip(by, extents):
            lin = lin * e + keys[k].to_numpy()
        present = np.flatnonzero(np.bincount(lin, minlength=size))
        remap = np.zeros(size, np.int64)
        remap[present] = np.arange(len(present))
        cols = np.unravel_index(present, extents)
        out = pl.DataFrame({k: c.astype(np.int64) for k, c in zip(by, cols)})
        return remap[lin], out, len(present)
    row, group = spare_name(by, "_i"), spare_name(by, "_g")
    groups = keys.select(by).with_row_index(row).group_by(by).agg(pl.col(row))
    members = groups.select(pl.col(row), pl.int_range(pl.len()).alias(group)).explode(row)
    ids = np.empty(n, np.int64)
    ids[members[row].to_numpy()] = members[group].to_numpy()
    return ids, groups.select(by), groups.height


@run_node.register
def _aggregate(node: Aggregate, inputs, ctx) -> Table:
    (t,) = inputs
    ids, out, g = group_ids(t.keys, node.by, node.schema.extents)
    if not node.by:  # a keyless input's key frame has no rows: every tuple is in the one group
        ids = np.zeros(t.height, np.int64)
    if node.reduction == "mean" and t.height == 0 and not node.by:
        raise PlanError(f"aggregate mean over '{node.input.display_name}': the relation is empty, so its "
                        f"mean is undefined")
    values = K.segment_sum(t.values, ids, g)
    if node.reduction == "mean":  # mean = sum / |group|
        counts = np.bincount(ids, minlength=g).astype(t.values.dtype.name)
        values = values / jnp.asarray(counts).reshape((g,) + (1,) * (values.ndim - 1))
    return Table(out, values)


@run_node.register
def _add(node: Add, inputs, ctx) -> Table:
    first = inputs[0]
    if all(t.height == first.height and t.keys.equals(first.keys) for t in inputs[1:]):  # aligned
        return Table(first.keys, functools.reduce(jnp.add, [t.values for t in inputs]))
    keys = pl.concat([t.keys for t in inputs]) if first.keys.width else pl.DataFrame()
    values = jnp.concatenate([t.values for t in inputs])
    ids, out, g = group_ids(keys, node.schema.keys, node.schema.extents) if first.keys.width else (
        np.zeros(values.shape[0], np.int64), pl.DataFrame(), 1)
    return Table(out, K.segment_sum(values, ids, g))

