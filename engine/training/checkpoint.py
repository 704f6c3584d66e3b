"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG and loop position.

Layout of ``runs/<id>/checkpoint/``:
  trainable.safetensors   every parameter with requires_grad (LoRA weights, heads, or all)
  optimizer.pt            optimizer.state_dict(), tensors only: loaded with weights_only=True
  state.json              step, micro-batch count, wall time, scheduler state, RNG states

The folder is written beside the old one and swapped in with a rename, so a crash while saving
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CHECKPOINT = "checkpoint"


def save_checkpoint(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, state: dict) -> Path:
    final = run_dir / CHECKPOINT
    staging = run_dir / f"{CHECKPOINT}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    trainable = {name: p.detach().to("cpu").contiguous()
                 for name, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, staging / "trainable.safetensors")
    torch.save(optimizer.state_dict(), staging / "optimizer.pt")
    full_state = {
        **state,
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state().tolist(),
        "cuda_rng": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    (staging / "state.json").write_text(json.dumps(full_state))
    if final.exists():
        old = run_dir / f"{CHECKPOINT}.old"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(final)
    return final


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / CHECKPOINT / "state.json").is_file()


def load_checkpoint(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler) -> dict:
    """Restore everything saved by ``save_checkpoint``; returns the loop state."""
    folder = run_dir / CHECKPOINT
    weights = load_file(folder / "trainable.safetensors")
    parameters = dict(model.named_parameters())
    missing = [name for name in weights if name not in parameters]
    if missing:
        raise RuntimeError(f"checkpoint does not match the model (e.g. {missing[0]})")
    with torch.no_grad():
        for name, tensor in weights.items():
            parameters[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    state = json.loads((folder / "state.json").read_text())
    scheduler.load_state_dict(state.pop("scheduler"))
    torch.set_rng_state(torch.tensor(state.pop("torch_rng"), dtype=torch.uint8))
    cuda_rng = state.pop("cuda_rng")
    if cuda_rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in cuda_rng])
    return state
