"""Take a run home: an adapter zip with a model card, a merged transformers folder, ONNX, CTranslate2.

    artifacts = workbench.export_artifacts(run_id, "adapter")   # the facade looks the run up
    export_run(artifacts, "adapter", "out/run-3.zip")   # PEFT folder + README.md (adapter.py)
    export_run(artifacts, "merged", "out/run-3-merged")  # transformers folder (merged.py)
    export_run(artifacts, "onnx", "out/run-3-onnx")      # onnx.py, checked with onnxruntime
    export_run(artifacts, "ct2", "out/run-3-ct2")        # ct2.py (faster-whisper)

Everything written here loads with the ecosystem's own loaders (``PeftModel.from_pretrained``,
``WhisperFor....from_pretrained``, ``onnxruntime.InferenceSession``); the tests load each
artifact outside the engine. The modules build on each other one way: ``artifacts`` (what
a run left) < ``adapter`` (zip, model card) < ``merged`` < ``onnx`` and ``ct2``; this file only
dispatches.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from engine.errors import ExportError, WorkbenchError
from engine.export.adapter import adapter_zip_bytes, adapter_zip_path, write_adapter_zip
from engine.export.artifacts import Progress, RunArtifacts, fresh_folder, zip_folder_bytes
from engine.export.ct2 import check_exportable, write_ct2
from engine.export.merged import write_merged
from engine.export.onnx import write_onnx

FORMATS = ("adapter", "merged", "onnx", "ct2")

__all__ = ["FORMATS", "RunArtifacts", "check_request", "export_run", "export_zip_bytes"]


def check_request(format: str, quantization: str | None = None) -> None:
    """Refuse an unknown format, or a quantization for a format that has none."""
    if format not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    if quantization is not None and format != "ct2":
        raise ExportError("quantization applies to the ct2 format only")


def export_run(artifacts: RunArtifacts, format: str, out: str | Path,
               on_progress: Progress | None = None, quantization: str | None = None) -> Path:
    """Export a finished run as ``format`` to ``out``; returns the file or folder written.
    ``quantization`` (ct2 only): the CTranslate2 weight type, float16 by default."""
    check_request(format, quantization)
    run_id = artifacts.summary["id"]
    say = on_progress or (lambda message: None)
    if format == "adapter":
        return write_adapter_zip(artifacts, adapter_zip_path(Path(out), run_id))
    if format == "ct2":
        check_exportable(artifacts, quantization or "float16")  # before any folder is made
    folder = fresh_folder(Path(out))
    try:
        if format == "merged":
            return write_merged(artifacts, folder, say)
        if format == "ct2":
            return write_ct2(artifacts, folder, say, quantization or "float16")
        return write_onnx(artifacts, folder, say)
    except WorkbenchError:
        shutil.rmtree(folder, ignore_errors=True)  # no half-written export stays behind
        raise
    except Exception as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise ExportError(f"exporting run {run_id} as {format} failed: {error}") from error


def export_zip_bytes(artifacts: RunArtifacts, format: str, on_progress: Progress | None = None) -> bytes:
    """An export as one zip for a download button: the adapter zip, or the exported folder."""
    check_request(format)
    if format == "adapter":
        return adapter_zip_bytes(artifacts)
    with tempfile.TemporaryDirectory(prefix="lim-export-") as scratch:
        folder = export_run(artifacts, format, Path(scratch) / format, on_progress)
        return zip_folder_bytes(folder, f"run-{artifacts.summary['id']}-{format}")
