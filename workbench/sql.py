"""The SQL front end: ``wb.sql(query, **relations, functions={...})`` reads a query with sqlglot
and builds the operator plan the Python API would build (``select``, ``join``, ``aggregate``),
so its result differentiates like any other relation.

A relation in a query has its key columns, named as in Python, and one value column, ``value``
(pass ``Name=(relation, "vec")`` to call it ``vec`` as well). A query is lowered in four steps:

1. FROM, JOIN ... ON and WHERE: equalities between keys of two relations put those keys in one
   key class (an equi-join); every other condition must be on the keys of one relation, and
   filters it before any join.
2. The SELECT list: key columns, and exactly one value expression (a relation holds one tensor
   per tuple). Functions, arithmetic and constants in it become kernels.
3. The relations whose values feed the expression (inside the aggregate, if there is one) are
   joined as a chain of binary joins. Each join's kernel computes the largest parts of the
   expression its two sides can (``dot(x.value, t.value)`` at ``x ⋈ t``); where two parts must
   travel on together they are packed into one flat vector, as the join RJP packs its pairs. The
   join order is chosen to avoid cartesian products of keyed relations, then packing, then to
   keep the FROM order. A part that reads one relation only is computed by a select before the
   joins (once per tuple, not once per match).
4. SUM or AVG with GROUP BY is an aggregate over that join; the expression around the aggregate
   is a select kernel, or the kernel of a join with the relations read only there (one-tuple
   weights, ``relu(matrix_multiply(SUM(...), W.value))``).

WITH and subqueries in FROM lower to the node of their query, so a whole model and its loss are
one query. ``Plan.to_sql()`` writes plans in this dialect (``workbench.sqlrender``).
"""
from __future__ import annotations

import warnings

import itertools
import operator
from dataclasses import dataclass
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl
import sqlglot
from sqlglot import exp

from workbench.errors import PlanError
from workbench.kernels import Kernel
from workbench.ops import add_node, aggregate_node, join_node, select_node
from workbench.plan import Node
from workbench.relation import Relation, from_tensor
from workbench.sqlrender import SQLScript, call_args


class SQLError(PlanError):
    """A query outside the SQL that ``wb.sql`` reads; the message quotes the fragment."""


def _frag(e) -> str:
    text = e.sql(normalize_functions=False) if isinstance(e, exp.Expression) else str(e)
    return text if len(text) <= 160 else text[:157] + "..."


def _error(what: str, e, hint: str) -> SQLError:
    return SQLError(f"SQL: {what} in `{_frag(e)}`. {hint}")


SUPPORTED = ("Supported: SELECT <keys>, <one value expression> FROM relations (comma joins or "
             "[INNER|CROSS] JOIN ... ON) WHERE <key equalities and key filters> GROUP BY <keys> "
             "with SUM or AVG, WITH, subqueries in FROM, and UNION ALL summed by key.")


# ---- kernels as SQL functions -------------------------------------------------------------------

def _reduce_sum(v):
    return jnp.sum(v)


def _reduce_mean(v):
    return jnp.mean(v)


def _sum_squares(v):
    return jnp.sum(v ** 2)


BUILTINS: dict[str, Callable] = {
    "matrix_multiply": jnp.matmul, "matmul": jnp.matmul, "mat_mul": jnp.matmul, "dot": jnp.dot,
    "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "softplus": jax.nn.softplus, "tanh": jnp.tanh,
    "exp": jnp.exp, "log": jnp.log, "ln": jnp.log, "sqrt": jnp.sqrt, "abs": jnp.abs,
    "power": jnp.power, "pow": jnp.power, "logaddexp": jnp.logaddexp,
    "log_softmax": jax.nn.log_softmax, "softmax": jax.nn.softmax, "transpose": jnp.transpose,
    "reduce_sum": _reduce_sum, "reduce_mean": _reduce_mean, "sum_squares": _sum_squares,
}

_INFIX = {exp.Add: ("+", operator.add), exp.Sub: ("-", operator.sub),
          exp.Mul: ("*", operator.mul), exp.Div: ("/", operator.truediv)}
_AGGREGATES = {exp.Sum: "sum", exp.Avg: "mean"}

# The value expression, as hashable tuples (equal parts are computed once):
#   ("value", alias)                      the value of a FROM item
#   ("const", x)                          a number
#   ("call", name, fn, args, kernel)      fn(*args); kernel is the registered Kernel, if any
#   ("agg", reduction, arg, text)         SUM / AVG over the group (before lowering only)
AGG = "<aggregate>"  # the alias of an aggregate's result (no SQL alias can take this name)
_OPERATORS = ("+", "-", "*", "/", "neg")


def _sources_of(e) -> frozenset:
    if e[0] == "value":
        return frozenset((e[1],))
    if e[0] == "call":
        return frozenset().union(*(_sources_of(a) for a in e[3]))
    if e[0] == "agg":
        return _sources_of(e[2])
    return frozenset()


def _aggs(e) -> list:
    if e[0] == "agg":
        return [e] + _aggs(e[2])
    if e[0] == "call":
        return [a for x in e[3] for a in _aggs(x)]
    return []


def _replace(e, old, new):
    if e == old:
        return new
    if e[0] == "call":
        return e[:3] + (tuple(_replace(a, old, new) for a in e[3]),) + e[4:]
    return e


def _frontier(e, joined) -> list:
    """The largest parts of ``e`` computable from the values of ``joined`` (not constants)."""
    out: list = []

    def walk(x):
        s = _sources_of(x)
        if not s:
            return
        if s <= joined:
            if x not in out:
                out.append(x)
        elif x[0] == "call":
            for a in x[3]:
                walk(a)

    walk(e)
    # carry fewer parts where one is computed from others: logaddexp(0, d) and d -> d alone
    changed = True
    while changed:
        changed = False
        for p in out:
            rest = [q for q in out if q != p]
            kids = [k for k in _down_to(p, rest) if k not in rest]
            if len(rest) + len(dict.fromkeys(kids)) < len(out):
                out, changed = rest + list(dict.fromkeys(kids)), True
                break
    return out


def _down_to(e, parts) -> list:
    """The values and ``parts`` that ``e`` is computed from, outside ``parts``."""
    if e in parts:
        return []
    if e[0] == "call":
        return [k for a in e[3] for k in _down_to(a, parts)]
    return [e] if e[0] == "value" else []


def _text(e, names: Mapping[str, str]) -> str:
    if e[0] == "value":
        return names[e[1]]
    if e[0] == "const":
        return f"{e[1]:g}"
    if e[0] == "agg":
        return f"{'SUM' if e[1] == 'sum' else 'AVG'}({_text(e[2], names)})"
    name, args = e[1], e[3]
    inner = [f"({_text(a, names)})" if a[0] == "call" and a[1] in _OPERATORS else
             _text(a, names) for a in args]
    if name == "neg":
        return f"-{inner[0]}"
    if name in ("+", "-", "*", "/"):
        return f"{inner[0]} {name} {inner[1]}"
    return f"{name}({', '.join(_text(a, names) for a in args)})"


def _eval(e, env: dict):
    hit = env.get(e)
    if hit is not None:
        return hit
    if e[0] == "const":
        return e[1]
    out = e[2](*[_eval(a, env) for a in e[3]])
    env[e] = out
    return out


def _evaluator(slots, targets, dtype: str) -> Callable:
    """The kernel of one operator: its arguments carry the parts ``slots`` (one part as is,
    several packed into one flat vector), and it returns ``targets`` (packed when several)."""
    slots = tuple(tuple(s) for s in slots)
    targets = tuple(targets)

    def sql_kernel(*values):
        env = {}
        for slot, v in zip(slots, values):
            if len(slot) == 1:
                env[slot[0][0]] = v
            elif slot:  # unpack: pack(a, b) = concat(ravel(a), ravel(b))
                off = 0
                for part, shape in slot:
                    n = int(np.prod(shape, dtype=np.int64))
                    env[part] = v[off:off + n].reshape(shape)
                    off += n
        if not targets:  # nothing of the expression lives here yet: a placeholder
            return jnp.zeros((), dtype)
        outs = [_eval(t, env) for t in targets]
        outs = [jnp.asarray(o, dtype) if isinstance(o, float) else o for o in outs]  # constants
        if len(outs) == 1:
            return outs[0]
        return jnp.concatenate([jnp.ravel(o) for o in outs])

    return sql_kernel


# ---- FROM items --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Lowered:
    """A query's result: its node, the name of its value column, and for UNION ALL the terms."""
    node: Node
    value: str = "value"
    terms: tuple = ()


@dataclass(frozen=True)
class Source:
    alias: str
    node: Node
    value: str
    frag: exp.Expression
    terms: tuple = ()
    display: str | None = None  # how kernel names show its value (default alias.value)

    @property
    def keys(self) -> tuple[str, ...]:
        return self.node.schema.keys

    def match(self, name: str):
        """('key', k), ('value', None) or None for a column name (exact, then any case)."""
        for fold in (lambda s: s, str.lower):
            if fold(name) in (fold("value"), fold(self.value)):
                return ("value", None)
            hits = [k for k in self.keys if fold(k) == fold(name)]
            if len(hits) == 1:
                return ("key", hits[0])
        return None

    def describe(self) -> str:
        values = "value" if self.value == "value" else f"value (or {self.value})"
        return f"'{self.alias}' has keys {self.keys} and {values}"


def _find(name: str, table: Mapping):
    if name in table:
        return table[name]
    hits = [v for k, v in table.items() if k.lower() == name.lower()]
    return hits[0] if len(hits) == 1 else None


def _number(lit: exp.Literal):
    text = lit.this
    try:
        return int(text)
    except ValueError:
        return float(text)


# ---- lowering ----------------------------------------------------------------------------------

class _Lowering:
    def __init__(self, relations: Mapping[str, Lowered], functions: Mapping[str, object]):
        self.relations = dict(relations)
        self.functions = dict(functions)  # lower-case SQL name -> function or Kernel
        self.memo: dict = {}  # CTEs read by several statements of a script are built once

    # -- statements, queries, CTEs
    def statement(self, e: exp.Expression) -> Node:
        if not isinstance(e, (exp.Select, exp.Union, exp.Subquery)):
            raise _error(f"a {e.key.upper()} statement", e, "wb.sql reads SELECT queries. " + SUPPORTED)
        out = self.query(e, {})
        if out.terms:
            raise _error("a UNION ALL that is not summed", e,
                         "Keys must stay unique: sum the union by key, SELECT k, SUM(u.value) "
                         "FROM (... UNION ALL ...) AS u GROUP BY k.")
        return out.node

    def query(self, e: exp.Expression, scope: Mapping) -> Lowered:
        if isinstance(e, exp.Subquery):
            return self.query(e.this, scope)
        scope = self.ctes(e, scope)
        if isinstance(e, exp.Select):
            return self.select(e, scope)
        if isinstance(e, exp.Union):
            if e.args.get("distinct"):
                raise _error("UNION (distinct)", e, "Use UNION ALL, summed by key: SELECT k, "
                             "SUM(u.value) FROM (... UNION ALL ...) AS u GROUP BY k.")
            terms = []
            for part in (e.this, e.expression):
                got = self.query(part, scope)
                terms += list(got.terms) if got.terms else [got.node]
            return Lowered(terms[0], terms=tuple(terms))
        raise _error(f"a {e.key.upper()}", e, SUPPORTED)

    def ctes(self, e: exp.Expression, scope: Mapping) -> dict:
        scope = dict(scope)
        w = e.args.get("with_")
        if not w:
            return scope
        if w.args.get("recursive"):
            raise _error("WITH RECURSIVE", w, "Relational programs here are DAGs; write each "
                         "step as its own CTE.")
        for cte in w.expressions:
            if cte.args["alias"].columns:
                raise _error("a CTE with a column list", cte, "Name the columns in its SELECT list "
                             "(SELECT t.k AS i, ...).")
            name = cte.alias
            refs = tuple(sorted((t.name, id(_find(t.name, scope) or _find(t.name, self.relations)))
                                for t in cte.this.find_all(exp.Table)))
            key = (name.lower(), cte.this.sql(), refs)
            got = self.memo.get(key)
            if got is None:
                got = self.memo[key] = self.query(cte.this, scope)
            scope[name] = got
        return scope

    def table(self, t: exp.Table, scope: Mapping) -> Lowered:
        if t.args.get("db") or t.args.get("catalog"):
            raise _error("a qualified table name", t, "Name relations by the keyword argument "
                         "they were passed as, or by a CTE.")
        got = _find(t.name, scope)
        if got is None:
            got = _find(t.name, self.relations)
        if got is None:
            known = sorted(set(scope) | set(self.relations))
            raise _error(f"unknown table '{t.name}'", t, f"The query can read the relations passed "
                         f"to wb.sql and its CTEs: {known}; pass it as wb.sql(query, "
                         f"{t.name}=relation).")
        return got

    def sources(self, sel: exp.Select, scope: Mapping) -> tuple[list[Source], list]:
        frm = sel.args.get("from_")
        items, conds = [(frm.this, None)], []
        for j in sel.args.get("joins") or []:
            side, kind = j.args.get("side"), (j.args.get("kind") or "").upper()
            if side or kind not in ("", "INNER", "CROSS") or j.args.get("method"):
                what = " ".join(x for x in (j.args.get("method"), side, kind) if x) or "this"
                raise _error(f"a {what} JOIN", j, "Only inner equi-joins (comma, JOIN ... ON, "
                             "CROSS JOIN): an absent tuple is a zero value, there are no NULLs.")
            if j.args.get("using"):
                raise _error("JOIN ... USING", j, "Write the equality: JOIN B ON A.k = B.k.")
            items.append((j.this, j.args.get("on")))
        out: list[Source] = []
        for i, (item, on) in enumerate(items):
            if isinstance(item, exp.Table):
                got, alias = self.table(item, scope), item.alias or item.name
            elif isinstance(item, exp.Subquery):
                got, alias = self.query(item.this, scope), item.alias or f"subquery{i + 1}"
            else:
                raise _error(f"a {item.key.upper()} in FROM", item, SUPPORTED)
            if isinstance(item.args.get("alias"), exp.TableAlias) and item.args["alias"].columns:
                raise _error("a table alias with a column list", item, "Rename columns in the "
                             "SELECT list of a subquery instead.")
            if any(s.alias.lower() == alias.lower() for s in out):
                raise _error(f"the alias '{alias}' used twice", item, "Give each FROM item its own "
                             "alias: FROM Node n1, Node n2.")
            out.append(Source(alias, got.node, got.value, item, got.terms))
            if on is not None:
                conds += _conjuncts(on)
        return out, conds

    # -- columns
    def column(self, col: exp.Column, sources: list[Source]):
        if col.args.get("db") or col.args.get("catalog"):
            raise _error("a column qualified by a schema", col, "Write alias.column.")
        if col.table:
            cands = [s for s in sources if s.alias == col.table] or \
                [s for s in sources if s.alias.lower() == col.table.lower()]
            if not cands:
                raise _error(f"unknown table '{col.table}'", col, f"The FROM clause names "
                             f"{[s.alias for s in sources]}.")
        else:
            cands = sources
        hits = [(s, m) for s in cands for m in [s.match(col.name)] if m is not None]
        if not hits:
            known = "; ".join(s.describe() for s in cands)
            raise _error(f"unknown column '{col.name}'", col, f"{known}.")
        if len(hits) > 1:
            raise _error(f"ambiguous column '{col.name}'", col, f"It is a column of "
                         f"{[s.alias for s, _ in hits]}; qualify it, e.g. {hits[0][0].alias}.{col.name}.")
        (s, (kind, key)), = hits
        return kind, s, key

    # -- the value expression
    def value(self, e: exp.Expression, sources: list[Source]):
        if isinstance(e, exp.Paren):
            return self.value(e.this, sources)
        if isinstance(e, exp.Column):
            kind, s, key = self.column(e, sources)
            if kind == "key":
                raise _error(f"the key '{key}' of '{s.alias}' in a value expression", e,
                             "Keys are integer ids, values are tensors: a value expression "
                             "reads values (alias.value) only.")
            return ("value", s.alias)
        if isinstance(e, exp.Literal) and not e.is_string:
            return ("const", float(e.this))
        if isinstance(e, exp.Neg):
            a = self.value(e.this, sources)
            return ("const", -a[1]) if a[0] == "const" else ("call", "neg", operator.neg, (a,), None)
        for cls, (name, fn) in _INFIX.items():
            if type(e) is cls:
                args = (self.value(e.this, sources), self.value(e.expression, sources))
                return ("call", name, fn, args, None)
        if type(e) in _AGGREGATES:
            if e.args.get("distinct") or isinstance(e.this, exp.Distinct):
                raise _error("an aggregate over DISTINCT", e, "Aggregates are SUM and AVG over "
                             "the tuples of each group.")
            return ("agg", _AGGREGATES[type(e)], self.value(e.this, sources), e.sql())
        if isinstance(e, exp.AggFunc):
            raise _error(f"the aggregate {e.key.upper()}", e, "Supported aggregates: SUM and AVG "
                         "(the RJP of an aggregation is a broadcast of its gradient).")
        if isinstance(e, exp.Func):
            name, fn, kernel = self.function(e)
            args = tuple(self.value(a, sources) for a in call_args(e))
            return ("call", name, fn, args, kernel)
        raise _error(f"a {e.key.upper()} expression", e, "Value expressions are functions, + - * /, "
                     "numbers and alias.value, with at most one SUM or AVG. " + SUPPORTED)

    def function(self, e: exp.Func):
        names = [e.name] if isinstance(e, exp.Anonymous) else list(type(e).sql_names())
        for table in (self.functions, BUILTINS):
            for n in names:
                fn = table.get(n.lower())
                if fn is not None:
                    if isinstance(fn, Kernel):
                        return n.lower(), fn.fn, fn
                    return n.lower(), fn, None
        raise _error(f"unknown function '{names[0]}'", e, f"Built-in kernels: "
                     f"{', '.join(sorted(BUILTINS))}; register a JAX function of the tuple values "
                     f"with wb.sql(..., functions={{'{names[0].lower()}': fn}}).")

    # -- WHERE on keys: a Polars predicate
    def predicate(self, e: exp.Expression, sources: list[Source]) -> pl.Expr:
        def p(x):
            if isinstance(x, exp.Paren):
                return p(x.this)
            if isinstance(x, exp.Column):
                return pl.col(self.column(x, sources)[2])
            if isinstance(x, exp.Literal) and not x.is_string:
                return pl.lit(_number(x))
            if isinstance(x, exp.Boolean):
                return pl.lit(bool(x.this))
            if isinstance(x, exp.Neg):
                return -p(x.this)
            if isinstance(x, exp.Not):
                return ~p(x.this)
            if isinstance(x, exp.Between):
                return p(x.this).is_between(p(x.args["low"]), p(x.args["high"]))
            if isinstance(x, exp.In) and not x.args.get("query") and x.expressions:
                this = p(x.this)
                out = this == p(x.expressions[0])
                for v in x.expressions[1:]:  # IN (a, b): (k = a) OR (k = b)
                    out = out | (this == p(v))
                return out
            binary = {exp.EQ: operator.eq, exp.NEQ: operator.ne, exp.LT: operator.lt,
                      exp.LTE: operator.le, exp.GT: operator.gt, exp.GTE: operator.ge,
                      exp.And: operator.and_, exp.Or: operator.or_, exp.Add: operator.add,
                      exp.Sub: operator.sub, exp.Mul: operator.mul, exp.Mod: operator.mod,
                      exp.Div: operator.truediv, exp.IntDiv: operator.floordiv}.get(type(x))
            if binary is not None:
                return binary(p(x.this), p(x.expression))
            raise _error(f"a {x.key.upper()} in a condition", x, "Conditions on keys use "
                         "comparisons, AND, OR, NOT, IN (numbers), BETWEEN and + - * / % DIV.")
        return p(e)

    # -- SELECT
    def select(self, sel: exp.Select, scope: Mapping) -> Lowered:
        allowed = {"expressions", "from_", "joins", "where", "group", "with_"}
        for k, v in sel.args.items():
            if v and k not in allowed:
                frag = v if isinstance(v, exp.Expression) else sel
                clause = {"order": "ORDER BY", "windows": "WINDOW"}.get(k, k.rstrip("_").upper())
                raise _error(f"{clause} is not supported", frag, SUPPORTED)
        if not sel.args.get("from_"):
            return self.constant(sel)
        sources, conds = self.sources(sel, scope)
        if sel.args.get("where"):
            conds += _conjuncts(sel.args["where"].this)

        # key classes: keys equated across relations; filters on one relation's keys
        parent = {(s.alias, k): (s.alias, k) for s in sources for k in s.keys}

        def find(x):
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        preds: dict[str, list] = {s.alias: [] for s in sources}
        for c in conds:
            if isinstance(c, exp.Boolean) and c.this is True:
                continue
            if any(True for _ in c.find_all(exp.Select, exp.Subquery)):
                raise _error("a subquery in a condition", c, "Join the subquery in FROM instead.")
            cols = [self.column(col, sources) for col in c.find_all(exp.Column)]
            for kind, s, _ in cols:
                if kind == "value":
                    raise _error(f"a condition on the value of '{s.alias}'", c, "WHERE and ON "
                                 "compare keys only; values are tensors (compute with them in "
                                 "the SELECT list).")
            aliases = {s.alias for _, s, _ in cols}
            if isinstance(c, exp.EQ) and isinstance(c.this, exp.Column) \
                    and isinstance(c.expression, exp.Column) and len(aliases) == 2:
                (_, s1, k1), (_, s2, k2) = cols
                parent[find((s1.alias, k1))] = find((s2.alias, k2))
            elif len(aliases) == 1:
                preds[aliases.pop()].append(c)
            elif not aliases:
                raise _error("a condition on no column", c, "Conditions compare keys.")
            else:
                raise _error("a non-equi join condition", c, "Joins are equalities between keys "
                             "of two relations (A.col = B.row), combined with AND; any other "
                             "condition must read the keys of one relation.")
        cls_of = {x: find(x) for x in parent}
        preds = {a: [self.predicate(c, sources) for c in cs] for a, cs in preds.items()}

        # the SELECT list: key columns and one value expression
        key_items, value_item = [], None
        for item in sel.expressions:
            alias = item.alias if isinstance(item, exp.Alias) else None
            e = item.this if isinstance(item, exp.Alias) else item
            if isinstance(e, exp.Star) or isinstance(e, exp.Column) and isinstance(e.this, exp.Star):
                if len(sources) != 1:
                    raise _error("SELECT * over several relations", item, "List the keys and one "
                                 "value expression: SELECT A.row, B.col, f(A.value, B.value).")
                s = sources[0]
                key_items += [(k, cls_of[(s.alias, k)], item) for k in s.keys]
                e = exp.column("value", table=s.alias) if isinstance(e, exp.Star) else \
                    exp.column("value", table=e.table)
                item = e
            elif isinstance(e, exp.Column):
                kind, s, key = self.column(e, sources)
                if kind == "key":
                    key_items.append((alias or key, cls_of[(s.alias, key)], item))
                    continue
            if value_item is not None:
                raise _error("a second value expression", item, f"A relation holds one tensor per "
                             f"tuple and `{_frag(value_item[2])}` is already its value: compute "
                             f"the other in its own query and join the two.")
            name = alias or (e.name if isinstance(e, exp.Column) else "value")
            value_item = (self.value(e, sources), name, item)
        if value_item is None:
            raise _error("no value expression", sel, "The SELECT list needs one value: A.value, "
                         "or an expression over values such as f(A.value, B.value).")
        target, value_name, value_frag = value_item

        # names of the key classes: an output key keeps its SELECT name
        names, taken = {}, set()
        for name, c, item in key_items:
            if name in taken:
                raise _error(f"the output key '{name}' twice", item, "Give each output key its "
                             "own name with AS.")
            taken.add(name)
            names.setdefault(c, name)
        for s in sources:
            for k in s.keys:
                c = cls_of[(s.alias, k)]
                if c not in names:
                    cand = k if k not in taken else f"{s.alias}_{k}"
                    while cand in taken:
                        cand += "_"
                    names[c] = cand
                    taken.add(cand)
        out_keys = [(name, c) for name, c, _ in key_items]
        group = sel.args.get("group")
        aggs = _aggs(target)
        union = [s for s in sources if s.terms]
        if union:
            return self.add(sel, sources, union[0], preds, key_items, target, group)

        if not aggs:
            if group:
                raise _error("GROUP BY without SUM or AVG", group, "Aggregate the value: "
                             "SELECT k, SUM(f(...)) ... GROUP BY k.")
            node = self.build(sources, cls_of, names, preds, target, out_keys, value_frag)
            return Lowered(node, value_name)

        if len(aggs) > 1:
            raise _error("more than one aggregate", value_frag, "One SUM or AVG per query: "
                         "compute each in its own subquery, then join them.")
        agg = aggs[0]
        inner, reduction = agg[2], agg[1]
        group_classes = []
        for g in (group.expressions if group else []):
            if not isinstance(g, exp.Column):
                raise _error("GROUP BY an expression", g, "GROUP BY lists key columns.")
            kind, s, key = self.column(g, sources)
            if kind != "key":
                raise _error(f"GROUP BY the value of '{s.alias}'", g, "GROUP BY lists key columns.")
            group_classes.append(cls_of[(s.alias, key)])
        for name, c, item in key_items:
            if c not in group_classes:
                raise _error(f"the key '{name}' is neither grouped nor aggregated", item,
                             "Add it to GROUP BY, or leave it out of the SELECT list.")
        if len({c for _, c, _ in key_items}) != len(key_items):
            raise _error("one grouped key listed twice", sel, "List each GROUP BY key once.")
        for c in group_classes:
            if c not in {k for _, k, _ in key_items}:
                raise _error(f"the GROUP BY key '{names[c]}' is not in the SELECT list", group,
                             "A relation's keys identify its tuples: SELECT every GROUP BY key.")
        outer = _replace(target, agg, ("value", AGG))
        inner_used, outer_used = _sources_of(inner), _sources_of(outer) - {AGG}
        both = inner_used & outer_used
        if both:
            raise _error(f"the value of '{sorted(both)[0]}' inside and outside the aggregate",
                         value_frag, "Read each relation's value on one side of SUM/AVG; join it "
                         "again under another alias for the other side.")
        outer_srcs = [s for s in sources if s.alias in outer_used]
        inner_srcs = [s for s in sources if s.alias not in outer_used]
        for s in outer_srcs:
            free = [k for k in s.keys if cls_of[(s.alias, k)] not in group_classes]
            if free:
                raise _error(f"the value of '{s.alias}' outside the aggregate, with keys {free} "
                             f"not grouped", value_frag, "A value read outside SUM/AVG must be one "
                             "per group: a one-tuple relation (a weight), or one keyed by the "
                             "GROUP BY keys.")
        if not inner_srcs:
            raise _error("an aggregate of no relation", value_frag, "Aggregate an expression "
                         "over the values of the FROM relations.")
        inner_classes = {cls_of[(s.alias, k)] for s in inner_srcs for k in s.keys}
        for c in group_classes:
            if c not in inner_classes:
                raise _error(f"GROUP BY '{names[c]}', a key of a relation read only outside the "
                             f"aggregate", group, "Group by keys of the aggregated relations.")
        below = self.build(inner_srcs, cls_of, names, preds, inner, None, value_frag)
        by = tuple(name for name, _, _ in key_items)
        node = aggregate_node(below, by=by, kernel=reduction)
        agg_src = Source(AGG, node, "value", value_frag, display=_text(agg, _names(sources)))
        for name, c, _ in key_items:
            cls_of[(AGG, name)] = c
        preds[AGG] = []
        node = self.build([agg_src] + outer_srcs, cls_of, names, preds, outer, out_keys, value_frag)
        return Lowered(node, value_name)

    def add(self, sel, sources, u: Source, preds, key_items, target, group) -> Lowered:
        """SELECT k.., SUM(u.value) FROM (a UNION ALL b) AS u GROUP BY k..: the add of a and b."""
        pattern = ("A UNION ALL is read only as a sum by key: SELECT u.k, ..., SUM(u.value) FROM "
                   "(... UNION ALL ...) AS u GROUP BY u.k, ... (every key, no WHERE).")
        grouped = [g.name for g in group.expressions] if group else []
        summed = target[:3] == ("agg", "sum", ("value", u.alias))
        if (len(sources) != 1 or any(preds.values()) or not summed
                or [(n, c) for n, c, _ in key_items] != [(k, (u.alias, k)) for k in u.keys]
                or sorted(grouped) != sorted(u.keys)):
            raise _error("a UNION ALL", sel, pattern)
        return Lowered(add_node(list(u.terms)))

    def constant(self, sel: exp.Select) -> Lowered:
        """SELECT <number> [AS value]: a one-tuple relation (the seed of a backward plan)."""
        items = sel.expressions
        e = items[0].this if len(items) == 1 and isinstance(items[0], exp.Alias) else \
            items[0] if len(items) == 1 else None
        dtype = None
        if isinstance(e, exp.Cast):
            to = e.args["to"].this
            dtype = {exp.DataType.Type.DOUBLE: "float64", exp.DataType.Type.FLOAT: "float32"}.get(to)
            if dtype is None:
                raise _error("a CAST to a type other than DOUBLE or FLOAT", e, "Values are floats.")
            e = e.this
        sign = 1.0
        if isinstance(e, exp.Neg):
            sign, e = -1.0, e.this
        if not (isinstance(e, exp.Literal) and not e.is_string):
            raise _error("a SELECT without FROM", sel, "Without FROM, a query is one number, "
                         "SELECT CAST(1.0 AS DOUBLE) AS value (a one-tuple relation). " + SUPPORTED)
        rel = from_tensor(np.asarray(sign * float(e.this)), dtype=dtype, name="const")
        return Lowered(rel.node)

    # -- the operators

    def kernel(self, slots, targets, arg_sources, dtype: str) -> Kernel:
        """The kernel of an operator whose arguments carry ``slots`` and which returns
        ``targets``: a registered or built-in function applied to the arguments as they come is
        itself the kernel; anything else is evaluated from the parts."""
        arity = len(slots)
        if len(targets) == 1 and all(len(s) == 1 for s in slots):
            t = targets[0]
            if t[0] == "call" and list(t[3]) == [s[0] for s in slots]:
                if t[4] is not None and t[4].arity == arity:
                    return t[4]
                if t[4] is None and t[1] not in ("+", "-", "*", "/", "neg"):
                    return Kernel(t[2], name=t[1], arity=arity)
        shapes = _shapes([p for s in slots for p in s if len(s) > 1], arg_sources, dtype)
        packed = [[(p, shapes[p]) for p in s] if len(s) > 1 else [(p, None) for p in s] for s in slots]
        names = _names(arg_sources)
        text = ", ".join(_text(t, names) for t in targets)
        name = text if len(targets) == 1 else f"pack({text})" if targets else "placeholder"
        uses = tuple(bool(s) for s in slots)
        return Kernel(_evaluator(packed, targets, dtype), name=name, arity=arity, uses=uses)

    def build(self, sources, cls_of, names, preds, target, out_keys, frag) -> Node:
        """The node whose value is ``target`` over ``sources`` joined on their key classes, keyed
        by ``out_keys`` ((name, class) pairs) or, when None, by every key class."""
        dtype = sources[0].node.schema.dtype
        prepared = {}
        for s in sources:
            pred = None
            groups: dict = {}
            for k in s.keys:  # two keys of one relation in one class: equal keys
                groups.setdefault(cls_of[(s.alias, k)], []).append(k)
            conds = list(preds.get(s.alias, []))
            conds += [pl.col(ks[0]) == pl.col(k) for ks in groups.values() for k in ks[1:]]
            for c in conds:
                pred = c if pred is None else pred & c
            if len(sources) == 1:
                keys = [(names[c], ks[0]) for c, ks in groups.items()] if out_keys is None else \
                    [(name, groups[c][0]) for name, c in out_keys]
                kernel = None if target == ("value", s.alias) else \
                    self.kernel([[("value", s.alias)]], [target], sources, dtype)
                if pred is None and kernel is None and keys == [(k, k) for k in s.keys]:
                    return s.node
                return select_node(s.node, pred, keys, kernel)
            parts = _frontier(target, frozenset((s.alias,)))
            kernel, carried = None, parts
            if len(parts) == 1 and parts[0] != ("value", s.alias):  # f(A.value) once per tuple
                kernel = self.kernel([[("value", s.alias)]], parts, sources, dtype)
            elif len(parts) > 1:
                carried = [("value", s.alias)]
            node = s.node
            if pred is not None or kernel is not None:
                node = select_node(node, pred, [(k, k) for k in s.keys], kernel)
            prepared[s.alias] = (node, carried)

        order = _join_order(sources, cls_of, target, prepared)
        first = sources[order[0]]
        cur, carried = prepared[first.alias]
        cur_cls: dict = {}
        for k in first.keys:
            cur_cls.setdefault(cls_of[(first.alias, k)], k)
        joined = {first.alias}
        for pos, i in enumerate(order[1:], 1):
            s = sources[i]
            node, right = prepared[s.alias]
            last = pos == len(order) - 1
            on, new = [], {}
            for k in s.keys:
                c = cls_of[(s.alias, k)]
                if c in cur_cls:
                    on.append((cur_cls[c], k))
                else:
                    new.setdefault(c, k)
            joined.add(s.alias)
            if last and out_keys is not None:
                keys = [(name, "left", cur_cls[c]) if c in cur_cls else (name, "right", new[c])
                        for name, c in out_keys]
            else:
                keys = [(names[c], "left", k) for c, k in cur_cls.items()] + \
                       [(names[c], "right", k) for c, k in new.items()]
            targets = [target] if last else _frontier(target, frozenset(joined))
            kernel = self.kernel([carried, right], targets, sources, dtype)
            cur = join_node(cur, node, on, keys, kernel)
            cur_cls = {c: names[c] for c in list(cur_cls) + list(new)}
            carried = targets
        return cur


def _names(sources) -> dict:
    return {s.alias: s.display or f"{s.alias}.{s.value}" for s in sources}


def _conjuncts(e: exp.Expression) -> list:
    while isinstance(e, exp.Paren):
        e = e.this
    if isinstance(e, exp.And):
        return _conjuncts(e.this) + _conjuncts(e.expression)
    return [e]


def _shapes(parts, sources, dtype: str) -> dict:
    """The value shape of each part of the expression, from the shapes of the FROM values."""
    if not parts:
        return {}
    aliases = [s.alias for s in sources]
    args = [jax.ShapeDtypeStruct(s.node.schema.value_shape, dtype) for s in sources]

    def f(*values):
        env = {("value", a): v for a, v in zip(aliases, values)}
        return [_eval(p, env) for p in parts]

    out = jax.eval_shape(f, *args)
    return {p: tuple(o.shape) for p, o in zip(parts, out)}


def _join_order(sources, cls_of, target, prepared) -> tuple[int, ...]:
    """The order of the chain of joins: fewest cartesian products of keyed relations, then
    fewest packed intermediates, then fewest placeholders, then the FROM order."""
    classes = [{cls_of[(s.alias, k)] for k in s.keys} for s in sources]

    def cost(order):
        cart = packs = empty = 0
        seen, joined = set(classes[order[0]]), {sources[order[0]].alias}
        keyed = bool(seen)
        for pos, i in enumerate(order[1:], 1):
            if classes[i] and keyed and not classes[i] & seen:
                cart += 1
            seen |= classes[i]
            keyed = keyed or bool(classes[i])
            joined.add(sources[i].alias)
            parts = [target] if pos == len(order) - 1 else _frontier(target, frozenset(joined))
            packs += len(parts) > 1
            empty += not parts
        return (cart, packs, empty, order)

    n = len(sources)
    orders = itertools.permutations(range(n)) if n <= 6 else [tuple(range(n))]
    return min(orders, key=cost)


# ---- the entry point ---------------------------------------------------------------------------

def _as_lowered(name: str, given) -> Lowered:
    value = "value"
    if isinstance(given, tuple) and len(given) == 2 and isinstance(given[1], str):
        given, value = given
    if isinstance(given, Node):
        return Lowered(given, value)
    if not isinstance(given, Relation):
        raise SQLError(f"sql: the relation {name}= must be a workbench Relation, or (Relation, "
                       f"'value column name'), got {type(given).__name__}")
    if value in given.keys:
        raise SQLError(f"sql: {name}=(relation, {value!r}) names the value after a key of "
                       f"'{name}' {given.keys}; choose another name")
    return Lowered(given.node, value)


def sql(query: str, functions: Mapping[str, Callable] | None = None, **relations) -> Relation:
    """Read a SQL query over the given relations and return its result, a Relation built from
    wb.select / wb.join / wb.aggregate nodes (so wb.grad, wb.plans and wb.jit take it as is).

    ``relations``: ``Name=relation``, or ``Name=(relation, "vec")`` to name its value column
    ``vec`` (it is also ``value``). ``functions``: SQL name -> JAX function of tuple values (or a
    ``wb.Kernel``), beside the built-ins in ``BUILTINS``. A script of several statements returns
    one relation per statement. A ``SQLScript`` (``Plan.to_sql()``) brings its own functions and
    tables; those given here take precedence.

    >>> wb.sql("SELECT A.row, B.col, SUM(matrix_multiply(A.value, B.value)) FROM A, B "
    ...        "WHERE A.col = B.row GROUP BY A.row, B.col", A=A, B=B)
    """
    fns, tables = {}, {}
    if isinstance(query, SQLScript):
        fns.update({k.lower(): v for k, v in query.functions.items()})
        tables.update(query.tables)
    given: dict = {}
    for name, fn in (functions or {}).items():
        if not isinstance(name, str) or not (callable(fn) or isinstance(fn, Kernel)):
            raise SQLError(f"sql: functions maps SQL names to JAX functions (or wb.Kernel), got "
                           f"{name!r}: {fn!r}")
        if name.lower() in given:
            raise SQLError(f"sql: functions has two names that differ only in case, {name!r}; "
                           f"SQL names are case-insensitive")
        given[name.lower()] = fn
    fns.update(given)
    if isinstance(query, SQLScript):  # a relation named unlike every table the script reads
        stray = sorted(set(relations) - set(query.tables))  # leaves the script's own copy in use
        if stray:
            warnings.warn(f"sql: the script reads the tables {sorted(query.tables)}; {stray} "
                          f"are not among them and are not used (the script's own copies are). "
                          f"Pass each relation under the name the script gives it", stacklevel=2)
    tables.update(relations)
    if not isinstance(query, str):
        raise SQLError(f"sql: the query must be a string, got {type(query).__name__}")
    try:
        parsed = [s for s in sqlglot.parse(query) if s is not None]
    except sqlglot.errors.ParseError as exc:
        raise SQLError(f"SQL: the query does not parse: {exc}. " + SUPPORTED) from None
    if not parsed:
        raise SQLError("SQL: the query is empty. " + SUPPORTED)
    lowering = _Lowering({k: _as_lowered(k, v) for k, v in tables.items()}, fns)
    out = [Relation(lowering.statement(s)) for s in parsed]
    return out[0] if len(out) == 1 else tuple(out)
