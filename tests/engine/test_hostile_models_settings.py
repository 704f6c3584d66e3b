"""Issue 15, models and settings: remote-code folders, corrupt weights, non-finite and absurd settings."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from safetensors.numpy import save_file

from audio_files import workbench_empty  # noqa: F401 (fixture)

from engine import settings as settings_lib
from engine.errors import ModelError, SettingsError
from engine.models.sources import check_model_folder
from engine.training.settings import TrainingSettings


def bert_folder(path, **config):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "bert", **config}))
    save_file({"weight": np.zeros((2, 2), dtype=np.float32)}, str(path / "model.safetensors"))
    return path


def test_folder_asking_for_custom_code_is_refused_and_nothing_copied(workbench_empty, tmp_path):
    folder = bert_folder(tmp_path / "remote", auto_map={"AutoModel": "modeling_evil.EvilModel"})
    (folder / "modeling_evil.py").write_text("import os; os.system('echo owned')\n")
    with pytest.raises(ModelError, match="custom code") as error:
        workbench_empty.register_model(folder, "evil")
    assert "auto_map" in str(error.value) and "modeling_evil.py" in str(error.value)
    assert not list((workbench_empty.home / "models").rglob("*"))


def test_python_files_alone_are_refused_too(tmp_path):
    folder = bert_folder(tmp_path / "plain")
    (folder / "tokenization_x.py").write_text("")
    with pytest.raises(ModelError, match="tokenization_x.py"):
        check_model_folder(folder)


@pytest.mark.parametrize("header", [b"\xff" * 8, (10).to_bytes(8, "little") + b"{not json}", b"\x01"])
def test_corrupt_safetensors_is_a_model_error_not_a_traceback(workbench_empty, tmp_path, header):
    folder = bert_folder(tmp_path / "corrupt")
    (folder / "model.safetensors").write_bytes(header)
    with pytest.raises(ModelError, match="model.safetensors.*damaged"):
        workbench_empty.register_model(folder, "corrupt")
    assert not list((workbench_empty.home / "models").rglob("*"))


def test_a_sound_folder_passes_the_check(tmp_path):
    check_model_folder(bert_folder(tmp_path / "good"))


@pytest.mark.parametrize("values", [
    {"learning_rate": "nan"}, {"learning_rate": "inf"}, {"learning_rate": float("nan")},
    {"learning_rate": -math.inf}, {"max_grad_norm": "NaN"}, {"num_train_epochs": "Infinity"},
    {"memory_budget_gb": float("inf")}, {"max_time_minutes": "nan"},
])
def test_non_finite_numbers_are_refused(values):
    with pytest.raises(SettingsError, match=f"{next(iter(values))}.*finite"):
        settings_lib.build(TrainingSettings, values)


@pytest.mark.parametrize("values", [
    {"learning_rate": "1e6"}, {"max_steps": str(10**18)}, {"gradient_accumulation_steps": str(10**9)},
    {"seed": str(2**40)}, {"num_train_epochs": "1e9"}, {"warmup_steps": str(10**12)},
])
def test_absurd_sizes_are_refused_with_the_bound(values):
    with pytest.raises(SettingsError, match=f"{next(iter(values))} must be at most"):
        settings_lib.build(TrainingSettings, values)


def test_non_finite_method_settings_are_refused_too():
    from engine.methods.lora import LoraSettings

    with pytest.raises(SettingsError, match="lora_dropout.*finite"):
        settings_lib.build(LoraSettings, {"lora_dropout": "nan"})


def test_absurd_but_legal_values_are_warned_about():
    warnings = TrainingSettings(learning_rate=0.5, gradient_accumulation_steps=512).warnings()
    assert any("learning_rate" in w for w in warnings)
    assert any("gradient_accumulation_steps" in w for w in warnings)
    assert TrainingSettings().warnings() == []


def test_submit_logs_the_warnings(workbench):
    from conftest import FAST

    run_id = workbench.submit_run("demo-speech", "tiny-whisper", "lora", {},
                                  {**FAST, "learning_rate": 0.5})
    events = workbench.run_events(run_id)
    assert any(e["level"] == "warning" and "learning_rate" in e["message"] for e in events)


def test_whisper_collator_cuts_labels_longer_than_the_decoder(workbench):
    model = workbench.task_model("tiny-whisper", "asr")
    limit = model.config().max_target_positions
    features = np.zeros((model.config().num_mel_bins, 2 * model.config().max_source_positions), dtype=np.float32)
    example = {"input_features": features, "labels": model.tokenizer("word " * 3_000).input_ids}
    assert len(example["labels"]) > limit
    batch = model.collate([example])
    assert batch["labels"].shape[1] <= limit
