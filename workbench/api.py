"""The differentiation API: trace a program, derive its backward plan (``workbench.rjp``), and run
both on an executor: ``vjp``, ``grad``, ``value_and_grad`` and ``plans``.

Every function takes ``executor=`` (default: the local interpreter; e.g.
``workbench.execute.ray.RayRunner``). Importing this module makes the local executor the default
one, which ``Relation.to_tensor`` and friends use.
"""
from __future__ import annotations

import inspect
import operator
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from workbench import kernels, passes, relation, sparse
from workbench.execute import batched, compiled
from workbench.errors import PlanError
from workbench.execute import Executor, LocalExecutor
from workbench.execute.compiled import CompiledPlan
from workbench.ops import select_node
from workbench.plan import Node, Scan
from workbench.relation import Relation
from workbench.rjp import gradient_nodes, seed
from workbench.viz import Plan, Plans

LOCAL = LocalExecutor()
relation.set_default_executor(LOCAL)


def _arg_names(f: Callable, n: int) -> list[str]:
    try:
        params = [p.name for p in inspect.signature(f).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"arg{i}" for i in range(n)]


def trace(f: Callable, *rels: Relation, what: str = "trace") -> tuple[list[Relation], Relation]:
    """Call ``f`` on fresh TableScans of the arguments, each named after ``f``'s parameter, so
    each argument is a leaf of the plan. Returns (the leaves, ``f``'s output relation)."""
    for i, r in enumerate(rels):
        if not isinstance(r, Relation):
            raise TypeError(f"{what}: argument {i} is a {type(r).__name__}, not a workbench Relation")
    names = _arg_names(f, len(rels))
    leaves = [Relation(Scan(r.schema, r.table(), name=n)) for r, n in zip(rels, names)]
    with relation.tracing([leaf.node for leaf in leaves]):
        out = f(*leaves)
    if not isinstance(out, Relation):
        raise TypeError(f"{what}: the program returned {type(out).__name__}; it must return one "
                        f"workbench Relation (its loss or output).")
    return leaves, out


def _check_scalar(out: Relation, what: str) -> None:
    if out.keys or out.value_shape:
        raise ValueError(
            f"{what} needs a scalar loss (no keys, value shape ()), but the program returned a "
            f"relation with keys {out.keys} and value shape {out.value_shape}. Reduce it with "
            f"wb.aggregate(wb.select(R, kernel=jnp.sum), by=()), or use wb.vjp with a cotangent.")


def check_argnums(argnums, n: int, what: str) -> tuple[int, ...]:
    """``argnums`` (an int or a sequence of ints) as indices into ``n`` arguments."""
    if isinstance(argnums, bool) or not isinstance(argnums, (int, tuple, list)):
        raise TypeError(f"{what}: argnums must be an int or a tuple of ints (argument positions), "
                        f"got {argnums!r} ({type(argnums).__name__}); e.g. argnums=(0, 1)")
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    for a in nums:
        if isinstance(a, bool) or not isinstance(a, int):
            raise TypeError(f"{what}: argnums must hold ints (argument positions), got {a!r} "
                            f"({type(a).__name__}) in {argnums!r}")
        if not -n <= a < n:
            raise ValueError(f"{what}: argnums {argnums} is out of range for {n} argument(s)")
    return tuple(operator.index(a) % n for a in nums)


def _executor(executor, what: str) -> Executor:
    if executor is None:
        return LOCAL
    if not isinstance(executor, Executor):
        raise TypeError(f"{what}: executor must be a workbench executor (LocalExecutor, "
                        f"RayRunner), got {type(executor).__name__}")
    return executor


def _gradients(ex: Executor, ctx, out: Relation, seed_node: Node, leaves, nums) -> list[Relation]:
    nodes = gradient_nodes(out.node, seed_node, [leaves[i].node for i in nums])
    tables = ex.run(nodes, ctx)
    return [Relation.computed(node, table) for node, table in zip(nodes, tables)]


def vjp(f: Callable, *rels: Relation, executor: Executor | None = None):
    """``(out, pullback)``: ``pullback(G_out)`` returns one gradient relation per argument."""
    ex = _executor(executor, "vjp")
    leaves, out = trace(f, *rels, what="vjp")
    ctx = ex.context()
    out = Relation.computed(out.node, ex.run([out.node], ctx)[0])

    def pullback(cotangent: Relation):
        if not isinstance(cotangent, Relation):
            raise TypeError(f"pullback: the cotangent must be a Relation, got {type(cotangent).__name__}")
        if set(cotangent.keys) != set(out.keys) or cotangent.value_shape != out.value_shape:
            raise PlanError(f"pullback: the cotangent {cotangent.schema.describe()} must have the "
                            f"output's keys and value shape {out.schema.describe()}")
        if cotangent.dtype != out.dtype:
            raise PlanError(f"pullback: cotangent dtype {cotangent.dtype} differs from the output's "
                            f"{out.dtype}")
        seed_node = cotangent.node
        if cotangent.keys != out.keys:
            seed_node = select_node(seed_node, keys=tuple((k, k) for k in out.keys))
        return tuple(_gradients(ex, ctx, out, seed_node, leaves, range(len(leaves))))

    return out, pullback


class Differentiated:
    """What ``value_and_grad`` and ``grad`` return: a callable ``(*rels) -> (loss, grads)`` (or
    grads), which ``jit`` compiles."""

    def __init__(self, f: Callable, argnums, executor: Executor | None, with_value: bool):
        self.f, self.argnums, self.with_value = f, argnums, with_value
        self.executor = _executor(executor, "value_and_grad" if with_value else "grad")

    def __call__(self, *rels: Relation):
        what = "value_and_grad" if self.with_value else "grad"
        nums = check_argnums(self.argnums, len(rels), what)
        leaves, out = trace(self.f, *rels, what=what)
        _check_scalar(out, "grad")
        ex = self.executor
        ctx = ex.context()
        out = Relation.computed(out.node, ex.run([out.node], ctx)[0])
        ctx.last = True  # the backward is the last run: intermediates can go after their last read
        grads = _gradients(ex, ctx, out, seed(out.node), leaves, nums)
        ex.finish(ctx, [r.table() for r in (out, *grads)])  # the forward's intermediates can go
        grads = grads[0] if isinstance(self.argnums, int) else tuple(grads)
        return (out, grads) if self.with_value else grads


def value_and_grad(f: Callable, argnums: int | Sequence[int] = 0,
                   executor: Executor | None = None) -> Differentiated:
    """``f(*rels) -> (loss, grads)``; grads is one relation, or a tuple when argnums is a tuple."""
    return Differentiated(f, argnums, executor, with_value=True)


def grad(f: Callable, argnums: int | Sequence[int] = 0, executor: Executor | None = None) -> Differentiated:
    """The gradient of a scalar relational loss with respect to the ``argnums`` arguments."""
    return Differentiated(f, argnums, executor, with_value=False)


def plans(f: Callable, *rels: Relation, argnums: int | Sequence[int] = 0,
          analyze: bool = False, executor: Executor | None = None) -> Plans:
    """The forward plan of ``f`` and the backward plan that computes the gradients of ``argnums``.
    A non-scalar output is seeded with a cotangent of ones. With ``analyze``, both plans are run
    and every node is annotated with its row count, wall time and output size (EXPLAIN ANALYZE)."""
    ex = _executor(executor, "plans")
    nums = check_argnums(argnums, len(rels), "plans")
    leaves, out = trace(f, *rels, what="plans")
    nodes = gradient_nodes(out.node, seed(out.node), [leaves[i].node for i in nums])
    names = _arg_names(f, len(rels))
    stats = tables = None
    if analyze:
        ctx = ex.context(stats={})
        ex.run([out.node], ctx)
        ex.run(nodes, ctx)
        stats, tables = ctx.stats, ctx.memo
    forward = Plan((out.node,), ("out",), "forward", stats=stats, tables=tables)
    back = Plan(tuple(nodes), tuple(f"grad {names[i]}" for i in nums), "backward",
                forward=forward, stats=stats, tables=tables)
    return Plans(forward, back)


def clear_caches() -> None:
    """Forget every compiled kernel, inferred shape, recognized rewrite and sparse matrix (for
    memory; results never depend on these caches, see the README on kernels)."""
    for module in (kernels, batched, compiled, passes, sparse):
        module.clear_cache()


# ---- compiled steps ------------------------------------------------------------------------------

@dataclass(eq=False)
class _Template:
    """A program traced and differentiated once: its argument leaves, output nodes (the value,
    then the gradients), the argument each output is aligned with, and loop-invariant tables."""

    leaves: list
    nodes: list
    aligned: list
    invariants: dict


class Compiled:
    """``jit(fn)``: ``fn`` (a relational program, or ``value_and_grad`` / ``grad`` of one) traced,
    differentiated and planned once per argument signature, then run as one XLA program.

    The signature of an argument is its schema and its key frame: a relation built from another
    by ``with_values`` (a parameter after an optimizer step, a fresh dropout mask) shares its key
    frame, so the key plan (joins, group ids) is reused and only values move. As with
    ``jax.jit``, whatever ``fn`` captures (relations, arrays, kernel state) is a constant of the
    compiled program: pass what changes from step to step as an argument. ``timings`` tells
    where the time of the last plan built went."""

    def __init__(self, fn: Callable, max_plans: int = 8, prune: bool = True):
        if isinstance(fn, Differentiated):
            if not isinstance(fn.executor, LocalExecutor):
                raise TypeError(f"jit: compiles programs for one process; {type(fn.executor).__name__} "
                                f"runs its own plans (call the function without jit)")
            self.f, self.argnums, self.grads, self.with_value = fn.f, fn.argnums, True, fn.with_value
        elif callable(fn):
            self.f, self.argnums, self.grads, self.with_value = fn, None, False, True
        else:
            raise TypeError(f"jit: expects a relational program or wb.value_and_grad / wb.grad of "
                            f"one, got {type(fn).__name__}")
        self.max_plans, self.prune = max_plans, prune
        self._plans: dict = {}  # signature -> (key frames kept alive, plan, output nodes)
        self._templates: dict = {}  # argument schemas -> _Template
        self.timings = None

    def _signature(self, tables) -> tuple:
        return tuple((id(t.keys), t.height) for t in tables)

    def _template(self, rels):
        """The traced and differentiated program for these arguments' schemas, made once: (the
        leaves, the output nodes, their alignment, the loop-invariant tables so far). New keys of
        the same schemas (a new batch) reuse it: they are neither traced nor derived again, its
        invariant subplans are computed once, and plans of one shape share one executable
        without tracing (``CompiledPlan(program=...)``)."""
        schemas = tuple(r.schema for r in rels)
        found = self._templates.get(schemas)
        if found is not None:
            return found, 0.0
        start = time.perf_counter()
        leaves, out = trace(self.f, *rels, what="jit")
        nodes, aligned = [out.node], [None]
        if self.grads:
            nums = check_argnums(self.argnums, len(rels), "jit")
            _check_scalar(out, "grad")
            nodes += gradient_nodes(out.node, seed(out.node), [leaves[i].node for i in nums])
            aligned += list(nums)
        template = _Template([leaf.node for leaf in leaves], nodes, aligned, {})
        self._templates[schemas] = template
        while len(self._templates) > self.max_plans:
            self._templates.pop(next(iter(self._templates)))
        return template, time.perf_counter() - start

    def _build(self, rels, tables):
        template, traced = self._template(rels)
        # the template's leaves over these arguments' tables (their keys drive the key plan)
        fresh = {leaf: Scan(leaf.schema, t, name=leaf.name) for leaf, t in zip(template.leaves, tables)}
        new = passes.map_nodes(template.nodes, lambda n: fresh.get(n, n))
        nodes = [new[n] for n in template.nodes]
        align = [None if i is None else tables[i] for i in template.aligned]
        plan = CompiledPlan(nodes, [fresh[leaf] for leaf in template.leaves], align, prune=self.prune,
                            program=template, invariants=template.invariants)
        plan.timings.trace = traced
        return plan, nodes

    def __call__(self, *rels: Relation):
        for i, r in enumerate(rels):
            if not isinstance(r, Relation):
                raise TypeError(f"jit: argument {i} is a {type(r).__name__}, not a workbench Relation")
        tables = [r.table() for r in rels]
        sig = self._signature(tables)
        entry = self._plans.get(sig)
        if entry is None or any(k is not t.keys for k, t in zip(entry[0], tables)):
            plan, nodes = self._build(rels, tables)
            entry = ([t.keys for t in tables], plan, nodes)
            self._plans[sig] = entry
            while len(self._plans) > self.max_plans:
                self._plans.pop(next(iter(self._plans)))
        _, plan, nodes = entry
        self.timings = plan.timings
        results = plan([t.values for t in tables])
        rels_out = [Relation.computed(n, t) for n, t in zip(nodes, results)]
        if not self.grads:
            return rels_out[0]
        grads = rels_out[1] if isinstance(self.argnums, int) else tuple(rels_out[1:])
        return (rels_out[0], grads) if self.with_value else grads


def jit(fn: Callable, prune: bool = True) -> Compiled:
    """Compile a relational program, or ``wb.value_and_grad`` / ``wb.grad`` of one, into one XLA
    program per argument signature: ``step = wb.jit(wb.value_and_grad(loss, argnums=(1, 2)))``.
    ``prune``: compute only the rows of each intermediate that reach the outputs (semi-join
    reduction). Its row counts depend on the data, so with arguments whose keys change every
    call (fresh negative samples) ``prune=False`` keeps the program's shapes, and so its XLA
    compile, the same from call to call."""
    return Compiled(fn, prune=prune)
