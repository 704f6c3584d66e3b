"""What a model is made of: a summary of its config, parameters per component, linear layers.

The model is built from its config on the meta device (``with torch.device("meta")``, which
holds for this thread only), so inspecting even a large model reads no weights and allocates
nothing. accelerate's ``init_empty_weights`` is avoided on purpose: it patches ``nn.Module`` for
the whole process, and a training worker thread would then build its model on meta too.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from pathlib import Path

import torch

from engine.models.base import tie_like_pretrained

# config attribute -> label, first one present wins per row
SUMMARY_FIELDS = [
    ("model_type", "family"),
    ("encoder_layers", "encoder layers"), ("decoder_layers", "decoder layers"),
    ("num_hidden_layers", "layers"), ("d_model", "hidden size"), ("hidden_size", "hidden size"),
    ("encoder_attention_heads", "attention heads"), ("num_attention_heads", "attention heads"),
    ("vocab_size", "vocabulary"), ("num_mel_bins", "mel bins"),
    ("max_source_positions", "audio positions"), ("max_position_embeddings", "max tokens"),
]


@functools.lru_cache(maxsize=32)
def cached_architecture(family: str, task: str, model_dir: str, config_mtime: float) -> dict:
    """``architecture`` once per model folder and task (the config's mtime keys a re-registered
    folder anew), so a page rerun does not rebuild the skeleton or reload the tokenizer."""
    from engine.models import task_model_for

    return architecture(task_model_for(family, task, Path(model_dir), ["a", "b"]))


def architecture(task_model) -> dict:
    """Config summary, parameter counts per component and the linear layers a method can target."""

    config = task_model.config()
    summary = {}
    for attribute, label in SUMMARY_FIELDS:
        value = getattr(config, attribute, None)
        if value is not None and label not in summary:
            summary[label] = value
    model = build_on_meta(task_model)
    components: dict[str, int] = defaultdict(int)
    for name, parameter in model.named_parameters():
        components[component_of(name)] += parameter.numel()
    linear = Counter(name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Linear))
    if window := getattr(getattr(task_model, "feature_extractor", None), "chunk_length", None):
        summary["audio window (s)"] = window
    return {
        "summary": summary,
        "parameters": sum(components.values()),
        "components": dict(sorted(components.items(), key=lambda kv: -kv[1])),
        "linear_layers": dict(sorted(linear.items())),
        "default_target_modules": task_model.default_target_modules,
        "head_modules": task_model.head_modules,
    }


def build_on_meta(task_model) -> torch.nn.Module:
    """The task model's architecture with empty (meta) weights, tied as a loaded model is."""
    with torch.device("meta"):
        return tie_like_pretrained(task_model.build_from_config())


def component_of(parameter_name: str) -> str:
    """'model.encoder.layers.3.fc1.weight' -> 'encoder'; 'classifier.weight' -> 'classifier'."""
    parts = [p for p in parameter_name.split(".")[:-1] if p not in {"model", "bert", "wav2vec2", "hubert",
                                                                      "roberta", "distilbert"}]
    if not parts:
        return "other"
    if parts[0] in {"encoder", "decoder"} and len(parts) > 1 and parts[1] in {"embed_tokens", "embed_positions",
                                                                              "conv1", "conv2", "layer_norm"}:
        return f"{parts[0]} {parts[1].replace('_', ' ')}"
    return parts[0].replace("_", " ")
