"""workbench: differentiate machine-learning programs written in relational algebra."""
from workbench.api import clear_caches, grad, jit, plans, trace, value_and_grad, vjp
from workbench.errors import KernelError, PlanError, RelationError
from workbench.execute import Executor, LocalExecutor
from workbench.explore import explore
from workbench.kernels import Kernel
from workbench.ops import aggregate, join, select
from workbench.relation import Relation, from_frame, from_matrix, from_tensor, to_matrix
from workbench.rjp import RJP_RULES, backward, gradient_nodes, seed
from workbench.sql import SQLError, sql
from workbench.viz import Plan, Plans, render

__all__ = [
    "Relation", "from_tensor", "from_matrix", "from_frame", "to_matrix",
    "select", "join", "aggregate", "Plan", "Plans", "Kernel",
    "RelationError", "PlanError", "KernelError",
    "vjp", "grad", "value_and_grad", "jit", "plans", "trace", "backward", "gradient_nodes", "seed",
    "RJP_RULES", "Executor", "LocalExecutor", "render", "explore", "clear_caches",
    "sql", "SQLError",
]
__version__ = "0.1.0"
