"""Frozen encoder: train only the task head (the baseline of the LoRA-on-Whisper study).

For a classifier the head is what ``context.head_modules`` names; for speech recognition,
which has no separate head, the encoder is frozen and the decoder trains.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import MethodError
from engine.methods.registry import MethodContext, make_method


@dataclass
class FrozenEncoderSettings:
    """No settings of its own: which part trains is decided by the task."""


def apply_frozen_encoder(model, settings: FrozenEncoderSettings, context: MethodContext):
    trainable = context.head_modules or ["decoder", "proj_out"]
    for name, parameter in model.named_parameters():
        parts = name.split(".")
        parameter.requires_grad_(any(part in parts for part in trainable)
                                 and "embed_positions" not in parts)
    if not any(p.requires_grad for p in model.parameters()):
        raise MethodError(f"frozen-encoder found no head to train ({', '.join(trainable)})")
    return model


METHOD = make_method(
    name="frozen-encoder",
    help="Freeze the pretrained encoder; train only the task head (or the decoder for ASR).",
    settings_cls=FrozenEncoderSettings,
    apply=apply_frozen_encoder,
    is_adapter=False,
    idea="Use the pretrained encoder as a fixed feature extractor and train only what sits on "
         "top of it. It is the cheapest baseline and shows how much adapting the encoder buys.",
    formula="y = head(stopgrad(encoder(x)))",
    advantages="No gradients flow into the encoder: fast steps, little optimizer state, no "
               "choices to make.",
    limitations="Cannot adapt what the encoder hears or reads; usually clearly below LoRA and "
                "full fine-tuning on a new domain.",
)
