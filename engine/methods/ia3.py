"""(IA)³: learn a vector that rescales keys, values and feed-forward activations (peft)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import MethodError
from engine.methods.lora import target_list
from engine.methods.registry import MethodContext, make_method
from engine.settings import setting

# family -> (target modules, the feed-forward ones among them); peft has no Whisper default.
FAMILY_TARGETS = {
    "whisper": (["k_proj", "v_proj", "fc2"], ["fc2"]),
    "bert": (["key", "value", "output.dense"], ["output.dense"]),
    "roberta": (["key", "value", "output.dense"], ["output.dense"]),
    "xlm-roberta": (["key", "value", "output.dense"], ["output.dense"]),
    "distilbert": (["k_lin", "v_lin", "lin2"], ["lin2"]),
    "wav2vec2": (["k_proj", "v_proj", "output_dense"], ["output_dense"]),
    "hubert": (["k_proj", "v_proj", "output_dense"], ["output_dense"]),
}


@dataclass
class IA3Settings:
    target_modules: str = setting("", "Comma-separated layers whose outputs are rescaled; empty: "
                                  "the family's keys, values and second feed-forward layer.")
    feedforward_modules: str = setting("", "Which of target_modules are feed-forward layers (their "
                                       "inputs are rescaled instead); empty: the family's default.")


def apply_ia3(model, settings: IA3Settings, context: MethodContext):
    from peft import IA3Config, get_peft_model

    default_targets, default_ff = FAMILY_TARGETS.get(context.family, (None, None))
    targets = target_list(settings.target_modules) or default_targets
    feedforward = target_list(settings.feedforward_modules) or default_ff
    if not targets:
        raise MethodError(f"ia3 has no default target modules for {context.family}; set "
                          "target_modules and feedforward_modules")
    if not set(feedforward) <= set(targets):
        raise MethodError("feedforward_modules must be a subset of target_modules")
    config = IA3Config(target_modules=targets, feedforward_modules=feedforward,
                       modules_to_save=context.head_modules or None)
    return get_peft_model(model, config)


METHOD = make_method(
    name="ia3",
    help="(IA)³: learned vectors rescale keys, values and feed-forward activations.",
    settings_cls=IA3Settings,
    apply=apply_ia3,
    idea="Instead of adding a low-rank update, multiply chosen activations element-wise by learned "
         "vectors initialised to one. It trains about ten times fewer parameters than LoRA.",
    formula="k' = l_k ⊙ k,  v' = l_v ⊙ v,  ff' = W₂ (l_ff ⊙ γ(W₁ x))",
    advantages="The fewest trainable parameters of the adapter methods; tiny adapters; mergeable.",
    limitations="Less capacity than LoRA: can fall behind on tasks far from pretraining; usually "
                "wants a higher learning rate.",
)
