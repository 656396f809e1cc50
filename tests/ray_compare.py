"""A pytest plugin (``-p ray_compare`` with ``tests/`` on the path) that runs every plan a test
suite runs on the local executor a second time on a resident Ray runner (2 partitions, started
once per session), and fails the run unless both give the same tuples with values within 1e-9
(relative; float64), whatever their row order. The local results are what the tests then see, so
the suite's own checks still hold; ``tests/test_ray_resident.py`` runs the contract suite and a
sample of the random grid under it. ``RAY_COMPARE_LOG`` names a file that gets one line per
compared run; ``RAY_COMPARE_EVERY=k`` compares every k-th run only (a sample, for time)."""
import os

import jax
import pytest

jax.config.update("jax_enable_x64", True)

from workbench import api  # noqa: E402
from workbench.check import assert_relations_equal  # noqa: E402
from workbench.execute.local import LocalExecutor  # noqa: E402
from workbench.execute.ray_resident import ResidentRunner  # noqa: E402


class Comparing(LocalExecutor):
    """The local executor, checked run by run against the resident runner."""

    def __init__(self, runner):
        super().__init__()
        self.runner = runner
        self.compared = 0
        self.seen = 0
        self.every = int(os.environ.get("RAY_COMPARE_EVERY", "1"))

    def context(self, stats=None):
        ctx = super().context(stats)
        ctx.ray = self.runner.context()
        return ctx

    def run(self, outputs, ctx=None, optimize=True):
        ctx = ctx if ctx is not None else self.context()
        want = super().run(outputs, ctx, optimize)
        self.seen += 1
        if (self.seen - 1) % self.every and not getattr(ctx, "compared", False):
            return want
        ctx.compared = True  # a backward run is compared when its forward run was
        try:
            got = self.runner.run(outputs, ctx.ray, optimize)
        except Exception as exc:  # the runner must not fail where the local executor succeeds
            raise AssertionError(f"the resident runner failed where the local executor ran: "
                                 f"{type(exc).__name__}: {exc}") from exc
        for g, w in zip(got, want):
            assert_relations_equal(g.table(), w, rtol=1e-9, atol=1e-12)
        self.compared += 1
        log = os.environ.get("RAY_COMPARE_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{len(outputs)} output(s) equal\n")
        return want


@pytest.fixture(scope="session", autouse=True)
def _compare_with_the_resident_runner():
    with ResidentRunner(partitions=2, num_cpus=2) as runner:
        comparing = Comparing(runner)
        local, api.LOCAL = api.LOCAL, comparing
        try:
            yield comparing
        finally:
            api.LOCAL = local
