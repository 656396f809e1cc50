"""A pytest plugin (``-p compiled_compare`` with ``tests/`` on the path) that runs every plan a
test suite runs on the local executor a second time compiled (``CompiledPlan``: the key plan once,
the values as one XLA program, every stored relation an argument), and fails the run unless both
give the same tuples with values within 1e-9 (relative; float64), whatever their row order. The
interpreter's results are what the tests then see, so the suite's own checks still hold;
``tests/test_compiled_compare.py`` runs the contract suite under it. ``COMPILED_COMPARE_LOG``
names a file that gets one line per compared run."""
import os

import jax
import pytest

jax.config.update("jax_enable_x64", True)

from workbench import api, relation  # noqa: E402
from workbench.check import assert_relations_equal  # noqa: E402
from workbench.execute.compiled import CompiledPlan  # noqa: E402
from workbench.execute.local import LocalExecutor  # noqa: E402
from workbench.plan import Scan, toposort  # noqa: E402


class Comparing(LocalExecutor):
    """The interpreter, checked run by run against the compiled executor."""

    def run(self, outputs, ctx=None, optimize=True):
        want = super().run(outputs, ctx, optimize)
        scans = [n for n in toposort(list(outputs)) if isinstance(n, Scan)]
        try:
            plan = CompiledPlan(list(outputs), scans)
            got = plan([s.table.values for s in scans])
        except Exception as exc:  # compiled must not fail where the interpreter succeeds
            raise AssertionError(f"the compiled executor failed where the interpreter ran: "
                                 f"{type(exc).__name__}: {exc}") from exc
        for g, w in zip(got, want):
            assert_relations_equal(g, w, rtol=1e-9, atol=1e-12)
        log = os.environ.get("COMPILED_COMPARE_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{len(outputs)} output(s) equal\n")
        return want


@pytest.fixture(scope="session", autouse=True)
def _compare_with_the_compiled_executor():
    local, api.LOCAL = api.LOCAL, Comparing()
    relation.set_default_executor(api.LOCAL)  # relations read lazily are compared too
    try:
        yield
    finally:
        api.LOCAL = local
        relation.set_default_executor(local)
