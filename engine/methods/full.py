"""Full fine-tuning: every parameter trains (the quality and memory reference)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.methods.registry import MethodContext, make_method


@dataclass
class FullSettings:
    """Full fine-tuning has no settings of its own; the training settings apply."""


def apply_full(model, settings: FullSettings, context: MethodContext):
    # Every parameter the model itself leaves trainable trains; parameters a model freezes
    # by design (Whisper's sinusoidal encoder positions) stay frozen, as in the original recipe.
    if context.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


METHOD = make_method(
    name="full",
    help="Full fine-tuning: every weight trains (most memory, the reference for quality).",
    settings_cls=FullSettings,
    apply=apply_full,
    is_adapter=False,
    idea="Update every parameter of the model with the optimizer. It is the reference every "
         "parameter-efficient method is measured against.",
    formula="W ← W − η · AdamW(∇_W L)",
    advantages="The most capacity: best quality when data is plentiful and far from pretraining.",
    limitations="Gradients and two AdamW states for every weight: about 4x the model's own memory "
                "in fp32; a full model copy per task.",
)
