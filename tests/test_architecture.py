"""The house stays one-way: import-linter's contracts (pyproject.toml) and ruff, run by the suite."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["pages", "ui", "benchmarks", "engine", "storage"]


def lint_imports(folder: Path) -> subprocess.CompletedProcess:
    """import-linter's command line on ``folder`` (the contracts in its pyproject.toml)."""
    return subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         "--no-cache"], cwd=folder, capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 kept, 0 broken" in result.stdout


def test_the_contracts_catch_an_arrow_back_up(tmp_path):
    """The contracts are not vacuous: a copy of the sources with arrows added back fails them."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__", "results"))
    shutil.copy2(ROOT / "pyproject.toml", tmp_path)
    arrows = {
        "engine/models/whisper.py": "from engine.training import recipe\n",  # models <-> training
        "engine/series.py": "from engine.workbench import Workbench\n",  # module -> facade
        "engine/export/artifacts.py": "from engine.export import onnx\n",  # a cycle in export
        "storage/files.py": "import streamlit\n",
        "storage/schema.py": "from engine import errors\n",  # storage -> engine
        "ui/dataset_views.py": "from storage import Storage\n",
        "benchmarks/dataset_import.py": "from ui import state\n",
        "benchmarks/speed_cases.py": "from engine.training import settings\n",  # reference -> engine
    }
    for file, line in arrows.items():
        with (tmp_path / file).open("a") as handle:
            handle.write(line)

    report = lint_imports(tmp_path).stdout
    assert "0 kept, 7 broken" in report, report
    for arrow in ["storage.schema -> engine.errors",
                  "engine.models.whisper -> engine.training.recipe", "engine.series -> engine.workbench",
                  "storage.files -> streamlit", "ui.dataset_views -> storage",
                  "benchmarks.dataset_import -> ui.state",
                  "benchmarks.speed_cases -> engine.training.settings"]:
        assert arrow in report, arrow
    assert "No cycles are allowed in engine.export" in report


def test_engine_modules_take_narrow_arguments_not_the_workbench():
    """Below the facade, modules get records, paths or the storage, never the Workbench to call
    back into (an arrow up that no import shows); only the command line above it takes one."""
    above_the_facade = {ROOT / "engine" / "__main__.py", *(ROOT / "engine" / "cli").rglob("*.py")}
    offenders = []
    for path in sorted((ROOT / "engine").rglob("*.py")):
        if path in above_the_facade or (ROOT / "engine" / "workbench") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {node.name}({a.arg})"
                              for a in arguments if a.arg in ("workbench", "wb")]
    assert not offenders, offenders


def test_ruff_passes():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
