"""One GCN training epoch, workbench against JAX, on synthetic graphs of Cora's and PubMed's size.
float32 throughout.

    .venv/bin/python bench/gcn_epoch.py                          # cora, pubmed; hidden 16; 10 epochs
    .venv/bin/python bench/gcn_epoch.py --graphs cora --hidden 256 --repeat 5
    .venv/bin/python bench/gcn_epoch.py --nodes 50000 --edges 500000 --features 128 --classes 10

An epoch is: draw the two dropout masks, forward, backward, Adam update of W1 and W2.

workbench  ``wb.value_and_grad`` of ``gcn.loss_program`` (the relational forward plan, then the
           backward plan the RJP rules derive, on the local executor), then
           ``workbench.optim.Adam.update`` over the weight relations; includes building the
           plans and the mask relations.
JAX        ``jax.jit(jax.value_and_grad(gcn.dense_loss))`` (``segment_sum`` over the normalized
           edges) and the same Adam step (``workbench.optim.adam_step``, jitted), masks drawn
           with the same numpy generator and passed in as arrays.

Each side is warmed up (compiles), then timed ``--repeat`` epochs; the median is printed, with
the ratio workbench / JAX. Both draw the masks with numpy (the same generator and draws); the
"masks" column is JAX's median time for that draw, and the last ratio leaves it out of both sides.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import workbench as wb
from workbench.datasets import graphs
from workbench.models import gcn
from workbench.optim import Adam, adam_step


def workbench_epochs(graph, hidden: int, p: float, wd: float, lr: float, warmup: int, repeat: int):
    rels = graphs.to_relations(graph, dtype="float32")
    targets = gcn.train_targets(rels)
    W1, W2 = gcn.init_params(graph.n_features, hidden, graph.n_classes, seed=0, dtype="float32")
    opt = Adam(lr=lr)
    state = opt.init((W1, W2))
    rng = np.random.default_rng(1)
    times, losses = [], []
    for e in range(warmup + repeat):
        start = time.perf_counter()
        m1, m2 = gcn.dropout_mask(rels.node, p, rng, "M1"), gcn.dropout_mask(rels.node, p, rng, "M2", width=hidden)
        jax.block_until_ready((m1.node.table.values, m2.node.table.values))  # drawn on first read
        drawn = time.perf_counter()
        loss, grads = wb.value_and_grad(gcn.loss_program(rels, m1, m2, wd, targets), argnums=(1, 2))(
            rels.node, W1, W2)
        (W1, W2), state = opt.update((W1, W2), grads, state)
        W1.table().values.block_until_ready()
        W2.table().values.block_until_ready()
        if e >= warmup:
            times.append((time.perf_counter() - start, drawn - start))
        losses.append(float(loss.to_tensor()))
    return statistics.median(t for t, _ in times), statistics.median(t for _, t in times), losses


def jax_epochs(graph, hidden: int, p: float, wd: float, lr: float, warmup: int, repeat: int):
    g = gcn.dense_graph(graph, "float32")
    x = jnp.asarray(graph.features, jnp.float32)
    W1, W2 = gcn.init_params(graph.n_features, hidden, graph.n_classes, seed=0, dtype="float32")
    w = [W1.table().values[0], W2.table().values[0]]
    m = [jnp.zeros_like(a) for a in w]
    v = [jnp.zeros_like(a) for a in w]
    vg = jax.jit(jax.value_and_grad(gcn.dense_loss, argnums=(1, 2)), static_argnames=("weight_decay",))
    rng = np.random.default_rng(1)
    times, losses = [], []
    for e in range(warmup + repeat):
        start = time.perf_counter()
        m1 = (rng.random((graph.n_nodes, graph.n_features), dtype=np.float32) >= p) / np.float32(1 - p)
        m2 = (rng.random((graph.n_nodes, hidden), dtype=np.float32) >= p) / np.float32(1 - p)
        drawn = time.perf_counter()
        loss, grads = vg(x, w[0], w[1], g, m1, m2, weight_decay=wd)
        for i in range(2):
            w[i], m[i], v[i] = adam_step(w[i], grads[i], m[i], v[i], e + 1, lr, 0.9, 0.999, 1e-8)
        jax.block_until_ready(w)
        if e >= warmup:
            times.append((time.perf_counter() - start, drawn - start))
        losses.append(float(loss))
    return statistics.median(t for t, _ in times), statistics.median(t for _, t in times), losses


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--graphs", nargs="+", default=["cora", "pubmed"], choices=sorted(graphs.SIZES))
    ap.add_argument("--nodes", type=int, help="a custom stochastic block model instead of --graphs")
    ap.add_argument("--edges", type=int, default=500_000, help="undirected edges of the custom graph")
    ap.add_argument("--features", type=int, default=128)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args(argv)
    if args.nodes:
        todo = [graphs.sbm(args.nodes, args.classes, 2 * args.edges / args.nodes, args.features,
                           n_edges=args.edges, name=f"sbm {args.nodes}")]
    else:
        todo = [graphs.synthetic_like(name) for name in args.graphs]
    print(f"GCN training epoch (masks, forward, backward, Adam), float32, hidden {args.hidden}, "
          f"dropout {args.dropout}; median of {args.repeat} after {args.warmup} warm-up; "
          f"{jax.devices()[0].platform}, jax {jax.__version__}")
    print(f"{'graph':<18} {'nodes':>6} {'edges+loops':>11} {'feat':>5} {'workbench s':>11} "
          f"{'JAX jit s':>9} {'ratio':>6} {'masks s':>8} {'ratio w/o masks':>15}  first losses (wb | JAX)")
    for graph in todo:
        hp = (args.hidden, args.dropout, args.weight_decay, args.lr, args.warmup, args.repeat)
        t_wb, mask_wb, l_wb = workbench_epochs(graph, *hp)
        t_jx, mask_jx, l_jx = jax_epochs(graph, *hp)
        n_edges = graph.n_edges + graph.n_nodes
        print(f"{graph.name:<18} {graph.n_nodes:>6} {n_edges:>11} {graph.n_features:>5} "
              f"{t_wb:>11.4f} {t_jx:>9.4f} {t_wb / t_jx:>5.1f}x {mask_jx:>8.4f} "
              f"{(t_wb - mask_wb) / (t_jx - mask_jx):>14.1f}x  "
              f"{l_wb[0]:.4f}, {l_wb[1]:.4f} | {l_jx[0]:.4f}, {l_jx[1]:.4f}")


if __name__ == "__main__":
    main()
