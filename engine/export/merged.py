"""The merged export: the run's model as one plain transformers folder (adapter merged in).

Merging a QLoRA adapter: peft's ``merge_and_unload`` on a bitsandbytes 4-bit model would
quantise the merged weight again (losing the update's precision), so the merge happens on a
full-precision copy instead. That copy takes its quantised layers from the 4-bit base the run
trained on, dequantised, so the merged model computes what the trained model computed rather
than what an adapter on different (unquantised) weights would.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from engine.export.adapter import model_card
from engine.export.artifacts import Progress, RunArtifacts
from engine.errors import ExportError
from engine.inference import method_load_kwargs
from engine.methods import get_method
from engine.models import TaskModel, task_model_for
from engine.models.base import MODEL_BUILD_LOCK
from engine.names import RUN_META_FILE, WHOLE_WINDOW
from engine.training.run_meta import read_method_report
from engine.training.settings import RunSettings

WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx"}


def merged_model(artifacts: RunArtifacts, say: Progress) -> tuple[TaskModel, torch.nn.Module]:
    """The run's model as one plain transformers model in float32 (adapter merged in)."""
    s = artifacts.summary
    settings = RunSettings.from_record(s)
    # The run's Whisper prompt (language, task) goes into the exported generation config; the
    # export itself is a stock whole-window model whatever window the run trained on.
    options = {**settings.training.task_options(), "audio_padding": WHOLE_WINDOW}
    if not artifacts.is_adapter:  # a full fine-tune already is a plain model
        task_model = task_model_for(artifacts.family, s["task"], artifacts.adapter_dir, artifacts.labels,
                                    **options)
        return task_model, task_model.load().eval()
    task_model = task_model_for(artifacts.family, s["task"], artifacts.base_dir, artifacts.labels, **options)
    method = get_method(s["method"])
    if method.merge_refusal:
        raise ExportError(f"run {s['id']} ({method.name}) cannot be exported merged: "
                          f"{method.merge_refusal}; export the adapter instead")
    say("loading the base model in full precision")
    base = task_model.load()
    load_kwargs = method_load_kwargs(settings, task_model, report=read_method_report(artifacts.adapter_dir))
    if "quantization_config" in load_kwargs:
        say("dequantising the 4-bit base the adapter was trained on")
        copy_dequantized_weights(task_model.load(**load_kwargs), base)
    from peft import PeftModel

    say("merging the adapter into the base model")
    with MODEL_BUILD_LOCK:  # see engine/models/base.py
        model = PeftModel.from_pretrained(base, artifacts.adapter_dir).merge_and_unload()
    return task_model, model.eval()


def copy_dequantized_weights(quantized: torch.nn.Module, target: torch.nn.Module) -> int:
    """Overwrite each of ``target``'s linear weights with its 4-bit twin, dequantised."""
    from peft.utils.integrations import dequantize_bnb_weight

    modules = dict(target.named_modules())
    copied = 0
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if type(module).__name__ != "Linear4bit":
                continue
            weight = dequantize_bnb_weight(module.weight, state=module.weight.quant_state)
            modules[name].weight.copy_(weight.to(modules[name].weight.dtype))
            copied += 1
    return copied


def write_merged(artifacts: RunArtifacts, folder: Path, say: Progress) -> Path:
    _, model = merged_model(artifacts, say)
    say("saving the merged model")
    model.save_pretrained(folder)
    copy_processor_files(artifacts, folder)
    (folder / "README.md").write_text(model_card(artifacts, merged=True))
    return folder


def copy_processor_files(artifacts: RunArtifacts, folder: Path) -> None:
    """Tokenizer and feature-extractor files of the base (the model writes its own config)."""
    source = artifacts.adapter_dir if not artifacts.is_adapter else artifacts.base_dir
    for file in source.iterdir():
        if (file.is_file() and file.suffix not in WEIGHT_SUFFIXES
                and file.name not in {"config.json", "generation_config.json", RUN_META_FILE,
                                      "README.md", "adapter_config.json",
                                      "conversion.json"}):  # how the base was converted (models/ct2/)
            shutil.copy2(file, folder / file.name)
