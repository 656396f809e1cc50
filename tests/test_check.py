"""workbench.check finds agreement where there is agreement, and reports disagreement."""
import jax.numpy as jnp
import numpy as np
import pytest

import workbench as wb
from workbench import check, programs
from workbench.kernels import Kernel
from workbench.ops import join_node
from workbench.plan import Select
from workbench.rjp import RJP_RULES


@pytest.mark.parametrize("make", programs.EXAMPLES, ids=lambda m: m.__name__)
def test_example_programs_match_their_twins(make, rng):
    report = check.program_report(make(rng))
    assert report.ok, str(report)
    assert len(report.rows) == 1 + len(make(rng).argnums)


@pytest.mark.parametrize("make", programs.EXAMPLES, ids=lambda m: m.__name__)
def test_finite_differences_agree_with_the_rjp(make, rng):
    p = make(rng)
    report = check.finite_differences(p.fn, *p.rels, argnums=p.argnums)
    assert report.ok, str(report)


def test_a_wrong_twin_is_reported(rng):
    p = programs.blocked_matmul(rng)
    report = check.against_jax(p.fn, lambda a, b: jnp.sum((a @ b) ** 2) * 1.001, *p.rels,
                               dense_args=p.dense, layouts=p.layouts)
    assert not report.ok
    assert "NO" in str(report)


def test_a_wrong_rjp_rule_is_caught_by_finite_differences(rng, monkeypatch):
    """Break the Select rule (treat every kernel as if its derivative were 1): the check notices."""
    def broken(S, ct, wanted):
        keys = tuple((k, "left", k) for k in S.input.schema.keys)
        wrong = Kernel(lambda v, g: jnp.ones_like(v) * g, name="wrong", arity=2)
        return (join_node(S.input, ct, on=tuple((i, o) for o, i in S.keys), keys=keys, kernel=wrong),)

    f = lambda X: wb.aggregate(wb.select(X, kernel=lambda v: jnp.sum(jnp.sin(v))), by=())
    X = wb.from_tensor(rng.normal(size=(5, 3)), keys=("i",))
    assert check.finite_differences(f, X).ok
    monkeypatch.setitem(RJP_RULES, Select, broken)
    assert not check.finite_differences(f, X).ok


def test_non_scalar_output_uses_a_random_cotangent(rng):
    a, b = rng.normal(size=(4, 6)), rng.normal(size=(6, 4))
    A, B = wb.from_matrix(a, block=(2, 3)), wb.from_matrix(b, block=(3, 2))
    report = check.against_jax(programs.matmul, lambda a, b: a @ b, A, B,
                               layouts=("matrix", "matrix"), out_layout="matrix")
    assert report.ok, str(report)
    fd = check.finite_differences(programs.matmul, A, B)
    assert fd.ok, str(fd)


def test_report_renders_as_text_and_html(rng):
    report = check.program_report(programs.logistic_regression(rng))
    assert "grad Rt" in str(report) and "<table>" in report._repr_html_()


def test_assert_relations_equal_ignores_row_order_and_catches_differences():
    import polars as pl

    from workbench.check import assert_relations_equal

    def rel(ids, vals):
        return wb.from_frame(pl.DataFrame({"i": ids, "v": vals}), keys=("i",), value="v", extents=(5,))

    assert_relations_equal(rel([0, 1, 2], [1.0, 2.0, 3.0]), rel([2, 0, 1], [3.0, 1.0, 2.0]))
    with pytest.raises(AssertionError, match="at key"):
        assert_relations_equal(rel([0, 1, 2], [1.0, 2.0, 3.0]), rel([2, 0, 1], [3.0, 1.0, 2.5]))
    with pytest.raises(AssertionError, match="only in the first"):
        assert_relations_equal(rel([0, 1, 3], [1.0, 2.0, 3.0]), rel([0, 1, 2], [1.0, 2.0, 3.0]))
