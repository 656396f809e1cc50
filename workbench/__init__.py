"""workbench: differentiate machine-learning programs written in relational algebra."""
from workbench.errors import KernelError, PlanError, RelationError
from workbench.ops import aggregate, join, select
from workbench.plan import Plan, Plans
from workbench.relation import Relation, from_frame, from_matrix, from_tensor, to_matrix

__all__ = [
    "Relation", "from_tensor", "from_matrix", "from_frame", "to_matrix",
    "select", "join", "aggregate", "Plan", "Plans",
    "RelationError", "PlanError", "KernelError",
]
__version__ = "0.1.0"
from workbench.rjp import RJP_RULES, backward, grad, plans, value_and_grad, vjp  # noqa: E402

__all__ += ["vjp", "grad", "value_and_grad", "plans", "backward", "RJP_RULES"]
from workbench.viz import explore, render  # noqa: E402

__all__ += ["render", "explore"]
