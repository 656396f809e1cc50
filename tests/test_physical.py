"""Physical rewrites (PairJoin, JoinAggregate, aligned matches, shared one-tuple arguments) give
the same backward results as the logical plan run node by node."""
import numpy as np

import workbench as wb
from workbench import passes, programs, rjp
from workbench.execute import LocalExecutor

LOCAL = LocalExecutor()
from workbench.physical import JoinAggregate, PairJoin
from workbench.plan import toposort


def _grads(prog, optimize: bool):
    leaves, out = wb.trace(prog.fn, *prog.rels)
    ctx = LOCAL.context()
    loss = LOCAL.run([out.node], ctx, optimize=optimize)[0]
    nodes = rjp.backward(out.node, rjp.seed(out.node), [leaves[i].node for i in prog.argnums])
    return loss, nodes, LOCAL.run(nodes, ctx, optimize=optimize)


def test_backward_plans_use_the_fused_nodes(rng):
    for make in (programs.gcn, programs.blocked_matmul, programs.mlp):
        prog = make(rng)
        leaves, out = wb.trace(prog.fn, *prog.rels)
        nodes = rjp.backward(out.node, rjp.seed(out.node), [leaves[i].node for i in prog.argnums])
        physical, _ = passes.optimize(nodes, [r for r in passes.RULES if r is not passes.block_products])
        kinds = {type(n) for n in toposort(physical)}
        kinds |= {type(n.join) for n in toposort(physical) if isinstance(n, JoinAggregate)}
        assert PairJoin in kinds, make.__name__
        if make is not programs.mlp:
            assert JoinAggregate in kinds, make.__name__
        packs = [n for n in toposort(physical) if getattr(n, "label", None) == "pairs"]
        assert not packs  # the packed pairs are never built


def test_fused_backward_equals_the_logical_plan(rng):
    for make in programs.EXAMPLES:
        prog = make(rng)
        loss_a, _, fast = _grads(prog, optimize=True)
        loss_b, nodes, slow = _grads(prog, optimize=False)
        np.testing.assert_allclose(np.asarray(loss_a.values), np.asarray(loss_b.values), rtol=1e-12)
        for node, a, b in zip(nodes, fast, slow):
            ra, rb = (dict(zip(t.keys.rows(), np.asarray(t.values))) for t in (a, b))
            assert ra.keys() == rb.keys(), make.__name__
            for k in ra:
                np.testing.assert_allclose(ra[k], rb[k], rtol=1e-10, atol=1e-12)
