"""QLoRA: LoRA on a base model quantised to 4-bit NF4/FP4 with bitsandbytes."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from engine.errors import MethodError
from engine.methods.lora import LoraSettings, apply_lora
from engine.methods.registry import MethodContext, register_method
from engine.settings import setting


@dataclass
class QLoraSettings(LoraSettings):
    bnb_4bit_quant_type: str = setting("nf4", "4-bit data type: nf4 (normal float, best for "
                                       "normally distributed weights) or fp4.", choices=["nf4", "fp4"])
    bnb_4bit_use_double_quant: bool = setting(True, "Also quantise the quantisation constants "
                                              "(saves about 0.4 bits per parameter).")
    bnb_4bit_compute_dtype: str = setting(
        "auto", "dtype the 4-bit weights are dequantised to for matmuls; auto: bfloat16 on a "
        "GPU that supports it, else float32.", choices=["auto", "float32", "bfloat16", "float16"])


def compute_dtype(settings: QLoraSettings, context: MethodContext) -> torch.dtype:
    if settings.bnb_4bit_compute_dtype != "auto":
        return getattr(torch, settings.bnb_4bit_compute_dtype)
    if context.device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def quantization_kwargs(settings: QLoraSettings, context: MethodContext) -> dict:
    # bitsandbytes suggests fetching an optional CPU kernel from the hub on import; that is
    # impossible offline and its built-in kernel works, so the suggestion is not shown.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as error:
        raise MethodError(f"qlora needs bitsandbytes (pip install bitsandbytes): {error}") from error
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=settings.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=settings.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=compute_dtype(settings, context),
        # Heads are trained in full, so they stay in full precision.
        llm_int8_skip_modules=context.unquantized_modules,
    )
    return {"quantization_config": config, "device_map": context.device}


def apply_qlora(model, settings: QLoraSettings, context: MethodContext):
    from peft import prepare_model_for_kbit_training

    # Casts the non-quantised parameters (norms, convs, embeddings) to fp32 for stable
    # training and freezes the base; checkpointing is applied by apply_lora when asked.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    keep_training_layout(model)
    return apply_lora(model, settings, context)


def keep_training_layout(model) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference during evaluation.

    On CPUs with AVX512-BF16, bitsandbytes converts a Linear4bit's weight to an
    inference-only layout the first time it runs in eval mode without gradients; training
    steps after that fail ("a view of a leaf Variable ... in-place operation"). A run
    evaluates between training steps, so its 4-bit layers keep the training layout.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


METHOD = register_method(
    name="qlora",
    help="LoRA on a 4-bit quantised base model (bitsandbytes NF4, double quantisation).",
    settings_cls=QLoraSettings,
    apply=apply_qlora,
    load_kwargs=quantization_kwargs,
    idea="Store the frozen base weights in 4 bits (NF4) and dequantise them on the fly; train "
         "LoRA adapters in higher precision on top. Memory for weights drops about 4x vs 16-bit.",
    formula="h = dequant(W_nf4) x + (lora_alpha / r) · B A x",
)
