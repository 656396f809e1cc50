"""Physical plan nodes: what rewrites in ``workbench.passes`` may put into a plan for the local
executor, beside the four logical operators. Each computes exactly the relation of the logical
subplan it replaces; only the way it is computed differs.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from workbench.plan import Node


@dataclass(frozen=True, eq=False)
class PairJoin(Node):
    """``join(join(L, R, on=pair_on, keys=pair_keys, kernel=pack), C, on, keys, kernel=vjp)`` with
    the packed pairs never built: the kernel reads (L value, R value, C value) of each match.

    The RJP of a join pairs both sides' values with ``pack`` and joins those pairs with the
    cotangent; this node gathers each pair's values straight from L and R instead, reusing the
    match of L and R that the forward join computed.
    """

    left: Node
    right: Node
    cotangent: Node
    pair_on: tuple[tuple[str, str], ...]
    pair_keys: tuple[tuple[str, str, str], ...]  # the pairs' keys: (out, side of L/R, key)
    on: tuple[tuple[str, str], ...]  # (pair key, cotangent key)
    keys: tuple[tuple[str, str, str], ...]  # (out, "left" = pairs | "right" = cotangent, key)
    kernel: Any  # Kernel of (vl, vr, c)
    drops_keys: bool = False
    pairs: Node | None = None  # the pack join it replaces (never computed): for run statistics
    kind: ClassVar[str] = "join"

    @property
    def inputs(self) -> tuple[Node, ...]:
        return (self.left, self.right, self.cotangent)

    def _replace_inputs(self, inputs) -> "PairJoin":
        return replace(self, left=inputs[0], right=inputs[1], cotangent=inputs[2])

    def params(self) -> dict[str, Any]:
        on = ", ".join(f"{l}={r}" for l, r in self.on) or "(cross)"
        keys = ", ".join(f"{o}<-{s}.{k}" for o, s, k in self.keys)
        return {"pairs on": ", ".join(f"{l}={r}" for l, r in self.pair_on) or "(cross)",
                "on": on, "keys": keys, "kernel": self.kernel.name}


@dataclass(frozen=True, eq=False)
class JoinAggregate(Node):
    """``aggregate(join, by, "sum")`` in one step: the join's kernel runs inside the segment sum,
    so its per-tuple outputs are never stored. ``join`` (a Join or PairJoin) is not computed on
    its own; its inputs are this node's inputs."""

    join: Node
    by: tuple[str, ...]
    kind: ClassVar[str] = "aggregate"

    @property
    def inputs(self) -> tuple[Node, ...]:
        return self.join.inputs

    def _replace_inputs(self, inputs) -> "JoinAggregate":
        return replace(self, join=self.join.with_inputs(inputs))

    def params(self) -> dict[str, Any]:
        return {**self.join.params(), "by": ", ".join(self.by) or "()", "kernel": "sum"}


@dataclass(frozen=True, eq=False)
class SpMM(Node):
    """``Y(out_key = r) = sum_c E(r, c) * X(c)``: a join-then-sum whose kernel scales the other
    side's value by the edge's scalar weight, run as a sparse matrix product (``workbench.sparse``).

    ``edge`` holds two keys and scalar values; M[r, c] is its weight at ``row_key`` = r,
    ``col_key`` = c. ``dense`` has one key, matched with c. A row appears when it has an edge to
    a key of ``dense`` and, when ``rows`` is given, is a key of ``rows`` (one key), as in the
    backward A^T G, whose edges are those the forward join matched. ``replaces`` holds the joins
    it computes inside itself (never computed on their own), for run statistics.
    """

    edge: Node
    dense: Node
    rows: Node | None
    row_key: str
    col_key: str
    out_key: str
    replaces: tuple[Node, ...] = ()
    kind: ClassVar[str] = "aggregate"

    @property
    def inputs(self) -> tuple[Node, ...]:
        return (self.edge, self.dense) + ((self.rows,) if self.rows is not None else ())

    def _replace_inputs(self, inputs) -> "SpMM":
        return replace(self, edge=inputs[0], dense=inputs[1],
                       rows=inputs[2] if self.rows is not None else None)

    @property
    def shape(self) -> tuple[int, int]:
        s = self.edge.schema
        return (s.extent_of(self.row_key), s.extent_of(self.col_key))

    def params(self) -> dict[str, Any]:
        return {"matrix": f"{self.row_key} x {self.col_key}", "by": self.out_key, "kernel": "spmm"}


@dataclass(frozen=True, eq=False)
class BlockProduct(Node):
    """``Y(a, b) = sum_c kernel(x(a, c), z(c, b))`` for relations of 2-D blocks whose kernel is
    one ``dot_general`` of the two blocks contracting one axis each: a join on the contracted
    block index c summed by the two free ones, run as ONE matmul of the dense matrices the blocks
    tile (absent blocks are zeros; ``workbench.blocks``).

    ``spec`` (a ``blocks.Spec``) says which keys of x and z are which block indices, the
    dimension numbers and the output keys. With ``filter`` (two keys), only groups where it has a
    tuple appear: the backward, where the input the gradient is for gives the groups (the join
    RJP's PairJoin of L, R and the broadcast cotangent, summed by L's or R's keys). ``replaces``
    holds the joins it computes inside itself (never computed on their own), for run statistics.
    """

    x: Node
    z: Node
    filter: Node | None
    spec: Any  # workbench.blocks.Spec
    replaces: tuple[Node, ...] = ()
    kind: ClassVar[str] = "aggregate"

    @property
    def inputs(self) -> tuple[Node, ...]:
        return (self.x, self.z) + ((self.filter,) if self.filter is not None else ())

    def _replace_inputs(self, inputs) -> "BlockProduct":
        return replace(self, x=inputs[0], z=inputs[1],
                       filter=inputs[2] if self.filter is not None else None)

    def params(self) -> dict[str, Any]:
        s = self.spec
        return {"x": f"{self.x.display_name}({s.x_free}, {s.x_contracted})",
                "z": f"{self.z.display_name}({s.z_contracted}, {s.z_free})",
                "by": ", ".join(s.order), "kernel": "block matmul"}
