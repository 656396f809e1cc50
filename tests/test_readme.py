"""The README's opening example runs, and prints what its comments say it prints."""
import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def _prints_what_it_shows(code: str):
    expected = [m.group(1).strip() for line in code.splitlines()
                if line.lstrip().startswith("print(") and (m := re.search(r"#\s*(.+)$", line))]
    assert expected, "the example shows no printed output"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    printed = out.getvalue().split("\n")[: len(expected)]
    assert len(printed) == len(expected)
    for got, want in zip(printed, expected):
        if re.fullmatch(r"-?\d+\.\d+(e-?\d+)?", want):
            assert abs(float(got) - float(want)) <= 1e-9 * abs(float(want)), (got, want)
        else:
            assert got == want


def test_opening_example_prints_what_it_shows():
    _prints_what_it_shows(re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1))


def test_sql_example_prints_what_it_shows():
    section = README.read_text().split("\n## SQL\n", 1)[1]
    _prints_what_it_shows(re.search(r"```python\n(.*?)```", section, re.S).group(1))


def test_plan_listing_in_the_readme_is_current():
    listing = re.search(r"\(`forward.to_text\(\)`\):\n\n```\n(.*?)```", README.read_text(), re.S).group(1)
    golden = (Path(__file__).parent / "golden" / "matmul_forward.txt").read_text()
    assert listing.strip() == golden.strip()
