"""Plan rewrites: pure functions from output nodes to equivalent output nodes, listed in RULES.

A rewrite rebuilds only what it changes; every untouched node keeps its identity, so results an
executor has already computed for it (the forward intermediates a backward plan reads) are
reused. ``Plan.to_text`` shows the plan before any rewrite; ``optimize`` is what executors run.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.extend.core as jcore

from workbench.blocks import Spec as BlockSpec
from workbench.kernels import LRU
from workbench.physical import BlockProduct, JoinAggregate, PairJoin, SpMM
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


def _one_output_jaxpr(fn, shapes, dtype: str):
    """The jaxpr of ``fn`` on arguments of ``shapes``, when it traces and has one output; else
    None (a kernel that does not trace here is simply not recognized)."""
    try:
        closed = jax.make_jaxpr(fn)(*[jax.ShapeDtypeStruct(tuple(s), dtype) for s in shapes])
    except Exception:
        return None
    return closed.jaxpr if len(closed.jaxpr.outvars) == 1 else None


def _trace_scaling(fn, shapes, dtype: str, scalar: int, value: int) -> bool:
    if tuple(shapes[scalar]) != ():
        return False
    jaxpr = _one_output_jaxpr(fn, shapes, dtype)
    if jaxpr is None:
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


def _rewrite_sums_of_joins(outputs: Sequence[Node], product: Callable) -> dict[Node, Node]:
    """Bottom-up over the plan: every sum of a join (an Aggregate summing a Join, or a
    JoinAggregate) is offered to ``product(node, rebuilt, join, by)``, which returns the node
    that replaces it, or None."""
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
        replacement = product(node, rebuilt, J, by)
        if replacement is not None:
            new[node] = replacement
    return new


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
    def product(node: Node, rebuilt: Node, J: Node, by: tuple[str, ...]) -> Node | None:
        if len(by) != 1:
            return None
        spec = (_forward_spmm(J, by[0]) if isinstance(J, Join) else
                _backward_spmm(J, by[0]) if isinstance(J, PairJoin) else None)
        if spec is None or (edge_ok is not None and not edge_ok(spec["edge"])):
            return None
        replaces = (J,) if isinstance(J, Join) else (J, J.cotangent)
        return SpMM(rebuilt.schema, out_key=by[0], replaces=replaces, label=node.label,
                    origin=node.origin, **spec)

    return _rewrite_sums_of_joins(outputs, product)


def block_dot(kernel, shapes, dtype: str):
    """Whether ``kernel(*args)`` is exactly one ``dot_general`` of two distinct arguments, both
    2-D, contracting one axis each, no batch axes, up to transposes of its operands and of its
    result: (s1, s2, cx, cz, transpose, precision), the product contracting axis cx of
    ``args[s1]`` with axis cz of ``args[s2]``, transposed when ``transpose``; else None. Its
    jaxpr, pruned to what the output depends on, holds that and nothing else (other arguments
    unused). Decided from the traced program, never from names."""
    key = (kernel.key, kernel.arity, tuple(map(tuple, shapes)), dtype)
    return _BLOCK_DOT.get_or_make(key, lambda: (kernel.fn, _trace_block_dot(kernel.fn, shapes, dtype)))


_BLOCK_DOT = LRU(1024)  # kernel key -> (fn, kept alive for its id()-based key; verdict)


def _trace_block_dot(fn, shapes, dtype: str):
    jaxpr = _one_output_jaxpr(fn, shapes, dtype)
    if jaxpr is None:
        return None
    made_by = {id(v): eqn for eqn in jaxpr.eqns for v in eqn.outvars}
    live, stack = [], [jaxpr.outvars[0]]  # the equations the output depends on
    while stack:
        eqn = made_by.get(id(stack.pop()))
        if eqn is not None and not any(e is eqn for e in live):
            live.append(eqn)
            stack.extend(eqn.invars)
    used = []  # the equations walked below: every live one must be among them

    def peel(var):
        """(var, flipped) past a chain of 2-D transposes."""
        flipped = False
        while True:
            eqn = made_by.get(id(var))
            if (eqn is None or eqn.primitive.name != "transpose"
                    or tuple(eqn.params["permutation"]) != (1, 0)):
                return var, flipped
            used.append(eqn)
            var, flipped = eqn.invars[0], not flipped
    out = jaxpr.outvars[0]
    var, transpose = peel(out)
    dot = made_by.get(id(var))
    if dot is None or dot.primitive.name != "dot_general":
        return None
    used.append(dot)
    (lc, rc), (lb, rb) = dot.params["dimension_numbers"]
    if len(lc) != 1 or len(rc) != 1 or lb or rb or len(dot.invars) != 2:
        return None
    preferred = dot.params.get("preferred_element_type")
    if preferred is not None and str(preferred) != dtype:
        return None
    args = {id(v): i for i, v in enumerate(jaxpr.invars)}
    found = []
    for operand, axis in zip(dot.invars, (lc[0], rc[0])):
        var, flipped = peel(operand)
        if id(var) not in args or len(var.aval.shape) != 2 or str(var.aval.dtype) != dtype:
            return None
        found.append((args[id(var)], 1 - axis if flipped else axis))
    (s1, cx), (s2, cz) = found
    if s1 == s2 or len(used) != len(live) or not all(any(u is e for u in used) for e in live):
        return None
    if len(out.aval.shape) != 2 or str(out.aval.dtype) != dtype:
        return None
    return s1, s2, cx, cz, transpose, dot.params.get("precision")


def outer_factors(kernel, shapes, dtype: str):
    """When ``kernel(*args)`` ends in an outer product of two vectors, ``outer(a, b)`` perhaps
    transposed (a dot_general with no contracted and no batch axes, as the weight side of a
    matmul's VJP is): ``OuterFactors``, a function of the same arguments returning ``(a, b)``
    and which arguments a and b are when unchanged; else None. A sum over
    tuples of such a kernel is one GEMM: sum_t outer(a_t, b_t) = A^T B, contracting the tuple
    axis. Decided from the traced program, never from names."""
    key = (kernel.key, kernel.arity, tuple(map(tuple, shapes)), dtype)
    return _OUTER.get_or_make(key, lambda: (kernel.fn, _trace_outer_factors(kernel.fn, shapes, dtype)))


_OUTER = LRU(1024)  # kernel key -> (fn, kept alive for its id()-based key; verdict)


def _trace_outer_factors(fn, shapes, dtype: str):
    try:
        closed = jax.make_jaxpr(fn)(*[jax.ShapeDtypeStruct(tuple(s), dtype) for s in shapes])
    except Exception:
        return None
    jaxpr = closed.jaxpr
    if len(jaxpr.outvars) != 1:
        return None
    made_by = {id(v): eqn for eqn in jaxpr.eqns for v in eqn.outvars}
    out = var = jaxpr.outvars[0]
    flipped = False
    eqn = made_by.get(id(var))
    if eqn is not None and eqn.primitive.name == "transpose" and tuple(eqn.params["permutation"]) == (1, 0):
        var, flipped = eqn.invars[0], True
    prod = made_by.get(id(var))
    if prod is None or len(prod.invars) != 2:
        return None
    if prod.primitive.name == "dot_general":  # jnp.outer-like: no contracted, no batch axes
        (lc, rc), (lb, rb) = prod.params["dimension_numbers"]
        preferred = prod.params.get("preferred_element_type")
        if lc or rc or lb or rb or (preferred is not None and str(preferred) != dtype):
            return None
        a, b = prod.invars
    elif prod.primitive.name == "mul":  # a[:, None] * b[None, :]
        column = {}  # the axis each operand's vector runs along
        for v in prod.invars:
            eqn = made_by.get(id(v))
            if (eqn is None or eqn.primitive.name != "broadcast_in_dim" or len(v.aval.shape) != 2
                    or len(eqn.params["broadcast_dimensions"]) != 1):
                return None
            axis = eqn.params["broadcast_dimensions"][0]
            if v.aval.shape[1 - axis] != 1:
                return None
            column[axis] = eqn.invars[0]
        if set(column) != {0, 1}:
            return None
        a, b = column[0], column[1]
    else:
        return None
    if flipped:
        a, b = b, a  # out = outer(a, b)
    if any(not isinstance(v, jcore.Var) or len(v.aval.shape) != 1 or str(v.aval.dtype) != dtype
           for v in (a, b)) or str(out.aval.dtype) != dtype:
        return None
    fn = jcore.jaxpr_as_fun(jcore.ClosedJaxpr(jaxpr.replace(outvars=[a, b]), closed.consts))
    direct = [next((i for i, v in enumerate(jaxpr.invars) if v is f), None) for f in (a, b)]
    return OuterFactors(fn, *direct)


class OuterFactors(NamedTuple):
    """``fn(*args) -> (a, b)``, the two vectors of a kernel's outer product; ``a_arg``/``b_arg``:
    the argument that a (b) is, unchanged, or None when it is computed."""

    fn: Callable
    a_arg: int | None
    b_arg: int | None


def _block_spec(kernel, operands, by: dict, schema):
    """The block product a join-then-sum computes, when it is one: ``operands`` are the kernel's
    arguments as (node, {key: class}), classes of the join's matched key values; ``by`` maps the
    summed-by keys to their classes. Returns dict(x, z, filter, spec) or None.

    The kernel must be ``block_dot`` of two arguments x and z, each of two keys, sharing exactly
    one class (the contracted block index c, not summed by) and with their other classes the two
    summed-by ones (a and b). A third argument, which the kernel does not read, must have exactly
    the classes a and b: it only filters the output groups (one tuple per group)."""
    shapes = [node.schema.value_shape for node, _ in operands]
    found = block_dot(kernel, shapes, schema.dtype)
    if found is None:
        return None
    s1, s2, cx, cz, transpose, precision = found
    (x, xcls), (z, zcls) = operands[s1], operands[s2]
    xs, zs = set(xcls.values()), set(zcls.values())
    if len(xcls) != 2 or len(zcls) != 2 or len(xs) != 2 or len(zs) != 2 or len(xs & zs) != 1:
        return None
    (c,) = xs & zs
    (a,), (b,) = xs - {c}, zs - {c}
    if (len(by) != 2 or None in by.values() or sorted(by.values()) != sorted((a, b))
            or tuple(by) != schema.keys):
        return None
    name = {cl: k for k, cl in by.items()}
    x_key = {cl: k for k, cl in xcls.items()}
    z_key = {cl: k for k, cl in zcls.items()}
    filter, filter_keys = None, None
    rest = [operands[i] for i in range(len(operands)) if i not in (s1, s2)]
    if len(rest) > 1:
        return None
    if rest:
        filter, fcls = rest[0]
        if len(fcls) != 2 or sorted(fcls.values()) != sorted((a, b)):
            return None
        f_key = {cl: k for k, cl in fcls.items()}
        filter_keys = (f_key[a], f_key[b])
    x_keys = (x_key[c], x_key[a]) if cx == 0 else (x_key[a], x_key[c])
    z_keys = (z_key[c], z_key[b]) if cz == 0 else (z_key[b], z_key[c])
    spec = BlockSpec(x_keys, z_keys, (cx, cz), transpose, (name[a], name[b]), schema.keys,
                     tuple(x.schema.value_shape), tuple(z.schema.value_shape), schema.dtype,
                     filter_keys, precision)
    if spec.out_shape != tuple(schema.value_shape):
        return None
    return dict(x=x, z=z, filter=filter, spec=spec)


def _forward_block(J: Join, by: tuple[str, ...], schema):
    """aggregate(join(L, R, on={c_L: c_R}, kernel=dot), by=(a, b)), a and b the free keys."""
    if J.drops_keys:
        return None
    cls = J.pair_classes()
    out = {o: cls[(s, k)] for o, s, k in J.keys}
    operands = [(J.left, {k: cls[("left", k)] for k in J.left.schema.keys}),
                (J.right, {k: cls[("right", k)] for k in J.right.schema.keys})]
    return _block_spec(J.kernel, operands, {k: out[k] for k in by}, schema)


def _backward_block(P: PairJoin, by: tuple[str, ...], schema):
    """The RJP of a block product for one side, fused: the pairs of L and R joined with
    C = join(F, G, kernel=broadcast), F the forward join (its tuples those very pairs), G(a, b)
    the cotangent; kernel (vl, vr, g) -> g . vr^T or vl^T . g (any dot of g and one side);
    summed by the other side's keys, which only filter the groups."""
    C = P.cotangent
    if (P.drops_keys or not isinstance(C, Join) or not is_broadcast(C.kernel) or C.drops_keys):
        return None
    F, G = C.left, C.right
    if not (isinstance(F, Join) and F.left is P.left and F.right is P.right and F.on == P.pair_on
            and not F.drops_keys):
        return None
    cls = F.pair_classes()  # the classes of (side, key) in the match of L and R, shared by P
    f_cls = {name: cls[(s, k)] for name, s, k in F.keys}
    g_cls: dict[str, int] = {}
    for fk, gk in C.on:  # G is read at the classes of the F keys it is joined with
        if g_cls.setdefault(gk, f_cls[fk]) != f_cls[fk]:
            return None
    if set(g_cls) != set(G.schema.keys):
        return None
    pair_cls = {name: cls[(s, k)] for name, s, k in P.pair_keys}
    c_cls = {name: f_cls[k] if s == "left" else g_cls[k] for name, s, k in C.keys}
    # each pair meets exactly its own tuple of F (if G has its key): `on` equates every class
    if any(pair_cls.get(p) is None or pair_cls[p] != c_cls.get(c) for p, c in P.on):
        return None
    if {pair_cls[p] for p, _ in P.on} != set(cls.values()):
        return None
    out = {o: (pair_cls.get(k) if s == "left" else c_cls.get(k)) for o, s, k in P.keys}
    operands = [(P.left, {k: cls[("left", k)] for k in P.left.schema.keys}),
                (P.right, {k: cls[("right", k)] for k in P.right.schema.keys}),
                (G, g_cls)]
    return _block_spec(P.kernel, operands, {k: out[k] for k in by}, schema)


def block_products(outputs: Sequence[Node]) -> dict[Node, Node]:
    """A sum by two keys a, b of a join of two relations of 2-D blocks on one key pair c, whose
    kernel is one ``dot_general`` of the two blocks contracting one axis each (``jnp.matmul``,
    ``a @ b.T``, ...), is a blocked matrix product: BlockProduct, ONE matmul of the dense
    matrices the blocks tile (``workbench.blocks``). Its RJP for either side (the pairs of L and
    R joined with the broadcast cotangent G, kernel g . vr^T or vl^T . g, summed by that side's
    keys) is the block product of G and the other side, its groups filtered by that side's
    keys. The kernel is checked on its jaxpr, so ``a @ b + 1`` or ``tanh(a @ b)`` are left alone.

    >>> aggregate(join(A, B, on={"col": "row"}, kernel=jnp.matmul), by=("row", "col"))
    ... # -> BlockProduct(A, B)
    >>> JoinAggregate(PairJoin(A, B, join(F, G, kernel=broadcast), kernel=vjp_left), by=("row", "col"))
    ... # -> BlockProduct(G, B, filter=A): G @ B^T
    """
    def product(node: Node, rebuilt: Node, J: Node, by: tuple[str, ...]) -> Node | None:
        if len(by) != 2:
            return None
        found = (_forward_block(J, by, rebuilt.schema) if isinstance(J, Join) else
                 _backward_block(J, by, rebuilt.schema) if isinstance(J, PairJoin) else None)
        if found is None:
            return None
        replaces = (J,) if isinstance(J, Join) else (J, J.cotangent)
        return BlockProduct(rebuilt.schema, replaces=replaces, label=node.label,
                            origin=node.origin, **found)

    return _rewrite_sums_of_joins(outputs, product)


RULES: tuple[Rewrite, ...] = (
    drop_identity_selects,
    common_subexpressions,
    fuse_pair_joins,
    fuse_join_aggregates,
    sparse_products,
    block_products,  # after fuse_join_aggregates, whose JoinAggregates it reads
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
    _BLOCK_DOT.clear()
