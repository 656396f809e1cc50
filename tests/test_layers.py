"""The package's layering holds: the import-linter contracts in pyproject.toml are kept, and no
module imports another workbench module from inside a function (where the linter's view of the
layers would still see it, but a reader would not)."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "workbench"


def test_import_linter_contracts_are_kept():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe is not None, "lint-imports is missing: install the dev extra (pip install -e '.[dev]')"
    proc = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def _function_level_imports(source: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("workbench"):
                    found.append((inner.lineno, inner.module))
                elif isinstance(inner, ast.Import):
                    found += [(inner.lineno, a.name) for a in inner.names if a.name.startswith("workbench")]
    return found


def test_no_workbench_import_inside_a_function():
    offenders = {str(p.relative_to(ROOT)): _function_level_imports(p.read_text())
                 for p in PACKAGE.rglob("*.py")}
    assert {p: f for p, f in offenders.items() if f} == {}


def test_the_import_scan_sees_a_function_level_import():
    assert _function_level_imports("def f():\n    from workbench import api\n") == [(2, "workbench")]
