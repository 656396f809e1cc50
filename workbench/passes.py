"""Plan rewrites: pure functions from output nodes to equivalent output nodes, listed in RULES.

A rewrite rebuilds only what it changes; every untouched node keeps its identity, so results an
executor has already computed for it (the forward intermediates a backward plan reads) are
reused. ``Plan.to_text`` shows the plan before any rewrite; ``optimize`` is what executors run.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from workbench.plan import Add, Aggregate, Join, Node, Scan, Select, toposort


def _rebuild(node: Node, new_inputs: Sequence[Node]) -> Node:
    """``node`` with its inputs replaced, or ``node`` itself when nothing changed."""
    if all(a is b for a, b in zip(node.inputs, new_inputs)):
        return node
    if isinstance(node, Select | Aggregate):
        return dataclasses.replace(node, input=new_inputs[0])
    if isinstance(node, Join):
        return dataclasses.replace(node, left=new_inputs[0], right=new_inputs[1])
    if isinstance(node, Add):
        return dataclasses.replace(node, terms=tuple(new_inputs))
    if hasattr(node, "with_inputs"):  # physical nodes (workbench.physical)
        return node.with_inputs(tuple(new_inputs))
    raise NotImplementedError(f"cannot rebuild {type(node).__name__}")


Rewrite = Callable[[Sequence[Node]], dict]  # outputs -> {every reachable node: its replacement}


def _map_nodes(outputs: Sequence[Node], visit: Callable[[Node], Node]) -> dict[Node, Node]:
    """Bottom-up: rebuild each node over its rewritten inputs, then let ``visit`` replace it."""
    new: dict[Node, Node] = {}
    for node in toposort(list(outputs)):
        new[node] = visit(_rebuild(node, [new[i] for i in node.inputs]))
    return new


def drop_identity_selects(outputs: Sequence[Node]) -> dict[Node, Node]:
    """select(R) with no predicate, no kernel and R's keys in R's order is R itself.

    >>> select_node(R, keys=(("i", "i"),))   # -> R
    """
    def visit(node: Node) -> Node:
        if (isinstance(node, Select) and node.pred is None and node.kernel is None
                and tuple(o for o, _ in node.keys) == node.input.schema.keys
                and all(o == i for o, i in node.keys)):
            return node.input
        return node
    return _map_nodes(outputs, visit)


def _signature(node: Node, ids: dict[Node, int]):
    """Two nodes with one signature compute the same relation."""
    inputs = tuple(ids[i] for i in node.inputs)
    if isinstance(node, Scan):
        return None  # stored data: identity only
    if isinstance(node, Select):
        pred = None if node.pred is None else node.pred.meta.serialize(format="json")
        kernel = None if node.kernel is None else (node.kernel._key, node.kernel.uses)
        return ("select", inputs, pred, node.keys, kernel)
    if isinstance(node, Join):
        return ("join", inputs, node.on, node.keys, node.kernel._key, node.kernel.uses)
    if isinstance(node, Aggregate):
        return ("aggregate", inputs, node.by, node.kernel)
    if isinstance(node, Add):
        return ("add", tuple(sorted(inputs)))
    return None


def common_subexpressions(outputs: Sequence[Node]) -> dict[Node, Node]:
    """Compute each distinct relation once: nodes with one signature share the first of them.

    >>> join(A, B, ...) built twice with equal arguments   # -> one join node
    """
    seen: dict = {}
    ids: dict[Node, int] = {}

    def visit(node: Node) -> Node:
        sig = _signature(node, ids)
        if sig is not None:
            node = seen.setdefault(sig, node)
        ids.setdefault(node, len(ids))
        return node
    return _map_nodes(outputs, visit)


def fuse_pair_joins(outputs: Sequence[Node]) -> dict[Node, Node]:
    """join(join(L, R, kernel=pack), C, kernel=vjp) -> PairJoin(L, R, C): the join RJP's packed
    pairs are never built; each pair's values are gathered from L and R where the vjp reads them.

    >>> join(pairs(L, R), G_S, kernel=vjp_left(f))   # -> PairJoin(L, R, G_S, kernel=vjp_left(f))
    """
    from workbench import kernels as K
    from workbench.physical import PairJoin

    def visit(node: Node) -> Node:
        if not (isinstance(node, Join) and isinstance(node.left, Join) and K.is_pack(node.left.kernel)):
            return node
        kernel = K.unpacked_join_vjp(node.kernel)
        if kernel is None:
            return node
        T = node.left
        return PairJoin(node.schema, T.left, T.right, node.right, T.on, T.keys, node.on, node.keys,
                        kernel, node.drops_keys, T, label=node.label, origin=node.origin)
    return _map_nodes(outputs, visit)


def fuse_join_aggregates(outputs: Sequence[Node]) -> dict[Node, Node]:
    """aggregate(J, by, sum) over a join J of a backward plan that nothing else reads ->
    JoinAggregate(J, by): the join's kernel is evaluated inside the sum, its tuples never stored.

    Only joins emitted by RJP rules are fused: a forward intermediate stays computed, because a
    backward plan run later may read it.

    >>> aggregate(join(X, G, kernel=vjp_right(f)), by=())   # -> JoinAggregate(join(...), by=())
    """
    from workbench.physical import JoinAggregate, PairJoin

    order = toposort(list(outputs))
    readers: dict[int, int] = {}
    for node in order:
        for i in node.inputs:
            readers[id(i)] = readers.get(id(i), 0) + 1
    for o in outputs:
        readers[id(o)] = readers.get(id(o), 0) + 1
    new: dict[Node, Node] = {}
    for node in order:
        rebuilt = _rebuild(node, [new[i] for i in node.inputs])
        if (isinstance(node, Aggregate) and node.kernel == "sum"
                and isinstance(node.input, Join | PairJoin) and node.input.is_backward
                and readers[id(node.input)] == 1):
            rebuilt = JoinAggregate(node.schema, new[node.input], node.by, label=node.label,
                                    origin=node.origin)
        new[node] = rebuilt
    return new


RULES: tuple[Rewrite, ...] = (
    drop_identity_selects,
    common_subexpressions,
    fuse_pair_joins,
    fuse_join_aggregates,
)


def optimize(outputs: Sequence[Node], rules: Sequence[Rewrite] = RULES):
    """Apply every rule in order. Returns the rewritten outputs and, for every node reachable
    from ``outputs``, the node that computes it in the rewritten plan."""
    current = list(outputs)
    mapping = {n: n for n in toposort(current)}
    for rule in rules:
        step = rule(current)
        mapping = {k: step.get(v, v) for k, v in mapping.items()}  # v may be fused away
        current = [step[o] for o in current]
    return current, mapping
