"""The compiled executor against the interpreter on programs written by others: the contract suite
and the operator and autodiff tests, run in a subprocess under the ``compiled_compare`` plugin
(``tests/compiled_compare.py``), which runs every plan a second time compiled (every stored
relation an argument of one XLA program) and compares the results at 1e-9 (float64), whatever
their row order."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_contract_and_autodiff_tests_match_the_interpreter(tmp_path):
    contract = ROOT.parent / "shared" / "contract"
    targets = [str(contract)] if contract.is_dir() else []
    targets += ["tests/test_autodiff.py", "tests/test_operators.py"]
    log = tmp_path / "compared.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "COMPILED_COMPARE_LOG": str(log)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           "-p", "compiled_compare", *targets], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    compared = len(log.read_text().splitlines())
    assert compared >= 100, f"only {compared} runs were compared"
