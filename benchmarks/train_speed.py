"""Training speed and memory: the reference recipe against the engine, on one device, alternating.

The reference is the standard Hugging Face recipe for Whisper + (Q)LoRA: ``from_pretrained``
with ``BitsAndBytesConfig`` (NF4, double quantisation, bf16 compute),
``prepare_model_for_kbit_training`` (gradient checkpointing on), ``LoraConfig(r=32,
lora_alpha=64, target_modules=["q_proj", "v_proj"], lora_dropout=0.05)`` and
``Seq2SeqTrainer`` with bf16. The engine side builds its model with the engine's own
``build_training_model`` and trains with the engine's ``TrainStep``, the objects a real run uses.

Both see the same synthetic batches: random log-mel features (normal, not zeros) of the chosen
length and random label tokens; Whisper's models have random weights of the real configs (speed
and memory do not depend on weight values). Each measurement runs in a fresh child process (clean
memory counters, no state shared between the two sides); cases alternate reference / engine
``--rounds`` times. Throughput counts optimizer steps after ``--warmup`` steps, timed with the
device synchronised; peak memory is ``torch.cuda.max_memory_allocated`` over the whole child
(load included), or the child's peak RSS on a CPU.

    python -m benchmarks.train_speed --suite cpu            # tiny presets, CI keeps it working
    python -m benchmarks.train_speed --suite gpu --json out.json

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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Real Whisper configurations (openai/whisper-*); only the shapes matter here.
WHISPER = {
    "whisper-small": dict(d_model=768, encoder_layers=12, decoder_layers=12, encoder_attention_heads=12,
                          decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                          num_mel_bins=80, vocab_size=51865),
    "whisper-medium": dict(d_model=1024, encoder_layers=24, decoder_layers=24, encoder_attention_heads=16,
                           decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096,
                           num_mel_bins=80, vocab_size=51865),
    "whisper-large-v3": dict(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                             decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120,
                             num_mel_bins=128, vocab_size=51866),
}


@dataclass
class Case:
    model: str
    method: str = "qlora"  # qlora | lora | full
    batch: int = 16
    audio: str = "30s"  # "30s" or "short" (clips of 1-5 s)
    label_tokens: int = 64
    steps: int = 8
    warmup: int = 3
    seed: int = 0
    learning_rate: float = 1e-3
    lora_dropout: float = 0.05
    memory_cap_gb: float = 0.0  # torch.cuda.set_per_process_memory_fraction, both sides
    # engine options (ignored by the reference)
    engine: dict = field(default_factory=dict)
    label: str = ""  # names an engine variant in the table
    sides: tuple = ("reference", "engine")


SUITES = {
    "cpu": [
        Case("tiny-whisper", "qlora", batch=4, steps=3, warmup=1),
        Case("tiny-whisper", "qlora", batch=4, steps=3, warmup=1, audio="short"),
        Case("tiny-whisper", "qlora", batch=4, steps=3, warmup=1, engine={"memory_budget_gb": 0.05},
             label="memory plan 50 MB", sides=("engine",)),
    ],
    "gpu": [
        Case("whisper-small", "qlora", steps=17),  # 20 logged steps: the loss-parity check
        Case("whisper-small", "qlora", engine={"memory_budget_gb": 2.67}, sides=("engine",),
             label="planned for the reference's 2.67 GiB"),
        Case("whisper-large-v3", "qlora", steps=6),
        Case("whisper-large-v3", "qlora", steps=6, engine={"memory_budget_gb": 7.38}, sides=("engine",),
             label="planned for the reference's 7.38 GiB"),
        Case("whisper-large-v3", "qlora", steps=6, memory_cap_gb=4.0, engine={"memory_budget_gb": 4.0},
             label="memory-first, 4 GiB cap", sides=("engine",)),
        Case("whisper-small", "qlora", audio="short"),
        Case("whisper-small", "qlora", audio="short", engine={"memory_budget_gb": 2.67}, sides=("engine",),
             label="planned for the reference's 2.67 GiB"),
        Case("whisper-small", "lora"),
    ],
    # Run with LIM_BENCH_PROFILE=folder: where each side's step time goes.
    "profile": [
        Case("whisper-small", "qlora", steps=4),
        Case("whisper-small", "qlora", steps=4, sides=("engine",), label="no checkpointing",
             engine={"checkpoint": "none"}),
        Case("whisper-small", "qlora", steps=4, sides=("engine",), label="without CUDA graphs",
             engine={"cuda_graphs": "off"}),
        Case("whisper-large-v3", "qlora", steps=3, sides=("engine",)),
    ],
    "ablation": [
        Case("whisper-small", "qlora", sides=("engine",), label="A: peft layers, fp32 upcast, autocast",
             engine={"kernels": "peft", "upcast_frozen": True, "checkpoint": "all", "compile": "off",
                     "cuda_graphs": "off"}),
        Case("whisper-small", "qlora", sides=("engine",), label="B: A + bf16 frozen base, no autocast",
             engine={"kernels": "peft", "checkpoint": "all", "compile": "off", "cuda_graphs": "off"}),
        Case("whisper-small", "qlora", sides=("engine",), label="C: B + fused LoRA",
             engine={"checkpoint": "all", "compile": "off", "cuda_graphs": "off"}),
        Case("whisper-small", "qlora", sides=("engine",), label="D: C + compiled layers",
             engine={"checkpoint": "all", "cuda_graphs": "off"}),
        Case("whisper-small", "qlora", sides=("engine",), label="G: D + CUDA graphs (default)",
             engine={"checkpoint": "all"}),
        Case("whisper-small", "qlora", sides=("engine",), label="E: C without checkpointing",
             engine={"checkpoint": "none", "compile": "off", "cuda_graphs": "off"}),
        Case("whisper-small", "qlora", sides=("engine",), label="F: E with compiled layers",
             engine={"checkpoint": "none", "cuda_graphs": "off"}),
        Case("whisper-small", "qlora", sides=("engine",), label="H: F + CUDA graphs",
             engine={"checkpoint": "none"}),
    ],
}


# --------------------------------------------------------------------------- model folders
def prepare_model(name: str, root: Path, device: str) -> Path:
    """A model folder with random weights of ``name``'s config (cached in ``root``)."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from engine.models.presets import ASSETS, PRESETS, build_preset

    dest = root / name
    if (dest / "config.json").exists():
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
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and case.memory_cap_gb:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(case.memory_cap_gb * 2**30 / total)
    from transformers import WhisperConfig

    config = WhisperConfig.from_pretrained(model_dir)
    window = config.max_source_positions * 2
    total_steps = case.warmup + case.steps
    batches = make_batches(case, config, min(total_steps, 4), window)
    run = run_reference if side == "reference" else run_engine
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


class StepProfiler:
    """With ``LIM_BENCH_PROFILE=folder``, torch.profiler over the timed steps (their wall time is
    then inflated by the profiler): :meth:`stop` returns a per-step breakdown (device-busy time of
    kernels, copies and memsets; device launches; the costliest kernels) and writes the kernel
    table to the folder. Without the variable it does nothing and returns None."""

    def __init__(self, name: str, device: str):
        self.folder = os.environ.get("LIM_BENCH_PROFILE")
        self.name, self.device, self.prof = name, device, None

    def start(self) -> None:
        if not self.folder:
            return
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device == "cuda" else [])
        self.prof = profile(activities=activities)
        self.prof.__enter__()

    def stop(self, steps: int, elapsed: float) -> dict | None:
        if self.prof is None:
            return None
        self.prof.__exit__(None, None, None)
        breakdown = profile_breakdown(self.prof, steps, elapsed, self.device)
        sort = "self_cuda_time_total" if self.device == "cuda" else "self_cpu_time_total"
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.name)
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        Path(self.folder, name + ".txt").write_text(
            json.dumps(breakdown, indent=1) + "\n\n" +
            self.prof.key_averages().table(sort_by=sort, row_limit=50, max_name_column_width=90))
        return breakdown


def _timed_loop(step_fn, batches, total_steps, warmup, device, profiler: StepProfiler):
    import torch

    losses, started = [], None
    for index in range(total_steps):
        if index == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            profiler.start()
            started = time.perf_counter()
        losses.append(step_fn(batches[index % len(batches)], index))
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return losses, elapsed, profiler.stop(total_steps - warmup, elapsed)


def profile_breakdown(prof, steps: int, elapsed: float, device: str) -> dict:
    """Per optimizer step: wall ms, device-busy ms and device launches (GPU), and the 12 costliest
    device ops (on a CPU: operators by self CPU time)."""
    from torch.autograd import DeviceType

    events = prof.key_averages()
    if device == "cuda":
        rows = [e for e in events if e.device_type != DeviceType.CPU]
        cost = lambda e: e.self_device_time_total  # noqa: E731
    else:
        rows, cost = list(events), (lambda e: e.self_cpu_time_total)
    top = sorted(rows, key=cost, reverse=True)[:12]
    gpu = device == "cuda"
    return {"steps": steps, "wall_ms_per_step": 1000 * elapsed / steps,
            "device_busy_ms_per_step": sum(map(cost, rows)) / 1000 / steps if gpu else None,
            "device_ops_per_step": sum(e.count for e in rows) / steps if gpu else None,
            "top": [{"name": e.key[:80], "ms_per_step": cost(e) / 1000 / steps,
                     "calls_per_step": e.count / steps} for e in top]}


def run_reference(case: Case, model_dir: Path, batches, total_steps: int, device: str, window: int):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from torch.utils.data import Dataset
    from transformers import (BitsAndBytesConfig, Seq2SeqTrainer, Seq2SeqTrainingArguments,
                              TrainerCallback, WhisperForConditionalGeneration)

    bf16 = device == "cuda"
    torch.manual_seed(case.seed)
    if case.method == "qlora":
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32)
        model = WhisperForConditionalGeneration.from_pretrained(
            model_dir, quantization_config=quant, device_map={"": device})
        model = prepare_model_for_kbit_training(model)  # gradient checkpointing on
    else:
        dtype = torch.bfloat16 if (bf16 and case.method == "lora") else torch.float32
        model = WhisperForConditionalGeneration.from_pretrained(model_dir, dtype=dtype).to(device)
        model.gradient_checkpointing_enable()
        if case.method == "lora":
            model.enable_input_require_grads()
    if case.method in {"qlora", "lora"}:
        model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                                 lora_dropout=case.lora_dropout))

    class Items(Dataset):
        def __len__(self):
            return case.batch * total_steps

        def __getitem__(self, index):
            batch = batches[(index // case.batch) % len(batches)]
            row = index % case.batch
            return {"input_features": batch["input_features"][row], "labels": batch["labels"][row]}

    def collate(rows):
        return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}

    timing: dict = {"losses": []}
    profiler = StepProfiler(f"reference-{case.model}-{case.method}-{case.audio}", device)

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == case.warmup:
                if device == "cuda":
                    torch.cuda.synchronize()
                profiler.start()
                timing["start"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            timing["end"] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                timing["losses"].append(float(logs["loss"]))

    class InOrder(Seq2SeqTrainer):  # the same batches in the same order as the engine sees
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    output = tempfile.mkdtemp(prefix="reference-")
    args = Seq2SeqTrainingArguments(
        output_dir=output, per_device_train_batch_size=case.batch, max_steps=total_steps,
        learning_rate=case.learning_rate, warmup_steps=0, lr_scheduler_type="linear",
        weight_decay=0.0, max_grad_norm=1.0, bf16=bf16, logging_steps=1, save_strategy="no",
        report_to=[], remove_unused_columns=False, dataloader_num_workers=0, seed=case.seed,
        disable_tqdm=True, use_cpu=device == "cpu", label_names=["labels"])
    trainer = InOrder(model=model, args=args, train_dataset=Items(), data_collator=collate,
                      callbacks=[Timer()])
    trainer.train()
    shutil.rmtree(output, ignore_errors=True)
    elapsed = timing["end"] - timing["start"]
    return {"losses": timing["losses"], "train_s": elapsed,
            "profile": profiler.stop(total_steps - case.warmup, elapsed),
            "frames_per_sample": window, "optimizer": args.optim.value
            if hasattr(args.optim, "value") else str(args.optim)}


def run_engine(case: Case, model_dir: Path, batches, total_steps: int, device: str, window: int):
    from engine import settings as settings_lib
    from engine.methods import get_method
    from engine.models.whisper import WhisperSpeechRecognition
    from engine.training.planner import apply_checkpointing, estimate_for, plan_memory
    from engine.training.recipe import build_training_model
    from engine.training.settings import TrainingSettings
    from engine.training.step import TrainStep, compile_layers, wants_compile, wants_graphs

    options = dict(case.engine)
    short = case.audio == "short"
    task_model = WhisperSpeechRecognition(model_dir, **({"audio_padding": "longest"} if short else {}))
    method = get_method(case.method)
    method_values = {}
    if case.method in {"qlora", "lora"}:
        method_values = {"r": 32, "lora_alpha": 64, "lora_dropout": case.lora_dropout,
                         "target_modules": "q_proj,v_proj"}
        for key in ("kernels", "upcast_frozen"):
            if key in options and (key != "upcast_frozen" or case.method == "qlora"):
                method_values[key] = options[key]
    method_settings = settings_lib.build(method.settings_cls, method_values, section=case.method)
    config = TrainingSettings(per_device_train_batch_size=case.batch, learning_rate=case.learning_rate,
                              max_steps=total_steps, warmup_steps=0, lr_scheduler_type="linear",
                              weight_decay=0.0, max_grad_norm=1.0, seed=case.seed,
                              memory_budget_gb=float(options.get("memory_budget_gb", 0.0)))
    model = build_training_model(task_model, method, method_settings, family="whisper", device=device,
                                 seed=case.seed, total_steps=total_steps)
    if short:  # each batch padded to its longest clip (rounded to the conv stride)
        for batch in batches:
            longest = int(batch["frames"].max()) + int(batch["frames"].max()) % 2
            batch["input_features"] = batch["input_features"][..., :longest].contiguous()
    if wants_graphs(options.get("cuda_graphs", "auto"), device):
        # as a run's collate does for CUDA graphs: a few shapes, each captured once
        batches = [{**b, **task_model.bucket({k: b[k] for k in ("input_features", "labels")})}
                   for b in batches]
    plan, micro, offload = None, 0, False
    if config.memory_budget_gb > 0:
        plan = plan_memory(model, {k: batches[0][k] for k in ("input_features", "labels")},
                           budget_gib=config.memory_budget_gb)
        policy, micro, offload = plan.checkpoint, plan.micro_batch, plan.offload
    else:
        policy = {"all": True, "none": False}[options.get("checkpoint", "all")]
    compiled = wants_compile(options.get("compile", "auto"), device)
    apply_checkpointing(model, policy)
    if compiled:
        compile_layers(model)
    if device == "cuda":  # as a run's DataLoader does (and the reference's Trainer)
        batches = [{k: (v.pin_memory() if hasattr(v, "pin_memory") else v) for k, v in b.items()}
                   for b in batches]
    estimated = estimate_for(model, {k: batches[0][k] for k in ("input_features", "labels")},
                             micro or case.batch, checkpoint_policy(model), offload)
    graphs = wants_graphs(options.get("cuda_graphs", "auto"), device, offload)
    messages: list[str] = []
    trainer = TrainStep(model, config, device, total_steps, micro_batch=micro, offload=offload,
                        cuda_graphs=graphs, on_message=messages.append)
    model.train()

    def step(batch, index):
        loss = trainer.forward_backward({k: batch[k] for k in ("input_features", "labels")})
        trainer.optimizer_step(index + 1)
        return float(loss)

    profiler = StepProfiler(f"engine-{case.model}-{case.method}-{case.audio}-{case.label or 'default'}",
                            device)
    losses, elapsed, breakdown = _timed_loop(step, batches, total_steps, case.warmup, device, profiler)
    frames = (sum(b["input_features"].shape[-1] for b in batches) / len(batches)) if short else window
    return {"losses": losses, "train_s": elapsed, "frames_per_sample": int(frames),
            "plan": plan.as_dict() if plan else None, "estimated_gib": estimated, "profile": breakdown,
            "cuda_graphs": {"captured": len(trainer.graphs.graphs), "replays": trainer.graphs.replays,
                            "messages": messages} if trainer.graphs else None}


def checkpoint_policy(model) -> dict[str, int]:
    """Checkpointed layers per stack."""
    from engine.training.planner import find_stacks

    return {s.name: sum(bool(getattr(layer, "gradient_checkpointing", False)) for layer in s.layers)
            for s in find_stacks(model)}


# --------------------------------------------------------------------------- orchestration
def run_child(side: str, case: Case, model_dir: Path, timeout: float) -> dict:
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


def summarise(rows: list[dict]) -> list[dict]:
    """Median over rounds per (case, side); ratios against the case's reference."""
    import statistics

    grouped: dict[tuple, list[dict]] = {}
    for row in rows:
        grouped.setdefault((row["case_id"], row["side"]), []).append(row)
    table = []
    for (case_id, side), results in grouped.items():
        good = [r for r in results if "error" not in r]
        entry = {"case_id": case_id, "side": side, **{k: results[0][k] for k in ("case", "label")}}
        if not good:
            entry["error"] = results[0].get("error")
            table.append(entry)
            continue
        for key in ("samples_per_s", "audio_hours_per_hour", "peak_gib", "mfu_percent"):
            values = [r[key] for r in good if r.get(key) is not None]
            entry[key] = statistics.median(values) if values else None
        entry["rounds"] = len(good)
        entry["device"] = good[0]["device"]
        table.append(entry)
    references = {e["case_id"]: e for e in table if e["side"] == "reference" and "error" not in e}
    for entry in table:
        ref = references.get(entry["case_id"]) or next(
            (r for r in references.values() if r["case"]["model"] == entry["case"]["model"]
             and r["case"]["method"] == entry["case"]["method"]
             and r["case"]["audio"] == entry["case"]["audio"]), None)
        if ref and "error" not in entry and entry["side"] == "engine":
            entry["speedup"] = entry["samples_per_s"] / ref["samples_per_s"]
            entry["memory_ratio"] = entry["peak_gib"] / ref["peak_gib"]
    return table


def format_table(table: list[dict]) -> str:
    lines = ["| model | method | audio | batch | side | samples/s | audio h/h | peak GiB | MFU % | × reference | memory × |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in table:
        c = e["case"]
        side = e["side"] + (f" ({e['label']})" if e.get("label") and e["side"] == "engine" else "")
        if "error" in e:
            lines.append(f"| {c['model']} | {c['method']} | {c['audio']} | {c['batch']} | {side} | "
                         f"failed: {str(e['error'])[:120]} | | | | | |")
            continue
        fmt = lambda v, p=1: "—" if v is None else f"{v:.{p}f}"  # noqa: E731
        lines.append(f"| {c['model']} | {c['method']} | {c['audio']} | {c['batch']} | {side} | "
                     f"{fmt(e['samples_per_s'])} | {fmt(e['audio_hours_per_hour'], 0)} | "
                     f"{fmt(e['peak_gib'], 2)} | {fmt(e['mfu_percent'])} | "
                     f"{fmt(e.get('speedup'), 2)} | {fmt(e.get('memory_ratio'), 2)} |")
    return "\n".join(lines)


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

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.suite != "cpu" and device != "cuda":
        print(f"suite {args.suite!r} needs a CUDA GPU; skipped (run --suite cpu here)")
        return 0
    cases = SUITES[args.suite]
    if args.models:
        wanted = set(args.models.split(","))
        cases = [c for c in cases if c.model in wanted]
    if args.cases:
        cases = [cases[int(i)] for i in args.cases.split(",")]
    if args.steps:
        cases = [replace(c, steps=args.steps) for c in cases]
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
    table = summarise(rows)
    versions = _versions()
    if args.json:
        args.json.write_text(json.dumps({"suite": args.suite, "versions": versions, "runs": rows,
                                         "table": table}, indent=2))
    print()
    print(f"device: {next((e['device'] for e in table if 'device' in e), device)}; " +
          ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(format_table(table))
    return 1 if any("error" in e for e in table) else 0


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "bitsandbytes"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
