"""Baselines a research study compares the 4-bit methods with, each a method of its own so that
a study names it (``--methods qlora,qdora,qlora-all-linear,lora,...``) and its comparison is
one row: QLoRA with DoRA, and QLoRA on every linear layer. The third baseline, LoRA on the
16-bit (full-precision) base, is the ``lora`` method itself.

Both are ``qlora`` with other defaults (the same settings, so a study's ``--set`` and grid keys
reach them as they reach qlora): nothing here trains differently from qlora with
``use_dora=true`` or ``target_modules=all-linear``.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.methods.qlora import QLoraSettings, apply_qlora, quantization_kwargs
from engine.methods.registry import make_method
from engine.settings import setting


@dataclass
class QDoraSettings(QLoraSettings):
    use_dora: bool = setting(True, "DoRA: learn each weight's magnitude and direction "
                             "separately (on for this baseline; peft's DoRA layers, not the "
                             "engine's fused LoRA op).")


@dataclass
class AllLinearSettings(QLoraSettings):
    target_modules: str = setting(
        "all-linear", "Comma-separated linear layer names to adapt; all-linear (this "
        "baseline's default, as the QLoRA paper trains) adapts every linear layer but the head.")


QDORA = make_method(
    name="qdora",
    help="Baseline: QLoRA with DoRA (weight-decomposed adapters) on the 4-bit base.",
    settings_cls=QDoraSettings,
    apply=apply_qlora,
    load_kwargs=quantization_kwargs,
    idea="DoRA splits each adapted weight into a magnitude vector and a direction, and trains "
         "the magnitude directly and the direction through LoRA. On the same 4-bit base as "
         "QLoRA, it is the strongest same-family baseline at a given rank.",
    formula="h = m ⊙ (W_nf4 + (α/r) B A) x / ‖W_nf4 + (α/r) B A‖_col",
    advantages="Often better than LoRA at low rank; d_out extra parameters per layer.",
    limitations="Slower than QLoRA (peft's DoRA layers compute the column norms every step); "
                "merging needs a full-precision copy of the base.",
)

QLORA_ALL_LINEAR = make_method(
    name="qlora-all-linear",
    help="Baseline: QLoRA on every linear layer (attention and feed-forward), as the QLoRA "
         "paper trains.",
    settings_cls=AllLinearSettings,
    apply=apply_qlora,
    load_kwargs=quantization_kwargs,
    idea="The QLoRA paper found adapting every linear layer, not only the attention queries and "
         "values, necessary to match 16-bit fine-tuning. This baseline trains more parameters "
         "at the same rank; compare it at equal trainable parameters (a lower rank) too.",
    formula="h = dequant(W_nf4) x + (α/r) · B A x  on every linear layer",
    advantages="The QLoRA paper's recommended targets.",
    limitations="Several times the trainable parameters of the default targets at the same "
                "rank.",
)
