"""The Ray tasks of the partitioned runner: each runs the local executor's function for one plan
node over one partition's pieces, or one side of a hash shuffle."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import ray

from workbench.errors import PlanError
from workbench.execute.local import LocalContext, check_unique, run_node
from workbench.execute.partition import concat_pieces, piece_meta, piece_table, split_piece, table_piece
from workbench.plan import Aggregate, Node
from workbench.table import Table


def setup_precision(x64: bool) -> None:
    """Run a task in the driver's precision."""
    if jax.config.read("jax_enable_x64") != x64:
        jax.config.update("jax_enable_x64", x64)


@ray.remote(num_returns=2)
def apply_task(node: Node, x64: bool, counts: tuple[int, ...], *pieces):
    """The local executor's function for ``node`` over one partition of each input (each input's
    ``counts[i]`` pieces concatenated). Returns the output piece and its (rows, bytes)."""
    setup_precision(x64)
    tables, at = [], 0
    for c in counts:
        tables.append(piece_table(concat_pieces(pieces[at:at + c])))
        at += c
    out = table_piece(run_node(node, tables, LocalContext()))
    return out, piece_meta(out)


@ray.remote
def split_task(piece, cols: tuple[str, ...], parts: int):
    """The map side of a hash shuffle: ``parts`` pieces (called with num_returns=parts)."""
    out = split_piece(piece, cols, parts)
    return out[0] if parts == 1 else tuple(out)


@ray.remote(num_returns=2)
def gather_task(check: Node | None, *pieces):
    """The reduce side of a shuffle: one piece; with ``check``, its keys must stay unique."""
    out = concat_pieces(pieces)
    if check is not None:
        check_unique(out[0], int(out[1].shape[0]), check, f"{check.kind} '{check.display_name}'")
    return out, piece_meta(out)


@ray.remote
def partial_task(node: Aggregate, x64: bool, mean: bool, parts: int, piece):
    """Partial sums (and counts, for a mean) of one partition, split on the group keys."""
    setup_precision(x64)
    t = piece_table(piece)
    sums = run_node(node, [t], LocalContext())
    out = (sums.keys, np.asarray(sums.values))
    if mean:
        counts = run_node(node, [Table(t.keys, jnp.ones(t.height, t.values.dtype))], LocalContext())
        out = (*out, np.asarray(counts.values))
    split = split_piece(out, node.by, parts)
    return split[0] if parts == 1 else tuple(split)


@ray.remote(num_returns=2)
def final_task(node: Aggregate, x64: bool, mean: bool, *pieces):
    """Sum the partial sums of one partition's groups; a mean divides by the summed counts."""
    setup_precision(x64)
    piece = concat_pieces(pieces)
    sums = run_node(node, [piece_table(piece)], LocalContext())
    values = np.asarray(sums.values)
    if mean:
        counts = np.asarray(run_node(node, [Table(piece[0], jnp.asarray(piece[2]))], LocalContext()).values)
        if not node.by and not counts.any():
            raise PlanError(f"aggregate mean over '{node.input.display_name}': the relation is empty, so "
                            f"its mean is undefined")
        values = values / counts.reshape((-1,) + (1,) * (values.ndim - 1))  # mean = sum / |group|
    out = (sums.keys, values)
    return out, piece_meta(out)



