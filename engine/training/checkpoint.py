"""Resumable checkpoints: trainable weights, optimizer, scheduler, scaler, RNG and loop position.

Layout: ``runs/<id>/checkpoints/checkpoint-<step>/`` (transformers' naming), each holding
  trainable.safetensors   every parameter with requires_grad (LoRA weights, heads, or all)
  optimizer.pt            optimizer.state_dict(), tensors only: loaded with weights_only=True
  state.json              step, micro-batch count, wall time, scheduler and gradient-scaler
                          state, callback state, RNG states (torch, CUDA, Python, NumPy)

A checkpoint is written to ``checkpoint-<step>.partial`` and renamed into place, so a crash
while saving leaves the previous one intact; the newest ``save_total_limit`` are kept. Nothing
is unpickled: weights are safetensors, the optimizer file is read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from engine.errors import RunError
from engine.names import CHECKPOINTS_DIR

LEGACY_CHECKPOINT = "checkpoint"  # the single folder of the walking skeleton
_NAME = re.compile(r"^checkpoint-(\d+)$")


def save_checkpoint(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, state: dict, scaler=None, keep: int = 0) -> Path:
    """Write ``checkpoint-<state['step']>`` and drop all but the newest ``keep`` (0: keep all)."""
    root = run_dir / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"checkpoint-{state['step']}"
    staging = root / f"{final.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    trainable = {name: p.detach().to("cpu").contiguous()
                 for name, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, staging / "trainable.safetensors")
    torch.save(optimizer.state_dict(), staging / "optimizer.pt")
    full_state = {**state, "scheduler": scheduler.state_dict(),
                  "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_state()}
    (staging / "state.json").write_text(json.dumps(full_state))
    if final.exists():  # a replayed step after a resume: replace the old copy
        shutil.rmtree(final)
    staging.rename(final)
    prune(root, keep)
    return final


def prune(root: Path, keep: int) -> None:
    if keep <= 0:
        return
    for old in checkpoints(root.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = run_dir / CHECKPOINTS_DIR
    found = [(int(m.group(1)), path) for path in root.glob("checkpoint-*")
             if (m := _NAME.match(path.name)) and (path / "state.json").is_file()] if root.is_dir() else []
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    if found:
        return found[-1]
    legacy = run_dir / LEGACY_CHECKPOINT
    return legacy if (legacy / "state.json").is_file() else None


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, scaler=None) -> dict:
    """Restore everything saved by ``save_checkpoint``; returns the loop and callback state."""
    weights = load_file(folder / "trainable.safetensors")
    parameters = dict(model.named_parameters())
    missing = [name for name in weights if name not in parameters]
    if missing:
        raise RunError(f"the checkpoint in {folder.name} does not match the model (it has "
                       f"{missing[0]}, the model does not): the model or the method's settings "
                       "changed since it was saved; start a new run instead of resuming")
    with torch.no_grad():
        for name, tensor in weights.items():
            parameters[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    state = json.loads((folder / "state.json").read_text())
    scheduler.load_state_dict(state.pop("scheduler"))
    scaler_state = state.pop("scaler", None)
    if scaler is not None and scaler_state:
        scaler.load_state_dict(scaler_state)
    if "rng" in state:
        set_rng_state(state.pop("rng"))
    else:  # legacy layout: torch RNG only
        torch.set_rng_state(torch.tensor(state.pop("torch_rng"), dtype=torch.uint8))
        state.pop("cuda_rng", None)
    return state


def rng_state() -> dict:
    """Every random generator a step may draw from: dropout and masking (torch), CUDA
    kernels, and Python / NumPy for any library code that uses them."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "python": _jsonable(random.getstate()),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))


def restore_rank_rng(states: list[dict], rank: int, seed: int, step: int, log: Callable[..., None]) -> None:
    """Every rank continues its own random stream (rank 0's is the checkpoint's ``rng``):
    ``states`` are every rank's, as the checkpoint of a multi-GPU run holds them."""
    if rank < len(states):
        set_rng_state(states[rank])
    else:  # resumed with more processes than the checkpoint saw
        torch.manual_seed(seed * 1000 + rank + 7919 * step)
        log(f"the checkpoint has no random state for rank {rank}; it draws a fresh one", "warning")


def _jsonable(value):
    return [_jsonable(v) for v in value] if isinstance(value, tuple) else value
