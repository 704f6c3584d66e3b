"""Checks made at submit, before anything trains: target modules and a memory estimate.

The model is built on the meta device from its config (``with torch.device("meta")``): no
weights are read or allocated, so listing its linear layers and counting parameters takes well
under a second even for large models.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from engine.methods.registry import MethodContext



def auto_class(task: str):
    """The transformers auto class that builds a model for ``task`` from its config."""
    from transformers import (AutoModelForAudioClassification, AutoModelForSequenceClassification,
                              AutoModelForSpeechSeq2Seq)

    return {"asr": AutoModelForSpeechSeq2Seq, "audio-classification": AutoModelForAudioClassification,
            "text-classification": AutoModelForSequenceClassification}[task]


@dataclass(frozen=True)
class ModelOutline:
    """What the checks need to know about a model, without its weights."""

    linear_shapes: dict[str, tuple[int, int]]  # qualified name -> (in_features, out_features)
    total_params: int
    module_params: dict[str, int]  # qualified module name -> its own parameter count
    hidden_size: int
    num_layers: int
    sequence_length: int

    @property
    def linear_module_names(self) -> list[str]:
        return list(self.linear_shapes)


@functools.lru_cache(maxsize=16)
def model_outline(model_dir: str, task: str, num_labels: int = 2) -> ModelOutline:
    # Imported by name, not as attributes of the lazy ``transformers`` module: in the app
    # that attribute lookup failed (AttributeError: no attribute 'AutoConfig').
    import torch
    from torch import nn
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    if task != "asr":
        config.num_labels = max(2, num_labels)
    # Not accelerate.init_empty_weights(): it patches nn.Module for the whole process, so a
    # model the worker thread loads meanwhile gets meta weights and its run fails. The
    # torch.device context is a torch-function mode, which is per thread.
    with torch.device("meta"):
        model = auto_class(task).from_config(config)
    linear = {name: (m.in_features, m.out_features) for name, m in model.named_modules()
              if isinstance(m, nn.Linear)}
    own = {name: sum(p.numel() for p in m.parameters(recurse=False)) for name, m in model.named_modules()}
    get = lambda *names: next((getattr(config, n) for n in names if getattr(config, n, None)), 0)  # noqa: E731
    layers = (get("encoder_layers") + get("decoder_layers")) or get("num_hidden_layers")
    return ModelOutline(linear_shapes=linear, total_params=sum(p.numel() for p in model.parameters()),
                        module_params=own, hidden_size=get("d_model", "hidden_size"),
                        num_layers=layers or 1,
                        sequence_length=get("max_source_positions", "max_position_embeddings") or 512)


def check_target_modules(method_settings, outline: ModelOutline, task_model_cls) -> None:
    """Raise (naming ``target_modules``) when a method targets layers the model lacks."""
    if not isinstance(getattr(method_settings, "target_modules", None), str):
        return
    from engine.methods.lora import resolve_targets

    context = MethodContext.for_task_model(task_model_cls,
                                           linear_module_names=outline.linear_module_names)
    resolve_targets(method_settings, context)


def trainable_estimate(method: str, method_settings, outline: ModelOutline, task_model_cls) -> int:
    """Parameters the method will train: LoRA's r·(in+out) per targeted layer plus the task
    heads, every parameter for full fine-tuning, 1 % for methods this cannot know."""
    heads = sum(count for name, count in outline.module_params.items()
                if any(part in task_model_cls.head_modules for part in name.split(".")))
    rank = getattr(method_settings, "r", None)
    if method == "full":
        return outline.total_params
    if rank is None:
        return max(1, outline.total_params // 100) + heads
    targets = [t.strip() for t in (method_settings.target_modules or "").split(",") if t.strip()] \
        or task_model_cls.default_target_modules
    adapted = [shape for name, shape in outline.linear_shapes.items()
               if targets == ["all-linear"] or name.rsplit(".", 1)[-1] in targets]
    return sum(rank * (fan_in + fan_out) for fan_in, fan_out in adapted) + heads


def memory_plan(method: str, method_settings, training: dict, outline: ModelOutline,
                task_model_cls, device: str) -> dict:
    """The estimate of ``engine.training.memory`` for this configuration, with its inputs."""
    from engine.training.memory import estimate_run_memory_mb

    quantized = 0
    if method == "qlora":
        keep = set(task_model_cls.unquantized_modules)
        quantized = sum(i * o for name, (i, o) in outline.linear_shapes.items()
                        if not keep & set(name.split(".")))
    precision = training.get("precision", "auto")
    half = precision in ("bf16", "fp16") or (precision == "auto" and device.startswith("cuda"))
    plan = estimate_run_memory_mb(
        total_params=outline.total_params,
        trainable_params=trainable_estimate(method, method_settings, outline, task_model_cls),
        quantized_params=quantized,
        quantized_format=getattr(method_settings, "bnb_4bit_quant_type", "nf4"),
        batch_size=int(training.get("per_device_train_batch_size", 8)),
        sequence_length=outline.sequence_length, hidden_size=outline.hidden_size,
        num_layers=outline.num_layers, activation_bytes=2.0 if half else 4.0,
        gradient_checkpointing=bool(training.get("gradient_checkpointing")), device=device)
    return plan


def outline_for(model_dir: Path, task: str, labels: list[str] | None) -> ModelOutline:
    return model_outline(str(model_dir), task, len(labels or []))


def memory_check(method: str, method_settings, training: dict, outline: ModelOutline,
                 task_model_cls) -> dict:
    """The estimate against the memory free now: estimate_mb, free_mb, fits, a message."""
    import torch

    from engine.training.memory import free_memory_mb

    device = "cuda" if torch.cuda.is_available() else "cpu"
    plan = memory_plan(method, method_settings, training, outline, task_model_cls, device)
    free = free_memory_mb(device)
    budget_mb = float(training.get("memory_budget_gb") or 0) * 1024
    estimate = min(plan["total_mb"], budget_mb) if budget_mb else plan["total_mb"]
    fits = estimate <= free
    message = f"estimated memory {estimate:,.0f} MiB on {device}, {free:,.0f} MiB free"
    if budget_mb and budget_mb < plan["total_mb"]:
        message += (f" (the memory planner fits the run into memory_budget_gb="
                    f"{budget_mb / 1024:g}; it says at the start what it chose)")
    if not fits and budget_mb:
        message = (f"this configuration will probably not fit: {message}. Lower memory_budget_gb "
                   f"to at most {free / 1024:.1f} (the memory free now)")
    elif not fits:
        message = (f"this configuration will probably not fit: {message}. Set memory_budget_gb "
                   "(the planner picks micro-batch, checkpointing and offload), lower "
                   "per_device_train_batch_size or use qlora")
    return {"estimate_mb": estimate, "free_mb": free, "fits": fits, "device": device,
            "breakdown": plan, "message": message}
