"""Executors run plans. ``run`` rewrites a plan (``workbench.passes``) and runs it on the local
executor (Polars for keys, JAX for values), or on the executor whose context it is given (the
partitioned runner of ``workbench.execute.ray``); results and statistics are filed under the logical
nodes too, so a later plan that reads a logical node (a backward plan reading a forward
intermediate) finds it computed."""
from __future__ import annotations

from typing import Sequence

from workbench.execute.local import Context, execute
from workbench.plan import Node


def run(outputs: Sequence[Node], ctx: Context | None = None, optimize: bool = True):
    from workbench import passes

    ctx = ctx if ctx is not None else Context()
    if not isinstance(ctx, Context):  # another executor's context (RayRunner.context()) runs it
        return ctx.run(outputs, optimize=optimize)
    if not optimize:
        return execute(list(outputs), ctx)
    physical, mapping = passes.optimize(outputs)
    for logical, node in mapping.items():  # a rewrite may rebuild a node computed by an earlier
        if logical in ctx.memo and node not in ctx.memo:  # run (e.g. over a dropped select):
            ctx.memo[node] = ctx.memo[logical]  # read its result instead of recomputing it
    tables = execute(physical, ctx)
    for logical, node in mapping.items():
        if node in ctx.memo:
            ctx.memo.setdefault(logical, ctx.memo[node])
        if ctx.stats is not None and node in ctx.stats:
            ctx.stats.setdefault(logical, ctx.stats[node])
    return tables


__all__ = ["Context", "execute", "run"]
