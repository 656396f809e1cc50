"""Ray on loopback: start it (every server bound to 127.0.0.1, no dashboard) or join the running
instance, and teach its pickler to ship jitted JAX functions."""
from __future__ import annotations

import importlib
import warnings

import jax
import jax.numpy as jnp
import ray
from ray._private import ray_constants


def start(num_cpus: int | None = None, **ray_init) -> bool:
    """Start Ray on loopback unless it is running; True when this call started it."""
    if not ray.is_initialized():
        ray_constants.ENABLE_RAY_CLUSTER = False  # loopback stays loopback (see workbench.execute)
        args = dict(num_cpus=num_cpus, _node_ip_address="127.0.0.1", include_dashboard=False,
                    log_to_driver=False, configure_logging=False)
        with warnings.catch_warnings():  # Ray starts its servers by fork+exec: no JAX state is shared
            warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
            ray.init(**{**args, **ray_init})
        started = True
    else:
        started = False
    ray.util.register_serializer(type(jnp.matmul), serializer=jitted_reference,
                                 deserializer=jitted_restore)
    return started


def cpus() -> int:
    """The CPUs of the running cluster."""
    return int(ray.cluster_resources().get("CPU", 1))


# ---- shipping jitted functions ---------------------------------------------------------------


def jitted_reference(fn):
    """A jitted function (``jnp.matmul``, ``jax.nn.relu``) by its import path, else by the
    function it wraps: pickling one by value gives a broken copy."""
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    try:
        if module and name and getattr(importlib.import_module(module), name) is fn:
            return module, name, None
    except (ImportError, AttributeError):
        pass
    return None, None, fn.__wrapped__


def jitted_restore(ref):
    module, name, wrapped = ref
    return getattr(importlib.import_module(module), name) if module else jax.jit(wrapped)
