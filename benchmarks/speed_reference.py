"""The reference side of the training speed benchmark: the standard Hugging Face recipe.

Whisper + (Q)LoRA as the ecosystem writes it: ``from_pretrained`` with ``BitsAndBytesConfig``
(NF4, double quantisation, bf16 compute), ``prepare_model_for_kbit_training`` (gradient
checkpointing on), ``LoraConfig`` (the case's r, lora_alpha, target_modules, lora_dropout:
``speed_cases.LORA`` unless it says otherwise) and ``Seq2SeqTrainer`` with bf16, whose
``Seq2SeqTrainingArguments`` take the case's ``REFERENCE_TRAINING`` settings by their own names
(the engine's TrainingSettings use the same ones). LoRA bf16 and full fine-tuning use the same
trainer with checkpointing on.

It never imports the engine (an import contract in pyproject.toml): it is what the engine is
measured against.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.speed_cases import REFERENCE_TRAINING, Case
from benchmarks.speed_timing import StepProfiler

LORA_CONFIG = ("r", "lora_alpha", "target_modules", "lora_dropout")  # what LoraConfig takes from a case


def run_reference(case: Case, model_dir: Path, batches, total_steps: int, device: str, window: int):
    """Train ``total_steps`` steps on ``batches`` (in order, round and round); the losses and the
    time of the steps after the case's warm-up."""
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
        lora = {key: case.method_settings[key] for key in LORA_CONFIG}
        lora["target_modules"] = [name.strip() for name in lora["target_modules"].split(",")]
        model = get_peft_model(model, LoraConfig(**lora))

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
        output_dir=output, max_steps=total_steps, **{key: case.training[key] for key in REFERENCE_TRAINING},
        bf16=bf16, logging_steps=1, save_strategy="no", report_to=[], remove_unused_columns=False,
        dataloader_num_workers=0, disable_tqdm=True, use_cpu=device == "cpu", label_names=["labels"])
    trainer = InOrder(model=model, args=args, train_dataset=Items(), data_collator=collate,
                      callbacks=[Timer()])
    trainer.train()
    shutil.rmtree(output, ignore_errors=True)
    elapsed = timing["end"] - timing["start"]
    return {"losses": timing["losses"], "train_s": elapsed,
            "profile": profiler.stop(total_steps - case.warmup, elapsed),
            "frames_per_sample": window, "optimizer": args.optim.value
            if hasattr(args.optim, "value") else str(args.optim)}

