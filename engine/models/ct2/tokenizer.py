"""Whisper's vocabulary, and a WhisperTokenizer rebuilt from it.

The tokenizer is rebuilt, not copied: the ``tokenizer.json`` some CTranslate2 uploads ship is an
old one without the first BPE merge (``Ġ t``), which decodes fine but tokenises " the" as
``['Ġ', 'the']``, so fine-tuning labels would be silently wrong. The merges are derived from the
vocabulary's ranks (which are OpenAI's tiktoken ranks) with the BPE that tiktoken runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ModelError
from engine.models.ct2.sources import Ct2Source

SPECIAL_TOKENS = ["<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>",
                  "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]


# ---------------------------------------------------------------------- tokenizer
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (Ġ for a space), as byte-level BPE vocabularies use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def read_vocabulary(source: Ct2Source, size: int) -> list[str]:
    """The model's tokens by id: CTranslate2's vocabulary file, else the tokenizer's vocab."""
    if "vocabulary.json" in source.files:
        tokens = json.loads(source.files["vocabulary.json"]())
    elif "vocabulary.txt" in source.files:
        # One token per line; a byte-level token never holds a newline, and one token is empty.
        tokens = source.files["vocabulary.txt"]().decode("utf-8").split("\n")
        if len(tokens) == size + 1 and tokens[-1] == "":
            tokens.pop()
    elif "tokenizer.json" in source.files:
        tokenizer = source.read_json("tokenizer.json")
        by_id = {i: t for t, i in tokenizer["model"]["vocab"].items()}
        by_id.update({t["id"]: t["content"] for t in tokenizer.get("added_tokens", [])})
        tokens = [by_id.get(i) for i in range(size)]
    else:
        raise ModelError(f"{source.label} has no vocabulary.txt or tokenizer.json")
    if len(tokens) != size or any(t is None for t in tokens):
        raise ModelError(f"{source.label}: the vocabulary has {len(tokens)} tokens but the model "
                         f"has {size} token embeddings")
    return tokens


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge that makes each multi-byte token, in rank order: the two pieces tiktoken's BPE
    reaches when it may only use merges of lower rank (how transformers converts tiktoken files)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best = None
            for i in range(len(parts) - 1):
                pair_rank = ranks.get(parts[i] + parts[i + 1])
                if pair_rank is not None and pair_rank < rank and (best is None or pair_rank < best[0]):
                    best = (pair_rank, i)
            if best is None:
                raise ModelError(f"the vocabulary token {token!r} cannot be built from lower-ranked "
                                 "tokens; this is not a byte-level BPE vocabulary")
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        merges.append((parts[0], parts[1]))
    return merges


@dataclass
class Vocabulary:
    tokens: list[str]
    ids: dict[str, int]
    bpe_end: int  # ids below this are BPE tokens (ranks); <|endoftext|> and the specials follow

    def id(self, token: str) -> int:
        if token not in self.ids:
            raise ModelError(f"the vocabulary has no {token}; it is not a Whisper vocabulary")
        return self.ids[token]


def whisper_vocabulary(tokens: list[str]) -> Vocabulary:
    ids = {t: i for i, t in enumerate(tokens)}
    vocab = Vocabulary(tokens, ids, 0)
    vocab.bpe_end = vocab.id("<|endoftext|>")
    for token in SPECIAL_TOKENS:
        vocab.id(token)
    return vocab


def byte_ranks(vocab: Vocabulary) -> dict[bytes, int]:
    decode = {c: b for b, c in bytes_to_unicode().items()}
    try:
        return {bytes(decode[c] for c in token): i for i, token in enumerate(vocab.tokens[:vocab.bpe_end])}
    except KeyError as error:
        raise ModelError(f"the vocabulary holds a character ({error}) that is no byte-level BPE "
                         "token; it is not a Whisper vocabulary") from None


def write_tokenizer(vocab: Vocabulary, lang_ids: list[int], folder: Path) -> None:
    """A WhisperTokenizer with merges rebuilt from the ranks, every special token, and the
    timestamps as ordinary added tokens (as transformers' Whisper checkpoints have them:
    WhisperTokenizer takes the first id after the last special token as timestamp 0.00)."""
    from tokenizers import AddedToken
    from transformers import WhisperTokenizer

    to_text = bytes_to_unicode()
    merges = [("".join(to_text[b] for b in left), "".join(to_text[b] for b in right))
              for left, right in bpe_merges(byte_ranks(vocab))]
    sot = vocab.id("<|startoftranscript|>")
    languages = [vocab.tokens[i] for i in lang_ids]
    specials = ["<|startoftranscript|>", *languages, *SPECIAL_TOKENS[2:]]
    # <|endoftext|> is also the padding token, as in OpenAI's checkpoints on the hub: padding
    # label batches (transformers' data collators, tokenizer.pad) needs one.
    tokenizer = WhisperTokenizer(vocab=vocab.ids, merges=merges, additional_special_tokens=specials,
                                 predict_timestamps=False, pad_token="<|endoftext|>")
    timestamps = vocab.tokens[vocab.id("<|notimestamps|>") + 1:]
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in timestamps])
    if tokenizer.convert_tokens_to_ids("<|startoftranscript|>") != sot or len(tokenizer) != len(vocab.tokens):
        raise ModelError("the rebuilt tokenizer does not match the model's vocabulary")
    tokenizer.save_pretrained(folder)
