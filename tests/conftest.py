"""Gradient checks run in float64: JAX's x64 mode is on for the whole test session."""
import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
