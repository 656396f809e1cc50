"""The executor protocol. An executor runs plan nodes in a context: it rewrites the plan with its
own ``rules``, computes the physical nodes, and files every result under the logical node it
stands for too, so a later plan that reads a logical node (a backward plan reading a forward
intermediate) finds it computed. ``run`` is that loop, the same for every executor; an executor
supplies ``execute`` (compute physical nodes into ``ctx.memo``) and ``collect`` (one result as a
Table).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from workbench import passes
from workbench.plan import Node
from workbench.table import Table


@dataclass
class NodeStats:
    """What EXPLAIN ANALYZE shows of one node."""

    rows: int
    seconds: float
    nbytes: int
    fused: bool = False  # computed inside a physical node: no time or table of its own
    partitions: tuple[int, ...] | None = None  # rows per partition, on a partitioned runner


@dataclass
class Context:
    """What one run keeps: a result per node (logical and physical) and, when analyzing, stats."""

    memo: dict = field(default_factory=dict)  # Node -> the executor's result
    stats: dict | None = None  # Node -> NodeStats
    # no later run reads this context: an executor may drop each result once the run under way
    # has read it for the last time (the outputs of that run excepted)
    last: bool = False


class Executor:
    """Runs plans. Subclasses set ``rules`` and implement ``execute``; see the module docstring."""

    rules: tuple = passes.RULES
    name: str = "executor"

    def __init__(self, rules=None):
        if rules is not None:  # e.g. a plan run without one rewrite, to measure it
            self.rules = tuple(rules)

    def context(self, stats: dict | None = None) -> Context:
        """A fresh context; ``stats={}`` collects NodeStats per node."""
        return Context(stats=stats)

    def execute(self, outputs: list[Node], ctx: Context) -> None:
        """Compute every node reachable from ``outputs`` that ``ctx.memo`` lacks."""
        raise NotImplementedError

    def finish(self, ctx: Context, tables: Sequence[Table]) -> None:
        """``ctx`` will run no more plans, and of what its runs made only ``tables`` will be read:
        an executor that holds results elsewhere (the resident runner's actors) drops the rest
        now. Nothing to do here: the context's memo goes with it."""

    def collect(self, result: Any) -> Table:
        """One result in ``ctx.memo`` as a Table."""
        return result

    def run(self, outputs: Sequence[Node], ctx: Context | None = None,
            optimize: bool = True) -> list[Table]:
        """Rewrite ``outputs`` with ``rules``, compute them, and file results and stats under
        the logical nodes; returns one Table per output."""
        ctx = ctx if ctx is not None else self.context()
        if optimize:
            physical, mapping = passes.optimize(list(outputs), self.rules)
        else:
            physical, mapping = list(outputs), {}
        for logical, node in mapping.items():  # a rewrite may rebuild a node computed by an earlier
            if logical in ctx.memo and node not in ctx.memo:  # run: read it instead of recomputing
                ctx.memo[node] = ctx.memo[logical]
        self.execute(physical, ctx)
        for logical, node in mapping.items():
            if node in ctx.memo:
                ctx.memo.setdefault(logical, ctx.memo[node])
            if ctx.stats is not None and node in ctx.stats:
                ctx.stats.setdefault(logical, ctx.stats[node])
        return [self.collect(ctx.memo[o]) for o in physical]
