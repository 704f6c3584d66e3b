"""LoRA: freeze the base model, learn a low-rank update B·A beside chosen linear layers (peft)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import MethodError, SettingsError
from engine.methods.registry import MethodContext, make_method
from engine.settings import setting


@dataclass
class LoraSettings:
    r: int = setting(8, "Rank of the update matrices: more rank, more capacity and parameters.", min=1, max=1024)
    lora_alpha: int = setting(16, "Scaling numerator: the update is multiplied by lora_alpha / r.", min=1)
    lora_dropout: float = setting(0.05, "Dropout on the LoRA input during training.", min=0.0, max=0.9)
    target_modules: str = setting(
        "", "Comma-separated linear layer names to adapt (e.g. q_proj,v_proj); empty: the "
        "model family's default. 'all-linear' adapts every linear layer but the head.")
    use_rslora: bool = setting(False, "Rank-stabilised LoRA: scale by lora_alpha / sqrt(r), "
                               "which keeps high ranks learning.")
    use_dora: bool = setting(False, "DoRA: learn each weight's magnitude and direction "
                             "separately (more compute, often better at low rank).")
    init_lora_weights: str = setting(
        "default", "How A and B start: default (B = 0, so training starts from the base model), "
        "gaussian, pissa (principal singular vectors of W; needs a full-precision base), "
        "olora (orthonormal, QR of W).", choices=["default", "gaussian", "pissa", "olora"])
    kernels: str = setting(
        "fused", "fused: the engine's LoRA autograd (one base matmul and one LoRA matmul-add per "
        "layer, 4-bit weights dequantised only inside the op); peft: peft's own layers "
        "(for comparison). DoRA and multi-adapter layers always use peft's.",
        choices=["fused", "peft"])

    def validate(self) -> None:
        if self.target_modules.strip() and not target_list(self.target_modules):
            raise SettingsError("target_modules must name at least one layer")


def target_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def resolve_targets(settings: LoraSettings, context: MethodContext) -> list[str] | str:
    """The target modules for peft, checked against the model's own linear layers."""
    names = target_list(settings.target_modules) or context.default_target_modules
    if names == ["all-linear"]:
        return "all-linear"
    available = sorted({full.rsplit(".", 1)[-1] for full in context.linear_module_names})
    missing = [name for name in names if name not in available]
    if missing:
        raise MethodError(
            f"target_modules: this model has no layer named {', '.join(missing)}; "
            f"valid choices: {', '.join(available)}")
    return names


def lora_config(settings: LoraSettings, context: MethodContext, config_cls=None, **extra):
    """peft's config for ``settings``; ``extra`` adds or overrides LoraConfig fields (cmra sets
    exact target_modules and a rank_pattern)."""
    from peft import LoraConfig

    init = {"default": True}.get(settings.init_lora_weights, settings.init_lora_weights)
    targets = extra.pop("target_modules", None) or resolve_targets(settings, context)
    return (config_cls or LoraConfig)(
        r=settings.r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=targets,
        # Task heads are new and must train in full; peft saves them with the adapter.
        modules_to_save=context.head_modules or None,
        bias="none",
        use_rslora=settings.use_rslora,
        use_dora=settings.use_dora,
        init_lora_weights=init,
        **extra,
    )


def apply_lora(model, settings: LoraSettings, context: MethodContext, **config_extra):
    from peft import get_peft_model

    from engine.methods.fast_lora import fuse_lora

    if context.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model = get_peft_model(model, lora_config(settings, context, **config_extra))
    if getattr(settings, "kernels", "peft") == "fused":
        fuse_lora(peft_model)
    return peft_model


METHOD = make_method(
    name="lora",
    help="Low-rank adapters on a frozen full-precision base model.",
    settings_cls=LoraSettings,
    apply=apply_lora,
    idea="Keep every pretrained weight W frozen and learn a small update ΔW = B·A of rank r "
         "for chosen layers. Only A and B (and the task head) train, and the update can be merged "
         "into W afterwards, so inference costs nothing extra.",
    formula="h = W x + (lora_alpha / r) · B A x,   A ∈ R^{r×k}, B ∈ R^{d×r}",
    advantages="Trains ~0.1-5 % of the parameters; optimizer state shrinks accordingly; adapters "
               "are megabytes; several adapters can share one base.",
    limitations="The frozen base still sits in memory at full precision; rank and targets need "
                "choosing; a little below full fine-tuning on tasks far from pretraining.",
)
