"""Blocked matrix multiply ``sum((A @ B)^2)``, the paper's first program, float32: forward and
forward + backward, workbench (compiled and interpreted) against numpy's GEMM and JAX, in one
process.

    .venv/bin/python bench/blocked_matmul.py                       # 2048^2 in 256^2 blocks
    .venv/bin/python bench/blocked_matmul.py --n 1024 --block 128

Each side runs once first (compiling), then all of them in turn ``--repeat`` times (A B C A B C,
so a change in the machine's speed falls on each alike); medians are printed. "GEMM share" is
numpy's time for ``a @ b`` over the workbench forward time (1.0: as fast as one GEMM).
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import workbench as wb
from workbench.programs import matmul


def timed(fn, repeat: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# OpenBLAS's worker threads spin for about 0.1 s after a GEMM returns: a call timed right after
# numpy's would share the cores with them. Each timed call follows this pause.
PAUSE = 0.15


def interleaved(fns, repeat: int) -> list[float]:
    """Each of ``fns`` called once (compiling), then all of them in turn ``repeat`` times, each
    call after ``PAUSE``: the median seconds of each."""
    for fn in fns:
        jax.block_until_ready(fn())
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            time.sleep(PAUSE)
            start = time.perf_counter()
            jax.block_until_ready(fn())
            ts.append(time.perf_counter() - start)
    return [statistics.median(ts) for ts in times]


def loss(A, B):
    C = matmul(A, B)
    return wb.aggregate(wb.select(C, kernel=lambda v: jnp.sum(v * v)), by=())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(args.n, args.n)).astype(np.float32)
    b = rng.normal(size=(args.n, args.n)).astype(np.float32)
    A = wb.from_matrix(a, block=(args.block, args.block), name="A")
    B = wb.from_matrix(b, block=(args.block, args.block), name="B")
    fwd = wb.jit(loss)
    step = wb.jit(wb.value_and_grad(loss, argnums=(0, 1)))
    interp = wb.value_and_grad(loss, argnums=(0, 1))
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    jf = jax.jit(lambda a, b: jnp.sum((a @ b) ** 2))
    jvg = jax.jit(jax.value_and_grad(lambda a, b: jnp.sum((a @ b) ** 2), argnums=(0, 1)))
    t_np, t_jf, t_jvg, t_wf, t_wvg = interleaved(
        [lambda: a @ b, lambda: jf(ja, jb), lambda: jvg(ja, jb), lambda: fwd(A, B).table().values,
         lambda: [r.table().values for r in jax.tree.leaves(step(A, B), is_leaf=lambda x: isinstance(x, wb.Relation))]],
        args.repeat)
    t_int = timed(lambda: [r.table().values for r in jax.tree.leaves(interp(A, B), is_leaf=lambda x: isinstance(x, wb.Relation))], max(2, args.repeat // 2))
    value, (gA, gB) = step(A, B)
    want, (wa, wbb) = jvg(ja, jb)
    ok = (np.allclose(float(value.to_tensor()), float(want), rtol=1e-3)
          and np.allclose(wb.to_matrix(gA), wa, rtol=1e-2, atol=1e-3 * float(jnp.abs(wa).max())))
    print(f"sum((A @ B)^2), {args.n}^2 in {args.block}^2 blocks, float32, median of {args.repeat}; "
          f"jax {jax.__version__}")
    print(f"  numpy a @ b            {t_np * 1e3:9.1f} ms")
    print(f"  JAX forward            {t_jf * 1e3:9.1f} ms   value_and_grad {t_jvg * 1e3:9.1f} ms")
    print(f"  workbench jit forward  {t_wf * 1e3:9.1f} ms   value_and_grad {t_wvg * 1e3:9.1f} ms")
    print(f"  workbench interpreter                    value_and_grad {t_int * 1e3:9.1f} ms")
    print(f"  GEMM share of the workbench forward: {t_np / t_wf:.2f}  (target >= 0.60); "
          f"backward / forward: {(t_wvg - t_wf) / t_wf:.2f}  (target <= 2); agree with JAX: {ok}")
    print(f"  plan: {step.timings}")


if __name__ == "__main__":
    main()
