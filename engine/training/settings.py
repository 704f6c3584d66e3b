"""A run's settings: ``TrainingSettings`` (shared by every method; names follow transformers'
TrainingArguments) and ``RunSettings``, the one object a run's settings travel in (method and
its settings, task, training), with ``split_settings`` routing flat ``key=value`` settings.

Every field has a default and a help text: the Training page builds its form from them and
``--set key=value`` parses them. ``validate()`` refuses combinations no run could train with,
so a bad value is answered at submit, naming the field, never as a traceback mid-run.

A stored run's settings are read only through ``RunSettings.from_record`` (or, where the method
is not needed, ``stored_training``): a key an older run did not store gets the dataclass
default here, never a copy of the default where it is read.

    settings = RunSettings.from_record(run)        # a runs row or a run summary
    settings.training.max_steps, settings.method_settings.r, settings.task_options()
    record = settings.with_changes({"r": 16}).to_record()   # method, task, settings
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from transformers.models.whisper.tokenization_whisper import LANGUAGES

from engine import settings as settings_lib
from engine.errors import SettingsError
from engine.methods import get_method
from engine.models import TASK_NAMES
from engine.names import AUDIO_PADDINGS, WHOLE_WINDOW
from engine.settings import setting

_ENDPOINT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]*:\d{1,5}")  # host:port, nothing else on a command line


@dataclass
class TrainingSettings:
    num_train_epochs: float = setting(5.0, "Passes over the training split (ignored when max_steps > 0).", min=0.0,
                                     max=100_000.0)
    max_steps: int = setting(-1, "Optimizer steps to run; -1: use num_train_epochs.", min=-1,
                             max=10_000_000)
    per_device_train_batch_size: int = setting(8, "Examples per forward pass.", min=1, max=4096)
    per_device_eval_batch_size: int = setting(16, "Examples per evaluation batch.", min=1, max=4096)
    gradient_accumulation_steps: int = setting(1, "Forward passes summed into one optimizer step "
                                               "(effective batch = batch size × this).", min=1, max=4096)
    learning_rate: float = setting(1e-3, "Peak learning rate of AdamW.", max=10.0)
    lr_scheduler_type: str = setting("linear", "How the learning rate changes after warmup.",
                                     choices=["linear", "cosine", "constant", "constant_with_warmup"])
    warmup_steps: int = setting(0, "Steps of linear warmup from 0 to the learning rate.", min=0,
                                max=10_000_000)
    weight_decay: float = setting(0.0, "AdamW weight decay.", min=0.0, max=10.0)
    max_grad_norm: float = setting(1.0, "Clip the gradient norm to this (0: no clipping).", min=0.0,
                                   max=1e6)
    seed: int = setting(42, "Seed for weights of new heads, data order, dropout and masking.", min=0,
                       max=2**32 - 1)  # NumPy's seed range
    eval_steps: int = setting(20, "Evaluate on the validation split every N steps (0: only at the end).", min=0,
                            max=10_000_000)
    eval_on_start: bool = setting(
        False, "Score the untouched model before the first step, on the validation split and on "
        "the test split when there is one: the validation curve then starts at the zero-shot "
        "score, and the finished run shows its final score before and after, on one split. "
        "Costs an evaluation of each split.")
    early_stopping_patience: int = setting(
        0, "Stop when the validation metric (WER for speech, accuracy for labels) has not "
        "improved for this many evaluations in a row (0: never stop early). Needs eval_steps > 0.",
        min=0, max=10_000)
    save_steps: int = setting(20, "Save a resumable checkpoint every N steps (0: only on stop).", min=0,
                            max=10_000_000)
    save_total_limit: int = setting(2, "Checkpoints to keep (the newest); 0: keep all.", min=0, max=10_000)
    precision: str = setting("auto", "Compute precision: auto is bf16 autocast on a GPU that "
                             "supports it, fp32 on CPU; fp16 uses a gradient scaler.",
                             choices=["auto", "fp32", "bf16", "fp16"])
    gradient_checkpointing: bool = setting(
        False, "Recompute activations in backward: far less memory, slower (whisper-small QLoRA "
        "on an H100: 1.4× slower, a fifth of the memory; docs/benchmarks.md).")
    memory_budget_gb: float = setting(
        0.0, "Fit training into this much accelerator memory (GiB; 0: no cap). A planner picks "
        "the micro-batch (gradients of the split batch are summed, so results match), which "
        "layers recompute their activations, and activation offload to host memory, and logs "
        "what it chose. It overrides gradient_checkpointing.", min=0.0, max=100_000.0)
    compile_layers: str = setting(
        "auto", "Compile each transformer layer with torch.compile (fuses norms, activations and "
        "residual adds: 18-24 % faster steps on an H200). auto: on a CUDA GPU for runs of 1,000 "
        "steps or more (compiling takes half a minute or more per batch shape, which a shorter "
        "run does not win back), off on a CPU. The first batch of each shape is slower while it "
        "compiles; compiled kernels are kept in the data home for later runs.",
        choices=["auto", "on", "off"])
    cuda_graphs: str = setting(
        "auto", "Record each batch shape's forward and backward pass as a CUDA graph after two "
        "eager steps and replay it: the step then takes as long as its GPU kernels, not as long "
        "as Python takes to launch them (whisper-small QLoRA on an H100: 2.8-3.8× faster; "
        "docs/benchmarks.md). "
        "Batches are padded to a few shapes for it: label width to a multiple of 64 tokens (16 "
        "with short windows) and text to a multiple of 16 tokens (masked: the loss is unchanged), short-audio windows to "
        "whole seconds (a little more trailing silence). auto: on a CUDA GPU, without activation "
        "offload or an fp16 gradient scaler; off: never.",
        choices=["auto", "off"])
    feature_cache_mb: float = setting(
        1024.0, "Keep encoded training examples (log-mel features, token ids) in memory across "
        "epochs, up to this many MiB: later epochs skip audio decoding and feature extraction "
        "(0: encode every time).", min=0.0, max=10_000_000.0)
    prefetch_batches: int = setting(
        2, "Build this many next batches (audio decoding, log-mel features) in a background "
        "thread while the current step runs (0: build each batch when the step needs it). The "
        "batches are the same either way.", min=0, max=64)
    feature_device: str = setting(
        "auto", "Where 30 s log-mel features are computed while training: auto: per batch on the "
        "GPU when training on one (transformers' torch STFT path; equal to the CPU's features "
        "within float tolerance, and the cache keeps waveforms), else per item on the CPU; cpu: "
        "always per item on the CPU. Short windows (audio_padding=longest) stay on the CPU.",
        choices=["auto", "cpu"])
    dataloader_num_workers: int = setting(
        0, "Processes that decode audio and extract features for training while the model "
        "trains (0: on the prefetch thread, see prefetch_batches). Each one is a process with its own memory, so "
        "small boards keep 0; once the feature cache holds every item, none are started.",
        min=0, max=64)
    spec_augment: bool = setting(False, "SpecAugment for audio: mask random frequency bands and "
                                 "time spans of the log-mel features while training (never at evaluation).")
    freq_mask_param: int = setting(15, "SpecAugment: widest frequency band masked (mel bins).", min=0, max=128)
    time_mask_param: int = setting(40, "SpecAugment: longest time span masked (frames, 10 ms each).", min=0,
                                  max=3000)
    max_time_minutes: float = setting(0.0, "Stop with a checkpoint after this many minutes of "
                                      "training (resume continues); 0: no time limit.",
                                      max=60 * 24 * 365.0)
    generation_max_length: int = setting(48, "Longest transcript generated at evaluation (speech recognition).",
                                         min=1, max=448)
    generation_cache: str = setting(
        "dynamic", "The decoder's key/value cache while transcribing at evaluation (speech "
        "recognition): dynamic grows with each token; static is allocated once for "
        "generation_max_length tokens, and on a GPU transformers then compiles the decoder "
        "step (the first evaluation pays the compiling). The same greedy transcripts either way.",
        choices=["dynamic", "static"])
    full_window_every: int = setting(
        8, "With audio_padding=longest: every Nth batch is padded to the model's whole window "
        "(30 s), the rest to their longest clip (0: never). A model trained on short windows "
        "only is about twice as wrong under the standard 30 s inference every exported model "
        "gets (whisper-base on demo-voices: 7.0 % WER against 3.5 % on its own windows); a few "
        "whole windows keep it right there, for a fraction of the speed-up (docs/benchmarks.md).",
        min=0, max=4096)
    language: str = setting(
        "en", "Whisper: the language spoken (its code: en, de, fr, ...). Training labels, "
        "evaluation, the Playground and exports all put <|language|><|task|> after "
        "<|startoftranscript|>, as Whisper was pretrained; English-only models (tiny-whisper, "
        "*.en) have no such tokens and take only en.", choices=list(LANGUAGES))
    task: str = setting(
        "transcribe", "Whisper: transcribe (text in the spoken language) or translate (into "
        "English). Used alike for labels, evaluation, the Playground and exports.",
        choices=["transcribe", "translate"])
    audio_padding: str = setting(
        WHOLE_WINDOW, "Whisper input length. 30s: every clip padded to the model's whole window (30 s; "
        "5 s for tiny-whisper), as Whisper was pretrained. longest: each batch padded to its "
        "longest clip (plus a few silent frames, rounded to an even frame count for the "
        "encoder's stride-2 convolution), and the encoder runs on that window only, its "
        "positional embedding sliced to match: several times faster for 1-5 s clips; the model "
        "has to adapt to the shorter context. Evaluation and the Playground use the run's choice.",
        choices=list(AUDIO_PADDINGS))
    gpus: int = setting(
        1, "GPUs to train on (data parallel: every GPU holds the model and trains on its share "
        "of each batch, gradients are averaged). Above 1 the run starts torchrun as a child "
        "process; per_device_train_batch_size is per GPU, so the batch of one optimizer step is "
        "per_device_train_batch_size × gradient_accumulation_steps × gpus × nnodes "
        "(docs/multi-gpu.md). Without a GPU, that many CPU processes (gloo backend).",
        min=1, max=64)
    nnodes: int = setting(1, "Machines to train on (torchrun --nnodes), each with `gpus` GPUs; "
                          "above 1 needs rdzv_endpoint and a data home shared by every machine "
                          "(docs/multi-gpu.md).", min=1, max=1024)
    rdzv_endpoint: str = setting("", "host:port where the machines of a multi-machine run meet "
                                 "(torchrun --rdzv-endpoint); empty on one machine.")
    tracking: str = setting(
        "none", "Experiment tracking, besides the workbench's own charts: write the loss, "
        "learning rate, gradient norm, throughput, validation and test scores and the settings "
        "to TensorBoard event files in the run's folder (open with `tensorboard --logdir "
        "<data home>/runs/<id>/tensorboard`), to a local MLflow tracking store with the adapter "
        "as an artifact (`mlflow ui --backend-store-uri sqlite:///<data home>/mlflow/mlflow.db`), "
        "or both; the run's page shows the exact command. New runs default to LIM_TRACKING. "
        "Tracking never fails a run: a missing package or a failed write is a warning in its log.",
        choices=["none", "tensorboard", "mlflow", "both"])

    def task_options(self) -> dict:
        """The task model's options these settings choose (prompt, window, generation length):
        the same for training, evaluation, the Playground and exports."""
        return {"generation_max_length": self.generation_max_length, "generation_cache": self.generation_cache,
                "audio_padding": self.audio_padding, "language": self.language,
                "speech_task": self.task}

    @property
    def world_size(self) -> int:
        """Processes training this run together (one per GPU)."""
        return self.gpus * self.nnodes

    def optimizer_steps(self, train_items: int) -> int:
        """Optimizer steps of the whole run on ``train_items`` training examples: max_steps,
        or num_train_epochs passes of batches (the last one partial; a batch is one
        per_device_train_batch_size per process) over the accumulation."""
        if self.max_steps > 0:
            return self.max_steps
        batches_per_epoch = math.ceil(train_items / (self.per_device_train_batch_size * self.world_size))
        return max(1, math.ceil(self.num_train_epochs * batches_per_epoch / self.gradient_accumulation_steps))

    def warnings(self, device: str = "cuda") -> list[str]:
        """Legal but probably mistaken values, said at submit (the run is queued anyway);
        ``device``: where the run would train ("cuda" or "cpu"), as the warnings name it."""
        found = []
        if self.learning_rate > 0.01:
            found.append(f"learning_rate {self.learning_rate:g} is very high (adapters train at 1e-4 to "
                         "1e-3, full fine-tuning at 1e-5); the loss will likely diverge")
        if self.gradient_accumulation_steps > 256:
            found.append(f"gradient_accumulation_steps {self.gradient_accumulation_steps} makes each optimizer "
                         f"step {self.gradient_accumulation_steps} forward passes; the run will make little progress")
        if self.max_steps > 1_000_000:
            where = "any one GPU" if device.startswith("cuda") else "this machine's CPU (it has no GPU)"
            found.append(f"max_steps {self.max_steps:,} will take weeks on {where}; set max_time_minutes "
                         "or fewer steps")
        if self.warmup_steps and self.max_steps > 0 and self.warmup_steps >= self.max_steps:
            found.append(f"warmup_steps ({self.warmup_steps}) is not less than max_steps ({self.max_steps}): "
                         "the learning rate never reaches its peak")
        if self.weight_decay > 1.0:
            found.append(f"weight_decay {self.weight_decay:g} is far above the usual 0-0.1")
        return found

    def validate(self) -> None:
        if self.learning_rate <= 0:
            raise SettingsError(f"learning_rate must be greater than 0, got {self.learning_rate}")
        if self.max_steps == 0 or (self.max_steps < 0 and self.num_train_epochs <= 0):
            raise SettingsError("max_steps must be positive, or num_train_epochs greater than 0")
        if self.max_time_minutes < 0:
            raise SettingsError(f"max_time_minutes must be a positive number of minutes from the "
                                f"start (0: no limit); {self.max_time_minutes} is a time limit in the past")
        if self.early_stopping_patience and not self.eval_steps:
            raise SettingsError("early_stopping_patience needs eval_steps > 0: early stopping "
                                "watches the validation metric")
        if self.nnodes > 1 and not self.rdzv_endpoint.strip():
            raise SettingsError(f"nnodes={self.nnodes} needs rdzv_endpoint: the host:port of the "
                                "first machine, where the machines meet (docs/multi-gpu.md)")
        if self.rdzv_endpoint and not _ENDPOINT.fullmatch(self.rdzv_endpoint):
            raise SettingsError(f"rdzv_endpoint must be host:port (e.g. node0:29500), got "
                                f"{self.rdzv_endpoint!r}")


# ---------------------------------------------------------------------------- a run's settings
@dataclass(frozen=True)
class RunSettings:
    """What a run trains with: its method (by name) with that method's settings dataclass, its
    task, and its training settings. Checked on construction: the method is registered, the
    task known, each part is of its class with every field's type, choices and bounds right."""

    method: str
    task: str  # asr, audio-classification or text-classification (engine.models.TASK_NAMES)
    method_settings: Any  # an instance of the method's settings_cls
    training: TrainingSettings = field(default_factory=TrainingSettings)

    def __post_init__(self) -> None:
        settings_cls = get_method(self.method).settings_cls  # MethodError names the ones there are
        if self.task not in TASK_NAMES:
            raise SettingsError(f"task must be one of {', '.join(TASK_NAMES)}, got {self.task!r}")
        if type(self.method_settings) is not settings_cls:
            raise SettingsError(f"{self.method} settings must be a {settings_cls.__name__}, got "
                                f"{type(self.method_settings).__name__}")
        if not isinstance(self.training, TrainingSettings):
            raise SettingsError(f"training settings must be a TrainingSettings, got "
                                f"{type(self.training).__name__}")
        settings_lib.check(self.method_settings)
        settings_lib.check(self.training)

    @classmethod
    def build(cls, method: str, task: str, method_values: dict | None = None,
              training_values: dict | None = None) -> RunSettings:
        """From values as a form or ``--set`` gives them (text is converted); a key left out
        gets its default, an unknown key or a bad value raises ``SettingsError`` naming it."""
        settings_cls = get_method(method).settings_cls
        return cls(method, task, settings_lib.build(settings_cls, method_values, section=method),
                   settings_lib.build(TrainingSettings, training_values, section="training"))

    @classmethod
    def from_record(cls, record: dict) -> RunSettings:
        """A stored run's settings (a runs row or ``run_summary``: ``method``, ``task`` and the
        ``settings`` JSON ``{"method": {...}, "training": {...}}``). Keys an older run did not
        store get today's defaults; a stored value no run could train with raises
        ``SettingsError`` naming the run and the field."""
        stored = record.get("settings") or {}
        try:
            return cls.build(record["method"], record["task"], stored.get("method"), stored.get("training"))
        except SettingsError as error:
            raise SettingsError(f"{_whose(record)} stored settings: {error}") from None

    def to_record(self) -> dict:
        """The run row's ``method``, ``task`` and ``settings`` columns; ``from_record`` reads
        them back to an equal object."""
        return {"method": self.method, "task": self.task,
                "settings": {"method": settings_lib.as_dict(self.method_settings),
                             "training": settings_lib.as_dict(self.training)}}

    def with_changes(self, changes: dict[str, Any] | None = None) -> RunSettings:
        """These settings with flat ``key=value`` ``changes`` (routed by ``split_settings``)."""
        method_changes, training_changes = split_settings(self.method, dict(changes or {}))
        return RunSettings.build(self.method, self.task,
                                 settings_lib.as_dict(self.method_settings) | method_changes,
                                 settings_lib.as_dict(self.training) | training_changes)

    def task_options(self) -> dict:
        """The task model's options of this run: the training settings' (prompt, window,
        generation length) and the ones its method sets itself (qass: silence trimming)."""
        method = get_method(self.method)
        own = method.task_options(self.method_settings) if method.task_options is not None else {}
        return {**self.training.task_options(), **own}


def split_settings(method: str, values: dict[str, Any]) -> tuple[dict, dict]:
    """Route flat ``key=value`` settings to ``method``'s settings or the training settings.

    A key neither knows is refused, and so is a key both know (a method plugin whose settings
    reuse a training setting's name): a flat ``key=value`` cannot say which one it means."""
    method_fields = {f.name for f in dataclasses.fields(get_method(method).settings_cls)}
    training_fields = {f.name for f in dataclasses.fields(TrainingSettings)}
    both = sorted(set(values) & method_fields & training_fields)
    if both:
        raise SettingsError(
            f"{', '.join(both)} is both a {method} setting and a training setting, so "
            f"{both[0]}=... cannot say which it sets; the {method} method must give its setting "
            "another name")
    unknown = sorted(set(values) - method_fields - training_fields)
    if unknown:
        raise SettingsError(
            f"unknown setting {', '.join(unknown)}; {method} settings: "
            f"{', '.join(sorted(method_fields)) or 'none'}; training settings: "
            f"{', '.join(sorted(training_fields))}")
    return ({k: v for k, v in values.items() if k in method_fields},
            {k: v for k, v in values.items() if k in training_fields})


def stored_training(record: dict) -> TrainingSettings:
    """A stored run's training settings alone (defaults for keys it did not store), without
    looking its method up: for lists and estimates that must work for every run, even one
    whose method plugin is no longer installed."""
    try:
        return settings_lib.build(TrainingSettings, (record.get("settings") or {}).get("training"),
                                  section="training")
    except SettingsError as error:
        raise SettingsError(f"{_whose(record)} stored settings: {error}") from None


def planned_steps(record: dict) -> int | None:
    """A run's optimizer steps: known once it has started (``total_steps``), else its
    ``max_steps``; None for an epoch-based run that has not started (its count needs the data)."""
    if record.get("total_steps"):
        return record["total_steps"]
    max_steps = stored_training(record).max_steps
    return max_steps if max_steps > 0 else None


def _whose(record: dict) -> str:
    return f"run {record['id']}'s" if record.get("id") is not None else "the run's"
