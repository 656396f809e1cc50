"""Kernels run over whole relations: ``jax.vmap`` of the per-tuple function under ``jax.jit``,
gathers and segment sums, compiled once per kernel fingerprint and argument layout.

Small batches are padded to a few bucket sizes, so many small relations share a compile.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from workbench.kernels import LRU, Kernel

# Row counts at or above this are compiled exactly; below it they are padded to a bucket.
_EXACT_FROM = 1 << 14  # (padding copies the whole array; compiling once per size is cheaper)
# A keyless sum whose per-row outputs hold this many elements or more is compiled exactly too.
_EXACT_SUM_FROM = 1 << 20


def bucket(n: int) -> int:
    """Smallest of 8, 10, 12, 14, 16, 20, 24, 28, 32, ... (four steps per octave) that holds n."""
    if n >= _EXACT_FROM:
        return n
    size = 8
    while size < n:
        size += (1 << (size.bit_length() - 1)) // 4
    return size


def _pad(x: jax.Array | np.ndarray, n: int):
    if x.shape[0] == n:
        return x
    widths = [(0, n - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
    return jnp.pad(jnp.asarray(x), widths)


_COMPILED = LRU(512)  # compiled functions per kernel fingerprint and argument modes


# How argument i reaches the kernel: one value per output tuple, a gather of (values, rows), or
# one value shared by every tuple (the single tuple of a one-tuple relation, e.g. a weight
# matrix cross-joined with every row): vmapped with in_axes=None, so the kernel sees it once
# and XLA can run v @ W over the batch as one matrix product instead of gathering W n times.
ROWS, GATHER, SHARED = "rows", "gather", "shared"


def _vmapped(holder: list, kernel: Kernel, modes: tuple[str, ...]):
    """vmap(fn) over the used arguments, fn read from ``holder`` when traced (see ``_cached``);
    argument i arrives as (values, rows) when gathered, as
    values when shared (vmapped with in_axes=None) or per row."""
    uses = kernel.uses

    def run(dummies, *arrays):
        it = iter(arrays)
        cols, axes = [], []
        for i in range(kernel.arity):
            if not uses[i]:
                continue
            vals = next(it)
            if modes[i] == GATHER:
                vals = vals[next(it)]
            cols.append(vals)
            axes.append(None if modes[i] == SHARED else 0)
        def per_tuple(*used):
            u = iter(used)
            return holder[0](*[next(u) if uses[i] else dummies[i] for i in range(kernel.arity)])
        return jax.vmap(per_tuple, in_axes=tuple(axes))(*cols)

    return run


def _cached(key, kernel: Kernel, make):
    """The compiled function under ``key``, made by ``make(holder)``. jax.jit traces again for a
    new argument shape: the holder then gives the kernel of the latest call, whose state the key
    matches (an earlier kernel object with that key may have been mutated since)."""
    entry = _COMPILED.get(key)
    if entry is None:
        holder = [kernel.fn]
        _COMPILED.get_or_make(key, lambda: (holder, make(holder)))
        entry = _COMPILED[key]
    else:
        _COMPILED.move_to_end(key)
        entry[0][0] = kernel.fn
    return entry[1]


def _batched(kernel: Kernel, modes: tuple[str, ...]):
    """jit(vmap(fn)), cached per kernel and argument modes."""
    key = (kernel.key, kernel.arity, kernel.uses, modes)
    return _cached(key, kernel, lambda holder: jax.jit(_vmapped(holder, kernel, modes)))


def _batched_sum(kernel: Kernel, modes: tuple[str, ...]):
    """jit of the kernel's outputs summed, in one compiled function, so XLA fuses the kernel into
    the reduction instead of writing every tuple's output: (dummies, num_segments, ids, *arrays)
    with ids an int array (segment sum; out-of-range ids are dropped); (dummies, -1, n, *arrays):
    the sum of the first n outputs (padded rows masked), as one row; (dummies, 0, None, *arrays):
    the sum of all outputs, unmasked (a mask on the outputs stops XLA fusing the reduction)."""
    key = (kernel.key, kernel.arity, kernel.uses, modes, "sum")

    def make(holder):
        per_row = _vmapped(holder, kernel, modes)

        def run(dummies, num_segments, ids, *arrays):
            out = per_row(dummies, *arrays)
            if num_segments > 0:
                return jax.ops.segment_sum(out, ids, num_segments=num_segments)
            if num_segments < 0:
                keep = (jnp.arange(out.shape[0]) < ids).reshape((-1,) + (1,) * (out.ndim - 1))
                out = jnp.where(keep, out, jnp.zeros((), out.dtype))
            return jnp.sum(out, axis=0, keepdims=True)

        return jax.jit(run, static_argnums=(1,))

    return _cached(key, kernel, make)


def _modes(args) -> tuple[str, ...]:
    return tuple(ROWS if rows is None else SHARED if vals.shape[0] == 1 else GATHER
                 for vals, rows in args)


def _arrays(kernel: Kernel, args, modes, m: int) -> list:
    """The compiled function's array arguments, row counts padded to m (or their bucket)."""
    arrays = []
    for i, (vals, rows) in enumerate(args):
        if not kernel.uses[i]:
            continue
        if modes[i] == ROWS:
            arrays.append(_pad(vals, m))
        elif modes[i] == SHARED:
            arrays.append(jnp.asarray(vals)[0])
        else:
            arrays.append(_pad(vals, bucket(vals.shape[0])) if vals.shape[0] else jnp.zeros((1, *vals.shape[1:]), vals.dtype))
            arrays.append(_pad(jnp.asarray(rows, dtype=jnp.int32 if vals.shape[0] < 2**31 else jnp.int64), m))
    return arrays


def _rows(args) -> int:
    vals, rows = args[0]
    return len(rows) if rows is not None else vals.shape[0]


def apply(kernel: Kernel, args: Sequence[tuple[jax.Array, np.ndarray | None]],
          shapes: Sequence[tuple[int, ...]], dtype: str) -> jax.Array:
    """Run ``kernel`` on every tuple. ``args[i]`` is (values, rows): the kernel's i-th argument for
    output tuple t is ``values[rows[t]]`` (or ``values[t]`` when rows is None). A gathered argument
    with one row is passed once and shared by every tuple."""
    n = _rows(args)
    modes = _modes(args)
    dummies = tuple(jnp.zeros(s, dtype) for s in shapes)
    if not any(kernel.uses):  # a constant kernel: one evaluation, broadcast
        one = jnp.asarray(kernel.fn(*dummies))
        return jnp.broadcast_to(one, (n, *one.shape))
    if n == 0:
        out_shape = jax.eval_shape(kernel.fn, *dummies).shape
        return jnp.zeros((0, *out_shape), dtype)
    if all(m == SHARED for m, u in zip(modes, kernel.uses) if u):  # one evaluation, broadcast
        modes = tuple(ROWS if u else m for m, u in zip(modes, kernel.uses))
        one = _batched(kernel, modes)(dummies, *[v[:1] for (v, _), u in zip(args, kernel.uses) if u])
        return jnp.broadcast_to(one[0], (n, *one.shape[1:]))
    m = bucket(n)
    out = _batched(kernel, modes)(dummies, *_arrays(kernel, args, modes, m))
    return out if m == n else out[:n]


def apply_sum(kernel: Kernel, args: Sequence[tuple[jax.Array, np.ndarray | None]],
              shapes: Sequence[tuple[int, ...]], dtype: str, ids: np.ndarray | None,
              num_segments: int) -> jax.Array:
    """``segment_sum(apply(kernel, args, ...), ids, num_segments)`` (``ids`` None: every tuple in
    one group) computed in one compiled function, the kernel's per-tuple outputs never stored."""
    n = _rows(args)
    modes = _modes(args)
    if n == 0 or not any(kernel.uses) or all(m == SHARED for m, u in zip(modes, kernel.uses) if u):
        ids = np.zeros(n, np.int64) if ids is None else ids
        return segment_sum(apply(kernel, args, shapes, dtype), ids, num_segments)
    dummies = tuple(jnp.zeros(s, dtype) for s in shapes)
    m = bucket(n)
    if ids is None and m != n:
        # the masked sum of padded rows stores every output (XLA does not fuse it): when that is
        # large, compile for exactly n rows instead (e.g. a weight gradient, sum_i x_i g_i^T)
        out_shape, _ = kernel.output(shapes, dtype, "apply_sum")
        if n * int(np.prod(out_shape, dtype=np.int64)) >= _EXACT_SUM_FROM:
            m = n
    arrays = _arrays(kernel, args, modes, m)
    fn = _batched_sum(kernel, modes)
    if ids is None:
        if m == n:
            return fn(dummies, 0, None, *arrays)
        return fn(dummies, -1, jnp.asarray(n, jnp.int32), *arrays)
    s = bucket(num_segments)
    ids_j = jnp.asarray(ids, dtype=jnp.int32 if s < 2**31 else jnp.int64)
    if m != n:
        ids_j = jnp.pad(ids_j, (0, m - n), constant_values=s)  # out of range: dropped
    out = fn(dummies, s, ids_j, *arrays)
    return out if s == num_segments else out[:num_segments]


@functools.lru_cache(maxsize=None)
def _gather_fn():
    return jax.jit(lambda vals, rows: vals[rows])


def gather(values: jax.Array, rows: np.ndarray) -> jax.Array:
    """values[rows], compiled once per bucket of sizes."""
    n = len(rows)
    if n == 0 or values.shape[0] == 0:
        return jnp.zeros((n, *values.shape[1:]), values.dtype)
    idx = _pad(jnp.asarray(rows, dtype=jnp.int32 if values.shape[0] < 2**31 else jnp.int64), bucket(n))
    out = _gather_fn()(_pad(values, bucket(values.shape[0])), idx)
    return out if out.shape[0] == n else out[:n]


@functools.partial(jax.jit, static_argnames=("num_segments",))
def _segment_sum(values, ids, num_segments):
    return jax.ops.segment_sum(values, ids, num_segments=num_segments)


def segment_sum(values: jax.Array, ids: np.ndarray, num_segments: int) -> jax.Array:
    """out[g] = sum of values[i] over i with ids[i] == g (padded rows go to a dropped segment)."""
    n = len(ids)
    m, s = bucket(n), bucket(num_segments)
    ids_j = jnp.asarray(ids, dtype=jnp.int32 if s < 2**31 else jnp.int64)
    if m != n:
        ids_j = jnp.pad(ids_j, (0, m - n), constant_values=s)  # out of range: dropped
    out = _segment_sum(_pad(values, m), ids_j, num_segments=s)
    return out if s == num_segments else out[:num_segments]


def clear_cache() -> None:
    """Forget this module's cached results (``workbench.clear_caches`` clears every cache)."""
    _COMPILED.clear()


def compiled() -> list:
    """The compiled batched functions held now, least recently used first."""
    return [entry[1] for entry in _COMPILED.values()]
