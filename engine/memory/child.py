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
from engine.names import WHOLE_WINDOW


def estimate_one(request: dict) -> dict | str:
    """One method's dry run (``request["method"]``: name and settings), or why there is none."""
    entry = request["method"]
    try:
        task_model = task_model_for(request["family"], request["task"], Path(request["model_dir"]),
                                    request["labels"], audio_padding=request.get("audio_padding", WHOLE_WINDOW))
        method = get_method(entry["name"])
        settings = settings_lib.build(method.settings_cls, entry.get("settings"), section=method.name)
        return estimate_training_memory(
            task_model, method, settings, batch_size=request["batch_size"],
            seconds=request["seconds"], sequence_length=request["sequence_length"],
            gradient_checkpointing=bool(request.get("gradient_checkpointing")),
            precision=request["precision"]).as_dict()
    except Exception as error:  # the reason goes to the page; one method's failure is not others'
        return f"no estimate: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def end_with_parent(poll_seconds: float = 2.0) -> None:
    """End this process once the one that started it is gone (reparented): the app or command
    that asked for estimates was killed, and a dry run may still be working. Polling the parent
    id, not Linux's parent-death signal: that fires when the *thread* that started the child
    ends, and a Streamlit script thread ends after every rerun."""
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(0)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def serve() -> None:
    end_with_parent()
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints (Python or C) go to stderr, never between the answers
    sys.stdout = sys.stderr
    warnings.filterwarnings("ignore")
    for line in sys.stdin:
        answers.write(json.dumps(estimate_one(json.loads(line))) + "\n")
        answers.flush()


if __name__ == "__main__":
    serve()
