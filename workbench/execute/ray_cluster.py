"""Ray on loopback: start it (every server bound to 127.0.0.1, no dashboard) or join the running
instance, and teach its pickler to ship jitted JAX functions."""
from __future__ import annotations

import importlib
import socket
import warnings

import jax
import jax.numpy as jnp
import ray
from ray._private import ray_constants


def start(num_cpus: int | None = None, address: str | None = None, **ray_init) -> bool:
    """Start Ray on loopback unless it is running, or join the cluster at ``address`` (e.g.
    ``"10.0.0.5:6379"``, or ``"auto"`` for the one ``ray start`` made on this machine); True when
    this call started (or joined) it, so the caller shuts it down. A Ray that cannot start, or a
    cluster that cannot be reached, is a RuntimeError saying what to do."""
    if ray.is_initialized():
        started = False
    else:
        ray_constants.ENABLE_RAY_CLUSTER = False  # loopback stays loopback (see workbench.execute)
        if address is None:
            # address="local": a new Ray of its own, even when `ray start` runs on this machine
            args = dict(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1",
                        include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:  # joining: the cluster's nodes bring their own resources
            if num_cpus is not None:
                raise ValueError(f"RayRunner(address={address!r}): num_cpus is set by each node's "
                                 f"`ray start --num-cpus`, not by the driver; leave num_cpus out")
            _check_reachable(address)
            args = dict(address=address, log_to_driver=False, configure_logging=False)
            if address.startswith(("127.", "localhost")):
                args["_node_ip_address"] = "127.0.0.1"
        try:
            for attempt in range(1 if address else 2):  # a loaded machine can miss Ray's 30 s
                try:                                      # wait for its raylet once
                    with warnings.catch_warnings():  # Ray starts its servers by fork+exec: no JAX state is shared
                        warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
                        ray.init(**{**args, **ray_init})
                    break
                except Exception as exc:  # noqa: BLE001
                    if attempt or "timed out during startup" not in str(exc):
                        raise
                    ray.shutdown()
        except Exception as exc:  # noqa: BLE001 - every failure to start is reported the same way
            if ray.is_initialized():
                ray.shutdown()
            where = f"join the Ray cluster at {address!r}" if address else "start Ray on 127.0.0.1"
            fix = ("check that `ray start --head` ran there (and `ray start --address=...` on the other "
                   "machines), that the address is the head's GCS address (ip:6379 by default) and that "
                   "its port is reachable from this machine" if address else
                   "check free memory (Ray's object store takes a share of it), that /tmp is writable, "
                   "and that no stale Ray processes hold its ports (`ray stop`)")
            said = str(exc).strip().rstrip(".")
            raise RuntimeError(f"RayRunner: could not {where}: {type(exc).__name__}: {said}. To fix: "
                               f"{fix}.") from exc
        started = True
    ray.util.register_serializer(type(jnp.matmul), serializer=jitted_reference,
                                 deserializer=jitted_restore)
    return started


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Ray retries an unreachable cluster address for ever: try its port once first."""
    host, sep, port = address.rpartition(":")
    if address in ("auto", "local") or not sep or not port.isdigit() or address.startswith("ray://"):
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RuntimeError(
            f"RayRunner: could not join the Ray cluster at {address!r}: nothing answers there "
            f"({exc.strerror or exc}). Start the head with `ray start --head --port={port}` on "
            f"{host}, and check that the address is the head's and that the port is reachable from "
            f"this machine.") from None


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
