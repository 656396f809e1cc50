"""Executors behind one protocol (``base.Executor``): the local interpreter (``local``) and the
partitioned runners on Ray, imported on demand (they import Ray): ``ray_resident`` (``wb.RayRunner``:
one actor per partition holding its shards and intermediates across steps; ``ray_actor`` is the
actor) and ``ray`` (one task per node and partition, through the object store). ``batched`` runs
kernels over whole relations; ``partition`` hashes and splits relations into partitions."""
import os

# Ray resolves a loopback node address to the machine's external one unless this is off; with it
# off, every Ray server binds to 127.0.0.1. Read when ray is first imported, so it is set here,
# before any executor module can import ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from workbench.execute.base import Context, Executor, NodeStats  # noqa: E402
from workbench.execute.local import LocalContext, LocalExecutor  # noqa: E402

__all__ = ["Context", "Executor", "NodeStats", "LocalContext", "LocalExecutor"]
