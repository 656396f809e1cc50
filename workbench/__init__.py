"""workbench: differentiate machine-learning programs written in relational algebra."""
import importlib

from workbench.api import clear_caches, grad, jit, plans, trace, value_and_grad, vjp
from workbench.errors import KernelError, PlanError, RelationError
from workbench.execute import Executor, LocalExecutor
from workbench.explore import explore
from workbench.kernels import Kernel
from workbench.ops import aggregate, join, select
from workbench.relation import Relation, from_dataset, from_frame, from_matrix, from_tensor, to_matrix
from workbench.rjp import RJP_RULES, backward, gradient_nodes, seed
from workbench.sql import SQLError, sql
from workbench.viz import Plan, Plans, render

__all__ = [
    "Relation", "from_tensor", "from_matrix", "from_frame", "from_dataset", "to_matrix", "RayRunner",
    "select", "join", "aggregate", "Plan", "Plans", "Kernel",
    "RelationError", "PlanError", "KernelError",
    "vjp", "grad", "value_and_grad", "jit", "plans", "trace", "backward", "gradient_nodes", "seed",
    "RJP_RULES", "Executor", "LocalExecutor", "render", "explore", "clear_caches",
    "sql", "SQLError",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``wb.RayRunner``: the partitioned runner with resident partitions
    (``workbench.execute.ray_resident.ResidentRunner``), imported on first use (it imports Ray)."""
    if name == "RayRunner":
        return importlib.import_module("workbench.execute.ray_resident").ResidentRunner
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
