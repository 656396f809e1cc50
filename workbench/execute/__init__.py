"""Executors behind one protocol (``base.Executor``): the local interpreter (``local``) and the
partitioned runner on Ray (``ray``, imported on demand: it starts Ray). ``batched`` runs kernels
over whole relations; ``partition`` hashes and splits relations into partitions."""
import os

# Ray resolves a loopback node address to the machine's external one unless this is off; with it
# off, every Ray server binds to 127.0.0.1. Read when ray is first imported, so it is set here,
# before any executor module can import ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from workbench.execute.base import Context, Executor, NodeStats  # noqa: E402
from workbench.execute.local import LocalContext, LocalExecutor  # noqa: E402

__all__ = ["Context", "Executor", "NodeStats", "LocalContext", "LocalExecutor"]
