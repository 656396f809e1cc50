"""Plans a person can read: the ``Plan`` a program's forward or backward pass is, an EXPLAIN-like
text listing, Graphviz DOT, rendered SVG/PNG, and a combined forward + backward view.

Text first, DOT second, the picture last: ``plan_to_text`` and ``plan_to_dot`` need nothing but
the plan; only ``render`` runs Graphviz's ``dot`` binary. Nodes are numbered ``F1, F2, ...`` in
the forward plan and ``B1, B2, ...`` in the backward plan, in topological order, so a backward
node that reads a forward intermediate names it (``F4``) exactly as the forward listing does.
"""
from __future__ import annotations

import ast
import functools
import html
import inspect
import re
import shutil
import subprocess
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import jax

from workbench.plan import Node, toposort
from workbench.sqlrender import SQLScript, plan_to_sql

# ---- plans ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """A DAG of nodes with named outputs: a forward program or the backward plan derived from it.

    ``to_text`` and ``to_dot`` show the logical plan as built, before any rewrite. A backward
    plan knows its ``forward`` plan, whose results it reads. After ``wb.plans(..., analyze=True)``
    ``stats`` maps each node to its row count, wall time and output size, and ``tables`` to its
    result.
    """

    outputs: tuple[Node, ...]
    names: tuple[str, ...]
    direction: str = "forward"  # "forward" | "backward"
    forward: "Plan | None" = field(default=None, compare=False, repr=False)
    stats: Any = field(default=None, compare=False)  # Node -> NodeStats, once executed
    tables: Any = field(default=None, compare=False, repr=False)  # Node -> Table, once executed

    def nodes(self) -> list[Node]:
        return toposort(self.outputs)

    def to_text(self, analyze: bool = False) -> str:
        return plan_to_text(self, analyze=analyze)

    def to_dot(self, analyze: bool = False) -> str:
        return plan_to_dot(self, analyze=analyze)

    def to_sql(self, output: int | str | None = None) -> SQLScript:
        """The plan as SQL, one CTE per node (named as in ``to_text``) and one statement per
        output (or only ``output``); ``wb.sql`` reads it back (see ``workbench.sqlrender``)."""
        return plan_to_sql(self.outputs, self.names, Numbering.of(self).ids, output)

    def _repr_mimebundle_(self, include=None, exclude=None):
        return mimebundle(self)

    def view(self, analyze: bool = False, height: str | None = None) -> "PlanView":
        """The picture in a notebook, fitted to its width (and to ``height``, e.g. "60vh"), with
        zoom and pan; with ``analyze``, the statistics of ``wb.plans(..., analyze=True)``."""
        return PlanView(self, analyze, height)

    def __repr__(self) -> str:
        return self.to_text()


class Plans(tuple):
    """``(forward, backward)`` as ``wb.plans`` returns them, plus the combined view: the forward
    plan, the backward plan beside it, and dashed links where the backward reads the forward."""

    def __new__(cls, forward: Plan, backward: Plan):
        return super().__new__(cls, (forward, backward))

    @property
    def forward(self) -> Plan:
        return self[0]

    @property
    def backward(self) -> Plan:
        return self[1]

    def to_text(self, analyze: bool = False) -> str:
        return self[0].to_text(analyze) + "\n\n" + self[1].to_text(analyze)

    def to_dot(self, analyze: bool = False) -> str:
        return combined_to_dot(self[0], self[1], analyze=analyze)

    def _repr_mimebundle_(self, include=None, exclude=None):
        return mimebundle(self)

    def view(self, analyze: bool = False, height: str | None = None) -> "PlanView":
        """Both plans side by side in a notebook; see ``Plan.view``."""
        return PlanView(self, analyze, height)


# ---- the visual language --------------------------------------------------------------------

# kind -> (Graphviz shape, forward fill, backward fill)
STYLE = {
    "scan": ("cylinder", "#e8e8e8", "#e8e8e8"),
    "select": ("box", "#cfe2f3", "#e7f0f9"),
    "join": ("hexagon", "#fce5cd", "#fdf2e6"),
    "aggregate": ("invtrapezium", "#d9ead3", "#ecf4e9"),
    "add": ("ellipse", "#ead1dc", "#f4e8ed"),
}
BACKWARD_BORDER = "#b03a2e"  # backward nodes: a red border; forward nodes: a grey one
FORWARD_BORDER = "#555555"


@dataclass(frozen=True)
class Numbering:
    """A stable name for every node: F<i> for forward nodes, B<i> for backward ones."""

    ids: dict

    @staticmethod
    def of(plan: Plan) -> "Numbering":
        ids: dict[Node, str] = {}
        counts = {"F": 0, "B": 0}

        def number(nodes, backward_plan: bool) -> None:
            for n in nodes:
                if n not in ids:
                    tag = "B" if backward_plan and n.is_backward else "F"
                    counts[tag] += 1
                    ids[n] = f"{tag}{counts[tag]}"

        if plan.forward is not None:
            number(toposort(list(plan.forward.outputs)), False)
        number(toposort(list(plan.outputs)), plan.direction == "backward")
        return Numbering(ids)

    def __getitem__(self, node: Node) -> str:
        return self.ids[node]


def own_name(node: Node) -> str:
    """The node's own name or label, or "" (its kind is shown beside it anyway)."""
    return node.display_name if node.named else ""


def _shape(node: Node) -> str:
    return "x".join(map(str, node.schema.value_shape)) or "scalar"


def schema_text(node: Node) -> str:
    """Keys, value shape and dtype: ``(row, col) -> 3x4 float64``."""
    return f"({', '.join(node.schema.keys)}) -> {_shape(node)} {node.schema.dtype}"


def edge_text(node: Node) -> str:
    """The schema flowing along an edge, short: keys and value shape."""
    return f"({', '.join(node.schema.keys)}) {_shape(node)}"


def describe(node: Node) -> str:
    """One line: the operator, its name or label, and its parameters."""
    head = node.kind
    name = own_name(node)
    if name:
        head += f" {name}"
    params = "  ".join(f"{k}: {v}" for k, v in node_params(node).items() if k != "name")
    return f"{head}  {params}" if params else head


def node_params(node: Node) -> dict[str, Any]:
    """The node's parameters, with the kernel shown as what it computes (``kernel_label``)."""
    params = node.params()
    kernel = getattr(node, "kernel", None)
    if "kernel" in params and kernel is not None and hasattr(kernel, "fn"):
        params["kernel"] = kernel_label(kernel, [(i.schema.value_shape, i.schema.dtype) for i in node.inputs])
    return params


# ---- kernel labels --------------------------------------------------------------------------

KERNEL_WIDTH = 32  # characters of a kernel label before the ellipsis


def kernel_label(kernel, shapes=None, width: int = KERNEL_WIDTH) -> str:
    """What a kernel computes, short: its name (``matmul``), else the expression of a lambda's
    source with module prefixes dropped (``e * v``, ``relu(v @ m)``), else the primitives of its
    jaxpr (traced on ``shapes``, (value shape, dtype) per argument, else on scalars); a kernel
    derived from a lambda (``vjp_left(lambda)``) names the lambda's expression."""
    parts = getattr(kernel, "parts", None)
    if parts and parts[0] == "join_vjp":  # ("join_vjp", forward kernel, side)
        return _short(f"vjp_{parts[2]}({kernel_label(parts[1], width=width)})", width)
    if "lambda" not in re.findall(r"\w+", kernel.name):
        return _short(kernel.name, width)
    inner = _lambda_of(kernel.fn)
    expr = _lambda_expr(inner) if inner is not None else None
    if expr is None:
        expr = _jaxpr_text(kernel.fn if inner is None else inner,
                           shapes if inner is None else None, kernel.arity)
    if expr is None:
        return _short(kernel.name, width)
    return _short(re.sub(r"\blambda\b", lambda _: expr, kernel.name, count=1), width)


def _lambda_of(fn) -> types.FunctionType | None:
    """``fn`` if it is a lambda, else the first lambda among the values its closure captures
    (a kernel derived from a user's lambda, e.g. its VJP)."""
    if isinstance(fn, types.FunctionType) and fn.__name__ == "<lambda>":
        return fn
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        value = getattr(value, "fn", value)  # a captured Kernel
        if isinstance(value, types.FunctionType) and value.__name__ == "<lambda>":
            return value
    return None


@functools.lru_cache(maxsize=1024)
def _lambda_source(code: types.CodeType) -> tuple[str, ...] | None:
    """The body expressions (unparsed) of the lambdas that start on ``code``'s first line and
    take ``code``'s parameters, or None when the source cannot be read or parsed."""
    try:
        lines, _ = inspect.findsource(code)
    except (OSError, TypeError):
        return None
    first = code.co_firstlineno - 1
    params = [*code.co_varnames[: code.co_argcount]]
    rest = "".join(lines[first: first + 12])
    found = []
    for start in (m.start() for m in re.finditer(r"\blambda\b", lines[first])):
        text = rest[start:]
        # the longest prefix that parses: the lambda ends where its call's ")" or "," does
        for end in [i for i, c in enumerate(text) if c in "),\n"][::-1] + [len(text)]:
            try:
                tree = ast.parse("(" + text[:end] + "\n)", mode="eval")
            except SyntaxError:
                continue
            lam = next((n for n in ast.walk(tree) if isinstance(n, ast.Lambda)), None)
            if lam is not None and [x.arg for x in lam.args.args] == params:
                found.append(ast.unparse(lam.body))
            break
    return tuple(found) or None


def _lambda_expr(fn: types.FunctionType) -> str | None:
    """A lambda's body as source, with ``jnp.``, ``jax.nn.`` and other module prefixes dropped."""
    found = _lambda_source(fn.__code__)
    if not found:
        return None
    expr = found[0]
    for name, value in {**fn.__globals__, **_closure_values(fn)}.items():
        if isinstance(value, types.ModuleType):  # jnp.sum -> sum, jax.nn.relu -> relu
            expr = re.sub(rf"(?<![\w.]){re.escape(name)}\.(?:[A-Za-z_]\w*\.)*(?=[A-Za-z_])", "", expr)
    return expr


def _closure_values(fn) -> dict[str, Any]:
    out = {}
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
        try:
            out[name] = cell.cell_contents
        except ValueError:
            pass
    return out


def _jaxpr_text(fn, shapes, arity: int) -> str | None:
    """The primitives of ``fn``'s jaxpr, in order (``mul, add``), when it traces on ``shapes``
    (or on scalars)."""
    shapes = shapes or [((), "float32")] * arity
    try:
        jaxpr = jax.make_jaxpr(fn)(*(jax.ShapeDtypeStruct(s, d) for s, d in shapes))
    except Exception:  # a kernel that needs other shapes: no label from its jaxpr
        return None
    prims = list(dict.fromkeys(e.primitive.name for e in jaxpr.eqns))
    return ", ".join(prims) or "identity"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def stats_text(plan: Plan, node: Node, short: bool = False) -> str | None:
    """Rows, time and size of an executed node (``short``: rows and time only)."""
    if not plan.stats or node not in plan.stats:
        return None
    st = plan.stats[node]
    if short:
        return f"{st.rows} rows, fused" if st.fused else f"{st.rows} rows, {st.seconds * 1e3:.2f} ms"
    if st.fused:
        return f"rows={st.rows}  fused into its consumer (no table of its own)"
    text = f"rows={st.rows}  time={st.seconds * 1e3:.2f} ms  size={_fmt_bytes(st.nbytes)}"
    if st.partitions is not None:  # rows per partition, on a partitioned runner
        text += f"  partitions={list(st.partitions)}"
    return text


# ---- text -----------------------------------------------------------------------------------

def plan_to_text(plan: Plan, analyze: bool = False) -> str:
    """An indented listing, outputs first, inputs below their consumers. A node reached twice is
    listed once and referred to by its number afterwards; in a backward plan, a forward result
    it reads is a leaf (``F4 ... [forward result]``)."""
    if analyze and plan.stats is None:
        raise ValueError("this plan has not been executed; build it with "
                         "wb.plans(f, *rels, argnums=..., analyze=True) to see row counts and times")
    num = Numbering.of(plan)
    title = "Forward plan" if plan.direction == "forward" else "Backward plan"
    lines = [f"{title} ({len(_own_nodes(plan))} nodes)"]
    shown: set[Node] = set()

    def emit(node: Node, prefix: str, branch: str, last: bool) -> None:
        tag = num[node]
        own = plan.direction == "forward" or node.is_backward
        line = f"{prefix}{branch}{tag} {describe(node)}  => {schema_text(node)}"
        if plan.direction == "backward" and node.is_backward and node.origin in num.ids:
            line += f"  [rjp of {num[node.origin]}]"
        if not own:
            line += "  [forward result]"
        elif node in shown:
            line += "  (see above)"
        if analyze and own and node not in shown:
            st = stats_text(plan, node)
            if st:
                line += f"  ({st})"
        lines.append(line)
        if not own or node in shown:
            return
        shown.add(node)
        child_prefix = prefix + ("" if not branch else ("   " if last else "│  "))
        kids = node.inputs
        for i, k in enumerate(kids):
            end = i == len(kids) - 1
            emit(k, child_prefix, "└─ " if end else "├─ ", end)

    for name, out in zip(plan.names, plan.outputs):
        lines.append(f"{name}:")
        emit(out, "  ", "", True)
    return "\n".join(lines)


def _own_nodes(plan: Plan) -> list[Node]:
    nodes = toposort(list(plan.outputs))
    if plan.direction == "forward":
        return nodes
    return [n for n in nodes if n.is_backward]


# ---- DOT ------------------------------------------------------------------------------------

def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


# The parameters a compact label keeps (the combined view): what the operator computes.
COMPACT = ("kernel", "by", "pred")


def _label(num: Numbering, node: Node, plan: Plan | None, analyze: bool, reference: bool = False,
           compact: bool = False, rule: str | None = None) -> str:
    """An HTML-like label: the node number and operator in bold, then one line per parameter.
    When ``compact``: only the kernel (without its "kernel:" tag), ``by`` and predicate, short
    statistics, and ``rule`` (the RJP rule that emitted the node) in grey."""
    head = f"<B>{num[node]} {html.escape(node.kind)}</B>"
    name = own_name(node)
    if name:
        head += f" {html.escape(name)}"
    rows = [head]
    if reference:
        rows.append("<I>forward result</I>")
    else:
        for k, v in node_params(node).items():
            if k == "name" or compact and k not in COMPACT:
                continue
            if compact and k == "kernel":
                rows.append(html.escape(_short(str(v), COMPACT_WIDTH)))
            else:
                rows.append(f"{html.escape(k)}: {html.escape(_short(str(v)))}")
        if analyze and plan is not None:
            st = stats_text(plan, node, short=compact)
            if st:
                rows.append(f'<FONT COLOR="#1a5276">{html.escape(st)}</FONT>')
    if rule:
        rows.append(f'<FONT POINT-SIZE="9" COLOR="#6c7a7d">{html.escape(rule)}</FONT>')
    return "<" + "<BR/>".join(rows) + ">"


COMPACT_WIDTH = 26  # characters of a kernel in a compact label


def _short(s: str, width: int = 48) -> str:
    return s if len(s) <= width else s[: width - 1] + "…"


def _node_attrs(node: Node, backward: bool, reference: bool = False) -> str:
    shape, ffill, bfill = STYLE.get(node.kind, ("box", "#ffffff", "#ffffff"))
    attrs = f"shape={shape}"
    if shape in ("hexagon", "invtrapezium"):  # these pad their labels widely by default
        attrs += ', margin="0.02,0.02"'
    if reference:
        return attrs + ', style="filled,dashed", fillcolor="#f5f5f5", color="#999999", fontcolor="#555555"'
    style = "filled,rounded" if shape == "box" else "filled"
    if backward:
        return attrs + f', style="{style}", fillcolor="{bfill}", color="{BACKWARD_BORDER}", penwidth=1.6'
    return attrs + f', style="{style}", fillcolor="{ffill}", color="{FORWARD_BORDER}"'


_HEADER = ('  graph [fontname="Helvetica", fontsize=11, nodesep=0.35, ranksep=0.45, rankdir=TB];\n'
           '  node [fontname="Helvetica", fontsize=10, margin="0.12,0.06"];\n'
           '  edge [fontname="Helvetica", fontsize=9, color="#444444", fontcolor="#333333"];\n')


def _edges(num: Numbering, nodes: Iterable[Node], dashed_from=lambda n: False,
           labels: bool = True) -> list[str]:
    """Edges into ``nodes``, labelled with the schema (unless not ``labels``); a join's inputs
    are marked L and R."""
    out = []
    for node in nodes:
        for i, inp in enumerate(node.inputs):
            attrs = [f"label={_q(' ' + edge_text(inp) + ' ')}"] if labels else []
            if len(node.inputs) == 2 and node.kind == "join":
                attrs.append(f'headlabel={_q("L" if i == 0 else "R")}, labelfontsize=8')
            if dashed_from(inp):
                attrs.append('style=dashed, color="#7f8c8d"')
            out.append(f"  {num[inp]} -> {num[node]}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    return out


def _outputs(num: Numbering, plan: Plan, prefix: str, labels: bool = True) -> list[str]:
    out = []
    for i, (name, node) in enumerate(zip(plan.names, plan.outputs)):
        oid = f"{prefix}out{i}"
        out.append(f'  {oid} [label={_q(name)}, shape=plaintext, fontsize=11, fontname="Helvetica-Bold"];')
        label = f" [label={_q(' ' + edge_text(node) + ' ')}]" if labels else ""
        out.append(f"  {num[node]} -> {oid}{label};")
    return out


def plan_to_dot(plan: Plan, analyze: bool = False) -> str:
    """Graphviz source for one plan. In a backward plan, the forward results it reads are grey
    dashed nodes and the edges from them are dashed."""
    num = Numbering.of(plan)
    nodes = toposort(list(plan.outputs))
    backward = plan.direction == "backward"
    if backward:  # backward nodes, and the forward results they read as leaves
        own = [n for n in nodes if n.is_backward or n in plan.outputs]
        read = {i for n in own for i in n.inputs}
        nodes = [n for n in nodes if n in read and n not in own] + own
    else:
        own = nodes
    lines = [f"digraph {plan.direction} {{", _HEADER.rstrip("\n")]
    for n in nodes:
        ref = n not in own
        lines.append(f"  {num[n]} [label={_label(num, n, plan, analyze, reference=ref)}, "
                     f"{_node_attrs(n, backward and not ref, reference=ref)}];")
    lines += _edges(num, own, dashed_from=lambda n: n not in own)
    lines += _outputs(num, plan, "")
    lines.append("}")
    return "\n".join(lines) + "\n"


def combined_to_dot(forward: Plan, backward: Plan, analyze: bool = False,
                    upto: int | None = None, highlight: Node | None = None) -> str:
    """The forward plan and the backward plan beside it, compact: short labels, edges without
    schema labels. Each backward node names the forward operator whose RJP rule emitted it
    (``RJP of F7 join``). Where a backward node reads a forward intermediate, a small dashed
    reference node named after it (``F4``) sits beside the reader inside the backward plan.

    ``upto`` shows only the rules of the first ``upto`` forward operators in the order the
    backward loop visits them (reverse topological); ``highlight`` outlines one forward node
    (SVG class ``highlight``) and the nodes its rule emitted (class ``current``).
    """
    num = Numbering.of(backward)
    fnodes = toposort(list(forward.outputs))
    bnodes = [n for n in toposort(list(backward.outputs)) if n.is_backward]
    order = rule_order(forward, backward)
    visible = set(order[: upto] if upto is not None else order)
    bnodes = [n for n in bnodes if n.origin in visible]
    lines = ["digraph combined {", _HEADER.rstrip("\n"), "  compound=true; newrank=true;"]
    lines.append('  subgraph cluster_forward {\n    label="forward plan"; fontsize=13; '
                 'fontname="Helvetica-Bold"; color="#888888"; style=rounded;')
    for n in fnodes:
        attrs = _node_attrs(n, False)
        if n is highlight:
            attrs += ', penwidth=3, color="#d35400", class="highlight"'
        lines.append(f"    {num[n]} [label={_label(num, n, forward, analyze, compact=True)}, {attrs}];")
    lines += ["  " + e for e in _edges(num, fnodes, labels=False)]
    lines += ["  " + o for o in _outputs(num, forward, "f", labels=False)]
    lines.append("  }")
    lines.append('  subgraph cluster_backward {\n    label="backward plan"; fontsize=13; '
                 f'fontname="Helvetica-Bold"; color="{BACKWARD_BORDER}"; style=rounded;')
    edges = []
    for n in bnodes:
        oid = num[n.origin] if n.origin in num.ids else "?"
        attrs = _node_attrs(n, True)
        if highlight is not None and n.origin is highlight:  # emitted by the current rule
            attrs += ', penwidth=3, color="#d35400", class="current"'
        rule = f"RJP of {oid} {n.origin.kind}"
        lines.append(f"    {num[n]} [label={_label(num, n, backward, analyze, compact=True, rule=rule)}, "
                     f"{attrs}];")
        for inp in n.inputs:
            if inp.is_backward:
                edges.append(f"  {num[inp]} -> {num[n]};")
            else:  # a forward result the rule reads: a reference node beside its reader
                ref = f"{num[inp]}_{num[n]}"
                lines.append(f"    {ref} [label={_q(num[inp])}, {REFERENCE_ATTRS}];")
                edges.append(f'  {ref} -> {num[n]} [style=dashed, color="#7f8c8d", arrowhead=vee];')
    lines.append("  }")
    lines += edges
    if upto is None or len(visible) == len(order):
        for i, (name, node) in enumerate(zip(backward.names, backward.outputs)):
            if node in bnodes:
                lines.append(f'  bout{i} [label={_q(name)}, shape=plaintext, fontsize=11, '
                             f'fontname="Helvetica-Bold", fontcolor="{BACKWARD_BORDER}"];')
                lines.append(f"  {num[node]} -> bout{i};")
    lines.append(_legend())
    lines.append("  fout0 -> legend [style=invis];")
    lines.append("}")
    return "\n".join(lines) + "\n"


# A forward result drawn inside the backward plan, where a backward node reads it.
REFERENCE_ATTRS = ('shape=box, style="dashed,filled", fillcolor="#f5f5f5", color="#7f8c8d", '
                   'fontcolor="#555555", fontsize=9, width=0.35, height=0.22, margin="0.04,0.02"')


def _legend() -> str:
    cells = "".join(
        f'<TD BGCOLOR="{STYLE[k][1]}">{k}</TD>' for k in ("scan", "select", "join", "aggregate", "add"))
    return ('  legend [shape=plaintext, label=<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" '
            f'CELLPADDING="3"><TR>{cells}<TD BORDER="1" COLOR="{BACKWARD_BORDER}">backward: red border'
            '</TD></TR><TR><TD COLSPAN="6" BORDER="1" STYLE="dashed" COLOR="#7f8c8d">F4 (dashed): '
            'forward result F4, read by the backward plan</TD></TR></TABLE>>];')


def rule_order(forward: Plan, backward: Plan) -> list[Node]:
    """Forward nodes whose RJP rules emitted backward nodes, in the order the backward loop
    visits them (reverse topological order of the forward plan)."""
    origins = {n.origin for n in toposort(list(backward.outputs)) if n.is_backward}
    return [n for n in reversed(toposort(list(forward.outputs))) if n in origins]


# ---- rendering ------------------------------------------------------------------------------

INSTALL_DOT = ("Graphviz's `dot` command was not found on PATH. Install it with "
               "`apt-get install -y graphviz` (Debian/Ubuntu), `brew install graphviz` (macOS) or "
               "`conda install graphviz`; to_text() and to_dot() work without it.")


def render(plan, format: str = "svg", path: str | Path | None = None, analyze: bool = False) -> bytes:
    """Run Graphviz's ``dot`` on a plan (or anything with ``to_dot``) and return the picture as
    bytes; with ``path``, also write it there."""
    if format not in ("svg", "png", "pdf"):
        raise ValueError(f"render: format must be 'svg', 'png' or 'pdf', got {format!r}")
    if not callable(getattr(plan, "to_dot", None)):
        raise TypeError(f"render: expects a plan (wb.plans(f, *rels) or one of its two plans), got "
                        f"{type(plan).__name__}; to draw a relation's plan, render "
                        f"wb.plans(lambda R: ..., R)")
    source = plan.to_dot(analyze=analyze) if analyze else plan.to_dot()
    exe = shutil.which("dot")
    if exe is None:
        raise RuntimeError(INSTALL_DOT)
    args = [exe, f"-T{format}"] + (["-Gdpi=110"] if format == "png" else [])
    proc = subprocess.run(args, input=source.encode(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"dot failed (exit {proc.returncode}): {proc.stderr.decode(errors='replace')}")
    if path is not None:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(proc.stdout)
        except OSError as exc:
            raise OSError(exc.errno, f"render: cannot write the picture to {str(path)!r} "
                                     f"({exc.strerror}); pass a path in a writable directory, "
                                     f"or path=None to get the bytes only") from exc
    return proc.stdout


def mimebundle(plan, analyze: bool = False, height: str | None = None) -> dict:
    """Jupyter's rich display: when ``dot`` is installed, the SVG picture, plain and in a viewer
    that fits it to the notebook's width (``html_view``); always the text."""
    bundle = {"text/plain": plan.to_text(analyze) if analyze else plan.to_text()}
    if shutil.which("dot") is not None:
        svg = render(plan, format="svg", analyze=analyze).decode()
        bundle["image/svg+xml"] = svg
        bundle["text/html"] = html_view(svg, height=height)
    return bundle


@dataclass(frozen=True)
class PlanView:
    """A plan shown in the viewer: ``plan.view(analyze=True)`` in a notebook."""

    plan: Any
    analyze: bool = False
    height: str | None = None

    def _repr_mimebundle_(self, include=None, exclude=None):
        return mimebundle(self.plan, self.analyze, self.height)


_SVG_SIZE = re.compile(r'<svg width="([\d.]+)pt" height="([\d.]+)pt"')

# The viewer's controls: zoom by a factor, back to the fitted view, actual size; drag to pan.
_ZOOM = ("const v=this.closest('.wb-plan'), s=v.querySelector('svg'); "
         "const w=s.getBoundingClientRect().width; s.style.maxWidth='none'; s.style.width=(w*{f})+'px';")
_FIT = "const s=this.closest('.wb-plan').querySelector('svg'); s.setAttribute('style', s.dataset.fit);"
_ACTUAL = ("const s=this.closest('.wb-plan').querySelector('svg'); "
           "s.style.maxWidth='none'; s.style.width=s.getAttribute('width');")
_PAN = ("if(event.buttons===1){this.scrollLeft-=event.movementX; this.scrollTop-=event.movementY;"
        "event.preventDefault();}")


def html_view(svg: str, height: str | None = None) -> str:
    """HTML that shows a Graphviz SVG scaled down to the width of its container (never up), and
    with ``height`` (a CSS length such as ``"60vh"``) also to that height, so the whole plan is in
    view; buttons zoom in and out, go back to the fitted view or to actual size, and the view
    pans by dragging or scrolling."""
    m = _SVG_SIZE.search(svg)
    if m is None:
        return svg
    w, h = float(m.group(1)), float(m.group(2))
    width = f"min(100%, {w}pt" + (f", calc({height} * {w / h:.4f}))" if height else ")")
    fit = f"width: {width}; height: auto; aspect-ratio: {w:.2f} / {h:.2f}; max-width: 100%; display: block"
    svg = svg[: m.start()] + (f'<svg class="wb-plan-svg" style="{fit}" data-fit="{fit}" '
                              f'width="{w}pt" height="{h}pt"') + svg[m.end():]
    button = ('<button title="{t}" style="min-width: 2.2em; margin-right: 2px" '
              'onclick="{js}">{label}</button>')
    tools = "".join(button.format(t=t, js=html.escape(js, quote=True), label=label) for t, js, label in (
        ("zoom out", _ZOOM.format(f=0.8), "\u2212"), ("zoom in", _ZOOM.format(f=1.25), "+"),
        ("fit to the view", _FIT, "fit"), ("actual size", _ACTUAL, "1:1")))
    box = "overflow: auto; max-height: " + (f"calc({height} + 24px)" if height else "90vh")
    return (f'<div class="wb-plan" style="width: 100%">'
            f'<div class="wb-plan-tools" style="margin: 2px 0">{tools}'
            f'<span style="color: #777; font-size: 11px; margin-left: 6px">drag to pan</span></div>'
            f'<div class="wb-plan-view" style="{box}; user-select: none" '
            f'onmousemove="{html.escape(_PAN, quote=True)}">{svg}</div></div>')


# ---- kernels and the interactive explorer ---------------------------------------------------

def kernel_jaxprs(node: Node) -> tuple[str, str] | None:
    """The jaxpr of a node's per-tuple kernel and of its VJP (cotangent in, one cotangent per
    argument out), or None for nodes without a kernel."""
    kernel = getattr(node, "kernel", None)
    if kernel is None:
        return None
    args = [jax.ShapeDtypeStruct(i.schema.value_shape, i.schema.dtype) for i in node.inputs]
    ct = jax.ShapeDtypeStruct(node.schema.value_shape, node.schema.dtype)
    forward = jax.make_jaxpr(kernel.fn)(*args)
    vjp = jax.make_jaxpr(lambda *a: jax.vjp(kernel.fn, *a[:-1])[1](a[-1]))(*args, ct)
    return _ANSI.sub("", str(forward)), _ANSI.sub("", str(vjp))  # no terminal colours


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def node_details(plan: Plan, node: Node, num: Numbering | None = None, sample: int = 5) -> str:
    """HTML: a node's operator, schema, parameters, run statistics, sample tuples and kernel."""
    num = num or Numbering.of(plan)
    rows = [f"<h4>{num[node]} {html.escape(describe(node))}</h4>",
            f"<p><b>schema</b> {html.escape(schema_text(node))}</p>"]
    if node.is_backward and node.origin in num.ids:
        rows.append(f"<p>emitted by the RJP rule of <b>{num[node.origin]} {node.origin.kind}</b></p>")
    st = stats_text(plan, node)
    if st:
        rows.append(f"<p><b>run</b> {html.escape(st)}</p>")
    if plan.tables is not None and node in plan.tables:
        frame = plan.tables[node].to_frame().head(sample)
        rows.append(f"<p><b>first {frame.height} tuples</b></p><pre>{html.escape(str(frame))}</pre>")
    jaxprs = kernel_jaxprs(node)
    if jaxprs is not None:
        rows.append(f"<p><b>kernel</b> {html.escape(node_params(node)['kernel'])}</p>"
                    f"<pre>{html.escape(jaxprs[0])}</pre>")
        rows.append(f"<p><b>its VJP</b></p><pre>{html.escape(jaxprs[1])}</pre>")
    return "\n".join(rows)
