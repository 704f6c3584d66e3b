"""CTranslate2 names to transformers' Whisper: the state dict, the configs, and the check that they fit.

The conversion is exact or refused: every variable must be one this module knows, flags must
have Whisper's values, the file must end where the parts end, and the fused attention
projections are split back (the key bias CTranslate2 fills with zeros must be zero, since
transformers' ``k_proj`` has none). Weights are written as float32: transformers 5 loads a
checkpoint in its stored dtype by default, so float16 weights would make the engine train in
float16; float16 -> float32 is exact, and the engine casts to bf16 or quantises from there.
"""

from __future__ import annotations

import re

import numpy as np

from engine.errors import ModelError
from engine.models.base import MODEL_BUILD_LOCK
from engine.models.ct2.reader import Ct2Model
from engine.models.ct2.tokenizer import Vocabulary

# Flags of a Whisper spec and the only values this converter can map exactly: GELU decoder,
# pre-norm, no ALiBi, unscaled embeddings, learned positions from index 0.
FLAGS = {"decoder/activation": 3, "decoder/alibi": 0, "decoder/pre_norm": 1,
         "decoder/scale_embeddings": 0, "decoder/start_from_zero_embedding": 0}
# Attention returned for word alignment only; ALiBi options (written by newer ctranslate2) that
# nothing reads while decoder/alibi is 0, which FLAGS requires.
IGNORED = {"decoder/alignment_heads", "decoder/alignment_layer", "decoder/alibi_use_positive_positions",
           "decoder/scale_alibi"}
SIZES = {(384, 4): "tiny", (512, 6): "base", (768, 12): "small", (1024, 24): "medium", (1280, 32): "large"}


# ---------------------------------------------------------------------- CTranslate2 -> transformers names
def hf_state_dict(model: Ct2Model, label: str) -> dict[str, np.ndarray]:
    """Every weight under its ``WhisperForConditionalGeneration`` name, float32, (out, in) as
    transformers stores linear weights (CTranslate2 stores them the same way). Unknown variables or flags, quantised weights, a nonzero key bias:
    refused, since the result would not be the model CTranslate2 runs."""
    known, state = set(IGNORED), {}
    v = model.variables
    for name, expected in FLAGS.items():
        if name not in v or int(v[name]) != expected:
            raise ModelError(f"{label}: {name} is {v[name].item() if name in v else 'missing'}, "
                             f"a Whisper model has {expected}; this CTranslate2 model cannot be converted exactly")
        known.add(name)
    for name, dtype in model.dtypes.items():
        if v[name].ndim and dtype not in ("float32", "float16", "bfloat16"):
            raise ModelError(f"{label}: {name} is quantised ({dtype}); only float32/float16/bfloat16 "
                             "CTranslate2 models convert exactly (re-convert it without quantization)")

    def take(ct2: str, hf: str) -> None:
        if ct2 not in v:
            raise ModelError(f"{label}: {ct2} is missing from the CTranslate2 model")
        state[hf] = np.asarray(v[ct2], dtype=np.float32)
        known.add(ct2)

    def take_linear(ct2: str, hf: str) -> None:
        take(f"{ct2}/weight", f"{hf}.weight")
        take(f"{ct2}/bias", f"{hf}.bias")

    def take_norm(ct2: str, hf: str) -> None:
        take(f"{ct2}/gamma", f"{hf}.weight")
        take(f"{ct2}/beta", f"{hf}.bias")

    def take_fused(ct2: str, hf: str, names: list[str]) -> None:
        """q/k/v fused along the output dimension: split back; the k bias must be zero."""
        weight, bias = v.get(f"{ct2}/weight"), v.get(f"{ct2}/bias")
        if weight is None or bias is None or weight.shape[0] % len(names):
            raise ModelError(f"{label}: {ct2} is not a fused {'/'.join(names)} projection")
        known.update({f"{ct2}/weight", f"{ct2}/bias"})
        for piece, w, b in zip(names, np.split(weight, len(names)), np.split(bias, len(names))):
            state[f"{hf}.{piece}.weight"] = np.asarray(w, dtype=np.float32)
            if piece == "k_proj":
                if np.any(b != 0):
                    raise ModelError(f"{label}: {ct2} has a nonzero key bias, which Whisper's "
                                     "k_proj does not have; it cannot be converted exactly")
            else:
                state[f"{hf}.{piece}.bias"] = np.asarray(b, dtype=np.float32)

    for side in ("encoder", "decoder"):
        take(f"{side}/position_encodings/encodings", f"model.{side}.embed_positions.weight")
        take_norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
        known.add(f"{side}/num_heads")
        for i in range(num_layers(model, side)):
            ct2, hf = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            take_norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
            take_fused(f"{ct2}/self_attention/linear_0", f"{hf}.self_attn", ["q_proj", "k_proj", "v_proj"])
            take_linear(f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
            if side == "decoder":
                take_norm(f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
                take_linear(f"{ct2}/attention/linear_0", f"{hf}.encoder_attn.q_proj")
                take_fused(f"{ct2}/attention/linear_1", f"{hf}.encoder_attn", ["k_proj", "v_proj"])
                take_linear(f"{ct2}/attention/linear_2", f"{hf}.encoder_attn.out_proj")
            take_norm(f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")
            take_linear(f"{ct2}/ffn/linear_0", f"{hf}.fc1")
            take_linear(f"{ct2}/ffn/linear_1", f"{hf}.fc2")
    for conv in ("conv1", "conv2"):
        take_linear(f"encoder/{conv}", f"model.encoder.{conv}")
    take("decoder/embeddings/weight", "model.decoder.embed_tokens.weight")
    # The output projection is the token embedding (tied), as in transformers' Whisper.
    if model.aliases.get("decoder/projection/weight") != "decoder/embeddings/weight" or (
            set(model.aliases) - {"decoder/projection/weight"}):
        raise ModelError(f"{label}: the output projection is not tied to the token embeddings "
                         f"(aliases {model.aliases}); it cannot be converted exactly")
    unknown = sorted(set(v) - known)
    if unknown:
        raise ModelError(f"{label}: unknown CTranslate2 variables {', '.join(unknown[:5])}"
                         f"{' ...' if len(unknown) > 5 else ''}; this converter cannot map them exactly")
    return state


def num_layers(model: Ct2Model, side: str) -> int:
    layers = {int(m[1]) for name in model.variables if (m := re.match(rf"^{side}/layer_(\d+)/", name))}
    if not layers or layers != set(range(len(layers))):
        raise ModelError(f"the CTranslate2 model's {side} layers are not numbered 0..N-1 ({sorted(layers)[:8]})")
    return len(layers)


def whisper_size(d_model: int, layers: int, vocab: int) -> str:
    """OpenAI's name for the size (whisper-base), or the shape when it is none of theirs."""
    size = SIZES.get((d_model, layers))
    if size is None:
        return f"whisper ({d_model} wide, {layers} layers)"
    return f"whisper-{size}{'.en' if vocab < 51865 else ''}"


# ---------------------------------------------------------------------- config files
def whisper_configs(model: Ct2Model, ct2_config: dict, vocab: Vocabulary):
    """transformers' config and generation config for the shapes in ``model`` (as transformers'
    own openai/whisper-* checkpoints have them)."""
    from transformers import GenerationConfig, WhisperConfig

    v = model.variables
    vocab_size, d_model = v["decoder/embeddings/weight"].shape
    eot, sot = vocab.id("<|endoftext|>"), vocab.id("<|startoftranscript|>")
    lang_ids = list(ct2_config.get("lang_ids") or [])
    suppress = list(ct2_config.get("suppress_ids") or [])
    begin_suppress = list(ct2_config.get("suppress_ids_begin") or [])
    config = WhisperConfig(
        vocab_size=vocab_size, num_mel_bins=v["encoder/conv1/weight"].shape[1], d_model=d_model,
        encoder_layers=num_layers(model, "encoder"), decoder_layers=num_layers(model, "decoder"),
        encoder_attention_heads=int(v["encoder/num_heads"]), decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
        suppress_tokens=suppress, begin_suppress_tokens=begin_suppress, scale_embedding=False,
        tie_word_embeddings=True, architectures=["WhisperForConditionalGeneration"])
    transcribe = vocab.id("<|transcribe|>")
    generation = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        max_length=config.max_target_positions, suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress, alignment_heads=ct2_config.get("alignment_heads"),
        no_timestamps_token_id=vocab.id("<|notimestamps|>"), prev_sot_token_id=vocab.id("<|startofprev|>"),
        max_initial_timestamp_index=50, return_timestamps=False, is_multilingual=bool(lang_ids),
        # As transformers' multilingual checkpoints: detect the language, then transcribe.
        forced_decoder_ids=[[1, None], [2, transcribe]] if lang_ids else None,
        **({"lang_to_id": {vocab.tokens[i]: i for i in lang_ids},
            "task_to_id": {"transcribe": transcribe, "translate": vocab.id("<|translate|>")}}
           if lang_ids else {}))
    return config, generation


def check_fits(state: dict[str, np.ndarray], config, label: str) -> None:
    """Every parameter of the transformers model gets a tensor of its shape, and nothing else
    (the model is built on the meta device: no memory, no time)."""
    import torch
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"), MODEL_BUILD_LOCK:  # the lock: engine/models/base.py
        expected = {name: tuple(t.shape) for name, t in WhisperForConditionalGeneration(config).state_dict().items()
                    if name != "proj_out.weight"}  # tied to the token embeddings
    got = {name: tuple(array.shape) for name, array in state.items()}
    if got != expected:
        wrong = sorted(set(got) ^ set(expected)) or [n for n in got if got[n] != expected[n]]
        raise ModelError(f"{label}: the converted weights do not fit a Whisper model of this shape "
                         f"({', '.join(wrong[:3])}); it cannot be converted exactly")
