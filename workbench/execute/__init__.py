"""Executors behind one protocol (``base.Executor``): the local interpreter (``local``) and the
partitioned runner on Ray (``ray``, imported on demand: it starts Ray). ``batched`` runs kernels
over whole relations; ``partition`` hashes and splits relations into partitions."""
from workbench.execute.base import Context, Executor, NodeStats
from workbench.execute.local import LocalContext, LocalExecutor

__all__ = ["Context", "Executor", "NodeStats", "LocalContext", "LocalExecutor"]
