"""Plans shown as SQL: one CTE per node, in the dialect that ``wb.sql`` reads back.

Each operator has one SQL form (``t``, ``l``, ``r`` and ``u`` are the aliases of its inputs):

    select     SELECT t.k AS k, f(t.value) AS value FROM <in> AS t WHERE <pred>
    join       SELECT l.a AS a, r.b AS b, f(l.value, r.value) AS value
               FROM <left> AS l JOIN <right> AS r ON l.k = r.k          (CROSS JOIN when on={})
    aggregate  SELECT t.a AS a, SUM(t.value) AS value FROM <in> AS t GROUP BY t.a   (AVG: mean)
    add        SELECT u.k AS k, SUM(u.value) AS value
               FROM (SELECT ... FROM B3 UNION ALL SELECT ... FROM B5) AS u GROUP BY u.k

A scan is referred to by its name (a table); a constant one-tuple scalar of the backward plan
(the seed ``1``) is written as a literal. Kernels are SQL functions named after the kernel;
``SQLScript.functions`` maps each name to its ``Kernel`` and ``SQLScript.tables`` each table
name to its scan node, so ``wb.sql(script)`` rebuilds the same plan.
"""
from __future__ import annotations

import functools
import json
import re
from typing import Sequence

import sqlglot
from sqlglot import exp

from workbench.errors import PlanError
from workbench.plan import Add, Aggregate, Join, Node, Scan, Select, toposort

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SQLScript(str):
    """The SQL text of a plan (one statement per output), with what reading it back needs:
    ``functions`` (SQL function name -> Kernel), ``tables`` (table name -> scan node) and
    ``outputs`` (the plan's output names, one per statement)."""

    functions: dict
    tables: dict
    outputs: tuple

    def __new__(cls, text: str, functions: dict, tables: dict, outputs: Sequence[str]):
        self = super().__new__(cls, text)
        self.functions, self.tables, self.outputs = dict(functions), dict(tables), tuple(outputs)
        return self


@functools.lru_cache(maxsize=4096)
def ident(name: str) -> str:
    """``name`` as a SQL identifier: bare when sqlglot reads it back as a column, else quoted."""
    if _IDENT.fullmatch(name):
        try:
            col = sqlglot.parse_one(f"SELECT t.{name} AS {name} FROM x AS t").expressions[0]
            if isinstance(col, exp.Alias) and isinstance(col.this, exp.Column) \
                    and col.this.name == name and col.alias == name:
                return name
        except sqlglot.errors.ParseError:
            pass
    return '"' + name.replace('"', '""') + '"'


@functools.lru_cache(maxsize=4096)
def _reads_as_call(name: str, arity: int) -> bool:
    """Whether ``name(a0, a1, ...)`` parses as a plain function call of those arguments in order
    (not an aggregate such as SUM, not a construct with arguments of its own)."""
    args = [f"a{i}" for i in range(arity)]
    try:
        e = sqlglot.parse_one(f"{name}({', '.join(args)})")
    except sqlglot.errors.ParseError:
        return False
    if isinstance(e, exp.Anonymous):
        return [a.name for a in e.expressions] == args
    if not isinstance(e, exp.Func) or isinstance(e, exp.AggFunc):
        return False
    named = name.lower() in [n.lower() for n in type(e).sql_names()]
    return named and [a.name for a in call_args(e)] == args


def call_args(e: exp.Func) -> list[exp.Expression]:
    """A function call's arguments in the order written."""
    if isinstance(e, exp.Anonymous):
        return list(e.expressions)
    out = []
    for k in e.arg_types:
        v = e.args.get(k)
        if isinstance(v, list):
            out += [x for x in v if isinstance(x, exp.Expression)]
        elif isinstance(v, exp.Expression) and not isinstance(v, exp.DataType):
            out.append(v)
    return out


# ---- predicates: Polars expressions over keys -> SQL -------------------------------------------

_BINARY = {"Eq": "=", "NotEq": "<>", "Lt": "<", "LtEq": "<=", "Gt": ">", "GtEq": ">=",
           "And": "AND", "Or": "OR", "Plus": "+", "Minus": "-", "Multiply": "*",
           "Modulus": "%", "TrueDivide": "/", "FloorDivide": "DIV"}


def _literal(body) -> str:
    while isinstance(body, dict) and len(body) == 1:
        body = next(iter(body.values()))
    if isinstance(body, bool):
        return "TRUE" if body else "FALSE"
    if isinstance(body, (int, float)):
        return repr(body)
    raise ValueError("a literal that is not a number or boolean")


def _pred_sql(tree, alias: str) -> str:
    kind = next(iter(tree)) if isinstance(tree, dict) else tree
    body = tree[kind] if isinstance(tree, dict) else None
    if kind == "Column":
        return f"{alias}.{ident(body)}"
    if kind == "Literal":
        return _literal(body)
    if kind == "BinaryExpr":
        op = _BINARY.get(body["op"])
        if op is None:
            raise ValueError(f"the operator {body['op']}")
        return f"({_pred_sql(body['left'], alias)} {op} {_pred_sql(body['right'], alias)})"
    if kind == "Function":
        fn = body["function"]
        args = body["input"]
        if fn == {"Boolean": "Not"}:
            return f"(NOT {_pred_sql(args[0], alias)})"
        if isinstance(fn, dict) and isinstance(fn.get("Boolean"), dict) and "IsBetween" in fn["Boolean"]:
            if fn["Boolean"]["IsBetween"].get("closed") == "Both":
                a, lo, hi = (_pred_sql(x, alias) for x in args)
                return f"({a} BETWEEN {lo} AND {hi})"
        if fn == "Negate":
            return f"(-{_pred_sql(args[0], alias)})"
        raise ValueError(f"the function {json.dumps(fn)}")
    raise ValueError(f"a {kind} node")


def predicate_sql(pred, alias: str, where: str) -> str:
    """A row-wise Polars predicate over key columns as a SQL condition on ``alias``'s keys."""
    try:
        return _pred_sql(json.loads(pred.meta.serialize(format="json")), alias)
    except Exception as exc:
        raise PlanError(
            f"{where}: the predicate {pred} cannot be written as SQL ({exc}); SQL predicates use "
            f"comparisons, AND, OR, NOT, BETWEEN and + - * % on keys. Write is_in as ORs of "
            f"equalities, e.g. (pl.col('i') == 1) | (pl.col('i') == 2).") from None


# ---- plans -> SQL -------------------------------------------------------------------------------

def _sanitize(name: str, fallback: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")
    if not s:
        return fallback
    return s if _IDENT.fullmatch(s) else f"{fallback}_{s}"


class _Names:
    """Unique SQL names for tables, CTEs and kernel functions."""

    def __init__(self, taken):
        self.taken = {t.lower() for t in taken}

    def fresh(self, base: str) -> str:
        name, i = base, 2
        while name.lower() in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name.lower())
        return name


def _is_literal(node: Node) -> bool:
    s = node.schema
    return (isinstance(node, Scan) and node.is_backward and not s.keys and s.value_shape == ()
            and node.table.height == 1)


_SQL_TYPE = {"float64": "DOUBLE", "float32": "FLOAT"}


class _Renderer:
    def __init__(self, ids: dict, nodes: list[Node]):
        self.names = _Names(["t", "l", "r", "u"])
        self.refs: dict[Node, str] = {}
        self.tables: dict[str, Node] = {}
        self.functions: dict = {}
        self._kernel_names: dict = {}
        for n in nodes:  # the tables keep their relations' names; a CTE named alike is renamed
            if isinstance(n, Scan) and not _is_literal(n) and n not in self.refs:
                name = self.names.fresh(_sanitize(n.name, "table"))
                self.refs[n] = name
                self.tables[name] = n
        self.ids = {node: self.names.fresh(i) for node, i in ids.items()}

    def ref(self, node: Node) -> str:
        return self.refs.get(node) or self.ids[node]

    def kernel(self, k) -> str:
        """The SQL function name of kernel ``k`` (one per distinct kernel)."""
        same = self._kernel_names.get(id(k))
        if same is not None:
            return same
        sig = (k.name, k.arity, k.uses)
        for name, other in self.functions.items():
            if (other.name, other.arity, other.uses) == sig and _same_key(other.key, k.key):
                self._kernel_names[id(k)] = name
                return name
        base = _sanitize(k.name, "kernel")[:48].rstrip("_")
        if not _reads_as_call(base, k.arity):
            base += "_fn"
        name = self.names.fresh(base)
        self.functions[name] = k
        self._kernel_names[id(k)] = name
        return name

    def body(self, node: Node) -> str:
        keys = lambda pairs: "".join(f"{a}.{ident(i)} AS {ident(o)}, " for o, a, i in pairs)  # noqa: E731
        if isinstance(node, Scan):  # the seed: a literal one-tuple relation
            value = float(node.table.values[0])
            return f"SELECT CAST({value!r} AS {_SQL_TYPE.get(node.schema.dtype, 'DOUBLE')}) AS value"
        if isinstance(node, Select):
            value = "t.value" if node.kernel is None else f"{self.kernel(node.kernel)}(t.value)"
            sql = (f"SELECT {keys([(o, 't', i) for o, i in node.keys])}{value} AS value "
                   f"FROM {self.ref(node.input)} AS t")
            if node.pred is not None:
                where = f"select over '{node.input.display_name}'"
                sql += f" WHERE {predicate_sql(node.pred, 't', where)}"
            return sql
        if isinstance(node, Join):
            value = f"{self.kernel(node.kernel)}(l.value, r.value)"
            pairs = [(o, "l" if side == "left" else "r", k) for o, side, k in node.keys]
            sql = f"SELECT {keys(pairs)}{value} AS value FROM {self.ref(node.left)} AS l "
            if node.on:
                cond = " AND ".join(f"l.{ident(a)} = r.{ident(b)}" for a, b in node.on)
                return sql + f"JOIN {self.ref(node.right)} AS r ON {cond}"
            return sql + f"CROSS JOIN {self.ref(node.right)} AS r"
        if isinstance(node, Aggregate):
            fn = {"sum": "SUM", "mean": "AVG"}[node.reduction]
            sql = (f"SELECT {keys([(b, 't', b) for b in node.by])}{fn}(t.value) AS value "
                   f"FROM {self.ref(node.input)} AS t")
            if node.by:
                sql += " GROUP BY " + ", ".join(f"t.{ident(b)}" for b in node.by)
            return sql
        if isinstance(node, Add):
            ks = node.schema.keys
            cols = "".join(f"{ident(k)}, " for k in ks)
            union = " UNION ALL ".join(f"SELECT {cols}value FROM {self.ref(t)}" for t in node.terms)
            sql = (f"SELECT {keys([(k, 'u', k) for k in ks])}SUM(u.value) AS value "
                   f"FROM ({union}) AS u")
            if ks:
                sql += " GROUP BY " + ", ".join(f"u.{ident(k)}" for k in ks)
            return sql
        raise PlanError(f"to_sql: no SQL form for the {node.kind} node '{node.display_name}'; SQL "
                        f"covers scan, select, join, aggregate and add")


def _same_key(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


def plan_to_sql(outputs: Sequence[Node], names: Sequence[str], ids: dict,
                output: int | str | None = None) -> SQLScript:
    """One ``WITH ... SELECT * FROM <node>`` statement per output (or only ``output``, an index
    or a name), each with a CTE per node it needs, named as in ``to_text`` (F3, B7)."""
    pairs = list(zip(names, outputs))
    if output is not None:
        if isinstance(output, int):
            pairs = [pairs[output]]
        else:
            pairs = [p for p in pairs if p[0] == output]
            if not pairs:
                raise PlanError(f"to_sql: no output named {output!r}; the outputs are {list(names)}")
    nodes = toposort([o for _, o in pairs])
    r = _Renderer(ids, nodes)
    statements = []
    for name, out in pairs:
        ctes = [f"  {r.ref(n)} AS ({r.body(n)})" for n in toposort([out]) if n not in r.refs]
        head = f"-- {name}\n"
        if ctes:
            head += "WITH\n" + ",\n".join(ctes) + "\n"
        statements.append(head + f"SELECT * FROM {r.ref(out)}")
    return SQLScript(";\n\n".join(statements) + ";\n", r.functions, r.tables, [n for n, _ in pairs])
