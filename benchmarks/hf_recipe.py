"""The standard Hugging Face recipe for Whisper LoRA / QLoRA, in parts: the model, the clips,
the collator. The independent side of every benchmark that compares the engine with "what a
user of transformers + peft would write" builds from these, so they all run one recipe:

    model, extractor, tokenizer = recipe_model("qlora", model_dir, r=32, lora_alpha=64, seed=42)
    clips = RecipeClips(items, folder, extractor, tokenizer)
    Seq2SeqTrainer(model=model, args=..., train_dataset=clips,
                   data_collator=recipe_collator(tokenizer, model)).train()

It is the recipe of the Hugging Face Whisper fine-tuning guide and peft's int8/4-bit example:
``prepare_model_for_kbit_training`` (gradient checkpointing) on a bitsandbytes 4-bit base,
LoRA on q/v, the tokenizer's prefix set to the language and task, labels padded with -100 and
the start token stripped, every clip padded to the model's 30 s window by the feature extractor.
benchmarks/time_to_quality.py and benchmarks/end_to_end.py use it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.data.audio import load_audio


def is_multilingual(model_dir: Path) -> bool:
    """Whether the Whisper model takes language and task tokens (whisper-base does; English-only
    models such as tiny-whisper or *.en have none, and a prefix naming them would be unknown
    tokens in every label)."""
    from transformers import GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(model_dir)
    except OSError:  # no generation_config.json: an English-only prompt
        return False
    return bool(getattr(generation, "is_multilingual", False) and getattr(generation, "lang_to_id", None))


def recipe_model(method: str, model_dir: Path, *, r: int, lora_alpha: int, seed: int,
                 lora_dropout: float = 0.0, device: str = "cpu"):
    """(peft model, feature extractor, tokenizer) for ``method`` (qlora or lora) on ``device``.
    QLoRA computes in float32 on a CPU and in bfloat16 on a GPU (the guide's Trainer then
    runs with ``bf16=True``)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (BitsAndBytesConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                              WhisperTokenizer)

    torch.manual_seed(seed)
    multilingual = is_multilingual(model_dir)
    prompt = {"language": "en", "task": "transcribe"} if multilingual else {}
    extractor = WhisperFeatureExtractor.from_pretrained(model_dir)
    tokenizer = WhisperTokenizer.from_pretrained(model_dir, **prompt)
    if tokenizer.pad_token is None:  # tiny-whisper's own BPE has none; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    if method == "qlora":
        compute = torch.bfloat16 if device.startswith("cuda") else torch.float32
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)
        model = WhisperForConditionalGeneration.from_pretrained(
            model_dir, quantization_config=quant, device_map={"": device})
        model = prepare_model_for_kbit_training(model)
    else:
        model = WhisperForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).to(device)
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    for key, value in prompt.items():
        setattr(model.generation_config, key, value)
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=["q_proj", "v_proj"],
                                             lora_dropout=lora_dropout))
    return model, extractor, tokenizer


class RecipeClips(torch.utils.data.Dataset):
    """Audiofolder items (``{"file": relative path, "text": transcript}``) as the guide's
    ``prepare_dataset`` makes them: log-mel features of the 30 s window and token ids."""

    def __init__(self, items: list[dict], folder: Path, extractor, tokenizer):
        self.items, self.folder, self.extractor, self.tokenizer = items, folder, extractor, tokenizer

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        audio = load_audio(self.folder / item["file"])
        return {"input_features": self.extractor(audio, sampling_rate=16000).input_features[0],
                "labels": self.tokenizer(item["text"]).input_ids}


def recipe_collator(tokenizer, model):
    """The guide's ``DataCollatorSpeechSeq2SeqWithPadding``: features stacked, labels padded
    with -100 and the start token stripped (the model prepends it when it shifts labels), cut
    to the decoder's positions as the engine cuts them (the model refuses longer labels: only
    tiny-whisper's 64 meet the demo voices' joined sentences)."""
    start, longest = model.config.decoder_start_token_id, model.config.max_target_positions

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        features = torch.from_numpy(np.stack([row["input_features"] for row in rows]))
        labels = tokenizer.pad({"input_ids": [row["labels"] for row in rows]}, return_tensors="pt")
        ids = labels["input_ids"].masked_fill(labels["attention_mask"].ne(1), -100)
        if (ids[:, 0] == start).all():
            ids = ids[:, 1:]
        return {"input_features": features, "labels": ids[:, :longest]}

    return collate
