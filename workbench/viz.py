"""Plans a person can read: the ``Plan`` a program's forward or backward pass is, an EXPLAIN-like
text listing, Graphviz DOT, rendered SVG/PNG, and a combined forward + backward view.

Text first, DOT second, the picture last: ``plan_to_text`` and ``plan_to_dot`` need nothing but
the plan; only ``render`` runs Graphviz's ``dot`` binary. Nodes are numbered ``F1, F2, ...`` in
the forward plan and ``B1, B2, ...`` in the backward plan, in topological order, so a backward
node that reads a forward intermediate names it (``F4``) exactly as the forward listing does.
"""
from __future__ import annotations

import html
import shutil
import subprocess
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
    params = "  ".join(f"{k}: {v}" for k, v in node.params().items() if k != "name")
    return f"{head}  {params}" if params else head


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def stats_text(plan: Plan, node: Node) -> str | None:
    if not plan.stats or node not in plan.stats:
        return None
    st = plan.stats[node]
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
           compact: bool = False) -> str:
    """An HTML-like label: the node number and operator in bold, then one line per parameter
    (only the kernel, ``by`` and predicate when ``compact``)."""
    head = f"<B>{num[node]} {html.escape(node.kind)}</B>"
    name = own_name(node)
    if name:
        head += f" {html.escape(name)}"
    rows = [head]
    if reference:
        rows.append("<I>forward result</I>")
    else:
        for k, v in node.params().items():
            if k == "name" or compact and k not in COMPACT:
                continue
            rows.append(f"{html.escape(k)}: {html.escape(_short(str(v)))}")
        if analyze and plan is not None:
            st = stats_text(plan, node)
            if st:
                rows.append(f'<FONT COLOR="#1a5276">{html.escape(st)}</FONT>')
    return "<" + "<BR/>".join(rows) + ">"


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


def _edges(num: Numbering, nodes: Iterable[Node], dashed_from=lambda n: False) -> list[str]:
    """Edges into ``nodes``, labelled with the schema; a join's inputs are marked L and R."""
    out = []
    for node in nodes:
        for i, inp in enumerate(node.inputs):
            attrs = [f"label={_q(' ' + edge_text(inp) + ' ')}"]
            if len(node.inputs) == 2 and node.kind == "join":
                attrs.append(f'headlabel={_q("L" if i == 0 else "R")}, labelfontsize=8')
            if dashed_from(inp):
                attrs.append('style=dashed, color="#7f8c8d"')
            out.append(f"  {num[inp]} -> {num[node]} [{', '.join(attrs)}];")
    return out


def _outputs(num: Numbering, plan: Plan, prefix: str) -> list[str]:
    out = []
    for i, (name, node) in enumerate(zip(plan.names, plan.outputs)):
        oid = f"{prefix}out{i}"
        out.append(f'  {oid} [label={_q(name)}, shape=plaintext, fontsize=11, fontname="Helvetica-Bold"];')
        out.append(f"  {num[node]} -> {oid} [label={_q(' ' + edge_text(node) + ' ')}];")
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
    """The forward plan and the backward plan beside it. Backward nodes are grouped in one cluster
    per forward operator (what that operator's RJP rule generated); a dashed edge marks every
    place where the backward plan reads a forward intermediate.

    ``upto`` shows only the rules of the first ``upto`` forward operators in the order the
    backward loop visits them (reverse topological); ``highlight`` outlines one forward node.
    """
    num = Numbering.of(backward)
    fnodes = toposort(list(forward.outputs))
    bnodes = [n for n in toposort(list(backward.outputs)) if n.is_backward]
    visible = set(rule_order(forward, backward)[: upto] if upto is not None else rule_order(forward, backward))
    bnodes = [n for n in bnodes if n.origin in visible]
    lines = ["digraph combined {", _HEADER.rstrip("\n"), "  compound=true; newrank=true;"]
    lines.append('  subgraph cluster_forward {\n    label="forward plan"; fontsize=13; '
                 'fontname="Helvetica-Bold"; color="#888888"; style=rounded;')
    for n in fnodes:
        attrs = _node_attrs(n, False)
        if n is highlight:
            attrs += ', penwidth=3, color="#d35400"'
        lines.append(f"    {num[n]} [label={_label(num, n, forward, analyze, compact=True)}, {attrs}];")
    lines += ["  " + e for e in _edges(num, fnodes)]
    lines += ["  " + o for o in _outputs(num, forward, "f")]
    lines.append("  }")
    lines.append('  subgraph cluster_backward {\n    label="backward plan"; fontsize=13; '
                 f'fontname="Helvetica-Bold"; color="{BACKWARD_BORDER}"; style=rounded;')
    by_origin: dict[Node, list[Node]] = {}
    for n in bnodes:
        by_origin.setdefault(n.origin, []).append(n)
    for origin, group in by_origin.items():
        oid = num[origin] if origin in num.ids else "?"
        lines.append(f'    subgraph cluster_rjp_{oid} {{\n      label={_q(f"RJP of {oid} {origin.kind}")}; '
                     'fontsize=10; style="rounded,dashed"; color="#c0392b";')
        for n in group:
            lines.append(f"      {num[n]} [label={_label(num, n, backward, analyze, compact=True)}, "
                         f"{_node_attrs(n, True)}];")
        lines.append("    }")
    lines.append("  }")
    shown = set(fnodes) | set(bnodes)
    for n in bnodes:
        for i, inp in enumerate(n.inputs):
            if inp not in shown:
                continue
            if not inp.is_backward:  # the backward plan reads a forward result
                lines.append(f'  {num[inp]} -> {num[n]} [style=dashed, color="#95a5a6", '
                             f'arrowhead=vee, constraint=false];')
            else:
                lines.append(f"  {num[inp]} -> {num[n]} [label={_q(' ' + edge_text(inp) + ' ')}];")
    if upto is None or len(visible) == len(rule_order(forward, backward)):
        for i, (name, node) in enumerate(zip(backward.names, backward.outputs)):
            if node in shown:
                lines.append(f'  bout{i} [label={_q(name)}, shape=plaintext, fontsize=11, '
                             f'fontname="Helvetica-Bold", fontcolor="{BACKWARD_BORDER}"];')
                lines.append(f"  {num[node]} -> bout{i} [label={_q(' ' + edge_text(node) + ' ')}];")
    lines.append(_legend())
    lines.append("  fout0 -> legend [style=invis];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _legend() -> str:
    cells = "".join(
        f'<TD BGCOLOR="{STYLE[k][1]}">{k}</TD>' for k in ("scan", "select", "join", "aggregate", "add"))
    return ('  legend [shape=plaintext, label=<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" '
            f'CELLPADDING="3"><TR>{cells}<TD BORDER="1" COLOR="{BACKWARD_BORDER}">backward: red border'
            '</TD><TD>- - - reads a forward result</TD></TR></TABLE>>];')


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


def mimebundle(plan) -> dict:
    """Jupyter's rich display: the SVG picture when ``dot`` is installed, always the text."""
    bundle = {"text/plain": plan.to_text()}
    if shutil.which("dot") is not None:
        bundle["image/svg+xml"] = render(plan, format="svg").decode()
    return bundle


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
    return str(forward), str(vjp)


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
        rows.append(f"<p><b>kernel</b> {html.escape(node.kernel.name)}</p><pre>{html.escape(jaxprs[0])}</pre>")
        rows.append(f"<p><b>its VJP</b></p><pre>{html.escape(jaxprs[1])}</pre>")
    return "\n".join(rows)
