"""Where a run's numbers came from: the code, the libraries, the device and the data.

The recipe writes ``runs/<id>/provenance.json`` when a run starts (beside the method's report,
``method_report.json``, and the evaluation files):

    {"commit": "3db2bb2…", "dirty": false,            # a git checkout of the code, or
     "version": "0.1.0",                               # the installed package's version
     "packages": {"python": "3.12.3", "torch": "2.11.0", "transformers": "5.23.0", ...},
     "device": {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "capability": "9.0",
                "cuda": "13.0", "processes": 1},
     "data_fingerprint": {"dataset": "demo-voices", "version": "…", "items": {"train": 320, …}},
     "model": {"name": "whisper-base", "source": "…"}, "started_at": "…"}

A resumed run keeps what its first start recorded and adds each later start that differs
(another commit, library or device) under ``resumed``: one run trained on two machines says so.
``read_provenance`` reads it back (None for runs started before it was recorded).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from engine.names import PROVENANCE_FILE
from storage import utc_now

DISTRIBUTION = "lessismore-workbench"
# The libraries a result depends on (absent ones are left out).
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "tokenizers", "numpy",
            "scipy", "jiwer", "ctranslate2")
CODE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding engine/, storage/, ui/
# What must match for a resumed start to count as the same setting (else it is recorded).
COMPARED = ("commit", "dirty", "version", "packages", "device")


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """``{"commit", "dirty"}`` of the git checkout the code runs from, else ``{"version"}``
    of the installed package (a wheel, a container without .git). Read once per process: the
    code a process runs is the code it imported, whatever the checkout says later.

    ``LIM_SOURCE_COMMIT`` names the commit a copied working tree came from where the copy
    carries no history of its own (the lent GPU machine gets the tree, not the repository): it is
    recorded as ``commit``, with ``commit_from: "LIM_SOURCE_COMMIT"`` and what the copy's own
    git says under ``checkout``, so a reader sees the commit was declared, not read."""
    declared = os.environ.get("LIM_SOURCE_COMMIT", "").strip()
    if declared:
        found = _git_checkout()
        return {"commit": declared, "commit_from": "LIM_SOURCE_COMMIT",
                **({"checkout": found} if found else {})}
    found = _git_checkout()
    if found:
        return found
    try:
        return {"version": version(DISTRIBUTION)}
    except PackageNotFoundError:
        return {"version": None}


def _git_checkout() -> dict | None:
    try:
        commit = subprocess.run(["git", "-C", str(CODE_ROOT), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(CODE_ROOT), "status", "--porcelain",
                                  "--untracked-files=no"], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.strip()
        return {"commit": commit, "dirty": bool(changed)}
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def device_description(device: str, processes: int = 1) -> dict:
    """The device a run trains on: a CUDA GPU's name, compute capability and CUDA version, or
    the CPU's name and cores; ``processes``: how many train it together (one per GPU)."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        return {"type": "cuda", "name": torch.cuda.get_device_name(index),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(index))),
                "cuda": torch.version.cuda, "processes": processes}
    return {"type": device.split(":")[0], "name": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "processes": processes}


def collect(run: dict, dataset: dict, model: dict, items: dict[str, int], device: str,
            processes: int = 1) -> dict:
    """What ``provenance.json`` holds for ``run`` (its record) on ``dataset`` and ``model``
    (their records), with ``items`` per split, trained on ``device``."""
    return {**code_version(), "packages": package_versions(),
            "device": device_description(device, processes),
            "data_fingerprint": {"dataset": dataset["name"], "version": run.get("dataset_version"),
                                 "items": items},
            "model": {"name": model["name"], "source": model.get("source")},
            "started_at": utc_now()}


def record_start(run_dir: Path, now: dict) -> dict:
    """Write ``now`` as the run's provenance, or, for a resumed run, keep the first record and
    add ``now`` under ``resumed`` when its code, libraries or device differ. Returns what is
    stored."""
    path = run_dir / PROVENANCE_FILE
    stored = read_provenance(run_dir)
    if stored is None:
        stored = now
    else:
        latest = (stored.get("resumed") or [stored])[-1]
        if any(latest.get(key) != now.get(key) for key in COMPARED):
            stored.setdefault("resumed", []).append({key: now.get(key) for key in (*COMPARED, "started_at")})
    run_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(stored, indent=2))
    partial.replace(path)  # never half-written
    return stored


def read_provenance(run_dir: Path) -> dict | None:
    path = run_dir / PROVENANCE_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
