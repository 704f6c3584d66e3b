"""Training settings shared by every method; names follow transformers' TrainingArguments."""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import SettingsError
from engine.settings import setting


@dataclass
class TrainingSettings:
    num_train_epochs: float = setting(5.0, "Passes over the training split (ignored when max_steps > 0).", min=0.0)
    max_steps: int = setting(-1, "Optimizer steps to run; -1: use num_train_epochs.", min=-1)
    per_device_train_batch_size: int = setting(8, "Examples per forward pass.", min=1, max=4096)
    per_device_eval_batch_size: int = setting(16, "Examples per evaluation batch.", min=1, max=4096)
    gradient_accumulation_steps: int = setting(1, "Forward passes summed into one optimizer step "
                                               "(effective batch = batch size × this).", min=1)
    learning_rate: float = setting(1e-3, "Peak learning rate of AdamW.")
    lr_scheduler_type: str = setting("linear", "How the learning rate changes after warmup.",
                                     choices=["linear", "cosine", "constant", "constant_with_warmup"])
    warmup_steps: int = setting(0, "Steps of linear warmup from 0 to the learning rate.", min=0)
    weight_decay: float = setting(0.0, "AdamW weight decay.", min=0.0)
    max_grad_norm: float = setting(1.0, "Clip the gradient norm to this (0: no clipping).", min=0.0)
    seed: int = setting(42, "Seed for weights of new heads, data order and dropout.", min=0)
    eval_steps: int = setting(20, "Evaluate on the validation split every N steps (0: only at the end).", min=0)
    save_steps: int = setting(20, "Save a resumable checkpoint every N steps (0: only on stop).", min=0)
    precision: str = setting("auto", "Compute precision: auto is bf16 autocast on a GPU that "
                             "supports it, fp32 on CPU.", choices=["auto", "fp32", "bf16"])
    gradient_checkpointing: bool = setting(False, "Recompute activations in backward: less memory, ~30% slower.")
    generation_max_length: int = setting(48, "Longest transcript generated at evaluation (speech recognition).",
                                         min=1, max=448)

    def validate(self) -> None:
        if self.learning_rate <= 0:
            raise SettingsError(f"learning_rate must be greater than 0, got {self.learning_rate}")
        if self.max_steps == 0 or (self.max_steps < 0 and self.num_train_epochs <= 0):
            raise SettingsError("max_steps must be positive, or num_train_epochs greater than 0")
