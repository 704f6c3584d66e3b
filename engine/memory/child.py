"""The estimator process: ``python -m engine.memory.child`` reads one JSON request per line
on stdin and answers each with one JSON line on stdout (engine/memory/estimator.py starts it
and keeps it). Anything else written to stdout (a library's print) goes to stderr, so the
answers stay one per line."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

from engine import settings as settings_lib
from engine.memory.dryrun import estimate_training_memory
from engine.methods import get_method
from engine.models import task_model_for


def estimate_one(request: dict) -> dict | str:
    """One method's dry run (``request["method"]``: name and settings), or why there is none."""
    entry = request["method"]
    try:
        task_model = task_model_for(request["family"], request["task"], Path(request["model_dir"]),
                                    request["labels"], audio_padding=request.get("audio_padding", "30s"))
        method = get_method(entry["name"])
        settings = settings_lib.build(method.settings_cls, entry.get("settings"), section=method.name)
        return estimate_training_memory(
            task_model, method, settings, batch_size=request["batch_size"],
            seconds=request["seconds"], sequence_length=request["sequence_length"],
            gradient_checkpointing=bool(request.get("gradient_checkpointing")),
            precision=request["precision"]).as_dict()
    except Exception as error:  # the reason goes to the page; one method's failure is not others'
        return f"no estimate: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def serve() -> None:
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints (Python or C) go to stderr, never between the answers
    sys.stdout = sys.stderr
    warnings.filterwarnings("ignore")
    for line in sys.stdin:
        answers.write(json.dumps(estimate_one(json.loads(line))) + "\n")
        answers.flush()


if __name__ == "__main__":
    serve()
