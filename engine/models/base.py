"""What a task needs from a model family: load, encode, collate, predict, score.

A ``TaskModel`` is made per run from the model folder and the dataset's labels. The training
loop and the inference code only talk to this interface, so a new family (BERT, wav2vec2)
is one new subclass.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import StoppingCriteria

# Longest one batch of generation may take before it is cut (its transcripts end where they
# were). Far above a real batch (large-v3, 16 clips x 48 tokens on a Jetson Orin: well under a
# minute); it exists so that no model, however broken, can hold a worker for ever (issue 27).
GENERATION_BATCH_LIMIT_S = 600.0


class GenerationLimit(StoppingCriteria):
    """Ends generation when a stop is requested (``should_stop``, read at most every
    ``poll_s``) or a batch has run ``seconds``; ``stopped`` / ``timed_out`` say which.
    ``start()`` before each batch."""

    def __init__(self, should_stop: Callable[[], bool] | None = None,
                 seconds: float = GENERATION_BATCH_LIMIT_S, poll_s: float = 0.5):
        self.should_stop, self.seconds, self.poll_s = should_stop, seconds, poll_s
        self.stopped = self.timed_out = False
        self.start()

    def start(self) -> GenerationLimit:
        self.deadline = time.monotonic() + self.seconds
        self.last_poll = float("-inf")
        return self

    def reached(self) -> bool:
        now = time.monotonic()
        if now > self.deadline:
            self.timed_out = True
        elif self.should_stop is not None and now - self.last_poll >= self.poll_s:
            self.last_poll = now
            self.stopped = self.stopped or bool(self.should_stop())
        return self.stopped or self.timed_out

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.reached(), dtype=torch.bool, device=input_ids.device)


# transformers' ``from_pretrained`` swaps ``torch.nn.init``'s functions (and ``init_weights``) for
# no-ops process-wide while it loads (``transformers.initialization.no_init_weights``), then puts
# back what it found. Two threads loading at once (the app's worker slots, a page's Playground
# beside a training run) interleave: one restores the other's no-ops, so torch's initialisers
# stay no-ops for good and every model built afterwards keeps uninitialised memory as weights
# (garbage transcripts, or parameters left on the meta device). Every load and build from a config
# in this process takes this lock; ``intact_initialisers`` checks the patch never outlives one.
MODEL_BUILD_LOCK = threading.RLock()


def serialised(function: Callable) -> Callable:
    """``function`` under ``MODEL_BUILD_LOCK``."""
    @functools.wraps(function)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with MODEL_BUILD_LOCK:
            return function(*args, **kwargs)

    locked.__wrapped_by_lock__ = True
    return locked


def intact_initialisers() -> bool:
    """Whether ``torch.nn.init``'s initialisers are torch's own (not a loader's no-ops)."""
    return all(getattr(nn.init, name).__module__ == "torch.nn.init"
               for name in ("normal_", "uniform_", "kaiming_uniform_", "xavier_uniform_", "trunc_normal_"))


class TaskModel:
    task: str = ""
    family: str = ""
    default_target_modules: list[str] = []
    head_modules: list[str] = []  # new task heads: trained in full by PEFT methods
    # Never quantised (heads, tied output layers). transformers matches each entry against a
    # module's qualified name from its start or as a suffix ("classifier", "a.b.projection").
    unquantized_modules: list[str] = []
    primary_metric: str = ""

    def __init__(self, model_dir: Path, labels: list[str] | None = None, **options: Any):
        self.model_dir = Path(model_dir)
        self.labels = list(labels or [])
        self.options = options  # task-specific knobs, e.g. generation_max_length

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Each family's ``load`` and ``build_from_config`` run under ``MODEL_BUILD_LOCK``."""
        super().__init_subclass__(**kwargs)
        for name in ("load", "build_from_config"):
            own = cls.__dict__.get(name)
            if own is not None and not getattr(own, "__wrapped_by_lock__", False):
                setattr(cls, name, serialised(own))

    def load(self, **load_kwargs: Any) -> nn.Module:
        raise NotImplementedError

    def build_from_config(self) -> nn.Module:
        """The same architecture with fresh weights (built on fake tensors for estimates)."""
        raise NotImplementedError

    def fake_batch(self, batch_size: int, *, sequence_length: int | None = None,
                   seconds: float | None = None, label_tokens: int = 32) -> dict[str, torch.Tensor]:
        """A batch of the right shapes (random values) for ``batch_size`` examples."""
        raise NotImplementedError

    def config(self):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.model_dir)

    def label_kwargs(self) -> dict:
        labels = self.labels or ["a", "b"]
        return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                "label2id": {label: i for i, label in enumerate(labels)}}

    def encode(self, item: dict, dataset_dir: Path) -> dict:
        """One item -> model inputs (numpy / python values) plus its target."""
        raise NotImplementedError

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def bucket(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``batch`` padded so that batches fall into a few shapes (CUDA graphs capture one per
        shape), in a way that leaves the loss unchanged. Default: unchanged."""
        return batch

    def whole_window(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``batch`` as the model's standard input window would have it (audio models trained
        on short windows; see WhisperBase). Default: unchanged."""
        return batch

    def predict(self, model: nn.Module, batch: dict[str, torch.Tensor],
                limit: GenerationLimit | None = None) -> list:
        """Predictions for a batch; a generating model ends early when ``limit`` is reached."""
        raise NotImplementedError

    def reference(self, item: dict) -> Any:
        raise NotImplementedError

    def score(self, predictions: list, references: list) -> dict[str, float | None]:
        raise NotImplementedError


def pad_to_multiple(tensor: torch.Tensor, dim: int, multiple: int, *, value: float | int = 0,
                    repeat_last: bool = False, limit: int | None = None) -> torch.Tensor:
    """``tensor`` grown along ``dim`` to the next multiple of ``multiple`` (at most ``limit``),
    filled with ``value`` or with copies of the last slice along ``dim``."""
    size = tensor.shape[dim]
    target = -(-size // multiple) * multiple
    if limit is not None:
        target = max(size, min(target, limit))
    if target == size:
        return tensor
    fill = {"mode": "replicate"} if repeat_last else {"mode": "constant", "value": value}
    return torch.nn.functional.pad(tensor.movedim(dim, -1), (0, target - size), **fill).movedim(-1, dim)


def tie_like_pretrained(model: nn.Module) -> nn.Module:
    """Share tied weights (Whisper's proj_out and its token embedding) as from_pretrained does;
    a model built from its config keeps two separate tensors otherwise."""
    config = getattr(model, "config", None)
    if not getattr(config, "tie_word_embeddings", False):
        return model
    for target, source in (getattr(model, "_tied_weights_keys", None) or {}).items():
        parent, _, name = target.rpartition(".")
        setattr(model.get_submodule(parent), name, model.get_parameter(source))
    return model


def linear_module_names(model: nn.Module) -> list[str]:
    """Qualified names of every linear layer (plain, 4-bit or 8-bit)."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ in {"Linear4bit", "Linear8bitLt"}:
            names.append(name)
    return names


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a 4-bit weight counts its logical elements."""
    trainable = total = 0
    for parameter in model.parameters():
        count = parameter.numel()
        if hasattr(parameter, "quant_state"):  # bitsandbytes Params4bit packs two per byte
            count = int(torch.Size(parameter.quant_state.shape).numel())
        total += count
        if parameter.requires_grad:
            trainable += count
    return trainable, total
