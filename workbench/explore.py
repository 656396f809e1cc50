"""The interactive explorer (ipywidgets): step through a backward derivation one RJP rule at a
time and inspect any node. The forward and backward plans are drawn side by side and fitted to
the notebook's width and to ``HEIGHT`` of the window, so the whole backward plan is in view."""
from __future__ import annotations

import html
import shutil
from dataclasses import dataclass

from workbench.api import plans
from workbench.plan import toposort
from workbench.viz import (Numbering, combined_to_dot, html_view, node_details, own_name, render,
                           rule_order)

HEIGHT = "70vh"  # the picture's largest height: the slider, caption and picture fit one screen


class Explorer:
    """Step through a backward derivation one forward operator at a time (the order the backward
    loop visits them), and inspect any node: schema, sample tuples, kernel and kernel VJP."""

    def __init__(self, plans_):
        import ipywidgets as widgets  # the widget library loads only when an explorer is built

        self.forward, self.backward = plans_
        self.order = rule_order(self.forward, self.backward)
        self.num = Numbering.of(self.backward)
        self.step = widgets.IntSlider(value=len(self.order), min=0, max=len(self.order),
                                      description="RJP step", continuous_update=False,
                                      layout=widgets.Layout(width="420px"))
        self.caption = widgets.HTML()
        self.graph = widgets.HTML(layout=widgets.Layout(flex="1 1 62%"))
        nodes = toposort(list(self.forward.outputs)) + [
            n for n in toposort(list(self.backward.outputs)) if n.is_backward]
        self.nodes = {self.num[n]: n for n in nodes}
        self.choose = widgets.Dropdown(options=[(f"{k} {n.kind} {own_name(n)}".strip(), k)
                                                for k, n in self.nodes.items()],
                                       description="node")
        self.detail = widgets.HTML(layout=widgets.Layout(flex="1 1 38%", max_height=HEIGHT,
                                                         overflow="auto", padding="0 0 0 12px"))
        self.step.observe(lambda change: self.show_step(change["new"]), names="value")
        self.choose.observe(lambda change: self.show_node(change["new"]), names="value")
        self.widget = widgets.VBox([widgets.HBox([self.step, self.choose]), self.caption,
                                    widgets.HBox([self.graph, self.detail])])  # picture | details
        self.widget.add_class("wb-explorer")
        self.show_step(self.step.value)
        self.show_node(self.choose.value)

    def show_step(self, k: int) -> None:
        current = self.order[k - 1] if k else None
        if current is None:
            self.caption.value = "<p>Step 0: the forward plan; no RJP rule has run yet.</p>"
        else:
            emitted = [self.num[n] for n in toposort(list(self.backward.outputs))
                       if n.is_backward and n.origin is current]
            self.caption.value = (f"<p>Step {k} of {len(self.order)}: the RJP rule of "
                                  f"<b>{self.num[current]} {current.kind}</b> emitted "
                                  f"{', '.join(emitted)}.</p>")
        dot = combined_to_dot(self.forward, self.backward, analyze=self.backward.stats is not None,
                              upto=k, highlight=current)
        if shutil.which("dot") is not None:
            self.graph.value = html_view(render(_Source(dot), format="svg").decode(), height=HEIGHT)
        else:
            self.graph.value = f"<pre>{html.escape(dot)}</pre>"
        if current is not None:
            self.choose.value = self.num[current]

    def show_node(self, key: str) -> None:
        node = self.nodes[key]
        plan = self.backward if node.is_backward else self.forward
        self.detail.value = node_details(plan, node, self.num)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


@dataclass(frozen=True)
class _Source:
    """DOT source that ``render`` accepts."""

    dot: str

    def to_dot(self, analyze: bool = False) -> str:
        return self.dot


def explore(f, *rels, argnums=0) -> Explorer:
    """An ipywidgets explorer of ``f``'s forward and backward plans, run once for statistics."""
    return Explorer(plans(f, *rels, argnums=argnums, analyze=True))
