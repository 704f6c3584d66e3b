"""workbench.json through RunMeta (engine/training/run_meta.py), and engine/names.py at the bottom."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from engine import names
from engine.training.run_meta import RunMeta, read_method_report, write_adapter_files

# What the recipe wrote before RunMeta, key for key (runs trained then still read and export alike).
STORED = {"run_id": 7, "method": "lora", "task": "asr", "family": "whisper", "base_model": "tiny-whisper",
          "base_model_path": "/data/models/tiny-whisper", "labels": [],
          "settings": {"method": {"r": 4}, "training": {"audio_padding": "longest"}}}


def test_run_meta_writes_the_file_the_recipe_wrote_and_reads_it_back(tmp_path):
    meta = RunMeta(**STORED)
    meta.write(tmp_path)
    assert (tmp_path / names.RUN_META_FILE).read_text() == json.dumps(STORED, indent=2)
    assert RunMeta.read(tmp_path) == meta
    assert RunMeta.read(tmp_path / "elsewhere") is None


def test_an_older_file_reads_with_defaults_and_keeps_what_it_does_not_know(tmp_path):
    (tmp_path / names.RUN_META_FILE).write_text(json.dumps({"run_id": 3, "labels": ["yes", "no"], "note": 1}))
    meta = RunMeta.read(tmp_path)
    assert (meta.run_id, meta.labels, meta.settings, meta.method) == (3, ["yes", "no"], {}, None)
    assert meta.to_dict()["note"] == 1 and list(meta.to_dict())[-1] == "note"


def test_the_exported_file_names_the_base_portably_without_a_local_folder():
    exported = json.loads(RunMeta(**STORED).exported("openai/whisper-tiny", registered_as="tiny-whisper",
                                                     source="hub:openai/whisper-tiny"))
    expected = {key: value for key, value in STORED.items() if key != "base_model_path"}
    expected.update(base_model="openai/whisper-tiny", base_model_registered_as="tiny-whisper",
                    base_model_source="hub:openai/whisper-tiny")
    assert list(exported.items()) == list(expected.items())


def test_adapter_files_hold_the_meta_the_report_and_a_full_models_processor_files(tmp_path):
    model_dir, out = tmp_path / "model", tmp_path / "adapter"
    model_dir.mkdir()
    out.mkdir()
    for name in ("tokenizer.json", "model.safetensors", "config.json"):
        (model_dir / name).write_text(name)
    (out / "config.json").write_text("the trained model's own")
    write_adapter_files(out, RunMeta(**STORED), {"keep_16bit": ["fc1"]}, model_dir=model_dir)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", names.METHOD_REPORT,
                                                      "tokenizer.json", names.RUN_META_FILE]
    assert (out / "config.json").read_text() == "the trained model's own"
    assert read_method_report(out) == {"keep_16bit": ["fc1"]}
    write_adapter_files(tmp_path, RunMeta(), {})  # an adapter: no processor files, no empty report
    assert not (tmp_path / names.METHOD_REPORT).exists() and RunMeta.read(tmp_path) == RunMeta()


def test_names_import_nothing():
    """engine/names.py sits below every engine module (pyproject.toml's layers): plain strings."""
    tree = ast.parse(Path(names.__file__).read_text())
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert [node.module for node in imports if isinstance(node, ast.ImportFrom)] == ["__future__"]
    assert len(imports) == 1
