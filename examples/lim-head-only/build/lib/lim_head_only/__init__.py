"""An example third-party PEFT method for LessIsMore Workbench.

Install it next to the workbench (``pip install examples/lim-head-only``) and the method
``head-only`` appears in ``python -m engine methods list``, on the Training page and on the
Methods page. The workbench finds it through the ``lessismore.methods`` entry point declared
in pyproject.toml.
"""

from dataclasses import dataclass, field

from engine.methods import Method


@dataclass
class HeadOnlySettings:
    unfreeze_layer_norms: bool = field(
        default=False, metadata={"help": "Also train every layer norm (a cheap way to adapt a little)."})


def apply(model, settings, context):
    """Freeze everything but the task head (and, if asked, the layer norms)."""
    for name, parameter in model.named_parameters():
        parts = name.split(".")
        head = any(part in parts for part in context.head_modules)
        norm = settings.unfreeze_layer_norms and any("layer_norm" in p or "LayerNorm" in p for p in parts)
        parameter.requires_grad_(head or norm)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("head-only needs a model with a task head (a classifier)")
    return model


METHOD = Method(
    name="head-only",
    help="Train only the task head, optionally with the layer norms.",
    settings_cls=HeadOnlySettings,
    apply=apply,
    is_adapter=False,
    source="lim-head-only",
    extra={
        "idea": "Keep the pretrained network fixed and fit only the classifier on top, optionally "
                "letting the layer norms move. A linear probe, with a knob.",
        "formula": "y = head(f_θ(x)),  θ frozen (except LayerNorm γ, β if asked)",
        "advantages": "Very cheap; a useful baseline.",
        "limitations": "Cannot adapt the features themselves.",
    },
)
