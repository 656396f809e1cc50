"""Per-tuple JAX kernels, batched over a relation's values.

A kernel is a plain JAX function of one tuple's value(s). ``Kernel.output`` infers its output
shape with ``jax.eval_shape``; ``apply`` runs it with ``jax.vmap`` under ``jax.jit``, gathering
each argument's rows inside the compiled function. Compiled functions are cached per kernel
(code and captured values), so a kernel re-created on every call of a training step compiles
once. Small batches are padded to a few bucket sizes, so many small relations share a compile.
"""
from __future__ import annotations

import collections
import functools
import hashlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from workbench.errors import KernelError

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


class Kernel:
    """A named per-tuple function of ``arity`` values; ``uses[i]`` says whether argument i is read."""

    __slots__ = ("fn", "name", "arity", "uses", "_key", "parts")

    def __init__(self, fn: Callable, name: str | None = None, arity: int = 1,
                 uses: Sequence[bool] | None = None, parts: tuple | None = None):
        if not callable(fn):
            raise KernelError(f"kernel must be a callable JAX function of the tuple value(s), "
                              f"got {type(fn).__name__}")
        self.fn = fn
        self.name = name or kernel_name(fn)
        self.arity = arity
        self.uses = tuple(uses) if uses is not None else (True,) * arity
        self._key = _code_key(fn)
        self.parts = parts  # how an RJP rule built it, for rewrites that recognize it

    def __repr__(self) -> str:
        return f"Kernel({self.name})"

    def output(self, shapes: Sequence[tuple[int, ...]], dtype: str, where: str) -> tuple[tuple[int, ...], str]:
        """Output (value shape, dtype) for arguments of ``shapes``; errors name ``where``."""
        shapes = tuple(tuple(s) for s in shapes)
        known = _SHAPES.get((self._key, self.arity, shapes, dtype))  # same code and captured values
        if known is not None:
            return known[1]
        args = [jax.ShapeDtypeStruct(s, dtype) for s in shapes]
        try:
            out = jax.eval_shape(self.fn, *args)
        except Exception as exc:  # any tracing failure is the user's kernel's
            arg_desc = ", ".join(f"{dtype}{list(s)}" for s in shapes)
            raise KernelError(
                f"{where}: kernel '{self.name}' failed to trace on one tuple's value(s) "
                f"({arg_desc}): {type(exc).__name__}: {exc}. Kernels see one tuple at a time and "
                f"must return one array whose shape does not depend on the data.") from exc
        if not isinstance(out, jax.ShapeDtypeStruct):
            raise KernelError(
                f"{where}: kernel '{self.name}' returned {type(out).__name__}, not one array; a "
                f"relation holds one tensor per tuple (return one array, or use two operators).")
        if not jnp.issubdtype(out.dtype, jnp.floating):
            raise KernelError(
                f"{where}: kernel '{self.name}' returns {out.dtype} values; relation values must be "
                f"floating point ({dtype}) to be differentiable. Cast inside the kernel, e.g. "
                f"`.astype(jnp.{dtype})`.")
        if str(out.dtype) != dtype:
            raise KernelError(
                f"{where}: kernel '{self.name}' turns {dtype} values into {out.dtype}; mixed dtypes "
                f"are refused. Keep the kernel in {dtype} (e.g. use jnp constants of that dtype).")
        _SHAPES.get_or_make((self._key, self.arity, shapes, dtype),
                            lambda: (self.fn, (tuple(out.shape), dtype)))  # keep fn alive: id() keys
        return tuple(out.shape), dtype


def kernel_name(fn: Callable) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return "lambda" if name == "<lambda>" else name


class _Ref:
    """An identity key that keeps its object alive, so no other object can reuse its id()."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, _Ref) and other.obj is self.obj


def _hashable(x, depth: int = 0):
    """A key for a value a kernel reads. Compiled kernels bake such values in as constants, so
    mutable values (numpy arrays, lists, dicts) are keyed by content, never by identity."""
    if depth > 4:
        return _Ref(x)
    if callable(x) and hasattr(x, "__code__"):
        return _code_key(x, depth + 1)
    if isinstance(x, np.ndarray):
        digest = hashlib.blake2b(np.ascontiguousarray(x).tobytes(), digest_size=16).digest()
        return ("ndarray", x.shape, x.dtype.str, digest)
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, tuple(_hashable(e, depth + 1) for e in x))
    if isinstance(x, dict):
        return ("dict", tuple((k, _hashable(v, depth + 1)) for k, v in x.items()))
    try:
        hash(x)
        return x
    except TypeError:
        return _Ref(x)  # e.g. a JAX array: immutable, so its identity is its content


def _global_names(code) -> set[str]:
    names = set(code.co_names)
    for c in code.co_consts:
        if hasattr(c, "co_names"):
            names |= _global_names(c)
    return names


def _code_key(fn: Callable, depth: int = 0):
    """Kernels with the same code and the same captured values share compiled functions. The
    values of the globals the code reads are part of the key: rebinding one recompiles."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return _hashable(fn, depth)
    cells = tuple(_hashable(c.cell_contents, depth) for c in (fn.__closure__ or ()))
    g = getattr(fn, "__globals__", None) or {}
    globs = tuple(sorted((n, _hashable(g[n], depth)) for n in _global_names(code) if n in g))
    return (code, cells, globs, _hashable(getattr(fn, "__defaults__", None), depth), id(g))


class _LRU(collections.OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or_make(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key][1]
        value = make()
        self[key] = value
        if len(self) > self.size:
            self.popitem(last=False)
        return value[1]


_COMPILED = _LRU(512)
_SHAPES = _LRU(4096)  # output (shape, dtype) per kernel key and argument shapes: plans built per
# training step trace each kernel once, not once per node


# How argument i reaches the kernel: one value per output tuple, a gather of (values, rows), or
# one value shared by every tuple (the single tuple of a one-tuple relation, e.g. a weight
# matrix cross-joined with every row): vmapped with in_axes=None, so the kernel sees it once
# and XLA can run v @ W over the batch as one matrix product instead of gathering W n times.
ROWS, GATHER, SHARED = "rows", "gather", "shared"


def _vmapped(kernel: Kernel, modes: tuple[str, ...]):
    """vmap(fn) over the used arguments; argument i arrives as (values, rows) when gathered, as
    values when shared (vmapped with in_axes=None) or per row."""
    fn, uses = kernel.fn, kernel.uses

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
            return fn(*[next(u) if uses[i] else dummies[i] for i in range(kernel.arity)])
        return jax.vmap(per_tuple, in_axes=tuple(axes))(*cols)

    return run


def _batched(kernel: Kernel, modes: tuple[str, ...]):
    """jit(vmap(fn)), cached per kernel and argument modes."""
    key = (kernel._key, kernel.arity, kernel.uses, modes)

    def make():
        return (kernel.fn, jax.jit(_vmapped(kernel, modes)))  # keep fn alive: id()-based keys stay unique

    return _COMPILED.get_or_make(key, make)


def _batched_sum(kernel: Kernel, modes: tuple[str, ...]):
    """jit of the kernel's outputs summed, in one compiled function, so XLA fuses the kernel into
    the reduction instead of writing every tuple's output: (dummies, num_segments, ids, *arrays)
    with ids an int array (segment sum; out-of-range ids are dropped); (dummies, -1, n, *arrays):
    the sum of the first n outputs (padded rows masked), as one row; (dummies, 0, None, *arrays):
    the sum of all outputs, unmasked (a mask on the outputs stops XLA fusing the reduction)."""
    key = (kernel._key, kernel.arity, kernel.uses, modes, "sum")

    def make():
        per_row = _vmapped(kernel, modes)

        def run(dummies, num_segments, ids, *arrays):
            out = per_row(dummies, *arrays)
            if num_segments > 0:
                return jax.ops.segment_sum(out, ids, num_segments=num_segments)
            if num_segments < 0:
                keep = (jnp.arange(out.shape[0]) < ids).reshape((-1,) + (1,) * (out.ndim - 1))
                out = jnp.where(keep, out, jnp.zeros((), out.dtype))
            return jnp.sum(out, axis=0, keepdims=True)

        return (kernel.fn, jax.jit(run, static_argnums=(1,)))

    return _COMPILED.get_or_make(key, make)


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


# ---- kernels the RJP rules build -------------------------------------------------------------

def _ravel_cat(a, b):
    return jnp.concatenate([jnp.ravel(a), jnp.ravel(b)])


def pack_kernel() -> Kernel:
    """(vl, vr) -> one flat vector: a relation holds one tensor per tuple."""
    return Kernel(_ravel_cat, name="pack", arity=2)


def _unpack(p, lshape, rshape):
    nl = int(np.prod(lshape, dtype=np.int64))
    return p[:nl].reshape(lshape), p[nl:].reshape(rshape)


def select_vjp_kernel(k: Kernel | None) -> Kernel:
    """(v, g) -> g · dF/dv at v."""
    if k is None:
        return Kernel(_second, name="id", arity=2, uses=(False, True))
    f = k.fn

    def vjp(v, g):
        return jax.vjp(f, v)[1](g)[0]

    return Kernel(vjp, name=f"vjp({k.name})", arity=2)


def _second(_, g):
    return g


def broadcast_kernel() -> Kernel:
    """(v, g) -> g: the transpose of a sum is a broadcast."""
    return Kernel(_second, name="broadcast", arity=2, uses=(False, True))


def divide_kernel() -> Kernel:
    return Kernel(_divide, name="divide", arity=2)


def _divide(g, count):
    return g / count


def count_kernel(dtype: str) -> Kernel:
    return Kernel(functools.partial(_one, dtype=dtype), name="one", arity=1, uses=(False,))


def _one(_, dtype):
    return jnp.ones((), dtype)


def join_vjp_kernel(k: Kernel, side: str, lshape, rshape) -> Kernel:
    """(pack(vl, vr), g) -> g · dF/dv_side at (vl, vr)."""
    f = k.fn
    lshape, rshape = tuple(lshape), tuple(rshape)

    def vjp(packed, g):
        vl, vr = _unpack(packed, lshape, rshape)
        if side == "left":
            return jax.vjp(lambda a: f(a, vr), vl)[1](g)[0]
        return jax.vjp(lambda b: f(vl, b), vr)[1](g)[0]

    vjp.__qualname__ = f"{k.name}_vjp_{side}"
    return Kernel(vjp, name=f"vjp_{side}({k.name})", arity=2, parts=("join_vjp", k, side))


def is_pack(k: Kernel) -> bool:
    return k.fn is _ravel_cat


def unpacked_join_vjp(k: Kernel) -> Kernel | None:
    """For a ``join_vjp_kernel`` of (pack(vl, vr), g), the same function of (vl, vr, g): an
    executor can then gather vl and vr from the joined relations instead of building the pairs.
    None for any other kernel."""
    if not k.parts or k.parts[0] != "join_vjp":
        return None
    _, fk, side = k.parts
    f = fk.fn

    def vjp(vl, vr, g):
        if side == "left":
            return jax.vjp(lambda a: f(a, vr), vl)[1](g)[0]
        return jax.vjp(lambda b: f(vl, b), vr)[1](g)[0]

    vjp.__qualname__ = f"{fk.name}_vjp_{side}"
    return Kernel(vjp, name=k.name, arity=3)
