"""Backward/forward time ratio of workbench's RJP-derived backward plans, next to JAX's ratio for
the same dense / segment_sum programs. float32 throughout.

    .venv/bin/python bench/rjp_overhead.py                      # matmul 2048/256; GCN 50k nodes, 500k edges
    .venv/bin/python bench/rjp_overhead.py --size 256 --block 64 --nodes 2000 --edges 20000 --repeat 3

What is timed (median over ``--repeat`` runs after one warm-up):

workbench  forward  = running the forward plan on a fresh executor ``Context`` (as
                      ``wb.value_and_grad`` does first).
           backward = deriving the backward plan with the RJP rules (``rjp.backward``) and running
                      it on the same ``Context``, so it reads the forward intermediates and reuses
                      the forward joins' matches instead of recomputing them. The derivation part
                      is also printed on its own ("derive").
JAX        forward  = ``jax.jit(loss)``.
           backward = ``jax.jit(jax.value_and_grad(loss))`` minus the forward time; the
                      value-and-gradient time over the forward time is printed too.
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
from workbench import rjp
from workbench.execute import LocalExecutor

LOCAL = LocalExecutor()
from workbench.programs import matmul, propagate, softmax_cross_entropy, sum_of_squares


def median_time(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def workbench_times(f, rels, argnums, repeat: int):
    """Median (forward, derive, backward) seconds, and the last run's loss and gradient tables."""
    fwd, derive, bwd, result = [], [], [], None
    for r in range(repeat + 1):  # run 0 is the warm-up
        leaves, out = wb.trace(f, *rels)
        ctx = LOCAL.context()
        t0 = time.perf_counter()
        loss = LOCAL.run([out.node], ctx)[0]
        loss.values.block_until_ready()
        t1 = time.perf_counter()
        nodes = rjp.backward(out.node, rjp.seed(out.node), [leaves[i].node for i in argnums])
        t2 = time.perf_counter()
        grads = LOCAL.run(nodes, ctx)
        for g in grads:
            g.values.block_until_ready()
        t3 = time.perf_counter()
        if r:
            fwd.append(t1 - t0)
            derive.append(t2 - t1)
            bwd.append(t3 - t1)
        result = (loss, grads, nodes)
    return statistics.median(fwd), statistics.median(derive), statistics.median(bwd), result


def jax_times(loss, args, argnums, repeat: int):
    f = jax.jit(loss)
    vg = jax.jit(jax.value_and_grad(loss, argnums=argnums))
    t_f = median_time(lambda: f(*args).block_until_ready(), repeat)
    t_vg = median_time(lambda: jax.block_until_ready(vg(*args)), repeat)
    return t_f, t_vg, vg(*args)


def report(name: str, wb_t, jx_t) -> None:
    fwd, derive, bwd = wb_t
    jf, jvg = jx_t
    jb = max(jvg - jf, 0.0)
    print(f"  workbench  forward {fwd:8.4f} s  backward {bwd:8.4f} s (derive {derive:.4f} s)  "
          f"backward/forward = {bwd / fwd:5.2f}x")
    print(f"  JAX jit    forward {jf:8.4f} s  backward {jb:8.4f} s (value_and_grad {jvg:.4f} s)  "
          f"backward/forward = {jb / jf:5.2f}x  value_and_grad/forward = {jvg / jf:5.2f}x")
    print(f"  {name}: workbench backward/forward {bwd / fwd:5.2f}x   JAX {jb / jf:5.2f}x   "
          f"workbench/JAX forward {fwd / jf:5.2f}x  backward {bwd / max(jb, 1e-9):5.2f}x")


def bench_matmul(size: int, block: int, repeat: int) -> None:
    rng = np.random.default_rng(0)
    a = (rng.normal(size=(size, size)) / np.sqrt(size)).astype(np.float32)
    b = (rng.normal(size=(size, size)) / np.sqrt(size)).astype(np.float32)
    A = wb.from_matrix(a, block=(block, block), dtype="float32", name="A")
    B = wb.from_matrix(b, block=(block, block), dtype="float32", name="B")

    def loss(A, B):
        return sum_of_squares(matmul(A, B))

    def twin(a, b):
        return jnp.sum((a @ b) ** 2)

    print(f"(a) blocked matmul sum((A @ B)^2): {size}x{size} float32, {block}x{block} blocks, "
          f"grads of A and B, median of {repeat}")
    wb_t = workbench_times(loss, (A, B), (0, 1), repeat)
    jf, jvg, (jv, (ga, gb)) = jax_times(twin, (jnp.asarray(a), jnp.asarray(b)), (0, 1), repeat)
    loss_t, grads, nodes = wb_t[3]
    gA, gB = (wb.to_matrix(_rel(n, t)) for n, t in zip(nodes, grads))
    ok = (np.allclose(float(loss_t.values[0]), float(jv), rtol=1e-4)
          and np.allclose(gA, np.asarray(ga), rtol=1e-3, atol=1e-3 * np.abs(ga).max())
          and np.allclose(gB, np.asarray(gb), rtol=1e-3, atol=1e-3 * np.abs(gb).max()))
    report("matmul", wb_t[:3], (jf, jvg))
    print(f"  loss and gradients allclose to JAX: {ok}")
    if not ok:
        raise SystemExit("results disagree")


def _rel(node, table):
    return wb.Relation.computed(node, table)


def bench_gcn(n: int, m: int, d: int, h: int, c: int, repeat: int) -> None:
    rng = np.random.default_rng(1)
    pairs = np.unique(rng.integers(0, n * n, size=int(m * 1.01) + 16, dtype=np.int64))
    pairs = rng.permutation(pairs[pairs // n != pairs % n])[:m]  # off-diagonal
    pairs = np.concatenate([np.arange(n, dtype=np.int64) * (n + 1), pairs])  # plus self-loops
    src, dst = pairs // n, pairs % n
    w = rng.uniform(0.1, 1.0, size=len(pairs)).astype(np.float32)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = np.eye(c, dtype=np.float32)[rng.integers(0, c, size=n)]
    w1 = (rng.normal(size=(d, h)) / np.sqrt(d)).astype(np.float32)
    w2 = (rng.normal(size=(h, c)) / np.sqrt(h)).astype(np.float32)
    Edge = wb.from_frame(pl.DataFrame({"src": src, "dst": dst, "w": w}), keys=("src", "dst"),
                         value="w", extents=(n, n), dtype="float32", name="Edge")
    rels = (wb.from_tensor(x, keys=("id",), dtype="float32", name="Node"),
            wb.from_tensor(y, keys=("id",), dtype="float32", name="Y"),
            wb.from_tensor(w1, dtype="float32", name="W1"),
            wb.from_tensor(w2, dtype="float32", name="W2"))

    def loss(Node, Y, W1, W2):  # as workbench.programs.gcn
        H = wb.join(propagate(Edge, Node), W1, on={}, keys={"id": "left.id"},
                    kernel=lambda v, mat: jax.nn.relu(v @ mat))
        Z = wb.join(propagate(Edge, H), W2, on={}, keys={"id": "left.id"}, kernel=jnp.matmul)
        return softmax_cross_entropy(Z, Y)

    src_j, dst_j, w_j = jnp.asarray(src, jnp.int32), jnp.asarray(dst, jnp.int32), jnp.asarray(w)

    def prop(v):
        return jax.ops.segment_sum(w_j[:, None] * v[src_j], dst_j, num_segments=n)

    def twin(x, y, w1, w2):
        z = prop(jax.nn.relu(prop(x) @ w1)) @ w2
        return jnp.mean(-jnp.sum(y * jax.nn.log_softmax(z), axis=1))

    print(f"(b) two-layer GCN, softmax cross-entropy: {n} nodes, {len(src)} edges (with self-loops), "
          f"{d} features, hidden {h}, {c} classes, float32, grads of Node, W1, W2, median of {repeat}")
    wb_t = workbench_times(loss, rels, (0, 2, 3), repeat)
    jf, jvg, (jv, jgrads) = jax_times(twin, tuple(jnp.asarray(v) for v in (x, y, w1, w2)), (0, 2, 3),
                                      repeat)
    loss_t, grads, nodes = wb_t[3]
    ok = np.allclose(float(loss_t.values[0]), float(jv), rtol=1e-4)
    for node, table, ref in zip(nodes, grads, jgrads):
        got = _rel(node, table).to_tensor()
        ref = np.asarray(ref)
        ok = ok and np.allclose(got, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
    report("GCN", wb_t[:3], (jf, jvg))
    print(f"  loss and gradients allclose to JAX: {ok}")
    if not ok:
        raise SystemExit("results disagree")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=2048, help="matmul: square matrix side")
    p.add_argument("--block", type=int, default=256, help="matmul: square block side")
    p.add_argument("--nodes", type=int, default=50_000)
    p.add_argument("--edges", type=int, default=500_000, help="GCN: edges besides self-loops")
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--classes", type=int, default=16)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--only", choices=("matmul", "gcn"))
    args = p.parse_args(argv)
    if args.only != "gcn":
        bench_matmul(args.size, args.block, args.repeat)
    if args.only != "matmul":
        bench_gcn(args.nodes, args.edges, args.features, args.hidden, args.classes, args.repeat)


if __name__ == "__main__":
    main()
