"""The resident runner against the local executor on programs written by others: the contract
suite and two families of the random grid, run in a subprocess under the ``ray_compare`` plugin
(``tests/ray_compare.py``), which runs every plan on a resident runner too and compares the
results at 1e-9 (float64), whatever their row order."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parent.parent


def test_contract_and_a_grid_sample_match_the_local_executor(tmp_path):
    """In a subprocess: the contract suite and two families of the random grid, with every plan
    the local executor runs also run on a resident runner (2 partitions) and compared at 1e-9."""
    contract = ROOT.parent / "shared" / "contract"
    targets = [str(contract)] if contract.is_dir() else []
    targets += ["tests/test_rjp_grid.py::test_select_forms", "tests/test_rjp_grid.py::test_join"]
    log = tmp_path / "compared.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "RAY_COMPARE_LOG": str(log),
           "RAY_COMPARE_EVERY": "2"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           "-p", "ray_compare", *targets], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    compared = len(log.read_text().splitlines())
    assert compared >= 60, f"only {compared} runs were compared"
