"""``python -m engine ARGS`` for tests: in this process through ``engine.cli.main`` (a fresh
process costs ~10 s of importing torch and transformers on 2 cores), or as its own process
where the process is the point (``process=True``: exit codes of a real command, a kill)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]


def engine_command(*args: str, home: Path | None = None, input_text: str | None = None,
                   process: bool = False, timeout: float = 600) -> subprocess.CompletedProcess:
    """Exit status, standard output and standard error of ``python -m engine ARGS`` with
    ``LIM_HOME=home`` (the environment's own when None) and ``input_text`` as standard input."""
    env = {"HF_HUB_OFFLINE": "1", **({"LIM_HOME": str(home)} if home is not None else {})}
    if process:
        return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, env={**os.environ, **env},
                              input=input_text, capture_output=True, text=True, timeout=timeout)
    from engine.cli import main

    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, env), mock.patch("sys.stdin", io.StringIO(input_text or "")), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit:  # argparse's own errors
            code = exit.code
    return subprocess.CompletedProcess(["engine", *args], code, out.getvalue(), err.getvalue())
