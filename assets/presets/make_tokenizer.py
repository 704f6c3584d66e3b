"""Build the tokenizer and feature extractor that the ``tiny-whisper`` preset ships with.

No Whisper tokenizer can be downloaded here, so the project trains a small byte-level BPE
(the same kind Whisper uses) on the demo transcripts and sentences, adds Whisper's special
tokens, and saves it with a 5-second ``WhisperFeatureExtractor`` as a ``WhisperProcessor``
folder. Byte-level BPE encodes any text, so transcripts outside the demo still work.

Rerun after changing the demo data:  python assets/presets/make_tokenizer.py
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tokenizers import ByteLevelBPETokenizer
from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

HERE = Path(__file__).parent
DEMO = HERE.parent / "demo"
OUT = HERE / "tiny-whisper"
VOCAB_SIZE = 512
WINDOW_SECONDS = 5  # the preset's audio window (Whisper's is 30 s)
SPECIAL_TOKENS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>",
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


def main() -> None:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus(), vocab_size=VOCAB_SIZE, min_frequency=1,
                            special_tokens=SPECIAL_TOKENS)
    state = json.loads(bpe._tokenizer.to_str())
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["model"]["merges"]]
    tokenizer = WhisperTokenizer(vocab=bpe.get_vocab(), merges=merges,
                                 additional_special_tokens=SPECIAL_TOKENS[1:], predict_timestamps=False)
    tokenizer.set_prefix_tokens(language=None, task=None, predict_timestamps=False)  # like tiny.en
    features = WhisperFeatureExtractor(feature_size=80, chunk_length=WINDOW_SECONDS, sampling_rate=16_000)
    WhisperProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(OUT)
    print(f"saved {len(tokenizer)} tokens and a {WINDOW_SECONDS} s feature extractor to {OUT}")


if __name__ == "__main__":
    main()
