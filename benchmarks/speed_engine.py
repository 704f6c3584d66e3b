"""The engine side of the training speed benchmark: a run's objects on the benchmark's batches.

The case's settings are built and checked as a run's are (``engine.settings.build`` of
``TrainingSettings`` and of the method's settings class); the model comes from
``build_method_model`` (the recipe's model builder) and its optimisation set-up from
``prepare_training`` (the recipe's: memory plan, checkpointing, compiled layers, AdamW,
schedule, scaler, autocast, CUDA graphs); ``TrainStep`` then trains as in a run. Only the
batches differ: synthetic, cut to the batch's longest clip for short audio and bucketed for CUDA
graphs as a run's collate does. benchmarks/multi_gpu.py drives ``run_engine`` on each rank.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from benchmarks.speed_cases import ENGINE_TRAINING, FROM_CASE, RENAMED, Case
from benchmarks.speed_timing import StepProfiler, timed_loop
from engine import settings as settings_lib
from engine.errors import SettingsError
from engine.memory import find_stacks
from engine.memory.plan import estimate_for
from engine.methods import get_method
from engine.methods.build import build_method_model
from engine.models.whisper import WhisperSpeechRecognition
from engine.training.settings import TrainingSettings
from engine.training.step import PreparedTraining, prepare_training

INPUTS = ("input_features", "labels")  # what a batch hands the model (the rest is bookkeeping)


def engine_settings(case: Case) -> tuple[TrainingSettings, Any]:
    """The case's ``TrainingSettings`` (``max_steps`` = warmup + steps) and method settings,
    built and checked as a run's are; a name neither knows fails here, naming the case and the
    name it probably meant."""
    method = get_method(case.method)
    every = [f.name for f in fields(TrainingSettings)]
    for name in case.training:
        problem = None
        if name in FROM_CASE:
            problem = f"{name} comes from the case ({FROM_CASE[name]}), not from training"
        elif name not in every:
            problem = f"training has no setting {name!r}{_hint(name, every)}"
        elif name not in ENGINE_TRAINING:
            problem = (f"training setting {name!r} never reaches the benchmark's steps (synthetic "
                       "batches, no evaluation, checkpoints or data loading)")
        if problem:
            raise SettingsError(f"benchmark case {case.name!r}: {problem}; training takes the "
                                f"TrainingSettings {', '.join(ENGINE_TRAINING)}")
    known = [f.name for f in fields(method.settings_cls)]
    for name in case.method_settings:
        if name not in known:
            raise SettingsError(f"benchmark case {case.name!r}: method_settings has no setting {name!r}"
                                f"{_hint(name, known)}; {case.method} takes {', '.join(known) or 'none'}")
    try:
        training = settings_lib.build(TrainingSettings, {**case.training, "max_steps": case.total_steps},
                                      section="training")
        method_settings = settings_lib.build(method.settings_cls, case.method_settings, section=case.method)
    except SettingsError as error:
        raise SettingsError(f"benchmark case {case.name!r}: {error}") from None
    return training, method_settings


def _hint(name: str, known: list[str]) -> str:
    if name in RENAMED:  # an option name of the benchmark's own: say where it went
        return f" (the benchmark's old option {name!r} is {RENAMED[name]} now)"
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_cases(cases: list[Case]) -> None:
    """Every case's settings, before anything is measured (``engine_settings`` says what is wrong)."""
    import torch._inductor.config as inductor_config

    for case in cases:
        engine_settings(case)
        unknown = [name for name in case.inductor if not hasattr(inductor_config, name)]
        if unknown:
            raise SettingsError(f"benchmark case {case.name!r}: {', '.join(unknown)} is not a "
                                "torch._inductor.config setting (name one of its attributes, e.g. fallback_random)")


@dataclass
class EngineSetup:
    task_model: WhisperSpeechRecognition
    model: Any
    prepared: PreparedTraining
    batches: list[dict]  # as the steps get them (cut, bucketed, pinned)
    settings: TrainingSettings


def setup_engine(case: Case, model_dir: Path, batches: list[dict], device: str,
                 parallel=None, log=None) -> EngineSetup:
    """The model and its optimisation set-up, built as a run builds them, and the batches as a
    run's collate hands them over."""
    config, method_settings = engine_settings(case)
    if config.compile_layers == "auto" and device.startswith("cuda"):
        # A case's few steps stand for the steady state of a long run, which "auto" compiles
        # (COMPILE_MIN_STEPS or more); compiling falls in the untimed warm-up steps.
        config = replace(config, compile_layers="on")
    if case.attention:  # for the whole child process: compiled layers and graphs keep this kernel
        pin_attention(case.attention)
    short = case.audio == "short"
    task_model = WhisperSpeechRecognition(model_dir, **({"audio_padding": "longest"} if short else {}))
    method = get_method(case.method)
    model = build_method_model(task_model, method, method_settings, family="whisper", device=device,
                               seed=config.seed, total_steps=config.max_steps,
                               gradient_checkpointing=config.gradient_checkpointing, log=log)
    if parallel is not None:  # as a run's ranks do
        parallel.broadcast_parameters([p for p in model.parameters() if p.requires_grad])
    if short:  # each batch padded to its longest clip (rounded to the conv stride)
        for batch in batches:
            longest = int(batch["frames"].max()) + int(batch["frames"].max()) % 2
            batch["input_features"] = batch["input_features"][..., :longest].contiguous()
    prepared = prepare_training(model, config, device, config.max_steps,
                                plan_batch=lambda: {k: batches[0][k] for k in INPUTS},
                                on_optimizer_step=method.on_optimizer_step, log=log,
                                parallel=parallel is not None)
    if case.inductor:  # after compile_layers' own choices; layers compile at their first call
        import torch._inductor.config as inductor_config

        for name, value in case.inductor.items():
            setattr(inductor_config, name, value)
    if prepared.step.graphs is not None:
        # as a run's collate does for CUDA graphs: a few shapes, each captured once
        batches = [{**b, **task_model.bucket({k: b[k] for k in INPUTS})} for b in batches]
    if device == "cuda":  # as a run's prefetcher does (and the reference's Trainer)
        batches = [{k: (v.pin_memory() if hasattr(v, "pin_memory") else v) for k, v in b.items()}
                   for b in batches]
    return EngineSetup(task_model, model, prepared, batches, config)


def run_engine(case: Case, model_dir: Path, batches, total_steps: int, device: str, window: int,
               parallel=None):
    """The engine side; with ``parallel`` (engine.training.parallel.DataParallel, under torchrun)
    one rank of a multi-GPU run, ``batches`` being its shard (benchmarks/multi_gpu.py)."""
    messages: list[str] = []
    setup = setup_engine(case, model_dir, batches, device, parallel=parallel, log=messages.append)
    assert setup.settings.max_steps == total_steps
    trainer, plan, batches = setup.prepared.step, setup.prepared.plan, setup.batches
    estimated = estimate_for(setup.model, {k: batches[0][k] for k in INPUTS},
                             (plan.micro_batch if plan else 0) or case.batch,
                             checkpoint_policy(setup.model), plan.offload if plan else False)
    setup.model.train()

    def step(batch, index):
        loss = trainer.forward_backward({k: batch[k] for k in INPUTS})
        if parallel is not None:  # every rank's gradients and loss averaged, as in a run
            loss = parallel.average(trainer.parameters, loss)
        trainer.optimizer_step(index + 1)
        return float(loss)

    profiler = StepProfiler(f"engine-{case.model}-{case.method}-{case.audio}-{case.label or 'default'}",
                            device)
    losses, elapsed, breakdown = timed_loop(step, batches, total_steps, case.warmup, device, profiler)
    short = case.audio == "short"
    frames = (sum(b["input_features"].shape[-1] for b in batches) / len(batches)) if short else window
    return {"losses": losses, "train_s": elapsed, "frames_per_sample": int(frames),
            "plan": plan.as_dict() if plan else None, "estimated_gib": estimated, "profile": breakdown,
            "cuda_graphs": {"captured": len(trainer.graphs.graphs), "replays": trainer.graphs.replays,
                            "messages": messages} if trainer.graphs else None}


def pin_attention(backend: str) -> None:
    """Let scaled-dot-product attention use ``backend`` (an ``SDPBackend`` name) and no other."""
    import torch

    flags = {"CUDNN_ATTENTION": torch.backends.cuda.enable_cudnn_sdp,
             "FLASH_ATTENTION": torch.backends.cuda.enable_flash_sdp,
             "EFFICIENT_ATTENTION": torch.backends.cuda.enable_mem_efficient_sdp,
             "MATH": torch.backends.cuda.enable_math_sdp}
    for name, enable in flags.items():
        enable(name == backend)


def checkpoint_policy(model) -> dict[str, int]:
    """Checkpointed layers per stack."""
    return {s.name: sum(bool(getattr(layer, "gradient_checkpointing", False)) for layer in s.layers)
            for s in find_stacks(model)}
