"""Kernels compile once per kernel, value shape and dtype, not once per call."""
import jax.numpy as jnp
import numpy as np

import workbench as wb
from workbench.execute import batched


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
