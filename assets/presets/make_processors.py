"""Build the tokenizers and feature extractors that the presets ship with.

No tokenizer can be downloaded here, so the project trains its own on the demo text:
- tiny-whisper: a byte-level BPE (the kind Whisper uses) with Whisper's special tokens and
  a 5-second ``WhisperFeatureExtractor``, saved as a ``WhisperProcessor`` folder. Byte-level
  BPE encodes any text, so transcripts outside the demo still work.
- tiny-bert: a lower-cased WordPiece vocabulary (the kind BERT uses), saved as a
  ``BertTokenizer`` folder.
- tiny-wav2vec2: a ``Wav2Vec2FeatureExtractor`` (raw 16 kHz audio, normalised).

Rerun after changing the demo data:  python assets/presets/make_tokenizer.py
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer
from transformers import (BertTokenizer, Wav2Vec2FeatureExtractor, WhisperFeatureExtractor,
                          WhisperProcessor, WhisperTokenizer)

HERE = Path(__file__).parent
DEMO = HERE.parent / "demo"
WHISPER_VOCAB, BERT_VOCAB = 512, 400
WINDOW_SECONDS = 5  # the tiny-whisper window (Whisper's is 30 s)
WHISPER_SPECIAL = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>",
                   "<|translate|>", "<|nocaptions|>", "<|notimestamps|>", "<|startofprev|>",
                   "<|startoflm|>"]


def corpus() -> list[str]:
    texts = []
    for split in ("train", "validation"):
        with open(DEMO / "demo-speech" / split / "metadata.csv", newline="") as handle:
            texts += [row["transcription"] for row in csv.DictReader(handle)]
        with open(DEMO / "demo-commands" / split / "metadata.csv", newline="") as handle:
            texts += [row["label"] for row in csv.DictReader(handle)]
        with open(DEMO / "demo-text" / f"{split}.csv", newline="") as handle:
            texts += [row["text"] for row in csv.DictReader(handle)]
    return texts


def build_whisper(out: Path) -> None:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus(), vocab_size=WHISPER_VOCAB, min_frequency=1,
                            special_tokens=WHISPER_SPECIAL)
    state = json.loads(bpe._tokenizer.to_str())
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["model"]["merges"]]
    tokenizer = WhisperTokenizer(vocab=bpe.get_vocab(), merges=merges,
                                 additional_special_tokens=WHISPER_SPECIAL[1:], predict_timestamps=False)
    tokenizer.set_prefix_tokens(language=None, task=None, predict_timestamps=False)  # like tiny.en
    features = WhisperFeatureExtractor(feature_size=80, chunk_length=WINDOW_SECONDS, sampling_rate=16_000)
    WhisperProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(out)
    print(f"tiny-whisper: {len(tokenizer)} tokens, {WINDOW_SECONDS} s window -> {out}")


def build_bert(out: Path) -> None:
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(corpus(), vocab_size=BERT_VOCAB, min_frequency=1)
    tokenizer = BertTokenizer(vocab=wordpiece.get_vocab(), do_lower_case=True, model_max_length=64)
    tokenizer.save_pretrained(out)
    print(f"tiny-bert: {len(tokenizer)} tokens -> {out}")


def build_wav2vec2(out: Path) -> None:
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0,
                             do_normalize=True, return_attention_mask=True).save_pretrained(out)
    print(f"tiny-wav2vec2: feature extractor -> {out}")


def main() -> None:
    build_whisper(HERE / "tiny-whisper")
    build_bert(HERE / "tiny-bert")
    build_wav2vec2(HERE / "tiny-wav2vec2")


if __name__ == "__main__":
    main()
