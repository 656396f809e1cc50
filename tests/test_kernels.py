"""Kernels compile once per kernel, value shape and dtype, not once per call."""
import jax
import jax.numpy as jnp
import numpy as np

import workbench as wb
from workbench.execute import batched
from workbench.kernels import Kernel


def test_a_kernel_recreated_each_step_compiles_once(rng):
    X = wb.from_tensor(rng.normal(size=(30, 4)), keys=("i",))
    before = len(batched.compiled())
    for step in range(3):
        scale = 2.0  # captured by value: same code and captured values -> same compiled function
        Y = wb.select(X, kernel=lambda v: jnp.tanh(v) * scale)
        np.testing.assert_allclose(Y.to_tensor(), np.tanh(X.to_tensor()) * 2.0)
    assert len(batched.compiled()) == before + 1
    jitted = batched.compiled()[-1]
    assert jitted._cache_size() == 1


def test_small_relations_of_nearby_sizes_share_a_compile(rng):
    f = lambda v: jnp.sin(v)
    before = len(batched.compiled())
    for n in (9, 10):  # both pad to the bucket of 10 rows
        X = wb.from_tensor(rng.normal(size=(n, 3)), keys=("i",))
        np.testing.assert_allclose(wb.select(X, kernel=f).to_tensor(), np.sin(X.to_tensor()))
    jitted = batched.compiled()[-1]
    assert len(batched.compiled()) == before + 1 and jitted._cache_size() == 1


def test_buckets_grow_by_quarter_octaves():
    sizes = [batched.bucket(n) for n in range(1, 100)]
    assert sizes == sorted(sizes) and all(b >= n for n, b in zip(range(1, 100), sizes))
    assert max(b / n for n, b in zip(range(8, 100), sizes[7:])) <= 1.25
    assert batched.bucket(1 << 20) == 1 << 20  # large relations compile exactly


def test_a_pickled_kernel_keys_like_the_original():
    """A partition's worker receives every plan's kernels pickled; library functions that a
    module exports (``jnp.matmul`` is a jit-compiled function, ``jax.nn.relu`` a custom_jvp) come
    back as new objects, and must key alike, or the worker compiles every kernel on every run."""
    import cloudpickle

    def layer(h, w):
        return jax.nn.relu(jnp.matmul(h, w))

    k = Kernel(layer)
    copies = [Kernel(cloudpickle.loads(cloudpickle.dumps(layer))) for _ in range(2)]
    assert copies[0].fn is not layer
    assert copies[0].key == copies[1].key == k.key
    # callable objects of user code (two custom_jvp functions of one name) still key by identity
    def make():
        @jax.custom_jvp
        def act(x):
            return jnp.tanh(x)
        act.defjvp(lambda primals, tangents: (act(primals[0]), tangents[0]))
        return lambda x: act(x)
    assert Kernel(make()).key != Kernel(make()).key
