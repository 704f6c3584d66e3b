"""What a run's folder says about the run, read and written in one place: ``workbench.json``
beside its adapter (``RunMeta``) and its method's report (``method_report.json``, in
``runs/<id>/`` and beside the adapter).

The recipe writes ``workbench.json`` when it saves the adapter (``runs/<id>/adapter/``, with
``write_adapter_files``); the Playground reads the labels back (engine/inference.py), an export
reads it and writes a portable copy without this machine's folders (engine/export/adapter.py),
and the merged export leaves it out (engine/export/merged.py).

    RunMeta(run_id=3, method="lora", ...).write(adapter_dir)
    meta = RunMeta.read(adapter_dir)   # None when the folder has no workbench.json

The keys are the file's as it has always been written: run_id, method, task, family,
base_model, base_model_path, labels, settings. A file that lacks one (written by hand, or by
something older) still reads, the key at its default; keys this version does not know are kept
as they were and written back after the known ones.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path

from engine.names import METHOD_REPORT, RUN_META_FILE

# Files of a model folder that hold weights: a full fine-tune's saved folder has its own.
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth"}


@dataclass
class RunMeta:
    """The contents of ``workbench.json`` beside a run's adapter."""

    run_id: int | None = None
    method: str | None = None
    task: str | None = None
    family: str | None = None
    base_model: str | None = None  # the model's registered name
    base_model_path: str | None = None  # its folder on the machine that trained (never exported)
    labels: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)  # RunSettings.to_record()["settings"]
    extra: dict = field(default_factory=dict)  # keys this version does not know, as they were

    @classmethod
    def from_dict(cls, data: dict) -> RunMeta:
        known = [f.name for f in fields(cls) if f.name != "extra"]
        return cls(**{name: data[name] for name in known if name in data},
                   extra={key: value for key, value in data.items() if key not in known})

    def to_dict(self) -> dict:
        """The file's JSON object: the known keys in their order, then the unknown ones."""
        known = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**known, **{key: value for key, value in self.extra.items() if key not in known}}

    @classmethod
    def read(cls, folder: Path) -> RunMeta | None:
        """``folder``'s ``workbench.json``, or None when it has none."""
        path = Path(folder) / RUN_META_FILE
        return cls.from_dict(json.loads(path.read_text())) if path.is_file() else None

    def write(self, folder: Path) -> Path:
        path = Path(folder) / RUN_META_FILE
        path.write_text(self.to_json())
        return path

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def exported(self, base_model: str, registered_as: str, source: str | None) -> str:
        """The file as an export ships it: the base model named portably (``base_model``: a hub
        id or its registered name), how it is registered here and where it came from, and no
        folder of this machine (``base_model_path`` left out)."""
        data = self.to_dict()
        data.pop("base_model_path", None)
        data.update(base_model=base_model, base_model_registered_as=registered_as, base_model_source=source)
        return json.dumps(data, indent=2)


def read_method_report(folder: Path) -> dict:
    """What the run's method decided from data (MethodContext.report), saved in ``folder`` (the
    run's or its adapter's); {} when it saved none."""
    path = Path(folder) / METHOD_REPORT
    return json.loads(path.read_text()) if path.is_file() else {}


def write_method_report(folder: Path, report: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    report_file = folder / METHOD_REPORT
    partial = report_file.with_suffix(".partial")
    partial.write_text(json.dumps(report, indent=2))
    partial.replace(report_file)  # never half-written


def write_adapter_files(out: Path, meta: RunMeta, report: dict | None, model_dir: Path | None = None) -> None:
    """What goes beside the weights a run saved in ``out``: with ``model_dir`` (a full model),
    the base's tokenizer / processor files that ``out`` lacks; ``workbench.json``; the method's
    ``report`` when it has one (reloading the adapter needs what was decided)."""
    if model_dir is not None:  # a full model also needs its tokenizer / processor files
        for source in model_dir.iterdir():
            if source.is_file() and not (out / source.name).exists() and source.suffix not in WEIGHT_SUFFIXES:
                shutil.copy2(source, out / source.name)
    meta.write(out)
    if report:
        (out / METHOD_REPORT).write_text(json.dumps(report, indent=2))
