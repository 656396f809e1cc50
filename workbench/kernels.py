"""The Kernel value: a named per-tuple JAX function, its output shape, and its fingerprint.

A kernel is a plain JAX function of one tuple's value(s). ``Kernel.output`` infers its output
shape with ``jax.eval_shape``. ``Kernel.key`` fingerprints the function: its code and the state it
reads (see ``fingerprint``), so executors can cache compiled code per key and a kernel re-created
on every call of a training step compiles once, while a kernel whose captured state changed
compiles again.
"""
from __future__ import annotations

import collections
import hashlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from workbench.errors import KernelError


class Kernel:
    """A named per-tuple function of ``arity`` values; ``uses[i]`` says whether argument i is read."""

    __slots__ = ("fn", "name", "arity", "uses", "key", "parts")

    def __init__(self, fn: Callable, name: str | None = None, arity: int = 1,
                 uses: Sequence[bool] | None = None, parts: tuple | None = None):
        if not callable(fn):
            raise KernelError(f"kernel must be a callable JAX function of the tuple value(s), "
                              f"got {type(fn).__name__}")
        self.fn = fn
        self.name = name or kernel_name(fn)
        self.arity = arity
        self.uses = tuple(uses) if uses is not None else (True,) * arity
        self.key = fingerprint(fn)
        self.parts = parts  # how an RJP rule built it, for rewrites that recognize it

    def __repr__(self) -> str:
        return f"Kernel({self.name})"

    def output(self, shapes: Sequence[tuple[int, ...]], dtype: str, where: str) -> tuple[tuple[int, ...], str]:
        """Output (value shape, dtype) for arguments of ``shapes``; errors name ``where``."""
        shapes = tuple(tuple(s) for s in shapes)
        known = _SHAPES.get((self.key, self.arity, shapes, dtype))  # same code and captured values
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
        _SHAPES.get_or_make((self.key, self.arity, shapes, dtype),
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
        return fingerprint(x, depth + 1)
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


def fingerprint(fn: Callable, depth: int = 0):
    """Kernels with the same code and the same captured values share compiled functions. The
    values of the globals the code reads are part of the key: rebinding one recompiles."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return _hashable(fn, depth)
    cells = tuple(_hashable(c.cell_contents, depth) for c in (fn.__closure__ or ()))
    g = getattr(fn, "__globals__", None) or {}
    globs = tuple(sorted((n, _hashable(g[n], depth)) for n in _global_names(code) if n in g))
    return (code, cells, globs, _hashable(getattr(fn, "__defaults__", None), depth), id(g))


class LRU(collections.OrderedDict):
    """A bounded cache: ``get_or_make(key, make)`` with ``make() -> (kept alive, value)``."""

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


_SHAPES = LRU(4096)  # output (shape, dtype) per kernel key and argument shapes: plans built per
# training step trace each kernel once, not once per node


def clear_cache() -> None:
    """Forget this module's cached results (``workbench.clear_caches`` clears every cache)."""
    _SHAPES.clear()
