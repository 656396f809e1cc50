"""Kernels whose captured state changes between builds: the state a kernel reads is part of its
fingerprint, so a changed value recompiles (forward and gradient) instead of answering from the
first compile, and unchanged state rebuilt every step does not recompile."""
import functools
import importlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import workbench as wb
from workbench.execute import batched
from workbench.kernels import fingerprint

jax.config.update("jax_enable_x64", True)

X_NP = np.arange(12.0).reshape(4, 3)


def _relation():
    return wb.from_tensor(X_NP, keys=("i",))


def _forward_and_grad(k):
    """select(X, k) and the gradient of sum(select(X, k)), each built afresh."""
    X = _relation()
    forward = wb.select(X, kernel=k).to_tensor()
    loss = lambda X: wb.aggregate(wb.select(wb.select(X, kernel=k), kernel=jnp.sum), by=())
    grad = wb.grad(loss)(X).to_tensor()
    return np.asarray(forward), np.asarray(grad)


def _check(k, scale, shift):
    """k(v) = sin(v * scale) + shift * v, with numpy's forward and gradient for these values."""
    forward, grad = _forward_and_grad(k)
    np.testing.assert_allclose(forward, np.sin(X_NP * scale) + shift * X_NP, rtol=1e-12)
    np.testing.assert_allclose(grad, scale * np.cos(X_NP * scale) + shift, rtol=1e-12)


# ---- the state holders of the five cases --------------------------------------------------------

class Params:
    def __init__(self, scale, shift):
        self.scale = scale
        self.shift = np.asarray(shift, dtype=np.float64)

    def apply(self, v):
        return jnp.sin(v * self.scale) + self.shift * v


class Scaler:
    """A callable object: the kernel is the instance itself."""

    def __init__(self, scale, shift):
        self.scale = scale
        self.shift = shift

    def __call__(self, v):
        return jnp.sin(v * self.scale) + self.shift * v


class SlottedScaler:
    __slots__ = ("scale", "shift", "__weakref__")  # jax keeps weak references to functions

    def __init__(self, scale, shift):
        self.scale = scale
        self.shift = shift

    def __call__(self, v):
        return jnp.sin(v * self.scale) + self.shift * v


def _weighted(w, v):
    return jnp.sin(v * w[0]) + w[1] * v


def _weighted_kw(v, w):
    return jnp.sin(v * w[0]) + w[1] * v


# ---- (a) an object's attributes -----------------------------------------------------------------

def test_object_attribute_rebound_and_array_mutated_in_place():
    m = Params(2.0, [1.0, 1.0, 1.0])
    make = lambda: (lambda v: jnp.sin(v * m.scale) + m.shift * v)  # a fresh kernel per build
    _check(make(), 2.0, 1.0)
    m.scale = 0.5  # rebound
    _check(make(), 0.5, 1.0)
    m.shift[:] = 3.0  # mutated in place
    _check(make(), 0.5, 3.0)


def test_the_same_kernel_object_sees_new_state():
    m = Params(2.0, [1.0, 1.0, 1.0])
    k = lambda v: jnp.sin(v * m.scale) + m.shift * v
    _check(k, 2.0, 1.0)
    m.scale = -1.5
    _check(k, -1.5, 1.0)


def test_class_attribute_read_through_an_instance():
    class Config:
        scale = 2.0

    c = Config()
    make = lambda: (lambda v: jnp.sin(v * c.scale))
    _check(make(), 2.0, 0.0)
    Config.scale = 0.25  # the class attribute, not the instance's
    _check(make(), 0.25, 0.0)


# ---- (b) a user module's attribute --------------------------------------------------------------

@pytest.fixture
def user_module(tmp_path):
    name = "wb_user_kernel_state"
    (tmp_path / f"{name}.py").write_text(
        "import jax.numpy as jnp\n"
        "scale = 2.0\n"
        "shift = 1.0\n"
        "def kernel(v):\n"
        "    return jnp.sin(v * scale) + shift * v\n")
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(name)
        yield module
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)
        globals().pop("usermod", None)


def _module_kernel_factory(user_module):
    mod = user_module
    return lambda: (lambda v: jnp.sin(v * mod.scale) + mod.shift * v)


def _usermod_kernel(v):
    return jnp.sin(v * usermod.scale) + usermod.shift * v  # noqa: F821 - a global set by the test


def test_user_module_attribute_rebound_read_as_a_global(user_module):
    globals()["usermod"] = user_module
    _check(_usermod_kernel, 2.0, 1.0)
    user_module.scale = 3.0
    _check(_usermod_kernel, 3.0, 1.0)
    user_module.shift = -2.0
    _check(_usermod_kernel, 3.0, -2.0)
    del user_module.shift  # an attribute that disappears, then comes back
    with pytest.raises(Exception):
        _check(_usermod_kernel, 3.0, -2.0)
    user_module.shift = 0.5
    _check(_usermod_kernel, 3.0, 0.5)


def test_user_module_attribute_read_from_a_closure(user_module):
    make = _module_kernel_factory(user_module)
    _check(make(), 2.0, 1.0)
    _check(user_module.kernel, 2.0, 1.0)  # a function of the module reading its own globals
    user_module.scale = 0.75
    _check(make(), 0.75, 1.0)
    _check(user_module.kernel, 0.75, 1.0)


# ---- (c) a callable object ----------------------------------------------------------------------

@pytest.mark.parametrize("cls", [Scaler, SlottedScaler])
def test_callable_object_attributes_changed(cls):
    k = cls(2.0, 1.0)
    _check(k, 2.0, 1.0)
    k.scale, k.shift = 0.5, 4.0
    _check(k, 0.5, 4.0)


# ---- (d) functools.partial over a numpy array ---------------------------------------------------

def test_partial_over_array_mutated_in_place():
    w = np.array([2.0, 1.0])
    k = functools.partial(_weighted, w)
    _check(k, 2.0, 1.0)
    w[0], w[1] = -0.5, 2.0
    _check(k, -0.5, 2.0)
    k2 = functools.partial(_weighted_kw, w=np.array([1.5, 0.0]))  # keyword
    _check(k2, 1.5, 0.0)
    k2.keywords["w"][0] = 0.5
    _check(k2, 0.5, 0.0)


# ---- (e) a bound method -------------------------------------------------------------------------

def test_bound_method_self_attributes_changed():
    m = Params(2.0, [1.0, 1.0, 1.0])
    k = m.apply
    _check(k, 2.0, 1.0)
    m.scale = 0.5
    _check(m.apply, 0.5, 1.0)
    m.shift = np.full(3, -1.0)
    _check(k, 0.5, -1.0)


def test_method_redefined_on_the_class():
    class Model:
        def __init__(self):
            self.scale = 2.0

        def apply(self, v):
            return jnp.sin(v * self.scale)

    m = Model()
    k = lambda v: m.apply(v)
    _check(k, 2.0, 0.0)
    Model.apply = lambda self, v: jnp.sin(v * self.scale) + 5.0 * v
    _check(k, 2.0, 5.0)


# ---- unchanged state: rebuilt every step, compiled once -----------------------------------------

@pytest.mark.parametrize("case", ["object", "module", "callable", "slotted", "partial", "method"])
def test_rebuilt_with_unchanged_state_does_not_recompile(case, user_module):
    """Each build makes fresh state objects with equal content (the module is the same one)."""
    w = np.array([2.0, 1.0])

    def fresh_object():
        m = Params(2.0, [1.0, 1.0, 1.0])
        return lambda v: jnp.sin(v * m.scale) + m.shift * v

    builds = {
        "object": fresh_object,
        "module": _module_kernel_factory(user_module),
        "callable": lambda: Scaler(2.0, 1.0),
        "slotted": lambda: SlottedScaler(2.0, 1.0),
        "partial": lambda: functools.partial(_weighted, w.copy()),
        "method": lambda: Params(2.0, [1.0, 1.0, 1.0]).apply,
    }
    assert fingerprint(builds[case]()) == fingerprint(builds[case]())
    _check(builds[case](), 2.0, 1.0)  # compiles
    before = len(batched.compiled())
    for _ in range(3):
        _check(builds[case](), 2.0, 1.0)
    assert len(batched.compiled()) == before


# ---- cycles and state that cannot be fingerprinted ----------------------------------------------

def test_cyclic_object_is_fingerprinted_without_recursion_error():
    m = Params(2.0, [1.0, 1.0, 1.0])
    m.me = m
    m.friends = [m, {"again": m}]
    make = lambda: (lambda v: jnp.sin(v * m.me.scale) + m.shift * v)
    k = make()
    assert fingerprint(k) == fingerprint(make())
    _check(k, 2.0, 1.0)
    m.scale = 0.5
    _check(k, 0.5, 1.0)


def test_state_without_inspectable_content_never_reuses_a_compile():
    rng = np.random.default_rng(0)  # no __dict__, no value hash: cannot be fingerprinted
    k = lambda v: v + 0.0 * rng.random()
    assert fingerprint(k) != fingerprint(k)
    _check(k, 0.0, 1.0)


def test_deep_state_beyond_the_limit_is_never_reused():
    deep = [2.0]
    for _ in range(40):
        deep = [deep]

    def read(d):
        while isinstance(d, list) and len(d) == 1 and isinstance(d[0], list):
            d = d[0]
        return d[0]

    k = lambda v: jnp.sin(v * read(deep))
    assert fingerprint(k) != fingerprint(k)
    _check(k, 2.0, 0.0)


def test_scalar_types_and_signed_zero_are_distinguished():
    def make(c):
        return lambda v: v * c

    assert fingerprint(make(0.0)) != fingerprint(make(-0.0))
    assert fingerprint(make(1.0)) != fingerprint(make(1))
    assert fingerprint(make(1)) != fingerprint(make(True))
    assert fingerprint(make(float("nan"))) == fingerprint(make(float("nan")))
