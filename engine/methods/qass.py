"""Quantisation-aware signal selection: quantise only where 4 bits cost little, and feed the
encoder only the signal.

(1) Before training, each linear layer of the full-precision base runs a few real training
batches; its NF4 quantisation error is measured on those activations as the relative output
error ‖X (Q(W) − W)ᵀ‖ / ‖X Wᵀ‖ (Q: bitsandbytes' own 4-bit quantise + dequantise, with the
run's quant type and double quantisation). The most sensitive layers stay unquantised (in the
compute dtype: bf16 on a GPU) within a budget, as a share of the layers or as MiB of extra
memory; the rest load in 4 bits through transformers' ``llm_int8_skip_modules``, the
maintained way to keep modules out of bitsandbytes. LoRA then trains as in ``qlora``.
(2) Audio clips lose their leading and trailing silence (``trim_silence_db`` below the loudest
frame, librosa) and batches pad only to their longest clip (``audio_padding=longest``).
The run records every layer's error, which layers were kept and what they cost
(MethodContext.report, the run's method_report.json). Mergeable like QLoRA.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch
from torch import nn

from engine.errors import MethodError, SettingsError
from engine.methods.custom_lora import group_of
from engine.methods.qlora import QLoraSettings, apply_qlora, compute_dtype, quantization_kwargs
from engine.methods.registry import MethodContext, make_method
from engine.names import LONGEST
from engine.settings import setting

MIB = 2**20
ROWS_PER_BATCH = 512  # activation rows kept per layer and batch (evenly spaced): bounds memory


@dataclass
class QassSettings(QLoraSettings):
    keep_share: float = setting(0.1, "Share of the quantisable linear layers kept unquantised: "
                                "the most sensitive to 4-bit error first.", min=0.0, max=1.0)
    keep_mib: float = setting(0.0, "If above 0: a memory budget in MiB for the layers kept "
                              "unquantised (what they cost beyond 4 bits), used instead of "
                              "keep_share.", min=0.0)
    measure_batches: int = setting(2, "Training batches on which each layer's quantisation error "
                                   "is measured before training.", min=1, max=64)
    trim_silence_db: float = setting(40.0, "Trim leading and trailing audio quieter than this "
                                     "many dB below the clip's loudest part; 0: no trimming.",
                                     min=0.0, max=120.0)
    pad_to_longest: bool = setting(True, "Pad each batch only to its longest clip "
                                   "(audio_padding=longest) instead of the 30 s window.")

    def validate(self) -> None:
        super().validate()
        if self.init_lora_weights == "loftq":
            raise SettingsError("qass does not combine with init_lora_weights=loftq (its kept "
                                "layers are not 4-bit)")


def signal_options(settings: QassSettings) -> dict:
    options = {"trim_silence_db": settings.trim_silence_db}
    if settings.pad_to_longest:
        options["audio_padding"] = LONGEST
    return options


def quantisable_layers(model: nn.Module, unquantized: list[str]) -> list[str]:
    """Linear layers transformers would quantise: all but those ``unquantized`` names
    (matched from the start of the name or as a suffix, as transformers matches them)."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if any(name == e or name.startswith(e + ".") or name.endswith("." + e) for e in unquantized):
            continue
        names.append(name)
    return names


def relative_errors(model: nn.Module, names: list[str], batches: list[dict], quant_type: str,
                    double_quant: bool) -> dict[str, float]:
    """‖X (Q(W) − W)ᵀ‖_F / ‖X Wᵀ‖_F per layer, X: the layer's inputs on ``batches``."""
    import bitsandbytes.functional as bnbf

    modules = dict(model.named_modules())
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name in names}

    def hook(name):
        def capture(module, args, output):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            step = max(1, x.shape[0] // ROWS_PER_BATCH)
            inputs[name].append(x[::step].float())
        return capture

    handles = [modules[name].register_forward_hook(hook(name)) for name in names]
    parameter = next(p for p in model.parameters() if p.is_floating_point())
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                model(**{k: (v.to(parameter.device, parameter.dtype) if v.is_floating_point()
                             else v.to(parameter.device)) for k, v in batch.items()})
    finally:
        for handle in handles:
            handle.remove()
    errors = {}
    with torch.no_grad():
        for name in names:
            if not inputs[name]:
                continue  # not reached by these batches (e.g. a head-only branch)
            x = torch.cat(inputs[name])
            weight = modules[name].weight.float()
            packed, state = bnbf.quantize_4bit(weight, blocksize=64, compress_statistics=double_quant,
                                               quant_type=quant_type)
            error = bnbf.dequantize_4bit(packed, state).float() - weight
            errors[name] = float((x @ error.t()).norm() / (x @ weight.t()).norm().clamp_min(1e-12))
    return errors


def four_bit_bytes(numel: int) -> float:
    """NF4 storage: two weights a byte plus an 8-bit absmax per block of 64 (double quant)."""
    return numel / 2 + numel / 64


def choose_kept(errors: dict[str, float], sizes: dict[str, int], settings: QassSettings,
                bytes_per_weight: int) -> list[str]:
    """The most sensitive layers first, within the share or the MiB budget."""
    order = sorted(errors, key=lambda name: (-errors[name], name))
    extra = {name: (sizes[name] * bytes_per_weight - four_bit_bytes(sizes[name])) / MIB for name in order}
    if settings.keep_mib > 0:
        kept, spent = [], 0.0
        for name in order:
            if spent + extra[name] <= settings.keep_mib:
                kept.append(name)
                spent += extra[name]
        return kept
    return order[: int(round(settings.keep_share * len(order)))]


def measure(settings: QassSettings, context: MethodContext) -> dict:
    """Load the base in full precision, measure every quantisable layer, choose what to keep."""
    if context.sample_batches is None or context.load_base is None:
        return {}
    model = context.load_base()
    try:
        names = quantisable_layers(model, context.unquantized_modules)
        batches = context.sample_batches(settings.measure_batches)
        errors = relative_errors(model, names, batches, settings.bnb_4bit_quant_type,
                                 settings.bnb_4bit_use_double_quant)
        sizes = {name: model.get_submodule(name).weight.numel() for name in errors}
    finally:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if not errors:
        raise MethodError("qass measured no linear layer on the training batches")
    frames = signal_frames(batches)
    # Kept layers load in the compute dtype, or in fp32 with upcast_frozen (no dtype given).
    kept_dtype = torch.float32 if settings.upcast_frozen else compute_dtype(settings, context)
    width = torch.tensor([], dtype=kept_dtype).element_size()
    kept = choose_kept(errors, sizes, settings, width)
    layers = [{"name": name, "group": group_of(name, context.task), "error": errors[name],
               "params": sizes[name], "kept": name in kept,
               "extra_mib": (sizes[name] * width - four_bit_bytes(sizes[name])) / MIB}
              for name in sorted(errors, key=lambda n: -errors[n])]
    groups: dict[str, list[float]] = {}
    for layer in layers:
        groups.setdefault(layer["group"], []).append(layer["error"])
    all_4bit = sum(four_bit_bytes(n) for n in sizes.values()) / MIB
    extra = sum(layer["extra_mib"] for layer in layers if layer["kept"])
    full = sum(sizes.values()) * width / MIB
    return {
        "method": "qass", "keep_16bit": kept, "kept_dtype": str(kept_dtype).split(".")[-1],
        "budget": (f"{settings.keep_mib:g} MiB" if settings.keep_mib > 0
                   else f"{settings.keep_share:.0%} of {len(errors)} layers"),
        # Memory of the measured linear weights: all in 4 bits, all in the kept dtype (a
        # 16-bit LoRA's), and what qass's choice costs over the one and saves against the other.
        "extra_mib": extra, "all_4bit_mib": all_4bit, "full_precision_mib": full,
        "saved_mib_vs_full_precision": full - all_4bit - extra,
        "layers_kept": len(kept), "layers_measured": len(errors), "signal_frames": frames,
        "mean_error_by_group": {g: sum(v) / len(v) for g, v in groups.items()},
        "error_kept_out": (sum(x["error"] for x in layers if x["kept"])
                           / max(1e-12, sum(x["error"] for x in layers))),
        "signal": signal_options(settings), "layers": layers,
    }


def signal_frames(batches: list[dict]) -> dict:
    """What the encoder gets on the measured batches: mean frames per clip (its own frames, by
    the attention mask when the batch has one) against the frames a batch is padded to."""
    features = [b["input_features"] for b in batches if "input_features" in b]
    if not features:
        return {}
    clips = sum(f.shape[0] for f in features)
    own = sum(float(b["attention_mask"].sum()) if "attention_mask" in b else
              b["input_features"].shape[0] * b["input_features"].shape[-1] for b in batches
              if "input_features" in b)
    padded = sum(f.shape[0] * f.shape[-1] for f in features)
    return {"clips": clips, "mean_frames": own / clips, "mean_padded_frames": padded / clips}


def qass_load_kwargs(settings: QassSettings, context: MethodContext) -> dict:
    """qlora's 4-bit loading with the chosen layers added to ``llm_int8_skip_modules``: chosen
    now (training), or read back from the run's report (resume, reload, merged export)."""
    if "keep_16bit" not in context.report:
        context.report.update(measure(settings, context))
    kwargs = quantization_kwargs(settings, context)
    kept = list(context.report.get("keep_16bit", []))
    config = kwargs["quantization_config"]
    config.llm_int8_skip_modules = list(context.unquantized_modules) + kept
    return kwargs


def apply_qass(model, settings: QassSettings, context: MethodContext):
    report = context.report
    if report:
        worst = ", ".join(f"{layer['name']} {layer['error']:.3g}" for layer in report["layers"][:3])
        frames = report.get("signal_frames") or {}
        context.log(f"qass: {len(report['keep_16bit'])} of {len(report['layers'])} linear layers kept "
                    f"in {report['kept_dtype']} (+{report['extra_mib']:.2f} MiB over all-4-bit "
                    f"{report['all_4bit_mib']:.2f} MiB, "
                    f"{report.get('saved_mib_vs_full_precision', 0):.2f} MiB saved against all in "
                    f"{report['kept_dtype']}; budget {report['budget']}); largest relative 4-bit "
                    f"errors: {worst}; signal: {report['signal']}"
                    + (f", {frames['mean_frames']:.0f} frames per clip on the measured batches "
                       f"(padded to {frames['mean_padded_frames']:.0f})" if frames else ""))
    else:
        context.log("qass: no training data at hand, so every layer is 4-bit (an estimate)")
    return apply_qlora(model, settings, context)


METHOD = make_method(
    name="qass",
    help="Quantisation-aware signal selection: layers most hurt by 4-bit stay unquantised, "
         "silence is trimmed and batches pad to the longest clip; LoRA on top.",
    settings_cls=QassSettings,
    apply=apply_qass,
    load_kwargs=qass_load_kwargs,
    task_options=signal_options,
    idea="Not every layer suffers equally from 4-bit weights. qass measures each linear layer's "
         "NF4 output error on real activations from a few training batches, keeps the most "
         "sensitive ones unquantised within a budget and quantises the rest; it also trims "
         "silence at the clip edges and pads batches only to their longest clip, so compute "
         "goes to signal. The run records which layers it kept and why.",
    formula="e_m = ‖X_m (Q(W_m) − W_m)ᵀ‖ / ‖X_m W_mᵀ‖;  keep argmax-e layers within budget;  "
            "h = W x + (α/r) B A x  (W 16-bit if kept, else NF4)",
    advantages="Most of QLoRA's memory saving with less quantisation error where it matters; "
               "shorter inputs after trimming; mergeable like QLoRA.",
    limitations="Start-up loads the base once in full precision to measure it (peak memory of "
                "the full model before training); kept layers cost 16-bit memory; trimming "
                "needs audible edges (a noisy floor is not trimmed).",
)
