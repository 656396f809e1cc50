"""The Kernel value: a named per-tuple JAX function, its output shape, and its fingerprint.

A kernel is a plain JAX function of one tuple's value(s). ``Kernel.output`` infers its output
shape with ``jax.eval_shape``. ``Kernel.key`` fingerprints the function: its code and the state it
reads (see ``fingerprint``), so executors can cache compiled code per key and a kernel re-created
on every call of a training step compiles once, while a kernel whose captured state changed
compiles again.
"""
from __future__ import annotations

import collections
import enum
import functools
import hashlib
import os
import site
import sys
import sysconfig
import types
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


def _library_callable(x):
    """A library callable object is keyed by identity, except one that a library module exports
    under its name (``jnp.matmul``, a jit-compiled function; ``jax.nn.relu``, a custom_jvp): that
    one is keyed by module and name, and so is a copy of it of the same type. Pickled into a
    partition's worker with every plan (as cloudpickle does), ``jnp.matmul`` arrives as a new
    object; keyed by identity, its kernels would compile again on every run."""
    module, name = getattr(x, "__module__", None), getattr(x, "__name__", None)
    owner = sys.modules.get(module) if isinstance(module, str) else None
    exported = getattr(owner, name, None) if owner is not None and isinstance(name, str) else None
    if exported is not None and type(exported) is type(x) and _library_module(owner):
        return ("exported", module, name)
    return _Ref(x)


class _Ref:
    """An identity key that keeps its object alive, so no other object can reuse its id()."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, _Ref) and other.obj is self.obj

    def __repr__(self):
        return f"_Ref({type(self.obj).__name__} at {id(self.obj):#x})"


class _Never:
    """A key part equal to no other key: state that cannot be fingerprinted safely. The kernel
    then compiles again on every build instead of ever answering from stale state."""

    __slots__ = ("why",)

    def __init__(self, why: str):
        self.why = why

    def __repr__(self):
        return f"_Never({self.why})"


_MAX_DEPTH = 16  # nesting levels of state followed from the kernel before giving up (_Never)
_BUDGET = 20_000  # composite values visited per fingerprint before giving up (_Never)
_ABSENT = ("<absent attribute>",)
_MISSING = object()


def _library_roots() -> tuple[str, ...]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    try:
        paths = sysconfig.get_paths()
        roots.update(paths[n] for n in ("stdlib", "platstdlib", "purelib", "platlib") if n in paths)
    except Exception:  # pragma: no cover - unusual interpreters
        pass
    for get in (site.getsitepackages, site.getusersitepackages):
        try:
            found = get()
            roots.update([found] if isinstance(found, str) else found)
        except Exception:  # pragma: no cover - e.g. site disabled
            pass
    out = set()
    for r in roots:
        if r and len(os.path.abspath(r)) > 1:  # never treat "/" as a library root
            out.add(os.path.join(os.path.abspath(r), ""))
            out.add(os.path.join(os.path.realpath(r), ""))
    return tuple(sorted(out))


_LIBRARY_ROOTS = _library_roots()
_LIBRARY_FILES: dict[str, bool] = {}


def _library_file(filename) -> bool:
    """Whether code or a module from ``filename`` is library code: under the interpreter's
    prefixes or site-packages, frozen, or built in (no file)."""
    if not isinstance(filename, str) or not filename:
        return True
    known = _LIBRARY_FILES.get(filename)
    if known is None:
        if filename.startswith("<"):  # <frozen ...> is the standard library; <string>, <stdin>: user
            known = filename.startswith("<frozen")
        else:
            paths = (os.path.abspath(filename), os.path.realpath(filename))
            known = any(p.startswith(_LIBRARY_ROOTS) for p in paths)
        if len(_LIBRARY_FILES) > 65536:
            _LIBRARY_FILES.clear()
        _LIBRARY_FILES[filename] = known
    return known


def _library_module(module) -> bool:
    """Library modules: a file under the library roots, or none (built in); ``__main__`` (a
    script, a REPL, a notebook) is always the user's."""
    return (module.__dict__.get("__name__") != "__main__"
            and _library_file(module.__dict__.get("__file__")))


def _library_type(t: type) -> bool:
    module = sys.modules.get(getattr(t, "__module__", None) or "")
    return module is not None and _library_module(module)  # a class of no known module: user


_NAMES: dict[int, tuple] = {}


def _code_names(code) -> tuple[str, ...]:
    """The names ``code`` (and the code nested in it) may read from its globals or as attributes:
    ``co_names``, plus string constants that are identifiers (``getattr(obj, "name")``)."""
    hit = _NAMES.get(id(code))
    if hit is not None and hit[0] is code:
        return hit[1]
    names: set[str] = set()
    stack = [code]
    while stack:
        c = stack.pop()
        names.update(c.co_names)
        for const in c.co_consts:
            if hasattr(const, "co_names"):
                stack.append(const)
            elif type(const) is str and const.isidentifier():
                names.add(const)
    out = tuple(sorted(names))
    if len(_NAMES) > 16384:
        _NAMES.clear()
    _NAMES[id(code)] = (code, out)  # holding the code keeps its id() from being reused
    return out


def _slot_names(t: type) -> list[str]:
    names = []
    for klass in t.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for s in ((slots,) if isinstance(slots, str) else slots):
            if s in ("__dict__", "__weakref__"):
                continue
            if s.startswith("__") and not s.endswith("__"):  # private: name-mangled
                s = f"_{klass.__name__.lstrip('_')}{s}"
            names.append(s)
    return names


_ATOMS = (str, bytes, type(None), type(Ellipsis), type(NotImplemented), range)


class _Fingerprint:
    """One fingerprint computation: the key of a value, walking the state it holds."""

    __slots__ = ("path", "budget", "names", "spaces")

    def __init__(self):
        self.path: dict[int, int] = {}  # id -> position of the composite values being walked
        self.budget = _BUDGET
        self.names: set[str] = set()  # every name the code walked so far reads
        self.spaces: dict[int, list] = {}  # id -> [module or class, depth, names done, entries]

    def key(self, x, depth: int):
        t = type(x)
        if t in _ATOMS:
            return x
        if t is int:
            return x
        if t is float:  # 1.0 != 1 and True; 0.0 vs -0.0 and nan need their repr
            return (float, x) if x == x and x != 0.0 else (float, repr(x))
        if t is bool:
            return (bool, x)
        if t is complex:
            return (complex, repr(x))
        if depth > _MAX_DEPTH:
            return _Never("depth limit")
        i = id(x)
        at = self.path.get(i)
        if at is not None:  # a cycle: refer back to the value being walked
            return ("cycle", at)
        self.budget -= 1
        if self.budget < 0:
            return _Never("size limit")
        self.path[i] = len(self.path)
        try:
            return self._composite(x, t, depth + 1)
        except Exception as exc:  # a value whose state cannot be read: never reuse
            return _Never(f"{type(exc).__name__} reading {t.__name__}")
        finally:
            del self.path[i]

    def _composite(self, x, t, d):
        key = self.key
        if t is types.FunctionType:
            return self.function(x, d)
        if t is tuple:
            return ("tuple", tuple([key(e, d) for e in x]))
        if t is list:
            return ("list", tuple([key(e, d) for e in x]))
        if t is dict:
            return ("dict", tuple([(key(k, d), key(v, d)) for k, v in x.items()]))
        if t is np.ndarray:
            return _array_key(x)
        if t is functools.partial:
            return ("partial", key(x.func, d), key(x.args, d), key(x.keywords, d))
        if t is types.MethodType:
            return ("method", key(x.__func__, d), key(x.__self__, d))
        if isinstance(x, types.ModuleType):
            return _Ref(x) if _library_module(x) else self.space(x, d, "module")
        if isinstance(x, type):
            return _Ref(x) if _library_type(x) else self.space(x, d, "class")
        if isinstance(x, jax.Array):  # immutable: its identity is its content
            return _Ref(x)
        if isinstance(x, np.generic):
            return ("np", x.dtype.str, x.tobytes())
        if isinstance(x, np.dtype):
            return x
        if t is types.BuiltinFunctionType or t is _METHOD_WRAPPER:
            owner = x.__self__
            if owner is None or isinstance(owner, (types.ModuleType, type)):
                return _Ref(x)  # a library function (math.sin, len, dict.fromkeys)
            return ("builtin method", x.__name__, key(owner, d))  # e.g. array.sum, list.copy
        if t is property:
            return ("property", key(x.fget, d), key(x.fset, d), key(x.fdel, d))
        if t is staticmethod or t is classmethod:
            return (t.__name__, key(x.__func__, d))
        if isinstance(x, _DESCRIPTORS) or isinstance(x, enum.Enum):  # immutable: identity
            return _Ref(x)
        if isinstance(x, np.ndarray):
            base = _array_key(x)
        elif isinstance(x, (tuple, list)):
            base = (t.__name__, tuple([key(e, d) for e in x]))
        elif isinstance(x, dict):
            base = ("dict", tuple([(key(k, d), key(v, d)) for k, v in x.items()]))
        elif isinstance(x, (set, frozenset)):
            base = ("set", frozenset([key(e, d) for e in x]))
        elif isinstance(x, functools.partial):
            base = ("partial", key(x.func, d), key(x.args, d), key(x.keywords, d))
        else:
            base = None
        if base is not None:  # a container, maybe of a subclass with its own state
            if t in _BUILTIN_CONTAINERS:
                return base
            kind = _Ref(t) if _library_type(t) else self.space(t, d, "class")
            return ("sub", kind, base, self.state(x, d))
        if not _library_type(t):  # an instance of a user class: its type and state
            space = self.space(t, d, "class")
            call = _lookup_class(t, "__call__")
            call_key = key(call, d) if call is not _MISSING and callable(x) else None
            return ("object", space, call_key, self.state(x, d))
        if callable(x):  # a library callable: jitted, custom_jvp, ufunc, ... functions
            return _library_callable(x)
        h = t.__hash__
        if h is not None and h is not object.__hash__:  # a value type (hash by content)
            try:
                hash(x)
                return ("value", x)
            except TypeError:
                pass
        if t is object:  # a bare sentinel has no state
            return _Ref(x)
        state = self.state(x, d)
        if state is None:
            return _Never(f"no inspectable state in {t.__name__}")
        return ("object", _Ref(t), None, state)

    def function(self, fn, d):
        code = fn.__code__
        key = self.key
        if _library_file(code.co_filename):  # library code: its module state is trusted
            if not fn.__closure__:
                return _Ref(fn)
            return ("library function", code, id(fn.__globals__), self.cells(fn, d),
                    key(fn.__defaults__, d))
        names = _code_names(code)
        self.names.update(names)
        g = fn.__globals__
        globs = tuple([(n, key(g[n], d)) for n in names if n in g])
        # the names the code reads that its globals lack (builtins, or a NameError): with the
        # values of the others, all a globals dict contributes, so a copy of the function with
        # its own globals dict (pickled into a partition's worker) keys alike
        absent = tuple(sorted(n for n in names if n not in g))
        attrs = key(fn.__dict__, d) if fn.__dict__ else None
        return ("function", code, self.cells(fn, d), globs, key(fn.__defaults__, d),
                key(fn.__kwdefaults__, d), attrs, absent)

    def cells(self, fn, d):
        out = []
        for c in fn.__closure__ or ():
            try:
                value = c.cell_contents
            except ValueError:  # a free variable not assigned yet
                out.append(_ABSENT)
                continue
            out.append(self.key(value, d))
        return tuple(out)

    def state(self, x, d):
        """vars(x) and the values of its __slots__, or None when it has neither."""
        try:
            attrs = object.__getattribute__(x, "__dict__")
        except AttributeError:
            attrs = None
        slots = _slot_names(type(x))
        if attrs is None and not slots:
            return None
        key = self.key
        out = []
        if attrs is not None:
            out.append(tuple([(k if type(k) is str else key(k, d), key(v, d))
                              for k, v in attrs.items()]))
        for s in slots:
            try:
                out.append((s, key(object.__getattribute__(x, s), d)))
            except AttributeError:
                out.append((s, _ABSENT))
        return tuple(out)

    def space(self, ns, d, kind):
        """A user module or class: keyed by identity here; the attributes read anywhere in the
        walked code are keyed in ``finish``."""
        if id(ns) not in self.spaces:
            self.spaces[id(ns)] = [ns, d, set(), {}]
        return (kind, _Ref(ns))

    def finish(self) -> tuple:
        """The values of the attributes of user modules and classes that the walked code may read
        (names in its co_names); walking them may reach more code, names and namespaces."""
        changed = True
        while changed:
            changed = False
            for entry in list(self.spaces.values()):
                ns, d, done, found = entry
                todo = self.names - done
                if not todo:
                    continue
                changed = True
                done |= todo
                for n in sorted(todo):
                    if isinstance(ns, types.ModuleType):
                        value = ns.__dict__.get(n, _MISSING)
                    else:
                        value = _lookup_class(ns, n)
                    found[n] = _ABSENT if value is _MISSING else self.key(value, d)
        return tuple((_Ref(ns), tuple(sorted((n, k) for n, k in found.items() if k is not _ABSENT)),
                      frozenset(n for n, k in found.items() if k is _ABSENT))
                     for ns, _, _, found in self.spaces.values())


_METHOD_WRAPPER = type((1).__add__)
_DESCRIPTORS = (types.MemberDescriptorType, types.GetSetDescriptorType, types.WrapperDescriptorType,
                types.MethodDescriptorType, types.ClassMethodDescriptorType)  # e.g. __slots__ members
_BUILTIN_CONTAINERS = (tuple, list, dict, set, frozenset)


def _lookup_class(cls: type, name: str):
    """``name`` as found on ``cls`` (first class of its MRO that defines it), unbound."""
    for klass in cls.__mro__:
        value = klass.__dict__.get(name, _MISSING)
        if value is not _MISSING:
            return value
    return _MISSING


def _array_key(x: np.ndarray):
    if x.dtype.hasobject:  # pointers, not content
        return _Never("numpy array of Python objects")
    digest = hashlib.blake2b(np.ascontiguousarray(x).tobytes(), digest_size=16).digest()
    return ("ndarray", x.shape, x.dtype.str, digest)


def fingerprint(fn: Callable):
    """The cache key of a kernel: equal keys promise the same computation, so executors reuse one
    compiled function (and inferred shape, and rewrite verdict) for them. "The state a kernel
    reads is fingerprinted": the key holds the code and, recursively, every value the code can
    read, so changing any of it compiles again (never an answer from a stale compile, forward or
    gradient: the RJP's VJP kernels capture the user's function, so their keys walk into it),
    while a kernel rebuilt with the same code and equal state (a fresh lambda every training
    step) reuses the compiled function. "User" code is code whose file lies outside sys.prefix,
    sys.base_prefix and site-packages, or ``__main__``; everything else is "library".

    Tracked, by content (recursively, up to ``_MAX_DEPTH`` levels):
      * User functions: code, closure cells, the globals the code names, defaults, keyword
        defaults, function attributes (``fn.__dict__``), and which of the names they read their
        globals lack.
      * ``functools.partial``: func, args, keywords. Bound methods: ``__func__`` and ``__self__``.
        Builtin methods of objects (``arr.sum``): the name and the object.
      * Instances of user classes: their class, ``vars(obj)`` and their ``__slots__`` values; a
        callable object also ``type(obj).__call__``. Instances of library classes that have no
        value hash (``SimpleNamespace``, ...): ``vars`` and ``__slots__`` too.
      * User modules and user classes reached anywhere in that state: the values of the
        attributes that any walked code may read (names in its ``co_names``, and string constants
        that are identifiers, as in ``getattr(m, "scale")``), looked up along the MRO for classes
        (properties, static and class methods included), and which of those names are absent.
      * numpy arrays (shape, dtype, bytes), numpy scalars, lists, tuples, dicts, sets (content);
        Python scalars with their type (1, 1.0 and True differ; so do 0.0 and -0.0; nan == nan).
      * Cycles (an object referring to itself) are keyed as back references, not walked again.

    Keyed by identity (assumed not to change): JAX arrays (immutable); library modules, classes
    and functions (``jnp.sum``, ``jax.nn.relu``); library callable objects, including ``jax.jit``
    results and ``jax.custom_jvp``/``custom_vjp`` functions, even of user code (as in ``jax.jit``,
    the state they read is not tracked), except those a library module exports under their name
    (``jnp.matmul``), keyed by module and name so a pickled copy keys alike; slot and method descriptors; enum members; bare
    ``object()`` sentinels. A library closure (``jax.vmap(f)``, ``jax.grad(f)``) keys its cells,
    so ``f`` is walked. Library values with their own ``__hash__`` (dtypes, ``ShapeDtypeStruct``)
    are keyed by value.

    Never equal to any other key (the kernel compiles again on every build): state nested deeper
    than ``_MAX_DEPTH``, more than ``_BUDGET`` values to walk, numpy arrays of Python objects,
    objects with no inspectable state (no ``__dict__``/``__slots__``, no value hash), such as
    ``np.random.Generator`` or a lock, and any value whose state raises when read.

    Not tracked: state outside ``__dict__``/``__slots__`` (e.g. in a C extension base class),
    library modules' globals, attributes of user modules and classes read under a name computed
    at run time (``getattr(m, name)``, ``name`` a variable), builtins, and changes made after a
    kernel is built (``wb.select(X, kernel=k)``) and before its plan runs.
    """
    fp = _Fingerprint()
    tree = fp.key(fn, 0)
    if not fp.spaces:
        return tree
    return (tree, fp.finish())


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
