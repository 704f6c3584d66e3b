"""Encoder families with a classification head: BERT-family text and wav2vec2 / HuBERT audio.

Each family differs only in the names of its attention layers (the default LoRA targets) and
of its head (trained in full); the loading, batching and scoring are shared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.data.audio import load_audio, trim_silence
from engine.models.base import GenerationLimit, TaskModel, pad_to_multiple
from engine.models.whisper import _device_of, _float_dtype_of, quiet_transformers
from engine.metrics import classification_metrics


class Classification(TaskModel):
    """Shared by every encoder + head classifier: labels, loading, probabilities, metrics."""

    primary_metric = "accuracy"

    def load(self, **load_kwargs: Any) -> nn.Module:
        quiet_transformers()
        return self.auto_class().from_pretrained(
            self.model_dir, num_labels=len(self.labels),
            id2label=dict(enumerate(self.labels)),
            label2id={label: i for i, label in enumerate(self.labels)}, **load_kwargs)

    def auto_class(self):
        raise NotImplementedError

    def build_from_config(self) -> nn.Module:
        config = self.config()
        config.update(self.label_kwargs())
        return self.auto_class().from_config(config)

    def label_index(self, item: dict) -> int:
        return self.labels.index(item["label"]) if item.get("label") is not None else -1

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: dict[str, torch.Tensor],
                limit: GenerationLimit | None = None) -> list[list[float]]:
        inputs = {k: v.to(_device_of(model)) for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits
        return torch.softmax(logits.float(), dim=-1).cpu().tolist()

    def reference(self, item: dict) -> int:
        return self.labels.index(item["label"])

    def score(self, predictions: list[list[float]], references: list[int]) -> dict:
        return classification_metrics(references, np.asarray(predictions, dtype=np.float64))


class TextClassification(Classification):
    """BERT-family encoders (BERT, MiniLM, RoBERTa, DistilBERT) for sentence labels."""

    task = "text-classification"
    family = "bert"
    default_target_modules = ["query", "value"]
    head_modules = ["classifier"]
    unquantized_modules = ["classifier"]

    def __init__(self, model_dir: Path, labels: list[str] | None = None, **options: Any):
        super().__init__(model_dir, labels, **options)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.max_length = int(options.get("max_seq_length", 128))

    def auto_class(self):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def encode(self, item: dict, dataset_dir: Path) -> dict:
        encoded = self.tokenizer(item["text"] or "", truncation=True, max_length=self.max_length)
        return {**encoded, "labels": self.label_index(item)}

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer.pad(examples, return_tensors="pt"))

    def bucket(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sequences padded to a multiple of 16 tokens: pad tokens the attention mask hides."""
        pad_id = self.tokenizer.pad_token_id or 0
        values = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0}
        return {name: pad_to_multiple(value, 1, 16, value=values[name]) if name in values else value
                for name, value in batch.items()}

    def fake_batch(self, batch_size: int, *, sequence_length=None, seconds=None, label_tokens=32):
        length = sequence_length or self.max_length
        return {"input_ids": torch.randint(0, len(self.tokenizer), (batch_size, length)),
                "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
                "labels": torch.randint(0, max(2, len(self.labels)), (batch_size,))}


class RobertaTextClassification(TextClassification):
    family = "roberta"  # its head "classifier" holds a dense and an out_proj layer


class DistilBertTextClassification(TextClassification):
    family = "distilbert"
    default_target_modules = ["q_lin", "v_lin"]
    head_modules = ["pre_classifier", "classifier"]
    unquantized_modules = ["pre_classifier", "classifier"]


class SpeechEncoderClassification(Classification):
    """wav2vec2 / HuBERT: raw 16 kHz waveforms in, mean-pooled states, a small head."""

    task = "audio-classification"
    family = "wav2vec2"
    default_target_modules = ["q_proj", "v_proj"]
    head_modules = ["projector", "classifier"]
    # The encoder zeroes padded frames in place right after the feature projection, which
    # autograd forbids on a 4-bit matmul's output; the projection is small, so it stays full.
    unquantized_modules = ["projector", "classifier", "feature_projection.projection"]
    max_seconds = 30.0

    def __init__(self, model_dir: Path, labels: list[str] | None = None, **options: Any):
        super().__init__(model_dir, labels, **options)
        from transformers import AutoFeatureExtractor

        self.feature_extractor = AutoFeatureExtractor.from_pretrained(self.model_dir)

    def auto_class(self):
        from transformers import AutoModelForAudioClassification

        return AutoModelForAudioClassification

    def encode(self, item: dict, dataset_dir: Path) -> dict:
        audio = load_audio(dataset_dir / item["file"])
        trim_db = float(self.options.get("trim_silence_db") or 0)
        audio = (trim_silence(audio, trim_db) if trim_db > 0 else audio)[: int(self.max_seconds * 16_000)]
        return {"audio": audio, "labels": self.label_index(item)}

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.feature_extractor([e["audio"] for e in examples], sampling_rate=16_000,
                                       padding=True, return_attention_mask=True, return_tensors="pt")
        batch = dict(batch)
        if "labels" in examples[0]:
            batch["labels"] = torch.tensor([e["labels"] for e in examples], dtype=torch.long)
        return batch

    def build_from_config(self) -> nn.Module:
        config = self.config()
        # SpecAugment and LayerDrop draw random numbers the fake tensors cannot branch on;
        # the masks change no tensor sizes, so the estimate does without them.
        config.update({**self.label_kwargs(), "mask_time_prob": 0.0, "mask_feature_prob": 0.0,
                       "layerdrop": 0.0})  # and every layer runs: the worst case
        return self.auto_class().from_config(config)

    def fake_batch(self, batch_size: int, *, sequence_length=None, seconds=None, label_tokens=32):
        samples = int((seconds or 1.0) * 16_000)
        # No attention mask: its lengths are data-dependent; equal-length clips need none.
        return {"input_values": torch.randn(batch_size, samples),
                "labels": torch.randint(0, max(2, len(self.labels)), (batch_size,))}

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: dict[str, torch.Tensor],
                limit: GenerationLimit | None = None) -> list[list[float]]:
        batch = {k: v for k, v in batch.items() if k != "labels"}
        batch["input_values"] = batch["input_values"].to(_float_dtype_of(model))
        return super().predict(model, batch)


class HubertClassification(SpeechEncoderClassification):
    family = "hubert"
