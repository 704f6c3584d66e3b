"""AdaLoRA: LoRA whose rank budget moves during training to the layers that need it (peft)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import SettingsError
from engine.methods.lora import resolve_targets
from engine.methods.registry import MethodContext, make_method
from engine.settings import setting


@dataclass
class AdaLoraSettings:
    init_r: int = setting(12, "Starting rank of every adapted layer.", min=1, max=1024)
    target_r: int = setting(8, "Average rank left after the budget is pruned.", min=1, max=1024)
    tinit: int = setting(0, "Steps of warmup before ranks start to be pruned.", min=0)
    tfinal: int = setting(0, "Final steps during which ranks no longer change.", min=0)
    deltaT: int = setting(1, "Steps between two rank reallocations.", min=1)
    lora_alpha: int = setting(16, "Scaling numerator, as in LoRA.", min=1)
    lora_dropout: float = setting(0.05, "Dropout on the adapter input.", min=0.0, max=0.9)
    orth_reg_weight: float = setting(0.5, "Weight of the orthogonality regulariser on P and Q.", min=0.0)
    target_modules: str = setting("", "Comma-separated linear layer names; empty: the family's default.")

    def validate(self) -> None:
        if self.target_r > self.init_r:
            raise SettingsError(f"target_r ({self.target_r}) must not exceed init_r ({self.init_r})")


def apply_adalora(model, settings: AdaLoraSettings, context: MethodContext):
    from peft import AdaLoraConfig, get_peft_model

    total = max(1, context.total_steps)
    if settings.tinit + settings.tfinal >= total:
        raise SettingsError(f"tinit + tfinal ({settings.tinit + settings.tfinal}) must be smaller "
                            f"than the run's {total} steps")
    config = AdaLoraConfig(
        init_r=settings.init_r, target_r=settings.target_r, tinit=settings.tinit,
        tfinal=settings.tfinal, deltaT=settings.deltaT, total_step=total,
        lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
        orth_reg_weight=settings.orth_reg_weight, target_modules=resolve_targets(settings, context),
        modules_to_save=context.head_modules or None,
    )
    return get_peft_model(model, config)


def update_ranks(model, step: int) -> None:
    """AdaLoRA scores importance from the current gradients, so this runs before zero_grad."""
    model.base_model.update_and_allocate(step)


METHOD = make_method(
    name="adalora",
    help="Adaptive LoRA: starts at init_r and moves the rank budget to the layers that need it.",
    settings_cls=AdaLoraSettings,
    apply=apply_adalora,
    on_optimizer_step=update_ranks,
    idea="Parameterise each update as P Λ Q (an SVD-like form) and prune the least important "
         "singular values during training, so important layers keep more rank than others.",
    formula="h = W x + P Λ Q x,  rank budget pruned by importance from init_r to target_r",
    advantages="Spends a fixed parameter budget where it matters; less rank tuning by hand.",
    limitations="Extra work every step (importance scores, regulariser); the schedule depends on "
                "the total number of steps; more settings than LoRA.",
)
