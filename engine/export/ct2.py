"""CTranslate2 export of a Whisper speech-recognition run: the folder faster-whisper loads,
checked against the merged transformers model before it is handed over.

    write_ct2(artifacts, folder, say, quantization="float16")   # artifacts.parity_clips: what to check

1. The merged model is written as the "merged" export writes it (``write_merged``), into a
   temporary folder.
2. ctranslate2's own ``TransformersConverter`` turns it into ``model.bin``, ``config.json`` and
   ``vocabulary.json``; ``tokenizer.json`` and ``preprocessor_config.json`` are copied beside
   them, since faster-whisper reads its tokenizer and mel settings from there.
3. Parity: greedy transcripts (beam 1, no timestamps, the same prompt tokens, 30 s padding) of
   up to ``PARITY_CLIPS`` clips from ``ctranslate2.models.Whisper`` and from the merged model.
   ``parity.json`` in the folder lists how many agree and every pair that differs; float16 or
   int8 weights may change a token or two, so a difference is reported, not refused.

ctranslate2 is imported only here and in the functions that run it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from engine.data.audio import load_audio
from engine.errors import ExportError
from engine.export.artifacts import Progress, RunArtifacts
from engine.export.merged import write_merged
from engine.models.base import MODEL_BUILD_LOCK
from engine.training.settings import stored_training
from storage import Storage

QUANTIZATIONS = ("float16", "int8", "float32", "int8_float16", "bfloat16")
PARITY_CLIPS = 8
MAX_NEW_TOKENS = 128  # transcripts of short clips end long before; both sides stop here
FASTER_WHISPER_FILES = ["tokenizer.json", "preprocessor_config.json"]


def require_ctranslate2() -> None:
    try:
        import ctranslate2  # noqa: F401
    except ImportError as error:
        raise ExportError(f"CTranslate2 export needs ctranslate2 (pip install -r requirements.txt): "
                          f"{error}") from error


def check_exportable(artifacts: RunArtifacts, quantization: str) -> None:
    task = artifacts.summary["task"]
    if artifacts.family != "whisper" or task != "asr":
        raise ExportError(f"CTranslate2 export is for Whisper speech recognition runs; run "
                          f"{artifacts.summary['id']} is {artifacts.family} {task}. Export it as "
                          "merged or onnx instead")
    if quantization not in QUANTIZATIONS:
        raise ExportError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, not {quantization!r}")


def parity_clips(storage: Storage, dataset: dict | None) -> tuple[str, list[Path]]:
    """Up to ``PARITY_CLIPS`` audio files of the run's dataset (its record, None when deleted):
    the test split, else the validation split."""
    if dataset is None:
        return "none (the dataset was deleted)", []
    folder = storage.files.resolve(dataset["path"])
    for split in ("test", "validation"):
        items = storage.dataset_items(dataset["id"], split)[:PARITY_CLIPS]
        if items:
            return split, [folder / item["file"] for item in items]
    return "none", []


def write_ct2(artifacts: RunArtifacts, folder: Path, say: Progress, quantization: str = "float16") -> Path:
    check_exportable(artifacts, quantization)
    require_ctranslate2()
    from ctranslate2.converters import TransformersConverter

    with tempfile.TemporaryDirectory(prefix="lim-ct2-") as scratch:
        merged = write_merged(artifacts, Path(scratch) / "merged", say)
        say(f"converting the merged model to CTranslate2 ({quantization})")
        TransformersConverter(str(merged), copy_files=FASTER_WHISPER_FILES).convert(
            str(folder), quantization=quantization, force=True)  # force: the folder exists, empty
        split, files = artifacts.parity_clips
        if files:
            say(f"checking transcripts of {len(files)} {split} clip(s): CTranslate2 against transformers")
            report = parity_report(merged, folder, files, language_and_task(artifacts.summary, merged))
        else:
            report = {"clips": 0, "equal": 0, "differing": [], "note": "no clips to compare"}
    report.update(split=split, quantization=quantization)
    (folder / "parity.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    say(f"parity: {report['equal']} of {report['clips']} transcripts identical"
        + "".join(f"; differs on {d['clip']}: transformers {d['transformers']!r}, "
                  f"CTranslate2 {d['ctranslate2']!r}" for d in report["differing"]))
    return folder


def language_and_task(summary: dict, model_dir: Path) -> tuple[str | None, str | None]:
    """The run's ``language`` and ``task`` settings when it has them; else English transcription
    for a multilingual model (one with language tokens), and no language for others."""
    training = stored_training(summary)
    multilingual = json.loads((model_dir / "generation_config.json").read_text()).get("lang_to_id") \
        if (model_dir / "generation_config.json").is_file() else None
    if not multilingual:
        return None, None
    return training.language, training.task


def parity_report(merged: Path, ct2_folder: Path, files: list[Path],
                  language_task: tuple[str | None, str | None]) -> dict:
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer

    extractor = WhisperFeatureExtractor.from_pretrained(merged)
    tokenizer = WhisperTokenizer.from_pretrained(merged)
    with MODEL_BUILD_LOCK:  # see engine/models/base.py
        model = WhisperForConditionalGeneration.from_pretrained(merged).eval()
    # Whole 30 s window, as faster-whisper and Whisper itself pad.
    features = np.stack([extractor(load_audio(f), sampling_rate=extractor.sampling_rate,
                                   return_tensors="np").input_features[0] for f in files])
    prompt = prompt_tokens(model, tokenizer, *language_task)
    reference = transformers_transcripts(model, features, *language_task)
    exported = [text_tokens(row, model.generation_config)
                for row in ctranslate2_transcripts(ct2_folder, features, prompt)]
    differing = []
    for file, ours, theirs in zip(files, reference, exported):
        if ours != theirs:
            differing.append({"clip": file.name, "transformers": tokenizer.decode(ours).strip(),
                              "ctranslate2": tokenizer.decode(theirs).strip()})
    return {"clips": len(files), "equal": len(files) - len(differing), "differing": differing,
            "prompt": prompt, "language": language_task[0], "task": language_task[1]}


def prompt_tokens(model, tokenizer, language: str | None, task: str | None) -> list[int]:
    """The tokens transformers' Whisper ``generate`` starts with: start of transcript, language
    and task (multilingual models), no-timestamps."""
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    config = model.generation_config
    prompt = [config.decoder_start_token_id]
    if language:
        code = TO_LANGUAGE_CODE.get(language.lower(), language.lower())
        if f"<|{code}|>" not in config.lang_to_id or task not in config.task_to_id:
            raise ExportError(f"the model has no language {language!r} or task {task!r}")
        prompt += [config.lang_to_id[f"<|{code}|>"], config.task_to_id[task]]
    if getattr(config, "no_timestamps_token_id", None) is not None:
        prompt.append(config.no_timestamps_token_id)
    return prompt


def transformers_transcripts(model, features: np.ndarray, language: str | None,
                             task: str | None) -> list[list[int]]:
    extra = {"language": language, "task": task} if language else {}
    with torch.no_grad():
        generated = model.generate(input_features=torch.from_numpy(features), num_beams=1, do_sample=False,
                                   max_new_tokens=MAX_NEW_TOKENS, **extra)
    return [text_tokens(row, model.generation_config) for row in generated.tolist()]


def ctranslate2_transcripts(folder: Path, features: np.ndarray, prompt: list[int]) -> list[list[int]]:
    import ctranslate2

    model = ctranslate2.models.Whisper(str(folder), device="cpu", intra_threads=torch.get_num_threads())
    results = model.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)),
                             [prompt] * len(features), beam_size=1,
                             max_length=len(prompt) + MAX_NEW_TOKENS)
    return [r.sequences_ids[0] for r in results]


def text_tokens(row: list[int], config) -> list[int]:
    """Generated tokens without the prompt transformers may echo and without end/padding."""
    special = {config.eos_token_id, config.pad_token_id, config.decoder_start_token_id,
               getattr(config, "no_timestamps_token_id", None),
               *(getattr(config, "lang_to_id", None) or {}).values(),
               *(getattr(config, "task_to_id", None) or {}).values()}
    return [t for t in row if t not in special][:MAX_NEW_TOKENS]
