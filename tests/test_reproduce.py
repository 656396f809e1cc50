"""The paper's figures (``workbench.reproduce``): the measuring pieces, and quick runs that
write each figure's picture, numbers and summary (the runner's figures start and stop Ray in
their own processes)."""
import csv

import jax
import numpy as np

import workbench as wb
from workbench import grid, reproduce
from workbench.datasets import graphs

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


def _rows(path):
    rows = list(csv.DictReader(open(path)))
    for r in rows:
        for k in ("oom", "timeout", "over_machine"):
            r[k] = r[k] == "True"
        for k in ("seconds", "process_mb", "driver_mb", "actor_mb", "cap_mb", "first_loss"):
            r[k] = float(r[k])
        r["partitions"] = int(r["partitions"])
    return rows


def _check_measurements(rows, parts):
    """Every run finished or was marked; a mark only where a process passed the cap; the
    runner's first loss is the local executor's (the same program on the same data)."""
    for r in rows:
        assert r["process_mb"] > 0
        assert r["oom"] == (r["process_mb"] > r["cap_mb"]), r
        if not (r["oom"] or r["timeout"] or r["over_machine"]):
            assert r["seconds"] > 0 and np.isfinite(r["first_loss"])
        if r["system"] == "runner" and not r["oom"]:
            assert 0 < r["driver_mb"] <= r["process_mb"] and 0 < r["actor_mb"] <= r["process_mb"]
    assert sorted(r["partitions"] for r in rows if r["system"] == "runner") == sorted(parts)
    local = next(r for r in rows if r["system"] == "local")
    for r in rows:
        if np.isfinite(r["first_loss"]):
            assert abs(r["first_loss"] - local["first_loss"]) <= 1e-4 * abs(local["first_loss"]), r


def test_quick_scaling_and_other_models_figures_are_written(tmp_path):
    """The two figures that need the resident runner: each starts Ray in its own process and
    stops it; the numbers are sane for every graph size, data size and partition count."""
    scaling, others = reproduce.reproduce(tmp_path, quick=True, only=["scaling", "other_models"])
    for fig in (scaling, others):
        assert fig.png.stat().st_size > 10_000
    rows = _rows(scaling.csv)
    scales = sorted({r["scale"] for r in rows})
    assert len(scales) == 2
    for s in scales:
        mine = [r for r in rows if r["scale"] == s]
        assert {r["system"] for r in mine} == {"local", "jax", "runner"}
        _check_measurements(mine, (1, 2))
    text = scaling.md.read_text()
    assert "≈295" in text and "runner P=2" in text and "capped at" in text
    rows = _rows(others.csv)
    assert {r["model"] for r in rows} == {"nnmf", "kge"}
    for model in ("nnmf", "kge"):
        for size in {r["size"] for r in rows if r["model"] == model}:
            _check_measurements([r for r in rows if r["model"] == model and r["size"] == size], (2,))
    assert "1.9 billion" in others.md.read_text()
    summary = (tmp_path / "paper_summary.md").read_text()
    assert summary.index("paper_scaling.png") < summary.index("paper_other_models.png")


def test_a_baseline_over_the_cap_is_marked_out_of_memory(tmp_path):
    """A cap below what a Python process with JAX holds: the GCN baseline is killed and marked."""
    path = tmp_path / "g"
    graphs.rmat_dataset(path, 8, 4, 8, 4, partitions=2)
    r = reproduce._one_process("gcn", path, 8, "local", 1, cap_mb=150)
    assert r["oom"] and r["process_mb"] > 150 and not np.isfinite(r["seconds"])
    r = reproduce._one_process("gcn", path, 8, "jax", 1, cap_mb=4096)
    assert not r["oom"] and r["seconds"] > 0 and len(r["losses"]) == 2


def test_quick_width_and_embedding_size_figures_are_written(tmp_path, monkeypatch):
    """The two one-process figures at their quick sizes: every system measured at every width
    (or marked out of memory), and a trained model's MRR at every embedding size."""
    width, kge_width = reproduce.reproduce(tmp_path, quick=True, only=["width", "kge_width"])
    rows = list(csv.DictReader(open(width.csv)))
    assert {(x["system"], x["hidden"]) for x in rows} == {
        (s, h) for s in reproduce.WIDTH_SYSTEMS for h in ("64", "256", "1024")}
    for x in rows:
        assert x["oom"] == "True" or (float(x["peak_mb"]) > 0 and float(x["step_seconds"]) > 0)
    rows = list(csv.DictReader(open(kge_width.csv)))
    assert [int(x["dim"]) for x in rows] == [16, 64]
    assert all(0.0 < float(x["mrr"]) <= 1.0 for x in rows)
    assert width.png.stat().st_size > 10_000 and kge_width.png.stat().st_size > 10_000
    # a second run resumes from the journal of trained rows: nothing is trained again
    def no_training(*args, **kwargs):
        raise AssertionError("kge_width trained a row its journal already holds")
    monkeypatch.setattr(reproduce.kge, "train", no_training)
    again = reproduce.kge_width(tmp_path, quick=True)
    assert [(r["dim"], r["mrr"]) for r in again.rows] == [(int(x["dim"]), float(x["mrr"])) for x in rows]


def test_a_child_of_a_large_process_reports_its_own_peak():
    """The measured process reports its own peak, not its parent's: ``ru_maxrss`` keeps the
    high-water mark across ``execve``, so a measurement started from a large test process would
    look as large as the test process."""
    ballast = bytearray(1 << 30)
    ballast[::4096] = b"1" * len(ballast[::4096])  # 1 GiB resident in this process
    child = ("import json\nfrom workbench.reproduce import own_peak_mb\n"
             "print(json.dumps(dict(peak_mb=own_peak_mb())))")
    result = reproduce.run_capped(child, cap_mb=4096)
    assert result["peak_mb"] < 900, result
    del ballast
