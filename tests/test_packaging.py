"""The project as a package (pyproject.toml): the `lim` console script beside `python -m engine`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def run(command: list[str], home: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "LIM_HOME": str(home)}, cwd=home.parent)


def test_the_lim_script_is_the_command_line(home):
    lim = shutil.which("lim", path=str(Path(sys.executable).parent))
    assert lim, "no lim script next to this Python: install the workbench (pip install -e .)"
    result = run([lim, "methods", "list", "--json"], home)
    assert result.returncode == 0, result.stderr
    methods = {m["name"]: m for m in json.loads(result.stdout)}
    assert {"full", "frozen-encoder", "lora", "qlora", "qlora-8bit", "adalora", "ia3"} <= set(methods)
    assert methods["lora"]["source"] == "built-in" and methods["lora"]["settings"]
    # the same answer as `python -m engine`, run from outside the repository
    assert json.loads(run([sys.executable, "-m", "engine", "methods", "list", "--json"], home).stdout) \
        == json.loads(result.stdout)
