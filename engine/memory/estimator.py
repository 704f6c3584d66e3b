"""The dry run (engine/memory/dryrun.py) in a process of its own, kept between estimates.

Fake tensors have crashed the interpreter in garbage collection when other threads were alive
(a Streamlit app, a training worker), so estimates never run in the asking process: a crash in
the estimator costs one method's estimate, never the app or a run. The estimator
(``python -m engine.memory.child``, JSON lines in and out) is started on the first request
and kept, so only the first estimate pays for importing torch, transformers and peft
(seconds); one that crashes or takes too long is stopped and the next request starts a fresh
one. It holds about a gigabyte (torch, transformers, peft), so it stops after
``IDLE_S`` without a request. Results are cached by request, the model by its config's content
(not its folder: a copied data home or a second registration of one model asks the same), so
the form, the pages and the submit check share one dry run per configuration.
"""

from __future__ import annotations

import copy
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from engine.memory.child import estimate_one

ROOT = Path(__file__).resolve().parents[2]  # the folder ``engine`` is imported from
CACHE_ENTRIES = 256
IDLE_S = 600.0  # an estimator unused this long is stopped (the next request starts one)
_lock = threading.Lock()  # one request at a time through the one estimator process
_process: subprocess.Popen | None = None
_answers: queue.Queue = queue.Queue()
_cache: dict[str, dict | str] = {}
_last_used = 0.0


def estimate_in_child(request: dict, timeout: float = 300) -> dict[str, dict | str]:
    """``request``: family, task, model_dir, model_config (the config's digest), labels, methods
    [{name, settings}], batch_size, seconds, sequence_length, precision, gradient_checkpointing,
    audio_padding ("30s" or "longest": Whisper's window is then ``seconds`` long). Returns
    method -> ``MemoryEstimate.as_dict()`` (``process_mb`` 0) or the reason there is none.

    A process with no other thread alive (the command line at submit) dry-runs here: the
    crashes were seen only beside other threads, and the estimator's start-up (seconds of
    imports) would double a ``train`` command's wait."""
    common = {key: value for key, value in request.items() if key != "methods"}
    keyed = {key: value for key, value in common.items() if key != "model_dir"}  # the config's digest stands for it
    results: dict[str, dict | str] = {}
    with _lock:
        for method in request["methods"]:
            key = json.dumps({**keyed, "method": method}, sort_keys=True, default=str)
            if key not in _cache:
                one = {**common, "method": method}
                alone = threading.active_count() == 1
                answer, keep = (estimate_one(one), True) if alone else _ask(one, timeout)
                if not keep:  # a timeout or a crash may not happen again
                    results[method["name"]] = answer
                    continue
                if len(_cache) >= CACHE_ENTRIES:
                    _cache.pop(next(iter(_cache)))
                _cache[key] = answer
            results[method["name"]] = copy.deepcopy(_cache[key])
    return results


def start_estimator() -> None:
    """Start the estimator process now (its imports take seconds), if it is not running."""
    with _lock:
        _running()


def _ask(request: dict, timeout: float) -> tuple[dict | str, bool]:
    """One answer from the estimator process, and whether it may be cached."""
    global _last_used
    process = _running()
    try:
        process.stdin.write(json.dumps(request, default=str) + "\n")
        process.stdin.flush()
        line = _answers.get(timeout=timeout)
    except queue.Empty:
        _stop()
        return f"no estimate: took longer than {timeout:.0f} s", False
    except OSError:
        line = None
    if line is None:  # the process ended (a crash in the dry run)
        _stop()
        return "no estimate: the estimator process stopped", False
    _last_used = time.monotonic()  # idle from the answer on, however long the dry run took
    return json.loads(line), True


def _running() -> subprocess.Popen:
    global _process, _answers, _last_used
    _last_used = time.monotonic()
    if _process is None or _process.poll() is not None:
        _process = subprocess.Popen([sys.executable, "-m", "engine.memory.child"], cwd=ROOT,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True)
        _answers = queue.Queue()
        threading.Thread(target=_read_answers, args=(_process.stdout, _answers), daemon=True,
                         name="lim-memory-estimator").start()
        threading.Thread(target=_stop_when_idle, args=(_process,), daemon=True,
                         name="lim-memory-estimator-idle").start()
    return _process


def _stop_when_idle(process: subprocess.Popen) -> None:
    while process.poll() is None:
        time.sleep(IDLE_S / 10)
        with _lock:
            if process is _process and time.monotonic() - _last_used > IDLE_S:
                _stop()


def _read_answers(stream, answers: queue.Queue) -> None:
    for line in stream:
        answers.put(line)
    answers.put(None)  # end of output: the process is gone


def _stop() -> None:
    global _process
    if _process is not None:
        _process.kill()
        _process.wait()
        _process = None
