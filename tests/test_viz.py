"""Plans as text, DOT and pictures: golden snapshots of the paper's examples, rendering, EXPLAIN
ANALYZE and the explorer. Regenerate the snapshots with WORKBENCH_UPDATE_GOLDEN=1 after an
intended change, and read the diff."""
import os
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import workbench as wb
from workbench import programs, viz
from workbench.explore import HEIGHT

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("WORKBENCH_UPDATE_GOLDEN") == "1"


def example_plans(name):
    p = programs.FIGURES[name](np.random.default_rng(0))
    return p, wb.plans(p.fn, *p.rels, argnums=p.argnums)


def check_golden(text: str, filename: str) -> None:
    path = GOLDEN / filename
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"no snapshot {path}; run with WORKBENCH_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{filename} differs from its snapshot"


@pytest.mark.parametrize("name", list(programs.FIGURES))
@pytest.mark.parametrize("view", ["forward", "backward", "combined"])
def test_text_and_dot_match_snapshots(name, view):
    _, both = example_plans(name)
    plan = {"forward": both.forward, "backward": both.backward, "combined": both}[view]
    check_golden(plan.to_text(), f"{name}_{view}.txt")
    check_golden(plan.to_dot(), f"{name}_{view}.dot")


def test_snapshots_are_deterministic():
    assert example_plans("gcn")[1].to_dot() == example_plans("gcn")[1].to_dot()


def test_text_lists_every_operator_with_schema_and_parameters():
    _, (fwd, bwd) = example_plans("matmul")
    text = fwd.to_text()
    assert re.search(r"F3 join\s+on: col=row\s+keys: row<-L.row, k<-L.col, col<-R.col\s+kernel: matmul"
                     r"\s+=> \(row, k, col\) -> 3x2 float64", text)
    assert "F1 scan A  => (row, col) -> 3x4 float64" in text
    assert "aggregate  by: row, col  kernel: sum" in text
    back = bwd.to_text()
    assert "grad A:" in back and "grad B:" in back
    assert "[forward result]" in back and "[rjp of F3]" in back
    # every backward node is listed once in full
    own = [n for n in bwd.nodes() if n.is_backward]
    assert back.count("(see above)") >= 1
    for tag in (f"B{i}" for i in range(1, len(own) + 1)):
        assert re.search(rf"\b{tag} ", back), tag


def test_dot_styles_forward_and_backward_nodes_differently():
    _, both = example_plans("logreg")
    dot = both.to_dot()
    fwd_nodes = re.findall(r"^\s+(F\d+) \[label=.*$", dot, re.M)
    bwd_lines = re.findall(r"^\s+B\d+ \[label=.*$", dot, re.M)
    assert fwd_nodes and bwd_lines
    assert all(viz.BACKWARD_BORDER in line for line in bwd_lines)
    assert viz.BACKWARD_BORDER not in "".join(re.findall(r"^\s+F\d+ \[label=.*$", dot, re.M))
    for kind, (shape, _, _) in viz.STYLE.items():
        if kind != "add":
            assert f"shape={shape}" in dot
    # one dashed link per place the backward plan reads a forward intermediate, from a reference
    # node inside the backward plan, never an arc from the forward plan itself
    reads = {(i, n) for n in both.backward.nodes() if n.is_backward for i in n.inputs if not i.is_backward}
    assert dot.count("style=dashed, color=") == len(reads)
    num = viz.Numbering.of(both.backward)
    backward_cluster = dot[dot.index("subgraph cluster_backward"):]
    for i, n in reads:
        assert re.search(rf'^\s+{num[i]}_{num[n]} \[label="{num[i]}"', backward_cluster, re.M)
        assert f"  {num[i]}_{num[n]} -> {num[n]} [style=dashed" in dot
    assert not re.search(r"^\s+F\d+ -> B\d+", dot, re.M)
    # every backward node names the forward operator whose RJP rule emitted it
    for n in both.backward.nodes():
        if n.is_backward:
            assert re.search(rf"^\s+{num[n]} \[label=<.*RJP of {num[n.origin]} {n.origin.kind}<", dot, re.M)
    assert {f"RJP of {num[o]}" for o in viz.rule_order(*both)} == set(re.findall(r"RJP of F\d+", dot))


def test_edges_carry_the_schema():
    _, (fwd, _) = example_plans("matmul")
    assert re.search(r'F3 -> F4 \[label=" \(row, k, col\) 3x2 "', fwd.to_dot())


@pytest.mark.parametrize("fmt,magic", [("svg", b"<svg"), ("png", b"\x89PNG")])
def test_render_runs_dot(fmt, magic, tmp_path):
    _, both = example_plans("gcn")
    path = tmp_path / f"gcn.{fmt}"
    out = wb.render(both, format=fmt, path=path)
    assert magic in out[:1000] and path.read_bytes() == out


def test_render_without_dot_says_how_to_install(monkeypatch):
    _, (fwd, _) = example_plans("matmul")
    monkeypatch.setattr(viz.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install -y graphviz"):
        wb.render(fwd)
    assert "image/svg+xml" not in fwd._repr_mimebundle_()  # text still shows
    assert "F3 join" in fwd._repr_mimebundle_()["text/plain"]


def test_plans_display_inline_in_jupyter():
    _, both = example_plans("matmul")
    for obj in (both.forward, both.backward, both):
        bundle = obj._repr_mimebundle_()
        assert "<svg" in bundle["image/svg+xml"] and bundle["text/plain"]
        assert '<div class="wb-plan"' in bundle["text/html"]


def test_the_viewer_fits_the_picture_to_the_width_and_zooms():
    _, both = example_plans("gcn")
    svg = wb.render(both).decode()
    w, h = map(float, re.search(r'<svg width="([\d.]+)pt" height="([\d.]+)pt"', svg).groups())
    page = viz.html_view(svg)
    # scaled down to the container's width, never up, keeping the aspect ratio
    assert f"width: min(100%, {w}pt); height: auto; aspect-ratio: {w:.2f} / {h:.2f}" in page
    assert page.count("<svg") == 1 and page.count("</svg>") == 1
    for title in ("zoom out", "zoom in", "fit to the view", "actual size"):
        assert f'<button title="{title}"' in page
    assert "onmousemove=" in page and "overflow: auto" in page
    # with a height, also scaled down to it: the whole plan in view
    assert f"min(100%, {w}pt, calc(60vh * {w / h:.4f}))" in viz.html_view(svg, height="60vh")
    p, _ = example_plans("matmul")
    run = wb.plans(p.fn, *p.rels, argnums=p.argnums, analyze=True)
    bundle = run.view(analyze=True)._repr_mimebundle_()
    assert "rows=" in bundle["text/plain"] and "rows, " in bundle["text/html"]


def test_kernels_are_labelled_with_what_they_compute():
    _, gcn = example_plans("gcn")
    text, dot = gcn.to_text(), gcn.to_dot()
    assert "kernel: e * v" in text and "kernel: relu(v @ m)" in text  # module prefixes dropped
    assert "kernel: matmul" in text  # a named function keeps its name
    assert "<BR/>relu(v @ m)>" in dot and "<BR/>vjp_right(e * v)<BR/>" in dot  # compact labels
    assert "vjp_right(e * v)" in text and "vjp_left(relu(v @ m))" in text  # derived kernels
    assert "vjp_left(-sum(y * log_softmax(z…" in text  # long labels end in an ellipsis
    for name in programs.FIGURES:
        for view in ("forward", "backward", "combined"):
            for ext in ("txt", "dot"):
                assert not re.search(r"\blambda\b", (GOLDEN / f"{name}_{view}.{ext}").read_text())
    X = wb.from_tensor(np.ones((3, 2)), keys=("i",))
    scale = 2.0
    S = wb.select(X, kernel=lambda v: (scale
                                       * jnp.tanh(v)))  # a lambda over two lines
    assert viz.kernel_label(S.node.kernel) == "scale * tanh(v)"
    namespace = {"jnp": jnp}
    exec("f = lambda v: jnp.sin(v) * v", namespace)  # no source to read: its jaxpr's primitives
    T = wb.select(X, kernel=namespace["f"])
    assert viz.node_params(T.node)["kernel"] == "sin, mul"
    assert len(viz.kernel_label(S.node.kernel, width=8)) == 8


def test_explain_analyze_reports_rows_time_and_size():
    p, _ = example_plans("matmul")
    fwd, bwd = wb.plans(p.fn, *p.rels, argnums=p.argnums, analyze=True)
    text = fwd.to_text(analyze=True)
    join = next(n for n in fwd.nodes() if n.kind == "join")
    # A has 2x2 blocks, B 2x2: 2 * 2 * 2 matched pairs, computed inside one block product
    assert fwd.stats[join].rows == 8 and fwd.stats[join].fused
    assert re.search(r"F3 join.*rows=8  fused into its consumer", text)
    assert re.search(r"F4 aggregate.*rows=4  time=\d+\.\d\d ms  size=\d", text)
    assert all(fwd.stats[n].nbytes > 0 for n in fwd.nodes() if not fwd.stats[n].fused)
    back = bwd.to_text(analyze=True)
    assert back.count("rows=") == len([n for n in bwd.nodes() if n.is_backward])  # once per node
    assert "rows=" in bwd.to_dot(analyze=True)
    # the packed pairs of the join RJP are never built: the executor gathers from the match
    pairs = next(n for n in bwd.nodes() if n.label == "pairs")
    assert bwd.stats[pairs].fused and pairs not in bwd.tables
    assert re.search(r"B\d+ join pairs .*fused into its consumer", back)
    with pytest.raises(ValueError, match="analyze=True"):
        wb.plans(p.fn, *p.rels).forward.to_text(analyze=True)


def test_explorer_steps_through_the_derivation():
    p = programs.FIGURES["logreg"](np.random.default_rng(0))
    ex = wb.explore(p.fn, *p.rels, argnums=p.argnums)
    order = viz.rule_order(ex.forward, ex.backward)
    assert ex.step.max == len(order) == 3
    ex.step.value = 0
    assert "Step 0" in ex.caption.value and "B1 join" not in ex.graph.value
    ex.step.value = 1  # the loss's aggregate (mean) is differentiated first
    assert f"RJP rule of <b>{ex.num[order[0]]} aggregate</b>" in ex.caption.value
    assert ex.choose.value == ex.num[order[0]]
    assert "<svg" in ex.graph.value and "RJP of F6 aggregate" in ex.graph.value
    assert "RJP of F3 join" not in ex.graph.value
    # the current rule's forward node and the nodes it emitted are marked for the eye (and CSS)
    assert re.search(r'<g id="node\d+" class="node highlight">\s*<title>F6</title>', ex.graph.value)
    emitted = [ex.num[n] for n in ex.backward.nodes() if n.is_backward and n.origin is order[0]]
    assert sorted(re.findall(r'class="node current">\s*<title>(B\d+)</title>', ex.graph.value)) == sorted(emitted)
    assert f"calc({HEIGHT} *" in ex.graph.value  # fitted to the window's height too
    ex.choose.value = "F3"  # join Rx with theta: kernel jnp.dot
    detail = ex.detail.value
    assert "kernel</b> dot" in detail and "dot_general" in detail and "its VJP" in detail
    assert "first 5 tuples" in detail and "rows=20" in detail


def test_kernel_jaxprs_of_a_select():
    X = wb.from_tensor(np.ones((3, 2)), keys=("i",))
    S = wb.select(X, kernel=jnp.sin)
    fwd, vjp = viz.kernel_jaxprs(S.node)
    assert "sin" in fwd and "cos" in vjp
    assert viz.kernel_jaxprs(X.node) is None
