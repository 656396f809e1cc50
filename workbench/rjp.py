"""Relation-Jacobian products: one rule per operator, the per-tuple kernels they emit, and one
generic backward loop. This module derives backward plans; it never runs one.

A rule receives a forward node S, the plan node G_S of its cotangent (a relation with S's keys
and value shape) and which inputs need a gradient; it returns one plan node per input (or None).
Rules emit only relational operators, so the backward pass is itself a relational plan, run by
the same executor, reading forward results instead of recomputing them.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl

from workbench.errors import PlanError
from workbench.kernels import Kernel
from workbench.ops import add_node, aggregate_node, join_node, select_node
from workbench.plan import Add, Aggregate, Join, Node, Scan, Schema, Select, emitting_for, toposort
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
                  keys=tuple((k, "left", k) for k in rkeys), kernel=select_vjp_kernel(S.kernel))
    return (G,)


@defrjp(Aggregate)
def _aggregate_rjp(S: Aggregate, ct: Node, wanted):
    R = S.input
    g = ct
    if S.reduction == "mean":  # d mean / d v_k = 1 / |group(k)|
        ones = select_node(R, kernel=count_kernel(R.schema.dtype))
        counts = aggregate_node(ones, by=S.by, label="count")
        g = join_node(ct, counts, on=tuple((b, b) for b in S.by),
                      keys=tuple((b, "left", b) for b in S.by), kernel=divide_kernel())
    if set(S.by) == set(R.schema.keys):  # every group is one tuple: identity, re-keyed
        if S.by == R.schema.keys:
            return (g,)
        return (select_node(g, keys=tuple((k, k) for k in R.schema.keys)),)
    # the transpose of a sum is a broadcast: G_R(k) = G_S(group(k))
    G = join_node(R, g, on=tuple((b, b) for b in S.by),
                  keys=tuple((k, "left", k) for k in R.schema.keys), kernel=broadcast_kernel())
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
    T = join_node(L, R, on=S.on, keys=pair_keys, kernel=pack_kernel(), label="pairs")
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
                      kernel=join_vjp_kernel(S.kernel, side, lshape, rshape))
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


# ---- the backward plan of a program ----------------------------------------------------------

def zero_gradient(primal: Node) -> Node:
    """A symbolic zero made concrete: no tuples, or the one tuple of a keyless primal."""
    s = primal.schema
    if s.keys:
        table = Table(empty_keys(s.keys), jnp.zeros((0, *s.value_shape), s.dtype))
    else:
        table = Table(pl.DataFrame(), jnp.zeros((1, *s.value_shape), s.dtype))
    return Scan(s, table, name="zero", origin=primal)


def seed(out: Node) -> Node:
    """The cotangent of a scalar loss: the one tuple ((), 1). A keyed or tensor-valued output is
    seeded with ones of its shape (the backward plan of sum(out))."""
    s = out.schema
    if s.keys or s.value_shape:
        with emitting_for(out):
            return select_node(out, kernel=Kernel(jnp.ones_like, name="ones"), label="seed")
    return Scan(s, Table(pl.DataFrame(), jnp.ones((1,), s.dtype)), name="1", origin=out)


def gradient_nodes(out: Node, seed_node: Node, leaves: Sequence[Node]) -> list[Node]:
    """The backward plan's outputs: one gradient node per leaf, a concrete zero where ``out``
    does not depend on it."""
    nodes = backward(out, seed_node, leaves)
    return [n if n is not None else zero_gradient(leaf) for n, leaf in zip(nodes, leaves)]


# ---- the per-tuple calculus: the kernels the rules emit ---------------------------------------

def _ravel_cat(a, b):
    return jnp.concatenate([jnp.ravel(a), jnp.ravel(b)])


def pack_kernel() -> Kernel:
    """(vl, vr) -> one flat vector: a relation holds one tensor per tuple."""
    return Kernel(_ravel_cat, name="pack", arity=2)


def _unpack(p, lshape, rshape):
    nl = int(np.prod(lshape, dtype=np.int64))
    return p[:nl].reshape(lshape), p[nl:].reshape(rshape)


def select_vjp_kernel(k: Kernel | None) -> Kernel:
    """(v, g) -> g · dF/dv at v."""
    if k is None:
        return Kernel(_second, name="id", arity=2, uses=(False, True))
    f = k.fn

    def vjp(v, g):
        return jax.vjp(f, v)[1](g)[0]

    return Kernel(vjp, name=f"vjp({k.name})", arity=2)


def _second(_, g):
    return g


def broadcast_kernel() -> Kernel:
    """(v, g) -> g: the transpose of a sum is a broadcast."""
    return Kernel(_second, name="broadcast", arity=2, uses=(False, True))


def divide_kernel() -> Kernel:
    return Kernel(_divide, name="divide", arity=2)


def _divide(g, count):
    return g / count


def count_kernel(dtype: str) -> Kernel:
    return Kernel(functools.partial(_one, dtype=dtype), name="one", arity=1, uses=(False,))


def _one(_, dtype):
    return jnp.ones((), dtype)


def join_vjp_kernel(k: Kernel, side: str, lshape, rshape) -> Kernel:
    """(pack(vl, vr), g) -> g · dF/dv_side at (vl, vr)."""
    f = k.fn
    lshape, rshape = tuple(lshape), tuple(rshape)

    def vjp(packed, g):
        vl, vr = _unpack(packed, lshape, rshape)
        if side == "left":
            return jax.vjp(lambda a: f(a, vr), vl)[1](g)[0]
        return jax.vjp(lambda b: f(vl, b), vr)[1](g)[0]

    vjp.__qualname__ = f"{k.name}_vjp_{side}"
    return Kernel(vjp, name=f"vjp_{side}({k.name})", arity=2, parts=("join_vjp", k, side))


def is_pack(k: Kernel) -> bool:
    """Whether ``k`` packs a join's pair of values (the pairs of the join RJP)."""
    return k.fn is _ravel_cat


def is_broadcast(k: Kernel) -> bool:
    """Whether ``k`` is (v, g) -> g (the cotangent broadcast to the tuples it reaches)."""
    return k.fn is _second


def unpacked_join_vjp(k: Kernel) -> Kernel | None:
    """For a ``join_vjp_kernel`` of (pack(vl, vr), g), the same function of (vl, vr, g): an
    executor can then gather vl and vr from the joined relations instead of building the pairs.
    None for any other kernel."""
    if not k.parts or k.parts[0] != "join_vjp":
        return None
    _, fk, side = k.parts
    f = fk.fn

    def vjp(vl, vr, g):
        if side == "left":
            return jax.vjp(lambda a: f(a, vr), vl)[1](g)[0]
        return jax.vjp(lambda b: f(vl, b), vr)[1](g)[0]

    vjp.__qualname__ = f"{fk.name}_vjp_{side}"
    return Kernel(vjp, name=k.name, arity=3)
