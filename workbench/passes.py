"""Plan rewrites: pure functions from output nodes to equivalent output nodes, listed in RULES.

A rewrite rebuilds only what it changes; every untouched node keeps its identity, so results an
executor has already computed for it (the forward intermediates a backward plan reads) are
reused. ``Plan.to_text`` shows the plan before any rewrite; ``optimize`` is what executors run.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax

from workbench.kernels import LRU
from workbench.physical import JoinAggregate, PairJoin, SpMM
from workbench.plan import Add, Aggregate, Join, Node, Scan, Select, toposort
from workbench.rjp import is_broadcast, is_pack, unpacked_join_vjp


Rewrite = Callable[[Sequence[Node]], dict]  # outputs -> {every reachable node: its replacement}


def map_nodes(outputs: Sequence[Node], visit: Callable[[Node], Node]) -> dict[Node, Node]:
    """Bottom-up: rebuild each node over its rewritten inputs, then let ``visit`` replace it."""
    new: dict[Node, Node] = {}
    for node in toposort(list(outputs)):
        new[node] = visit(node.with_inputs([new[i] for i in node.inputs]))
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
    return map_nodes(outputs, visit)


def _signature(node: Node, ids: dict[Node, int]):
    """Two nodes with one signature compute the same relation."""
    inputs = tuple(ids[i] for i in node.inputs)
    if isinstance(node, Scan):
        return None  # stored data: identity only
    if isinstance(node, Select):
        pred = None if node.pred is None else node.pred.meta.serialize(format="json")
        kernel = None if node.kernel is None else (node.kernel.key, node.kernel.uses)
        return ("select", inputs, pred, node.keys, kernel)
    if isinstance(node, Join):
        return ("join", inputs, node.on, node.keys, node.kernel.key, node.kernel.uses)
    if isinstance(node, Aggregate):
        return ("aggregate", inputs, node.by, node.reduction)
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
    return map_nodes(outputs, visit)


def as_pair_join(node: Node):
    """The PairJoin that computes ``node`` when it joins a join RJP's packed pairs with the
    cotangent (``join(join(L, R, kernel=pack), C, kernel=vjp)``), else None."""
    if not (isinstance(node, Join) and isinstance(node.left, Join) and is_pack(node.left.kernel)):
        return None
    kernel = unpacked_join_vjp(node.kernel)
    if kernel is None:
        return None
    T = node.left
    return PairJoin(node.schema, T.left, T.right, node.right, T.on, T.keys, node.on, node.keys,
                    kernel, node.drops_keys, T, label=node.label, origin=node.origin)


def fuse_pair_joins(outputs: Sequence[Node]) -> dict[Node, Node]:
    """join(join(L, R, kernel=pack), C, kernel=vjp) -> PairJoin(L, R, C): the join RJP's packed
    pairs are never built; each pair's values are gathered from L and R where the vjp reads them.

    >>> join(pairs(L, R), G_S, kernel=vjp_left(f))   # -> PairJoin(L, R, G_S, kernel=vjp_left(f))
    """
    return map_nodes(outputs, lambda node: as_pair_join(node) or node)


def fuse_join_aggregates(outputs: Sequence[Node]) -> dict[Node, Node]:
    """aggregate(J, by, sum) over a join J of a backward plan that nothing else reads ->
    JoinAggregate(J, by): the join's kernel is evaluated inside the sum, its tuples never stored.

    Only joins emitted by RJP rules are fused: a forward intermediate stays computed, because a
    backward plan run later may read it.

    >>> aggregate(join(X, G, kernel=vjp_right(f)), by=())   # -> JoinAggregate(join(...), by=())
    """
    order = toposort(list(outputs))
    readers: dict[int, int] = {}
    for node in order:
        for i in node.inputs:
            readers[id(i)] = readers.get(id(i), 0) + 1
    for o in outputs:
        readers[id(o)] = readers.get(id(o), 0) + 1
    new: dict[Node, Node] = {}
    for node in order:
        rebuilt = node.with_inputs([new[i] for i in node.inputs])
        if (isinstance(node, Aggregate) and node.reduction == "sum"
                and isinstance(node.input, Join | PairJoin) and node.input.is_backward
                and readers[id(node.input)] == 1):
            rebuilt = JoinAggregate(node.schema, new[node.input], node.by, label=node.label,
                                    origin=node.origin)
        new[node] = rebuilt
    return new


def is_scaling(kernel, shapes, dtype: str, scalar: int, value: int) -> bool:
    """Whether ``kernel(*args)`` is exactly ``args[scalar] * args[value]`` with ``args[scalar]`` of
    shape (): its jaxpr, pruned to what the output depends on, is one ``mul`` of those two
    arguments (other arguments unused). Decided from the traced program, never from names."""
    key = (kernel.key, kernel.arity, tuple(map(tuple, shapes)), dtype, scalar, value)
    return _SCALING.get_or_make(key, lambda: (kernel.fn, _trace_scaling(kernel.fn, shapes, dtype,
                                                                        scalar, value)))


_SCALING = LRU(1024)  # kernel key -> (fn, kept alive for its id()-based key; verdict)


def _trace_scaling(fn, shapes, dtype: str, scalar: int, value: int) -> bool:
    if tuple(shapes[scalar]) != ():
        return False
    try:
        closed = jax.make_jaxpr(fn)(*[jax.ShapeDtypeStruct(tuple(s), dtype) for s in shapes])
    except Exception:  # a kernel that does not trace here is simply not recognized
        return False
    jaxpr = closed.jaxpr
    if len(jaxpr.outvars) != 1:
        return False
    out = jaxpr.outvars[0]
    made_by = {id(v): eqn for eqn in jaxpr.eqns for v in eqn.outvars}
    live, stack = [], [out]  # the equations the output depends on
    while stack:
        eqn = made_by.get(id(stack.pop()))
        if eqn is not None and not any(e is eqn for e in live):
            live.append(eqn)
            stack.extend(eqn.invars)
    if len(live) != 1 or live[0].primitive.name != "mul" or live[0].outvars[0] is not out:
        return False
    a, b = jaxpr.invars[scalar], jaxpr.invars[value]
    ops = live[0].invars
    return (len(ops) == 2 and {id(o) for o in ops} == {id(a), id(b)} and a is not b
            and tuple(out.aval.shape) == tuple(shapes[value]) and str(out.aval.dtype) == dtype)


def _edge_and_dense(left: Node, right: Node, on):
    """(edge side, edge node, dense node, edge key joined, edge key free) when one side holds
    two keys and scalar values, the other one key, joined on one pair; else None."""
    if len(on) != 1:
        return None
    for side, E, X, ekey in (("left", left, right, on[0][0]), ("right", right, left, on[0][1])):
        es, xs = E.schema, X.schema
        if (len(es.keys) == 2 and es.value_shape == () and len(xs.keys) == 1
                and es.dtype == xs.dtype):
            free = es.keys[1 - es.keys.index(ekey)]
            return side, E, X, ekey, free
    return None


def _forward_spmm(J: Join, by: str):
    """aggregate(join(E, X, on={c: id}, kernel=e * v), by=r) with r E's other key: Y = M X."""
    found = _edge_and_dense(J.left, J.right, J.on)
    if found is None or J.drops_keys:
        return None
    side, E, X, joined, free = found
    if (by, side, free) not in J.keys:
        return None
    shapes = [J.left.schema.value_shape, J.right.schema.value_shape]
    s = 0 if side == "left" else 1
    if not is_scaling(J.kernel, shapes, J.schema.dtype, s, 1 - s):
        return None
    return dict(edge=E, dense=X, rows=None, row_key=free, col_key=joined)


def _backward_spmm(P, by: str):
    """The RJP of ``aggregate(join(E, X, kernel=e * v), by=r)`` for X, fused: the pairs of E and
    X joined with C = join(F, G, kernel=broadcast), F the forward join, its tuples those very
    pairs, G(r) the cotangent; kernel (e, v, g) -> e * g; summed by E's joined key c. That is
    Y(c) = sum_r M[r, c] G(r) over the matched edges: M^T G, keeping only c that are keys of X."""
    found = _edge_and_dense(P.left, P.right, P.pair_on)
    C = P.cotangent
    if (found is None or P.drops_keys or not isinstance(C, Join) or not is_broadcast(C.kernel)
            or C.drops_keys or len(C.right.schema.keys) != 1 or len(C.on) != 1):
        return None
    side, E, X, joined, free = found
    F = C.left
    if not (isinstance(F, Join) and F.left is P.left and F.right is P.right and F.on == P.pair_on
            and not F.drops_keys):
        return None
    cls = F.pair_classes()  # the classes of (side, key) in the match of L and R, shared by P
    pair_cls = {name: cls[(s, k)] for name, s, k in P.pair_keys}
    f_cls = {name: cls[(s, k)] for name, s, k in F.keys}
    (fk, _gk), = C.on
    c_cls = {name: f_cls[k] if s == "left" else f_cls[fk] for name, s, k in C.keys}
    # each pair meets exactly its own tuple of F (if G has its key): `on` equates every class
    if any(pair_cls.get(p) is None or pair_cls[p] != c_cls.get(c) for p, c in P.on):
        return None
    if {pair_cls[p] for p, _ in P.on} != set(cls.values()):
        return None
    if f_cls[fk] != cls[(side, free)]:  # G is read at the edge's free key
        return None
    out = {o: (pair_cls.get(k) if s == "left" else c_cls.get(k)) for o, s, k in P.keys}
    if out.get(by) != cls[(side, joined)]:  # summed by the key X is joined on
        return None
    shapes = [P.left.schema.value_shape, P.right.schema.value_shape, C.schema.value_shape]
    if not is_scaling(P.kernel, shapes, P.schema.dtype, 0 if side == "left" else 1, 2):
        return None
    return dict(edge=E, dense=C.right, rows=X, row_key=joined, col_key=free)


def sparse_products(outputs: Sequence[Node], edge_ok: Callable[[Node], bool] | None = None) -> dict[Node, Node]:
    """A sum by one key of a join of edges E(r, c) -> scalar weight with node values X(c), whose
    kernel is the weight times the value, is the sparse product Y = M X: SpMM, with M's CSR built
    once per edge table (``workbench.sparse``). The RJP of that sum for X (the pairs of E and X
    joined with the broadcast cotangent, kernel e * g, summed by c) is M^T G: SpMM over the
    transposed CSR. The kernel is checked on its jaxpr (one ``mul`` of the scalar weight and the
    value), so ``e * v + 1`` or ``tanh(e) * v`` are left alone.

    >>> aggregate(join(Edge, X, on={"src": "id"}, kernel=lambda e, v: e * v), by=("dst",))
    ... # -> SpMM(Edge, X, row_key="dst", col_key="src")
    >>> JoinAggregate(PairJoin(Edge, X, join(F, G, kernel=broadcast), kernel=vjp_right), by=("src",))
    ... # -> SpMM(Edge, G, rows=X, row_key="src", col_key="dst")
    """
    new: dict[Node, Node] = {}
    for node in toposort(list(outputs)):
        rebuilt = new[node] = node.with_inputs([new[i] for i in node.inputs])
        if isinstance(rebuilt, Aggregate) and rebuilt.reduction == "sum":
            J, by = rebuilt.input, rebuilt.by
        elif isinstance(rebuilt, JoinAggregate):
            J, by = rebuilt.join, rebuilt.by
            new[node.join] = J  # the fused join's results are filed under its new node
        else:
            continue
        if len(by) != 1:
            continue
        spec = (_forward_spmm(J, by[0]) if isinstance(J, Join) else
                _backward_spmm(J, by[0]) if isinstance(J, PairJoin) else None)
        if spec is not None and (edge_ok is None or edge_ok(spec["edge"])):
            replaces = (J,) if isinstance(J, Join) else (J, J.cotangent)
            new[node] = SpMM(rebuilt.schema, out_key=by[0], replaces=replaces, label=node.label,
                             origin=node.origin, **spec)
    return new


RULES: tuple[Rewrite, ...] = (
    drop_identity_selects,
    common_subexpressions,
    fuse_pair_joins,
    fuse_join_aggregates,
    sparse_products,
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


def clear_cache() -> None:
    """Forget this module's cached results (``workbench.clear_caches`` clears every cache)."""
    _SCALING.clear()
