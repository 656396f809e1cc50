"""The paper's figures (``workbench.reproduce``): the measuring pieces, and a quick run of the
figures that need no cluster, which writes each figure's picture, numbers and summary."""
import csv

import jax

import workbench as wb
from workbench import grid, reproduce

jax.config.update("jax_enable_x64", True)


def test_grid_programs_are_drawn_deterministically_and_measured():
    first, again = grid.draw_programs(6), grid.draw_programs(6)
    assert len(first) == 6
    assert [repr(p) for p in first] == [repr(p) for p in again]
    for metas, spec, seed, density in first:
        err64 = grid.measure(metas, spec, seed, density, dtype="float64")
        err32 = grid.measure(metas, spec, seed, density, dtype="float32")
        if err64 is None:
            continue
        assert err64 < 1e3 * reproduce.EPS["float64"]
        assert err32 < 1e3 * reproduce.EPS["float32"]


def test_a_wrong_result_shows_as_a_large_error(monkeypatch):
    """The measure can fail: a relational side 1% off its twin is reported 1% off."""
    (metas, spec, seed, density), = grid.draw_programs(1, seed=3)
    relational = grid.run_relational
    monkeypatch.setattr(grid, "run_relational",
                        lambda s, rels: wb.select(relational(s, rels), kernel=lambda v: 1.01 * v))
    assert abs(grid.measure(metas, spec, seed, density) - 0.01) < 1e-6


def test_a_process_over_its_memory_cap_is_killed_and_marked():
    grow = "import time\nx = bytearray(400 * 2**20)\nx[::4096] = b'1' * len(x[::4096])\ntime.sleep(5)\nprint('{}')"
    result = reproduce.run_capped(grow, cap_mb=200)
    assert result["oom"] and result["peak_mb"] > 200
    small = "import json\nprint(json.dumps({'seconds': 1.5}))"
    result = reproduce.run_capped(small, cap_mb=2000)
    assert not result["oom"] and result["seconds"] == 1.5


def test_quick_rjp_figure_is_written(tmp_path):
    figures = reproduce.reproduce(tmp_path, quick=True, only=["rjp_vjp"])
    (fig,) = figures
    assert fig.png.stat().st_size > 10_000
    rows = list(csv.DictReader(open(fig.csv)))
    assert {r["dtype"] for r in rows} == {"float64", "float32"}
    for r in rows:
        assert float(r["max_relative_error"]) < 1e3 * reproduce.EPS[r["dtype"]]
    assert "largest / machine epsilon" in fig.md.read_text()
    assert (tmp_path / "paper_summary.md").read_text().count("paper_rjp_vjp.png") == 1
