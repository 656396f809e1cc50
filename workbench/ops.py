"""The relational operators: Select, Join and Aggregation over relations (TableScan is a Relation
built from data). Each builds one immutable plan node and checks it when built, so a bad program
fails at the operator that is wrong, with a message naming the operator, keys and kernel.

The ``*_node`` builders work on plan nodes; the RJP rules use them to emit backward plans.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import json

import polars as pl

from workbench.errors import PlanError
from workbench.kernels import Kernel
from workbench.plan import REDUCTIONS, Add, Aggregate, Join, Node, Schema, Select
from workbench.relation import Relation, check_key_name

SIDES = ("left", "right")


def _as_node(R, op: str, arg: str) -> Node:
    if isinstance(R, Relation):
        return R.node
    raise PlanError(f"{op}: argument '{arg}' must be a workbench Relation, got {type(R).__name__} "
                    f"(build one with wb.from_tensor, wb.from_matrix or wb.from_frame)")


def _as_kernel(kernel, arity: int, op: str) -> Kernel | None:
    if kernel is None or isinstance(kernel, Kernel):
        return kernel
    if not callable(kernel):
        raise PlanError(f"{op}: kernel must be a JAX-traceable function, got {kernel!r}")
    return Kernel(kernel, arity=arity)


def _name(node: Node) -> str:
    return node.display_name


def _check_known(names, known: Sequence[str], op: str, what: str, rel: str) -> None:
    for k in names:
        if k not in known:
            raise PlanError(f"{op}: {what} names key '{k}', which relation '{rel}' does not have; "
                            f"its keys are {tuple(known)}")


# ---- Select ------------------------------------------------------------------------------------

# A predicate must be row-wise: whether a tuple is kept depends on its own keys only, so the
# answer is the same on the whole relation and on any partition of it. These are the Polars
# expression nodes and functions that keep that true; anything else (aggregates such as max or
# len, windows, sorts, shifts, cumulative sums, positional Series literals) is refused.
_ROW_WISE_NODES = {"Column", "Literal", "BinaryExpr", "Cast", "Ternary", "Alias", "Function"}
_ROW_WISE_FUNCTIONS = {"Abs", "Negate", "Pow", "Sign", "Clip", "Round", "Floor", "Ceil", "Log",
                       "Log1p", "Exp", "Trigonometry", "FillNull", "Boolean"}
_ROW_WISE_BOOLEAN = {"IsNull", "IsNotNull", "Not", "IsNan", "IsNotNan", "IsFinite", "IsInfinite",
                     "IsBetween", "IsIn", "AllHorizontal", "AnyHorizontal"}


def _tag(x) -> str:
    return x if isinstance(x, str) else next(iter(x)) if isinstance(x, dict) and x else repr(x)


def _not_row_wise(tree) -> str | None:
    """The first part of a serialized Polars expression that is not row-wise, or None."""
    kind = _tag(tree)
    if kind not in _ROW_WISE_NODES:
        return kind
    body = tree[kind]
    if kind == "Column":
        return None
    if kind == "Literal":
        return None if _tag(body) in ("Scalar", "Dyn") else "a Series literal (positional)"
    if kind == "BinaryExpr":
        children = [body["left"], body["right"]]
    elif kind == "Cast":
        children = [body["expr"]]
    elif kind == "Ternary":
        children = [body["predicate"], body["truthy"], body["falsy"]]
    elif kind == "Alias":
        children = [body[0]]
    else:  # Function
        name = _tag(body["function"])
        if name not in _ROW_WISE_FUNCTIONS:
            return name
        if name == "Boolean":
            inner = _tag(body["function"]["Boolean"])
            if inner not in _ROW_WISE_BOOLEAN:
                return inner
            if inner == "IsIn" and _tag(body["input"][1]) != "Literal":
                return "is_in over a column (a set built from the whole relation)"
        children = body["input"]
    for child in children:
        bad = _not_row_wise(child)
        if bad is not None:
            return bad
    return None


def _check_row_wise(pred: pl.Expr, where: str) -> None:
    try:
        tree = json.loads(pred.meta.serialize(format="json"))
    except Exception:  # an expression Polars cannot serialize cannot be checked
        tree = "an expression that cannot be inspected"
    bad = _not_row_wise(tree)
    if bad is not None:
        raise PlanError(
            f"{where}: pred {pred} is not row-wise (it uses {bad}); a predicate must decide each "
            f"tuple from its own keys, so that it means the same on every executor and partition. "
            f"Compute whole-relation values first (e.g. the maximum key as a relation, joined in), "
            f"or filter the frame before building the relation.")

def select_node(R: Node, pred=None, keys: Sequence[tuple[str, str]] | None = None,
                kernel: Kernel | None = None, label: str | None = None) -> Select:
    op = "select"
    s = R.schema
    if pred is not None:
        if not isinstance(pred, pl.Expr):
            raise PlanError(f"select: pred must be a Polars expression over key columns, such as "
                            f"pl.col('row') == 0; got {type(pred).__name__}")
        _check_known(pred.meta.root_names(), s.keys, op, "pred", _name(R))
        _check_row_wise(pred, f"select over '{_name(R)}'")
    keys = tuple(keys) if keys is not None else tuple((k, k) for k in s.keys)
    outs = [o for o, _ in keys]
    for o in outs:
        check_key_name(o, f"select over '{_name(R)}': keys", PlanError)
    if len(set(outs)) != len(outs):
        raise PlanError(f"select: output key names {outs} repeat; each output key needs its own name")
    _check_known([i for _, i in keys], s.keys, op, "keys", _name(R))
    if kernel is None:
        shape, dtype = s.value_shape, s.dtype
    else:
        shape, dtype = kernel.output([s.value_shape], s.dtype, f"select over '{_name(R)}'")
    extents = tuple(s.extent_of(i) for _, i in keys)
    return Select(Schema(tuple(outs), extents, shape, dtype), R, pred, keys, kernel, label=label)


def select(R: Relation, kernel: Callable | None = None, pred: pl.Expr | None = None,
           keys: Mapping[str, str] | None = None) -> Relation:
    """σ: keep tuples whose keys satisfy ``pred``, re-key them with ``keys`` ({out: in}), and map
    each value with ``kernel``. ``{(proj(k), F(v)) | (k, v) in R, pred(k)}``."""
    node = _as_node(R, "select", "R")
    k = None if keys is None else tuple(_pairs(keys, "select", "keys"))
    return Relation(select_node(node, pred, k, _as_kernel(kernel, 1, "select")))


# ---- Join --------------------------------------------------------------------------------------

def _side_key(spec: str, L: Node, R: Node, op: str) -> tuple[str, str]:
    if not isinstance(spec, str) or "." not in spec or spec.split(".", 1)[0] not in SIDES:
        raise PlanError(f"{op}: output key source {spec!r} must be 'left.<key>' or 'right.<key>'")
    side, k = spec.split(".", 1)
    node = L if side == "left" else R
    _check_known([k], node.schema.keys, op, f"keys ({spec!r})", _name(node))
    return side, k


def join_node(L: Node, R: Node, on: Sequence[tuple[str, str]] = (),
              keys: Sequence[tuple[str, str, str]] | None = None, kernel: Kernel | None = None,
              label: str | None = None) -> Join:
    op = "join"
    ls, rs = L.schema, R.schema
    if ls.dtype != rs.dtype:
        raise PlanError(f"join of '{_name(L)}' ({ls.dtype}) with '{_name(R)}' ({rs.dtype}): mixed "
                        f"dtypes; build both relations with one dtype.")
    on = tuple(on)
    _check_known([l for l, _ in on], ls.keys, op, "on", _name(L))
    _check_known([r for _, r in on], rs.keys, op, "on", _name(R))
    if keys is None:  # left keys, then right keys not joined on
        joined = {r for _, r in on}
        keys = tuple(("" + k, "left", k) for k in ls.keys)
        for k in rs.keys:
            if k in joined:
                continue
            if k in ls.keys:
                raise PlanError(f"join of '{_name(L)}' and '{_name(R)}': both have a key '{k}'; "
                                f"name the output keys with keys={{'out': 'left.{k}', ...}}")
            keys += ((k, "right", k),)
    keys = tuple(keys)
    outs = [o for o, _, _ in keys]
    for o in outs:
        check_key_name(o, f"join of '{_name(L)}' and '{_name(R)}': keys", PlanError)
    if len(set(outs)) != len(outs):
        raise PlanError(f"join: output key names {outs} repeat; each output key needs its own name")
    if kernel is None:
        raise PlanError(f"join of '{_name(L)}' and '{_name(R)}': a kernel f(left_value, "
                        f"right_value) is required")
    where = f"join of '{_name(L)}' and '{_name(R)}'"
    shape, dtype = kernel.output([ls.value_shape, rs.value_shape], ls.dtype, where)
    extents = tuple((ls if side == "left" else rs).extent_of(k) for _, side, k in keys)
    schema = Schema(tuple(outs), extents, shape, dtype)
    return Join(schema, L, R, on, keys, kernel, label=label)


def join(L: Relation, R: Relation, on: Mapping[str, str] | None = None,
         keys: Mapping[str, str] | None = None, kernel: Callable | None = None) -> Relation:
    """⋈: equi-join ``L`` and ``R`` on ``on`` ({left key: right key}; ``{}`` is a cross join), key
    the output with ``keys`` ({out: 'left.k' | 'right.k'}), and combine values with
    ``kernel(left_value, right_value)``."""
    ln, rn = _as_node(L, "join", "L"), _as_node(R, "join", "R")
    on_pairs = tuple(_pairs(on or {}, "join", "on"))
    key_triples = None
    if keys is not None:
        key_triples = tuple((o, *_side_key(src, ln, rn, "join")) for o, src in _pairs(keys, "join", "keys"))
    return Relation(join_node(ln, rn, on_pairs, key_triples, _as_kernel(kernel, 2, "join")))


# ---- Aggregation ------------------------------------------------------------------------------

def aggregate_node(R: Node, by: Sequence[str] = (), kernel: str = "sum",
                   label: str | None = None) -> Aggregate:
    by = tuple(by)
    if not isinstance(kernel, str) or kernel not in REDUCTIONS:
        raise PlanError(f"aggregate over '{_name(R)}': kernel must be one of {REDUCTIONS}, got "
                        f"{kernel!r}; to map values first, use wb.select(R, kernel=f) and "
                        f"aggregate that.")
    _check_known(by, R.schema.keys, "aggregate", "by", _name(R))
    if len(set(by)) != len(by):
        raise PlanError(f"aggregate over '{_name(R)}': by={by} repeats a key")
    s = R.schema
    schema = Schema(by, tuple(s.extent_of(k) for k in by), s.value_shape, s.dtype)
    return Aggregate(schema, R, by, kernel, label=label)


def aggregate(R: Relation, by: Sequence[str] = (), kernel: str = "sum") -> Relation:
    """Σ: group by ``by`` (a subset of the keys, in output order) and sum or average the values."""
    node = _as_node(R, "aggregate", "R")
    if isinstance(by, str):
        by = (by,)
    try:
        by = tuple(by)
    except TypeError:
        raise PlanError(f"aggregate over '{_name(node)}': by must be a tuple of key names, got "
                        f"{by!r}; use by=() to combine all tuples into one.") from None
    return Relation(aggregate_node(node, by, kernel))


# ---- Add (backward plans) ----------------------------------------------------------------------

def add_node(terms: Sequence[Node], label: str | None = None) -> Node:
    """Union of same-schema relations, summing tuples that share a key."""
    terms = tuple(terms)
    if len(terms) == 1:
        return terms[0]
    first = terms[0].schema
    for t in terms[1:]:
        if (t.schema.keys, t.schema.value_shape, t.schema.dtype) != (first.keys, first.value_shape, first.dtype):
            raise PlanError(f"add: terms have different schemas {first.describe()} and "
                            f"{t.schema.describe()}")
    return Add(first, terms, label=label)


_EXAMPLES = {"on": "on={'col': 'row'}", "keys": "keys={'row': 'left.row', 'col': 'right.col'}"}


def _pairs(mapping, op: str, arg: str):
    """A dict's items (or an iterable of 2-tuples of strings), else a PlanError with an example."""
    example = _EXAMPLES.get(arg, f"{arg}={{'out': 'in'}}") if op == "join" else f"{arg}={{'out': 'in'}}"
    if isinstance(mapping, Mapping):
        items = list(mapping.items())
    elif isinstance(mapping, (str, bytes)) or not hasattr(mapping, "__iter__"):
        items = None
    else:
        items = list(mapping)
    if items is None or not all(isinstance(p, tuple) and len(p) == 2 for p in items):
        raise PlanError(f"{op}: {arg} must be a dict of key names, got {mapping!r} "
                        f"({type(mapping).__name__}); write e.g. {example}")
    for a, _ in items:
        if not isinstance(a, str):
            raise PlanError(f"{op}: {arg} maps key names (strings), got the key {a!r}; "
                            f"write e.g. {example}")
    return items
