"""Evaluation's transcription speed (issue 31, goal 2): the recipe's ``model.generate`` against
the engine's evaluation (length-sorted batches, bounded greedy decoding) with a dynamic and a
static key/value cache, on the same clips, with every side's transcripts compared.

    python -m benchmarks.generation_speed --home /tmp/gen-home --clips 80 --json out.json       # CPU
    python -m benchmarks.generation_speed --home /tmp/gen-home --clips 400 --device cuda --json out.json

Sides (each decodes every clip once after one warm-up batch, which is timed on its own: on a GPU
the static cache's first pass compiles the decoder step):

  recipe          ``WhisperForConditionalGeneration.generate`` over the clips in their order, 30 s
                  windows, the language and task, ``max_new_tokens`` (what ``Seq2SeqTrainer`` with
                  ``predict_with_generate`` calls);
  engine-dynamic  ``engine.training.evaluation.evaluate`` (longest first, ``GenerationMixin.generate``
                  greedy, ``generation_cache=dynamic``);
  engine-static   the same with ``generation_cache=static``.

Model: the real whisper-base the demo registers (``--model-dir`` for another Whisper folder);
clips: demo-voices' test and validation splits, repeated to ``--clips``. Writes the seconds,
clips per second, the ratio to the recipe, the WER and how many transcripts differ from the
recipe's.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from benchmarks.time_to_quality import DATASET, _model_dir, read_split, standard_task_model
from engine.metrics import speech_metrics
from engine.training.evaluation import ItemDataset, evaluate

SIDES = ("recipe", "engine-dynamic", "engine-static")


def recipe_transcripts(model, task, items: list[dict], batch: int) -> list[str]:
    """What the recipe's evaluation does: the clips in order, each batch through Whisper's own
    ``generate`` on whole 30 s windows."""
    dataset, texts = ItemDataset(items, task, DATASET), []
    for start in range(0, len(items), batch):
        chunk = task.collate([dataset[i] for i in range(start, min(start + batch, len(items)))])
        features = chunk["input_features"].to(model.device)
        with torch.inference_mode():
            generated = model.generate(input_features=features, max_new_tokens=task.generation_max_length,
                                       **task.generation_kwargs())
        texts += [t.strip() for t in task.tokenizer.batch_decode(generated, skip_special_tokens=True)]
    return texts


def run_side(side: str, model, task, items: list[dict], batch: int, device: str) -> dict:
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()
    task.generation_cache = "static" if side == "engine-static" else "dynamic"

    def decode(chunk: list[dict]) -> list[str]:
        if side == "recipe":  # Seq2SeqTrainer predicts under the same autocast (bf16=True)
            with autocast:
                return recipe_transcripts(model, task, chunk, batch)
        return evaluate(model, task, chunk, DATASET, batch, autocast)[1]

    def timed(chunk: list[dict]) -> tuple[list[str], float]:
        if device == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        texts = decode(chunk)
        if device == "cuda":
            torch.cuda.synchronize()
        return texts, time.perf_counter() - began

    _, warmup_s = timed(items[:batch])
    texts, seconds = timed(items)
    return {"side": side, "warmup_s": warmup_s, "seconds": seconds, "clips_per_s": len(items) / seconds,
            "wer": speech_metrics([item["text"] for item in items], texts)["wer"], "texts": texts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="a data home (engine demo's whisper-base)")
    parser.add_argument("--model-dir", type=Path, help="another Whisper folder")
    parser.add_argument("--clips", type=int, default=80)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    model_dir = args.model_dir or _model_dir(args.home)
    task = standard_task_model(model_dir)
    task.generation_max_length = args.max_new_tokens
    model = task.load().to(args.device).eval()
    pool = read_split("test") + read_split("validation")
    items = [pool[i % len(pool)] for i in range(args.clips)]
    rows = [run_side(side, model, task, items, args.batch, args.device) for side in args.sides.split(",")]
    reference = next((row for row in rows if row["side"] == "recipe"), rows[0])
    for row in rows:
        row["x_recipe"] = reference["seconds"] / row["seconds"]
        row["differ_from_" + reference["side"]] = sum(a != b for a, b in zip(row["texts"], reference["texts"]))
    print(f"| side | warm-up batch s | {args.clips} clips s | clips/s | × {reference['side']} | WER | "
          f"transcripts unlike {reference['side']} |\n|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['side']} | {row['warmup_s']:.1f} | {row['seconds']:.1f} | {row['clips_per_s']:.2f} | "
              f"{row['x_recipe']:.2f} | {row['wer'] * 100:.2f} % | {row['differ_from_' + reference['side']]} |")
    if args.json:
        device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
        args.json.write_text(json.dumps({"model_dir": str(model_dir), "clips": args.clips, "batch": args.batch,
                                         "max_new_tokens": args.max_new_tokens, "device": device,
                                         "torch": torch.__version__, "sides": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
