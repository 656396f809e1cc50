"""Relation-Jacobian products: one rule per operator, one generic backward loop, and the
``vjp`` / ``grad`` / ``value_and_grad`` / ``plans`` API.

A rule receives a forward node S, the plan node G_S of its cotangent (a relation with S's keys
and value shape) and which inputs need a gradient; it returns one plan node per input (or None).
Rules emit only relational operators, so the backward pass is itself a relational plan, run by
the same executor, reading forward results instead of recomputing them.
"""
from __future__ import annotations

import inspect
from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from workbench import kernels as K
from workbench.errors import PlanError
from workbench.execute import Context, run as run_plan
from workbench.ops import add_node, aggregate_node, join_node, select_node
from workbench.plan import Add, Aggregate, Join, Node, Plan, Plans, Scan, Schema, Select, emitting_for, toposort
from workbench.relation import Relation
from workbench.table import Table, empty_keys

RJP_RULES: dict[type, Callable] = {}


def defrjp(node_type: type):
    """Register the RJP rule of ``node_type``: rule(S, G_S, wanted) -> one node or None per input."""
    def register(rule):
        RJP_RULES[node_type] = rule
        return rule
    return register


@defrjp(Scan)
def _scan_rjp(S: Scan, ct: Node, wanted):
    return ()  # a scanned relation's accumulated cotangent is its gradient


@defrjp(Select)
def _select_rjp(S: Select, ct: Node, wanted):
    R = S.input
    rkeys = R.schema.keys
    if S.pred is None and S.kernel is None and not S.drops_keys and len(S.keys) == len(rkeys):
        # a pure re-keying: G_R is G_S with the keys mapped back, in R's key order
        back = {i: o for o, i in S.keys}
        return (select_node(ct, keys=tuple((k, back[k]) for k in rkeys)),)
    # G_R(k) = vjp_F(R(k))(G_S(proj(k))) for k with pred(k): one join on proj(k) = G_S.k
    src = R if S.pred is None else select_node(R, pred=S.pred)
    G = join_node(src, ct, on=tuple((i, o) for o, i in S.keys),
                  keys=tuple((k, "left", k) for k in rkeys), kernel=K.select_vjp_kernel(S.kernel))
    return (G,)


@defrjp(Aggregate)
def _aggregate_rjp(S: Aggregate, ct: Node, wanted):
    R = S.input
    g = ct
    if S.kernel == "mean":  # d mean / d v_k = 1 / |group(k)|
        ones = select_node(R, kernel=K.count_kernel(R.schema.dtype))
        counts = aggregate_node(ones, by=S.by, label="count")
        g = join_node(ct, counts, on=tuple((b, b) for b in S.by),
                      keys=tuple((b, "left", b) for b in S.by), kernel=K.divide_kernel())
    if set(S.by) == set(R.schema.keys):  # every group is one tuple: identity, re-keyed
        if S.by == R.schema.keys:
            return (g,)
        return (select_node(g, keys=tuple((k, k) for k in R.schema.keys)),)
    # the transpose of a sum is a broadcast: G_R(k) = G_S(group(k))
    G = join_node(R, g, on=tuple((b, b) for b in S.by),
                  keys=tuple((k, "left", k) for k in R.schema.keys), kernel=K.broadcast_kernel())
    return (G,)


def _pair_names(S: Join) -> tuple[dict[tuple[str, str], str], tuple[tuple[str, str, str], ...]]:
    """Name every key of a matched (left, right) pair: left keys keep their names, right keys
    joined on take their left partner's, other right keys keep theirs (or 'right.k' on a clash)."""
    names: dict[tuple[str, str], str] = {}
    triples = []
    for k in S.left.schema.keys:
        names[("left", k)] = k
        triples.append((k, "left", k))
    partner = {}
    for l, r in S.on:
        partner.setdefault(r, l)
    taken = set(S.left.schema.keys)
    for k in S.right.schema.keys:
        if k in partner:
            names[("right", k)] = partner[k]
            continue
        name = k if k not in taken else f"right.{k}"
        names[("right", k)] = name
        taken.add(name)
        triples.append((name, "right", k))
    return names, tuple(triples)


@defrjp(Join)
def _join_rjp(S: Join, ct: Node, wanted):
    L, R = S.left, S.right
    names, pair_keys = _pair_names(S)
    # T: the matched pairs with both values packed (the executor reuses the forward join's match)
    T = join_node(L, R, on=S.on, keys=pair_keys, kernel=K.pack_kernel(), label="pairs")
    on_ct = tuple((names[(side, k)], out) for out, side, k in S.keys)
    pair_order = tuple((n, "left", n) for n, _, _ in pair_keys)
    lshape, rshape = L.schema.value_shape, R.schema.value_shape
    grads = []
    for side, node, other_joined in (("left", L, {r for _, r in S.on}), ("right", R, {l for l, _ in S.on})):
        if not wanted[0 if side == "left" else 1]:
            grads.append(None)
            continue
        # U(pair) = vjp_F,side(vl, vr)(G_S(proj(pair))): join the pairs with the cotangent
        U = join_node(T, ct, on=on_ct, keys=pair_order,
                      kernel=K.join_vjp_kernel(S.kernel, side, lshape, rshape))
        other = R if side == "left" else L
        by = tuple(names[(side, k)] for k in node.schema.keys)
        if set(other.schema.keys) <= other_joined:  # each tuple meets at most one: no sum
            G = U if by == tuple(n for n, _, _ in pair_keys) else select_node(U, keys=tuple(zip(by, by)))
        else:  # sum over the partners of each tuple
            G = aggregate_node(U, by=by)
        if by != node.schema.keys:
            G = select_node(G, keys=tuple(zip(node.schema.keys, by)))
        grads.append(G)
    return tuple(grads)


@defrjp(Add)
def _add_rjp(S: Add, ct: Node, wanted):
    return tuple(ct if w else None for w in wanted)


def backward(out: Node, seed: Node, leaves: Sequence[Node]) -> list[Node | None]:
    """The chain rule over the DAG: walk it in reverse topological order, sum the cotangents of a
    node with several consumers, and call each node's rule. Nodes that do not depend on any leaf
    get no cotangent at all (a symbolic zero). Returns one cotangent node per leaf, or None."""
    order = toposort([out])
    leaf_set = set(leaves)
    depends = set()
    for node in order:
        if node in leaf_set or any(i in depends for i in node.inputs):
            depends.add(node)
    cts: dict[Node, list[Node]] = {out: [seed]} if out in depends else {}
    grads: dict[Node, Node] = {}
    for node in reversed(order):
        terms = cts.pop(node, None)
        if not terms:
            continue
        with emitting_for(node):
            ct = add_node(terms)
            if node in leaf_set:
                grads[node] = ct
                continue
            rule = RJP_RULES.get(type(node))
            if rule is None:
                raise NotImplementedError(f"no RJP rule for operator {type(node).__name__}")
            contributions = rule(node, ct, tuple(i in depends for i in node.inputs))
        for inp, c in zip(node.inputs, contributions):
            if c is not None and inp in depends:
                cts.setdefault(inp, []).append(_conform(c, inp, node))
    return [grads.get(leaf) for leaf in leaves]


def _conform(c: Node, primal: Node, origin: Node) -> Node:
    """A cotangent contribution with its primal's key order and extents. A rule may name the keys
    in another order, or take a key's extent from a join partner; the contribution's tuples are a
    subset of the primal's, so the primal's extents hold them."""
    s, p = c.schema, primal.schema
    if s.keys == p.keys and s.extents == p.extents:
        return c
    if set(s.keys) != set(p.keys) or (s.value_shape, s.dtype) != (p.value_shape, p.dtype):
        raise PlanError(f"the RJP rule of {origin.kind} returned a cotangent {s.describe()} for an "
                        f"input {p.describe()}; it must have the input's keys and value shape")
    schema = Schema(p.keys, p.extents, s.value_shape, s.dtype)
    return Select(schema, c, None, tuple((k, k) for k in p.keys), None, origin=origin)


# ---- the user API ----------------------------------------------------------------------------

def _arg_names(f: Callable, n: int) -> list[str]:
    try:
        params = [p.name for p in inspect.signature(f).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"arg{i}" for i in range(n)]


def _trace(f: Callable, rels: Sequence[Relation], what: str) -> tuple[list[Relation], Relation]:
    """Call ``f`` on fresh TableScans of the arguments, so each argument is a leaf of the plan."""
    for i, r in enumerate(rels):
        if not isinstance(r, Relation):
            raise TypeError(f"{what}: argument {i} is a {type(r).__name__}, not a workbench Relation")
    names = _arg_names(f, len(rels))
    leaves = [Relation(Scan(r.schema, r.table(), name=n)) for r, n in zip(rels, names)]
    out = f(*leaves)
    if not isinstance(out, Relation):
        raise TypeError(f"{what}: the program returned {type(out).__name__}; it must return one "
                        f"workbench Relation (its loss or output).")
    return leaves, out


def _zero_gradient(primal: Node) -> Node:
    """A symbolic zero made concrete: no tuples, or the one tuple of a keyless primal."""
    s = primal.schema
    if s.keys:
        table = Table(empty_keys(s.keys), jnp.zeros((0, *s.value_shape), s.dtype))
    else:
        from polars import DataFrame
        table = Table(DataFrame(), jnp.zeros((1, *s.value_shape), s.dtype))
    return Scan(s, table, name="zero", origin=primal)


def _seed(out: Node) -> Node:
    """The cotangent of a scalar loss: the one tuple ((), 1)."""
    s = out.schema
    from polars import DataFrame
    return Scan(s, Table(DataFrame(), jnp.ones((1,), s.dtype)), name="1", origin=out)


def _check_scalar(out: Relation, what: str) -> None:
    if out.keys or out.value_shape:
        raise ValueError(
            f"{what} needs a scalar loss (no keys, value shape ()), but the program returned a "
            f"relation with keys {out.keys} and value shape {out.value_shape}. Reduce it with "
            f"wb.aggregate(wb.select(R, kernel=jnp.sum), by=()), or use wb.vjp with a cotangent.")


def _argnums(argnums, n: int, what: str) -> tuple[int, ...]:
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    for a in nums:
        if not isinstance(a, int) or not -n <= a < n:
            raise ValueError(f"{what}: argnums {argnums} is out of range for {n} argument(s)")
    return tuple(a % n for a in nums)


def _context(runner, stats: dict | None = None):
    """A run's context: the local executor's, or the given runner's."""
    return Context(stats=stats) if runner is None else runner.context(stats=stats)


def _gradient_nodes(out: Relation, seed: Node, leaves: list[Relation], nums) -> list[Node]:
    """The backward plan's outputs: one gradient node per requested argument, a concrete zero
    where the output does not depend on it."""
    nodes = backward(out.node, seed, [leaves[i].node for i in nums])
    return [n if n is not None else _zero_gradient(leaves[i].node) for n, i in zip(nodes, nums)]


def _grad_relations(out: Relation, seed: Node, leaves: list[Relation], nums, ctx: Context):
    nodes = _gradient_nodes(out, seed, leaves, nums)
    tables = run_plan(nodes, ctx)
    grads = []
    for node, table, i in zip(nodes, tables, nums):
        g = Relation(node)
        g._table = table
        grads.append(g)
    return grads


def vjp(f: Callable, *rels: Relation, runner=None):
    """``(out, pullback)``: ``pullback(G_out)`` returns one gradient relation per argument.
    ``runner`` (e.g. ``workbench.execute.ray.RayRunner``) runs both plans instead of the local
    executor; so in ``value_and_grad``, ``grad`` and ``plans``."""
    leaves, out = _trace(f, rels, "vjp")
    ctx = _context(runner)
    out._table = run_plan([out.node], ctx)[0]

    def pullback(cotangent: Relation):
        if not isinstance(cotangent, Relation):
            raise TypeError(f"pullback: the cotangent must be a Relation, got {type(cotangent).__name__}")
        if set(cotangent.keys) != set(out.keys) or cotangent.value_shape != out.value_shape:
            raise PlanError(f"pullback: the cotangent {cotangent.schema.describe()} must have the "
                            f"output's keys and value shape {out.schema.describe()}")
        if cotangent.dtype != out.dtype:
            raise PlanError(f"pullback: cotangent dtype {cotangent.dtype} differs from the output's "
                            f"{out.dtype}")
        seed = cotangent.node
        if cotangent.keys != out.keys:
            seed = select_node(seed, keys=tuple((k, k) for k in out.keys))
        return tuple(_grad_relations(out, seed, leaves, range(len(leaves)), ctx))

    return out, pullback


def value_and_grad(f: Callable, argnums: int | Sequence[int] = 0, runner=None):
    """``f(*rels) -> (loss, grads)``; grads is one relation, or a tuple when argnums is a tuple."""
    def run(*rels: Relation):
        nums = _argnums(argnums, len(rels), "value_and_grad")
        leaves, out = _trace(f, rels, "value_and_grad")
        _check_scalar(out, "grad")
        ctx = _context(runner)
        out._table = run_plan([out.node], ctx)[0]
        grads = _grad_relations(out, _seed(out.node), leaves, nums, ctx)
        return out, (grads[0] if isinstance(argnums, int) else tuple(grads))
    return run


def grad(f: Callable, argnums: int | Sequence[int] = 0, runner=None):
    """The gradient of a scalar relational loss with respect to the ``argnums`` arguments."""
    vg = value_and_grad(f, argnums, runner)
    return lambda *rels: vg(*rels)[1]


def plans(f: Callable, *rels: Relation, argnums: int | Sequence[int] = 0,
          analyze: bool = False, runner=None) -> Plans:
    """The forward plan of ``f`` and the backward plan that computes the gradients of ``argnums``.
    A non-scalar output is seeded with a cotangent of ones. With ``analyze``, both plans are run
    and every node is annotated with its row count, wall time and output size (EXPLAIN ANALYZE)."""
    nums = _argnums(argnums, len(rels), "plans")
    leaves, out = _trace(f, rels, "plans")
    if out.keys or out.value_shape:
        with emitting_for(out.node):
            seed = select_node(out.node, kernel=K.Kernel(jnp.ones_like, name="ones"), label="seed")
    else:
        seed = _seed(out.node)
    nodes = _gradient_nodes(out, seed, leaves, nums)
    names = _arg_names(f, len(rels))
    stats = tables = None
    if analyze:
        ctx = _context(runner, stats={})
        run_plan([out.node], ctx)
        run_plan(nodes, ctx)
        stats, tables = ctx.stats, ctx.memo
    forward = Plan((out.node,), ("out",), "forward", stats=stats, tables=tables)
    back = Plan(tuple(nodes), tuple(f"grad {names[i]}" for i in nums), "backward",
                forward=forward, stats=stats, tables=tables)
    return Plans(forward, back)
