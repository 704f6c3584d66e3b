"""Whisper for speech recognition (encoder-decoder) and audio classification (encoder + head).

The audio-classification set-up is the one of the LoRA-on-Whisper study this product
reproduces: Whisper's encoder, mean-pooled, with a projector and a classifier on top.

The ``audio_padding`` option picks the input window: "30s" pads every clip to the model's
whole window (as Whisper was pretrained); "longest" pads each batch to its longest clip and
runs the encoder on that window only (engine/models/whisper_window.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import GenerationMixin, StoppingCriteriaList

from engine.data.audio import load_audio, trim_silence
from engine.errors import ModelError
from engine.models.base import GenerationLimit, TaskModel, pad_to_multiple, tie_like_pretrained
from engine.models.whisper_window import (
    install_window,
    pad_batch,
    window_frames,
)
from engine.metrics import classification_metrics, speech_metrics
from engine.names import AUDIO_PADDINGS, LONGEST, WHOLE_WINDOW


def quiet_transformers():
    """Loading a seq2seq checkpoint as a classifier reports every unused decoder weight;
    that is expected here, so only errors are shown."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def unpacked_decoder_masks() -> None:
    """Whisper's decoder gets the same causal attention eagerly, compiled and in CUDA graphs.

    Training passes no decoder attention mask, and with SDPA transformers then lets the kernel
    apply causality itself (``is_causal``, no mask tensor). But its ``create_causal_mask`` first
    looks for several sequences packed into one row (reading a tensor on the host: a GPU sync
    every step), and while a CUDA graph is being captured it builds a full mask tensor instead
    (transformers 5.17 does this even without a padding mask), so the captured decoder differs
    from the eager one and torch.compile recompiles in the middle of the capture. The engine
    never packs sequences, so with SDPA and neither mask nor cache the mask is None, as
    transformers' own skip returns eagerly; otherwise it is built without the position ids
    (which only serve the packed-sequence check). Idempotent; affects only Whisper."""
    from transformers.models.whisper import modeling_whisper

    original = modeling_whisper.create_causal_mask
    if getattr(original, "_lim_unpacked", False):
        return

    def create_causal_mask(*args, **kwargs):
        if kwargs.get("attention_mask") is None and kwargs.get("past_key_values") is None:
            config = kwargs.get("config")
            if getattr(config, "_attn_implementation", None) == "sdpa":
                return None
            kwargs["position_ids"] = None
        return original(*args, **kwargs)

    create_causal_mask._lim_unpacked = True
    modeling_whisper.create_causal_mask = create_causal_mask


class WhisperBase(TaskModel):
    family = "whisper"
    default_target_modules = ["q_proj", "v_proj"]

    def __init__(self, model_dir: Path, labels: list[str] | None = None, **options: Any):
        super().__init__(model_dir, labels, **options)
        unpacked_decoder_masks()
        from transformers import WhisperFeatureExtractor

        self.feature_extractor = WhisperFeatureExtractor.from_pretrained(self.model_dir)
        self.audio_padding = options.get("audio_padding", WHOLE_WINDOW)
        self.feature_device: str | None = None  # set by extract_features_on()
        if self.audio_padding not in AUDIO_PADDINGS:
            raise ModelError(f"audio_padding must be one of {', '.join(AUDIO_PADDINGS)}, "
                             f"got {self.audio_padding!r}")

    @property
    def windowed(self) -> bool:
        return self.audio_padding == LONGEST

    def features(self, audio: np.ndarray) -> np.ndarray:
        """Log-mel features (n_mels, frames): the model's whole window, or with "longest" the
        clip's own frames (``window_frames``; audio beyond the window is cut either way)."""
        extractor = self.feature_extractor
        samples = extractor.n_samples
        if self.windowed:
            samples = extractor.hop_length * self.clip_frames(len(audio))
        return extractor(audio, sampling_rate=extractor.sampling_rate, max_length=samples,
                         return_tensors="np").input_features[0]

    def extract_features_on(self, device: str | None) -> bool:
        """Compute log-mel features per batch on ``device`` (a GPU) instead of per item on the
        CPU: ``encode`` then keeps the decoded waveform and ``collate`` extracts the whole batch
        at once through transformers' own torch STFT path (``WhisperFeatureExtractor(...,
        device=)``), equal to the per-item features within float tolerance
        (tests/engine/test_batch_features.py). Only with 30 s padding, where every item has the
        same window; with "longest" each clip has its own length and short clips are cheap on
        the CPU. Returns whether it is on."""
        self.feature_device = device if device and not self.windowed else None
        return self.feature_device is not None

    def encode_input(self, item: dict, dataset_dir: Path) -> dict:
        """An item's audio input: its features, or (``extract_features_on``) its waveform cut
        to the model's window, for ``collate_features`` to extract per batch."""
        if self.feature_device is None:
            return {"input_features": self.encode_audio(item, dataset_dir)}
        return {"audio": self.load_clip(item, dataset_dir)[: self.feature_extractor.n_samples]}

    def clip_frames(self, num_samples: int) -> int:
        extractor = self.feature_extractor
        return window_frames(num_samples, hop_length=extractor.hop_length, n_fft=extractor.n_fft,
                             max_frames=extractor.nb_max_frames)

    def with_window(self, model: nn.Module) -> nn.Module:
        """The model as this task runs it: with "longest", its encoder takes short windows."""
        return install_window(model) if self.windowed else model

    def collate_features(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """``input_features`` (B, n_mels, T); with "longest" T is the batch's longest clip and
        ``attention_mask`` (B, T) marks each clip's own frames."""
        if "audio" in examples[0]:  # extract_features_on(): one batched extraction on the device
            extractor = self.feature_extractor
            features = extractor([e["audio"] for e in examples], sampling_rate=extractor.sampling_rate,
                                 device=self.feature_device, return_tensors="np").input_features
            return {"input_features": torch.from_numpy(features)}
        if not self.windowed:
            return {"input_features": torch.from_numpy(np.stack([e["input_features"] for e in examples]))}
        features, mask = pad_batch([e["input_features"] for e in examples])
        return {"input_features": features, "attention_mask": mask}

    def whole_window(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """With "longest", the batch padded to the model's whole window with each clip's own
        silence: exactly the features 30 s padding gives (``pad_batch``). Training mixes a few
        such batches in (``full_window_every``) so that a model trained on short windows still
        transcribes under standard 30 s inference, as every exported model is run."""
        if not self.windowed:
            return batch
        window = self.feature_extractor.nb_max_frames
        batch = dict(batch)
        batch["input_features"] = pad_to_multiple(batch["input_features"], -1, window, repeat_last=True)
        if "attention_mask" in batch:
            batch["attention_mask"] = pad_to_multiple(batch["attention_mask"], -1, window, value=0)
        return batch

    # Short-audio windows are padded to whole seconds for CUDA graphs (see bucket()).
    BUCKET_FRAMES = 100

    def bucket_features(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """With "longest", the window grown to a whole number of seconds (at most the model's
        window) with copies of each clip's last frame, i.e. the silence ``pad_batch`` pads
        with; the frame mask marks the new frames as padding. With "30s" nothing changes."""
        if not self.windowed:
            return batch
        window = self.feature_extractor.nb_max_frames
        batch = dict(batch)
        batch["input_features"] = pad_to_multiple(batch["input_features"], -1, self.BUCKET_FRAMES,
                                                  repeat_last=True, limit=window)
        if "attention_mask" in batch:
            batch["attention_mask"] = pad_to_multiple(batch["attention_mask"], -1, self.BUCKET_FRAMES,
                                                      value=0, limit=window)
        return batch

    def load_clip(self, item: dict, dataset_dir: Path) -> np.ndarray:
        """An item's waveform, without its silent edges when the run trims them (qass's
        ``trim_silence_db`` task option)."""
        audio = load_audio(dataset_dir / item["file"])
        trim_db = float(self.options.get("trim_silence_db") or 0)
        return trim_silence(audio, trim_db) if trim_db > 0 else audio

    def encode_audio(self, item: dict, dataset_dir: Path) -> np.ndarray:
        return self.features(self.load_clip(item, dataset_dir))

    @staticmethod
    def keep_positions_fixed(model: nn.Module) -> nn.Module:
        """Whisper's encoder positions are fixed sinusoids (WhisperEncoder freezes them), but a
        model loaded by from_pretrained comes back with them trainable; freeze them again."""
        model.get_encoder().embed_positions.requires_grad_(False)
        return model

    def fake_features(self, batch_size: int, seconds: float | None = None) -> torch.Tensor:
        # With 30 s padding Whisper sees its whole window, whatever the clip length.
        frames = self.feature_extractor.nb_max_frames
        if self.windowed and seconds:
            frames = self.clip_frames(int(seconds * self.feature_extractor.sampling_rate))
        return torch.randn(batch_size, self.feature_extractor.feature_size, frames)


class WhisperSpeechRecognition(WhisperBase):
    """Speech recognition with one prompt everywhere.

    A multilingual Whisper decodes after ``<|startoftranscript|><|lang|><|task|><|notimestamps|>``.
    The labels carry exactly that prefix (the tokenizer's prefix tokens), ``generate`` is told
    the same language and task, and the model's generation config keeps them, so a merged
    export decodes with them in any stock pipeline. Labels without the language and task (the
    tokenizer's default) would teach a pretrained model a new prompt format, while generation
    still forces the old one: the loss of untouched whisper-base on such labels is 8.7 against
    1.3 with the prefix. English-only models (tiny-whisper, *.en) have no language or task
    tokens: their prompt is ``<|startoftranscript|><|notimestamps|>``.
    """

    task = "asr"
    unquantized_modules = ["proj_out"]  # tied to the token embeddings
    primary_metric = "wer"

    def __init__(self, model_dir: Path, labels: list[str] | None = None, **options: Any):
        super().__init__(model_dir, labels, **options)
        from transformers import WhisperTokenizer

        self.tokenizer = WhisperTokenizer.from_pretrained(self.model_dir)
        self.generation_max_length = int(options.get("generation_max_length", 48))
        self.generation_cache = options.get("generation_cache") or "dynamic"
        self.max_label_tokens = self.config().max_target_positions
        self.language = options.get("language") or "en"
        self.speech_task = options.get("speech_task") or "transcribe"  # the setting "task"
        self.multilingual = self._check_prompt()
        if self.multilingual:
            self.tokenizer.set_prefix_tokens(language=self.language, task=self.speech_task,
                                             predict_timestamps=False)

    def _check_prompt(self) -> bool:
        """Whether the model takes language and task tokens; refuses what it cannot do."""
        from transformers import GenerationConfig

        try:
            generation = GenerationConfig.from_pretrained(self.model_dir)
        except OSError:  # no generation_config.json: an English-only prompt
            generation = None
        lang_to_id = getattr(generation, "lang_to_id", None) or {}
        if getattr(generation, "is_multilingual", False) and lang_to_id:
            if f"<|{self.language}|>" not in lang_to_id:
                raise ModelError(f"this Whisper model has no language {self.language!r}")
            return True
        if self.language != "en" or self.speech_task != "transcribe":
            raise ModelError(f"this Whisper model is English-only (no language or task tokens): "
                             f"it can only transcribe English, not {self.speech_task} "
                             f"{self.language!r}")
        return False

    def generation_kwargs(self) -> dict:
        return {"language": self.language, "task": self.speech_task} if self.multilingual else {}

    def with_prompt(self, model: nn.Module) -> nn.Module:
        """The run's language and task in the model's generation config (kept by
        save_pretrained, so exports decode with them)."""
        if self.multilingual:
            model.generation_config.language = self.language
            model.generation_config.task = self.speech_task
        return model

    def load(self, **load_kwargs: Any) -> nn.Module:
        from transformers import WhisperForConditionalGeneration

        quiet_transformers()
        return self.with_window(self.keep_positions_fixed(self.with_prompt(
            WhisperForConditionalGeneration.from_pretrained(self.model_dir, **load_kwargs))))

    def build_from_config(self) -> nn.Module:
        from transformers import WhisperForConditionalGeneration

        return self.with_window(tie_like_pretrained(WhisperForConditionalGeneration(self.config())))

    def fake_batch(self, batch_size: int, *, sequence_length=None, seconds=None, label_tokens=32):
        return {"input_features": self.fake_features(batch_size, seconds),
                "labels": torch.randint(0, len(self.tokenizer), (batch_size, label_tokens))}

    def encode(self, item: dict, dataset_dir: Path) -> dict:
        return {**self.encode_input(item, dataset_dir),
                "labels": self.tokenizer(item["text"] or "").input_ids}

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        # The encoder ignores attention_mask (the decoder cannot mask its cross-attention
        # either), so speech recognition keeps the features only.
        batch = {"input_features": self.collate_features(examples)["input_features"]}
        if "labels" in examples[0]:
            start = self.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
            # The model prepends the start token itself when it shifts labels right.
            # The decoder has max_target_positions (448) positions: longer labels are cut, never a
            # crash mid-run (the import refuses transcripts far over it, issue 15).
            sequences = [(e["labels"][1:] if e["labels"][:1] == [start] else e["labels"])[:self.max_label_tokens]
                         for e in examples]
            width = max(len(s) for s in sequences)
            labels = torch.full((len(sequences), width), -100, dtype=torch.long)
            for row, sequence in enumerate(sequences):
                labels[row, : len(sequence)] = torch.tensor(sequence)
            batch["labels"] = labels
        return batch

    # Label width buckets (tokens). Every new batch shape costs a CUDA graph capture and its
    # eager warm-up steps (seconds on large-v3), so the first epoch pays for each width it meets.
    # Behind a 30 s window the decoder is a small part of the step (32 more label tokens add
    # about 2 % to a large-v3 step by the layer shapes' FLOPs, against 1,500 encoder frames;
    # whisper-small's step measured no slower at 128-token labels), so wide buckets cost little and
    # most sentence-level sets fit one; with short windows the decoder weighs more: narrow ones.
    LABEL_BUCKET_TOKENS = {WHOLE_WINDOW: 64, LONGEST: 16}

    def bucket(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Label width to a multiple of 64 tokens with 30 s windows, 16 with "longest" (-100:
        ignored by the loss; the decoder is causal, so the real tokens see no difference) and,
        with "longest", the window to whole seconds."""
        batch = dict(self.bucket_features(batch))
        if "labels" in batch:
            step = self.LABEL_BUCKET_TOKENS[LONGEST if self.windowed else WHOLE_WINDOW]
            # never wider than the decoder's positions (only -100 padding is sliced off)
            batch["labels"] = pad_to_multiple(batch["labels"], 1, step, value=-100)[:, :self.max_label_tokens]
        return batch

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: dict[str, torch.Tensor],
                limit: GenerationLimit | None = None) -> list[str]:
        """Greedy transcripts of a batch: at most ``generation_max_length`` new tokens, ended
        early by ``limit`` (a stop request, or the batch time limit)."""
        features = batch["input_features"].to(_device_of(model), _float_dtype_of(model))
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: adapters in place
        if self.windowed:
            # generate() pads input_features back to the whole window (with zeros) before the
            # encoder sees them; handing it the encoder's output keeps the short window.
            inputs = {"encoder_outputs": base.get_encoder()(features)}
        else:
            inputs = {"input_features": features}
        prompt = torch.tensor([self.tokenizer.prefix_tokens], device=features.device).expand(len(features), -1)
        # transformers' plain greedy generate, not WhisperForConditionalGeneration.generate: Whisper's
        # own loops over 30 s segments (and temperature fallbacks) until each clip's "seek" passes
        # its end, and a model that emits a timestamp token at 0.00 never advances it: a
        # tiny-whisper run hung in evaluation for ever at step 100 (issue 27). One window per clip
        # is all evaluation needs; the same prompt and suppressed tokens, so the same greedy result.
        generated = GenerationMixin.generate(
            base, **inputs, decoder_input_ids=prompt, max_new_tokens=self.generation_max_length,
            do_sample=False, num_beams=1, stopping_criteria=StoppingCriteriaList([limit or GenerationLimit()]),
            **({"cache_implementation": "static"} if self.generation_cache == "static" else {}))
        return [text.strip() for text in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]

    def reference(self, item: dict) -> str:
        return item["text"] or ""

    def score(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        return speech_metrics(references, predictions)


class WhisperAudioClassification(WhisperBase):
    task = "audio-classification"
    head_modules = ["projector", "classifier"]
    unquantized_modules = ["projector", "classifier"]
    primary_metric = "accuracy"

    def load(self, **load_kwargs: Any) -> nn.Module:
        from transformers import WhisperForAudioClassification

        quiet_transformers()
        return self.with_window(self.keep_positions_fixed(WhisperForAudioClassification.from_pretrained(
            self.model_dir, num_labels=len(self.labels),
            id2label=dict(enumerate(self.labels)),
            label2id={label: i for i, label in enumerate(self.labels)}, **load_kwargs)))

    def build_from_config(self) -> nn.Module:
        from transformers import WhisperForAudioClassification

        config = self.config()
        config.update(self.label_kwargs())
        return self.with_window(WhisperForAudioClassification(config))

    def fake_batch(self, batch_size: int, *, sequence_length=None, seconds=None, label_tokens=32):
        return {"input_features": self.fake_features(batch_size, seconds),
                "labels": torch.randint(0, max(2, len(self.labels)), (batch_size,))}

    def encode(self, item: dict, dataset_dir: Path) -> dict:
        return {**self.encode_input(item, dataset_dir),
                "labels": self.labels.index(item["label"]) if item.get("label") is not None else -1}

    def bucket(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.bucket_features(batch)  # padded frames are masked out of the pooling

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.collate_features(examples)  # + attention_mask with "longest": masked pooling
        if "labels" in examples[0]:
            batch["labels"] = torch.tensor([e["labels"] for e in examples], dtype=torch.long)
        return batch

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: dict[str, torch.Tensor],
                limit: GenerationLimit | None = None) -> list[list[float]]:
        features = batch["input_features"].to(_device_of(model), _float_dtype_of(model))
        mask = batch.get("attention_mask")
        extra = {"attention_mask": mask.to(features.device)} if mask is not None else {}
        logits = model(input_features=features, **extra).logits
        return torch.softmax(logits.float(), dim=-1).cpu().tolist()

    def reference(self, item: dict) -> int:
        return self.labels.index(item["label"])

    def score(self, predictions: list[list[float]], references: list[int]) -> dict:
        return classification_metrics(references, np.asarray(predictions, dtype=np.float64))


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _float_dtype_of(model: nn.Module) -> torch.dtype:
    """The dtype the input features must have: the first floating parameter's (conv1)."""
    for parameter in model.parameters():
        if parameter.dtype.is_floating_point:
            return parameter.dtype
    return torch.float32
