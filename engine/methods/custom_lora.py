"""What the research methods (ta-qlora, cmra, qass, mma) share: the settings of a LoRA adapter
on a 4-bit base, the part of the model a layer belongs to, and reloading an adapter whose LoRA
layers hold modules of their own.

Why modules of our own inside peft's layers: peft's LoRA layer computes
``lora_B(lora_A(dropout(x))) * scaling`` for plain LoRA. ta-qlora puts a convolution over
time between A and B and mma routes between several B·A pairs; peft has neither (its custom
module API, ``LoraConfig._register_custom_module``, dispatches by the type of the base layer,
so it cannot give the encoder and the decoder different layers, and it is marked experimental).
So peft builds ordinary LoRA layers (4-bit dispatch, dropout, scaling, saving, adapter names,
``modules_to_save`` all stay peft's) and the method swaps ``lora_A`` or ``lora_B`` for a
subclass of ``nn.Linear`` that keeps the ``weight`` peft expects and adds its own parameters.
Their state-dict keys (``lora_A.default.temporal``, ``lora_B.default.router``) contain
``lora_``, so peft's ``save_pretrained`` saves them; ``load_custom_adapter`` builds the same
layers before loading the weights back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from engine.errors import MethodError
from engine.methods.lora import LoraSettings
from engine.methods.qlora import QLoraSettings
from engine.settings import setting

ADAPTER = "default"  # the one adapter name the workbench trains

AUDIO_ENCODER, CROSS_ATTENTION, TEXT_DECODER, TEXT_ENCODER = (
    "audio encoder", "cross-attention", "text decoder", "text encoder")
GROUPS = (AUDIO_ENCODER, CROSS_ATTENTION, TEXT_DECODER, TEXT_ENCODER)


@dataclass
class FourBitAdapterSettings:
    """A LoRA adapter on a 4-bit NF4 base: the LoRA and quantisation fields of ``qlora`` that
    these adapters support (no DoRA, no LoftQ: B starts at zero so step 0 is the base)."""

    r: int = setting(8, "Rank of each adapter's update matrices.", min=1, max=1024)
    lora_alpha: int = setting(16, "Scaling numerator: the update is multiplied by lora_alpha / r.", min=1)
    lora_dropout: float = setting(0.05, "Dropout on the adapter input during training.", min=0.0, max=0.9)
    target_modules: str = setting(
        "", "Comma-separated linear layer names to adapt (e.g. q_proj,v_proj); empty: the "
        "model family's default.")
    bnb_4bit_quant_type: str = setting("nf4", "4-bit data type of the frozen base: nf4 or fp4.",
                                       choices=["nf4", "fp4"])
    bnb_4bit_use_double_quant: bool = setting(True, "Also quantise the quantisation constants "
                                              "(saves about 0.4 bits per parameter).")
    bnb_4bit_compute_dtype: str = setting(
        "auto", "dtype the 4-bit weights are dequantised to for matmuls; auto: bfloat16 on a "
        "GPU that supports it, else float32.", choices=["auto", "float32", "bfloat16", "float16"])
    upcast_frozen: bool = setting(False, "Cast the frozen non-quantised weights to fp32 as "
                                  "peft's prepare_model_for_kbit_training does (see qlora).")

    def validate(self) -> None:
        LoraSettings.validate(self)


def as_qlora(settings, **overrides) -> QLoraSettings:
    """The ``qlora`` settings that build this adapter's peft LoRA layers and its 4-bit base."""
    names = {f.name for f in dataclasses.fields(QLoraSettings)}
    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
              if f.name in names}
    return QLoraSettings(**{**values, **overrides})


def group_of(name: str, task: str) -> str:
    """The part of the model a layer (its qualified name) belongs to."""
    if task == "text-classification":
        return TEXT_ENCODER
    parts = name.split(".")
    if "encoder_attn" in parts:
        return CROSS_ATTENTION
    if "decoder" in parts:
        return TEXT_DECODER
    return AUDIO_ENCODER


def lora_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, layer) of every peft LoRA layer holding the workbench's adapter."""
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "base_layer") and ADAPTER in module.lora_A:
            yield name, module


def short_name(name: str) -> str:
    """A layer's name without peft's ``base_model.model.`` prefix (as the base model names it)."""
    prefix = "base_model.model."
    return name[len(prefix):] if name.startswith(prefix) else name


def swap_factor(layer: nn.Module, factor: str, module: nn.Module) -> None:
    """Put ``module`` in ``layer.lora_A`` or ``layer.lora_B`` (``factor``), and give the layer
    peft's forward back if the fast path (fast_lora.fuse_lora) had taken it over: that path
    multiplies the factors' weights directly and would skip the new module."""
    getattr(layer, factor)[ADAPTER] = module
    if hasattr(layer, "_peft_forward"):
        layer.forward = layer._peft_forward
        del layer._peft_forward


# ---------------------------------------------------------------------- decisions over training
HISTORY_ENTRIES = 100  # a report keeps 100 to 200 evenly spaced steps of a method's history


def start_history(model: nn.Module, report: dict) -> None:
    """Give ``model`` the history its method logs every step (``remember_step``), going on from
    the one its report holds (a resumed run's, written with its last checkpoint)."""
    saved = report.get("history") or {}
    model.lim_history = {"step": int(saved.get("step", 0)), "stride": int(saved.get("stride", 1)),
                         "entries": list(saved.get("entries", []))}


def remember_step(model: nn.Module, values: dict) -> None:
    """Count one training step and keep ``values`` when the step is a multiple of the stride;
    the stride doubles (and every other entry goes) when the history is full."""
    history = getattr(model, "lim_history", None)
    if history is None:
        return
    history["step"] += 1
    if history["step"] % history["stride"]:
        return
    history["entries"].append({"step": history["step"], **values})
    if len(history["entries"]) >= 2 * HISTORY_ENTRIES:
        history["stride"] *= 2
        history["entries"] = [e for e in history["entries"] if e["step"] % history["stride"] == 0]


def history_of(model: nn.Module) -> dict:
    """The history as a report keeps it: ``{"step", "stride", "entries": [{"step", ...}]}``."""
    history = getattr(model, "lim_history", None)
    return {"history": dict(history)} if history is not None else {}


def load_custom_adapter(base: nn.Module, adapter_dir: Path, convert: Callable[[nn.Module], None]) -> nn.Module:
    """An adapter folder loaded onto ``base`` whose LoRA layers ``convert(model)`` rebuilds
    (as the method's ``apply`` did) before the saved weights go in. Every saved tensor must
    find its place and every parameter of the adapter must be in the file: a mismatch is an
    error, never a silently half-loaded model."""
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    config = PeftConfig.from_pretrained(str(adapter_dir))
    config.inference_mode = True
    model = get_peft_model(base, config)
    convert(model)
    device = next(p.device for p in model.parameters())
    state = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"), device=str(device))
    result = set_peft_model_state_dict(model, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [key for key in getattr(result, "missing_keys", []) or []
               if "lora_" in key or "modules_to_save" in key]
    if unexpected or missing:
        raise MethodError(f"the adapter in {adapter_dir} does not fit this model: "
                          f"{len(unexpected)} saved tensors unused ({', '.join(unexpected[:3])}), "
                          f"{len(missing)} adapter tensors missing ({', '.join(missing[:3])})")
    model.requires_grad_(False)
    return model
