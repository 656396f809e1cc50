"""`python -m workbench check`: the verdict of a row against its reference and tolerance, the
exit status (a row short of its reference fails the check), the table, the figures, and one real
check (logistic regression, a few seconds) through the command line."""
import math

import pytest

from workbench import references as R
from workbench.cli import main


def _row(value, reference=0.5, tol=R.Tolerance(0.03), **kw):
    return R.Row("M", "D", "metric", value, reference, "src", tol, seconds=1.0, **kw)


@pytest.mark.parametrize("value, ok", [(0.5, True), (0.9, True), (0.471, True), (0.469, False),
                                       (float("nan"), False)])
def test_higher_is_better_absolute_tolerance(value, ok):
    assert _row(value).ok is ok
    assert (_row(value).verdict == "meets") is ok


@pytest.mark.parametrize("value, ok", [(100.0, True), (50.0, True), (100.99, True), (101.01, False)])
def test_lower_is_better_relative_tolerance(value, ok):
    tol = R.Tolerance(0.01, higher_is_better=False, relative=True)
    assert _row(value, reference=100.0, tol=tol).ok is ok


def test_tolerance_is_stated():
    assert R.Tolerance(0.03).text() == "within 0.03 of the reference or above"
    assert R.Tolerance(0.01, False, True).text() == "within 1% of the reference or below"
    assert R.Tolerance(0.0).text() == "the reference or above"
    assert R.Tolerance(0.03).bound(0.5) == pytest.approx(0.47)


def test_a_short_row_fails_the_check():
    assert R.verdicts([_row(0.5), _row(0.6)]) == 0
    assert R.verdicts([_row(0.5), _row(0.2)]) == 1
    assert R.verdicts([]) == 1  # nothing checked is not a pass
    short = _row(0.2)
    assert short.verdict.startswith("SHORT by") and math.isclose(float(short.verdict.split()[-1]), 0.3)


def test_run_prints_the_table_and_returns_the_status():
    lines = []
    checks = {"good": lambda opt: [_row(0.51)], "bad": lambda opt: [_row(0.1)]}
    status, rows = R.run(["good"], R.Options(figures=None), checks=checks, out=lines.append)
    assert status == 0 and len(rows) == 1
    status, rows = R.run(["good", "bad"], R.Options(figures=None), checks=checks, out=lines.append)
    assert status == 1 and [r.ok for r in rows] == [True, False]
    text = "\n".join(lines)
    for column in ("model", "data", "metric", "workbench", "reference (source)", "tolerance", "verdict"):
        assert column in text
    assert "SHORT by" in text and "1 of 2 rows meet their reference" in text


def test_check_names():
    assert R.select_checks(None) == list(R.CHECKS)
    assert R.select_checks(["transe"]) == ["transe-l1-nations", "transe-l1-umls", "transe-l1-kinships"]
    assert R.select_checks(["umls"]) == ["transe-l1-umls", "distmult-umls"]
    assert set(R.CHECKS) >= {"logreg", "gcn", "nnmf", "nmf"}
    assert {k for k in R.KGE_SETTINGS} == {k for k in R.KGE_REFERENCES}
    with pytest.raises(ValueError, match="unknown check"):
        R.select_checks(["svm"])


def test_figure_has_the_reference_line(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    fig = R.draw([R.Curve("loss", "loss", [1, 2, 3], [3.0, 2.0, 1.0]),
                  R.Curve("acc", "accuracy", [1, 2, 3], [0.5, 0.8, 0.9], 0.95, "reference")],
                 "title", tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0
    lines = fig.axes[1].get_lines()
    assert any(list(line.get_ydata()) == [0.95, 0.95] for line in lines)


def test_logreg_check_through_the_command_line(capsys, tmp_path):
    assert main(["check", "logreg", "--no-progress", "--figures", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "breast cancer" in out and "scikit-learn" in out and "2 of 2 rows meet" in out
    assert (tmp_path / "check_logreg_breast_cancer.png").exists()
