"""A two-layer GCN training step (forward and backward through softmax cross-entropy over every
node, gradients of W1 and W2), float32, workbench against the best hand-written JAX programs, in
one process.

    .venv/bin/python bench/gcn_step.py                   # the three sizes below, 20 timed steps
    .venv/bin/python bench/gcn_step.py --sizes cora --repeat 50
    .venv/bin/python bench/gcn_step.py --sizes pubmed --labelled 60   # loss over 60 nodes

``--labelled N``: the loss reads only N labelled nodes (the first N of a fixed random permutation),
as in semi-supervised training. The workbench loss joins the logits with those N labels (its plan
computes only the rows that reach them: the semi-join reduction of ``CompiledPlan``); the JAX
programs compute every row, as a hand-written program does, and mask the loss (nll times a 0/1
vector, divided by N).

workbench       ``wb.jit(wb.value_and_grad(loss, argnums=(1, 2)))``: the relational program
                (``gcn.loss_program``), its RJP backward plan, the key plan run once and the
                values as one XLA program; the interpreter (``wb.value_and_grad`` alone) beside it
JAX segment_sum ``jax.jit(jax.value_and_grad(gcn.dense_loss))``: gathers and ``segment_sum``
JAX BCSR        the same loss with Â as a ``jax.experimental.sparse.BCSR`` matrix under ``jit``

Each side is compiled first (its first call is reported), then the three are timed in turn,
``--repeat`` rounds of one step each (median, blocking on the result), so load from other
processes falls on all of them alike. The ratio is workbench over the faster JAX program. Graphs are
SYNTHETIC stochastic block models of the stated sizes (``workbench.datasets.graphs``).
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import polars as pl

import workbench as wb
from workbench.datasets import graphs
from workbench.models import gcn

SIZES = {  # nodes, undirected edges, features, hidden, classes
    "cora": (2708, 5278, 1433, 16, 7),
    "pubmed": (19717, 44324, 500, 16, 3),
    "sbm-50k": (50000, 250000, 64, 128, 10),
}


def timed(fn, repeat: int):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def interleaved(fns, repeat: int):
    """Each of ``fns`` called once (its first call, compile included, is returned), then all of
    them in turn ``repeat`` times, A B C A B C ..., so a change of load on the machine falls on
    every peer alike: (first-call seconds, median seconds) per function."""
    firsts, times = [], [[] for _ in fns]
    for fn in fns:
        start = time.perf_counter()
        jax.block_until_ready(fn())
        firsts.append(time.perf_counter() - start)
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            ts.append(time.perf_counter() - start)
    return [(f, statistics.median(ts)) for f, ts in zip(firsts, times)]


def labelled_nodes(graph, labelled: int | None) -> np.ndarray | None:
    """The ids of the labelled nodes: the first ``labelled`` of a fixed random permutation (None:
    every node)."""
    if labelled is None:
        return None
    return np.sort(np.random.default_rng(0).permutation(graph.n_nodes)[:labelled])


def workbench_step(graph, hidden: int, compiled: bool, labelled: np.ndarray | None = None):
    rels = graphs.to_relations(graph, dtype="float32")
    W1, W2 = gcn.init_params(graph.n_features, hidden, graph.n_classes, seed=0, dtype="float32")
    targets = rels.label  # every node
    if labelled is not None:  # Label(id) for the labelled ids only, stored
        targets = wb.select(rels.label, pred=pl.col("id").is_in(labelled.tolist()))
        targets = targets.with_values(targets.table().values, name="Label_train")
    vg = wb.value_and_grad(gcn.loss_program(rels, targets=targets), argnums=(1, 2))
    step = wb.jit(vg) if compiled else vg

    def run():
        loss, (g1, g2) = step(rels.node, W1, W2)
        return loss.table().values, g1.table().values, g2.table().values
    return run, step


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--no-interpreter", action="store_true", help="skip the interpreter column")
    ap.add_argument("--labelled", type=int, default=None, metavar="N",
                    help="the loss reads N labelled nodes only (default: every node)")
    args = ap.parse_args(argv)
    over = "every node" if args.labelled is None else f"{args.labelled} labelled nodes"
    print(f"GCN training step (forward + backward, loss over {over}), float32, median of "
          f"{args.repeat}; {jax.devices()[0].platform}, jax {jax.__version__}")
    print(f"{'graph':<9} {'nodes':>6} {'edges':>7} {'feat':>5} {'hid':>4} | {'wb jit':>8} {'interp':>8} "
          f"{'segsum':>8} {'BCSR':>8} | {'wb/best':>7} {'interp/best':>11} | first call: wb (plan+XLA), segsum, BCSR")
    for name in args.sizes:
        n, m, d, h, c = SIZES[name]
        graph = graphs.sbm(n, c, 2 * m / n, d, n_edges=m, seed=0, name=name)
        labelled = labelled_nodes(graph, args.labelled)
        wb_run, step = workbench_step(graph, h, compiled=True, labelled=labelled)
        seg_run, bc_run = gcn.jax_peers(graph, h, labelled)
        (wb_first, wb_t), (seg_first, seg_t), (bc_first, bc_t) = interleaved(
            [wb_run, seg_run, bc_run], args.repeat)
        interp_t = float("nan")
        if not args.no_interpreter:
            interp_run, _ = workbench_step(graph, h, compiled=False, labelled=labelled)
            _, interp_t = timed(interp_run, max(3, args.repeat // 4))
        loss, g1, g2 = wb_run()
        (l_seg, (s1, s2)), (l_bc, _) = seg_run(), bc_run()
        agree = (np.allclose(float(loss[0]), float(l_seg), rtol=1e-4)
                 and np.allclose(g1[0], s1, rtol=1e-3, atol=1e-3 * float(jnp.abs(s1).max()))
                 and np.allclose(g2[0], s2, rtol=1e-3, atol=1e-3 * float(jnp.abs(s2).max()))
                 and np.allclose(float(l_bc), float(l_seg), rtol=1e-4))
        best = min(seg_t, bc_t)
        ms = lambda t: f"{t * 1e3:7.2f}ms"  # noqa: E731
        print(f"{name:<9} {n:>6} {graph.n_edges + n:>7} {d:>5} {h:>4} | {ms(wb_t)} {ms(interp_t)} "
              f"{ms(seg_t)} {ms(bc_t)} | {wb_t / best:>6.2f}x {interp_t / best:>10.2f}x | "
              f"{wb_first:.2f}s, {seg_first:.2f}s, {bc_first:.2f}s  (agree: {agree})")
        print(f"          workbench plan: {step.timings}")


if __name__ == "__main__":
    main()
