"""QLoRA: LoRA on a base model quantised to 4-bit NF4/FP4 with bitsandbytes."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch

from engine.errors import MethodError
from engine.methods.lora import LoraSettings, apply_lora
from engine.methods.registry import MethodContext, make_method
from engine.settings import setting


@dataclass
class QLoraSettings(LoraSettings):
    init_lora_weights: str = setting(
        "default", "How A and B start: default (B = 0), gaussian, olora, or loftq (LoftQ: start "
        "A and B so that W_nf4 + BA approximates the original W, reducing quantisation error). "
        "pissa needs a full-precision base: use the lora method for it.",
        choices=["default", "gaussian", "olora", "loftq"])
    bnb_4bit_quant_type: str = setting("nf4", "4-bit data type: nf4 (normal float, best for "
                                       "normally distributed weights) or fp4.", choices=["nf4", "fp4"])
    bnb_4bit_use_double_quant: bool = setting(True, "Also quantise the quantisation constants "
                                              "(saves about 0.4 bits per parameter).")
    bnb_4bit_compute_dtype: str = setting(
        "auto", "dtype the 4-bit weights are dequantised to for matmuls; auto: bfloat16 on a "
        "GPU that supports it, else float32.", choices=["auto", "float32", "bfloat16", "float16"])
    upcast_frozen: bool = setting(
        False, "Cast the frozen non-quantised weights (norms, convolutions, embeddings) to fp32 "
        "as peft's prepare_model_for_kbit_training does. Off: they stay in the compute dtype and "
        "a bf16 run needs no autocast (faster, less memory; docs/benchmarks.md compares both).")


def compute_dtype(settings: QLoraSettings, context: MethodContext) -> torch.dtype:
    if settings.bnb_4bit_compute_dtype != "auto":
        return getattr(torch, settings.bnb_4bit_compute_dtype)
    if context.device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _import_bitsandbytes() -> None:
    # bitsandbytes suggests fetching an optional CPU kernel from the hub on import; that is
    # impossible offline and its built-in kernel works, so the suggestion is not shown.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise MethodError(f"k-bit methods need bitsandbytes (pip install bitsandbytes): {error}") from error


def quantization_kwargs(settings: QLoraSettings, context: MethodContext) -> dict:
    from transformers import BitsAndBytesConfig

    _import_bitsandbytes()
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=settings.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=settings.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=compute_dtype(settings, context),
        # Heads are trained in full, so they stay in full precision.
        llm_int8_skip_modules=context.unquantized_modules,
    )
    kwargs = {"quantization_config": config, "device_map": context.device}
    if not settings.upcast_frozen:  # load the frozen rest straight in the compute dtype
        kwargs["dtype"] = compute_dtype(settings, context)
    return kwargs


def apply_qlora(model, settings: QLoraSettings, context: MethodContext, **config_extra):
    from peft import prepare_model_for_kbit_training

    from engine.methods.fast_lora import run_in_dtype

    if settings.upcast_frozen:
        # peft's recipe: freeze the base and cast the non-quantised parameters (norms, convs,
        # embeddings) to fp32; training then runs under autocast.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model.requires_grad_(False)
    keep_training_layout(model)
    loftq = settings.init_lora_weights == "loftq"
    if loftq:  # LoRA starts at default; LoftQ then replaces A and B from the original weights
        settings = dataclasses.replace(settings, init_lora_weights="default")
    peft_model = apply_lora(model, settings, context, **config_extra)
    if loftq:
        from peft import replace_lora_weights_loftq

        if settings.bnb_4bit_quant_type != "nf4":
            raise MethodError("init_lora_weights=loftq works with bnb_4bit_quant_type=nf4 only")
        replace_lora_weights_loftq(peft_model, model_path=str(context.model_dir / "model.safetensors"))
    # bf16 trains without autocast; fp16 keeps autocast and its gradient scaler (fp16
    # gradients underflow without one), so only bf16 runs in its own dtype.
    if not settings.upcast_frozen and compute_dtype(settings, context) == torch.bfloat16:
        run_in_dtype(peft_model, torch.bfloat16, context.head_modules)
    return peft_model


@dataclass
class QLora8bitSettings(LoraSettings):
    llm_int8_threshold: float = setting(6.0, "Outlier threshold of LLM.int8(): input features "
                                        "larger than this are multiplied in 16-bit.", min=0.0)
    init_lora_weights: str = setting("default", "How A and B start: default (B = 0), gaussian "
                                     "or olora.", choices=["default", "gaussian", "olora"])


def int8_kwargs(settings: QLora8bitSettings, context: MethodContext) -> dict:
    from transformers import BitsAndBytesConfig

    _import_bitsandbytes()
    config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=settings.llm_int8_threshold,
                                llm_int8_skip_modules=context.unquantized_modules)
    return {"quantization_config": config, "device_map": context.device}


def apply_qlora_8bit(model, settings: QLora8bitSettings, context: MethodContext):
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
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


METHOD = make_method(
    name="qlora",
    help="LoRA on a 4-bit quantised base model (bitsandbytes NF4, double quantisation).",
    settings_cls=QLoraSettings,
    apply=apply_qlora,
    load_kwargs=quantization_kwargs,
    idea="Store the frozen base weights in 4 bits (NF4) and dequantise them on the fly for each "
         "matmul; train LoRA adapters in higher precision on top. Weight memory drops about 4x "
         "against 16-bit and 8x against fp32.",
    formula="h = dequant(W_nf4, absmax) x + (lora_alpha / r) · B A x",
    advantages="The smallest memory footprint of the LoRA family: large models fit small GPUs "
               "and Jetsons; quality close to 16-bit LoRA.",
    limitations="Dequantising costs time on every step (slower than LoRA when memory is not the "
                "limit); merging needs a full-precision copy of the base; PiSSA cannot start from "
                "4-bit weights.",
)

METHOD_8BIT = make_method(
    name="qlora-8bit",
    help="LoRA on an 8-bit base model (bitsandbytes LLM.int8()).",
    settings_cls=QLora8bitSettings,
    apply=apply_qlora_8bit,
    load_kwargs=int8_kwargs,
    idea="Store the frozen base in int8 with vector-wise scales, keeping outlier features in "
         "16-bit (LLM.int8()); train LoRA adapters on top.",
    formula="h = (X_int8 W_int8) · s + X_outlier W_outlier + (lora_alpha / r) · B A x",
    advantages="Half the weight memory of 16-bit with almost no quality loss.",
    limitations="Slower than 4-bit QLoRA and than plain LoRA on most hardware; twice the weight "
                "memory of 4-bit.",
)
