"""ONNX export of a run's merged model, checked against onnxruntime before it is handed over.

Audio classification is one graph: ``input_features -> logits``. Speech recognition is two,
as in Hugging Face Optimum's Whisper export: ``encoder.onnx`` (``input_features ->
encoder_hidden_states``) and ``decoder.onnx`` (``decoder_input_ids, encoder_hidden_states ->
logits``, one decoding step over the whole prefix, without a key/value cache), so any runtime
can run greedy or beam search with them. ``onnx.json`` beside the graphs lists the graphs, their
inputs and outputs, and the largest difference onnxruntime showed against torch.

The exporter is torch's own (``torch.onnx.export(dynamo=True)``, which needs onnxscript);
onnx and onnxruntime are imported only here, with a clear error when missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.errors import ExportError
from engine.export.adapter import model_card
from engine.export.artifacts import Progress, RunArtifacts
from engine.export.merged import copy_processor_files, merged_model

PARITY_TOLERANCE = 1e-3  # max |onnxruntime - torch| accepted on logits (float32 graphs)


class EncoderGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.encoder = model.get_encoder()

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_features=input_features).last_hidden_state  # (B, T, C)


class DecoderStepGraph(nn.Module):
    """Logits for every position of a decoder prefix, without a key/value cache."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.decoder, self.proj_out = model.get_decoder(), model.proj_out

    def forward(self, decoder_input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor):
        hidden = self.decoder(input_ids=decoder_input_ids, encoder_hidden_states=encoder_hidden_states,
                              use_cache=False).last_hidden_state
        return self.proj_out(hidden)  # (B, L, vocab)


class ClassifierGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        return self.model(input_features=input_features).logits  # (B, labels)


class TextClassifierGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, labels)


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ExportError(f"ONNX export needs onnx, onnxscript and onnxruntime "
                          f"(pip install -r requirements.txt): {error}") from error


def write_onnx(artifacts: RunArtifacts, folder: Path, say: Progress) -> Path:
    require_onnx()
    task_model, model = merged_model(artifacts, say)
    model = model.float().eval()
    model.config.use_cache = False
    task = artifacts.summary["task"]
    if task == "text-classification":
        graphs = text_graphs(model, task_model)
    elif not hasattr(task_model, "feature_extractor") or not hasattr(task_model, "features"):
        raise ExportError(f"ONNX export covers Whisper and text classifiers; for this "
                          f"{task_model.family} model export the merged folder instead")
    else:
        features = sample_features(task_model)
        graphs = speech_graphs(model, features) if task == "asr" else classifier_graphs(model, features)
    manifest = {"task": artifacts.summary["task"], "run_id": artifacts.summary["id"],
                "tolerance": PARITY_TOLERANCE, "graphs": {}}
    for name, (module, inputs, dynamic) in graphs.items():
        say(f"exporting {name}.onnx")
        path = folder / f"{name}.onnx"
        export_graph(module, inputs, dynamic, path)
        say(f"checking {name}.onnx with onnxruntime")
        difference = max_difference(module, inputs, path)
        if not difference <= PARITY_TOLERANCE:
            raise ExportError(f"{name}.onnx differs from torch by {difference:.2e} (more than "
                              f"{PARITY_TOLERANCE:g}); the export is not trustworthy")
        manifest["graphs"][name] = {"file": path.name, "inputs": list(inputs),
                                    "max_abs_difference": difference}
    (folder / "onnx.json").write_text(json.dumps(manifest, indent=2))
    model.config.save_pretrained(folder)  # labels and token ids for whoever runs the graphs
    copy_processor_files(artifacts, folder)
    (folder / "README.md").write_text(model_card(artifacts, merged=True) + onnx_usage(manifest))
    return folder


def sample_features(task_model) -> torch.Tensor:
    """Two windows of log-mel features (batch 2 so the batch axis stays dynamic)."""
    rate = task_model.feature_extractor.sampling_rate
    generator = np.random.default_rng(0)
    audio = [0.1 * generator.standard_normal(rate).astype(np.float32) for _ in range(2)]
    return torch.from_numpy(np.stack([task_model.features(a) for a in audio]))


def speech_graphs(model: nn.Module, features: torch.Tensor) -> dict:
    from torch.export import Dim

    encoder = EncoderGraph(model).eval()
    with torch.no_grad():
        hidden = encoder(features)
    prefix = torch.tensor([[model.config.decoder_start_token_id] + [5, 6]] * len(features))
    batch = Dim("batch", min=1, max=1024)
    length = Dim("length", min=1, max=model.config.max_target_positions)
    return {
        "encoder": (encoder, {"input_features": features}, {"input_features": {0: batch}}),
        "decoder": (DecoderStepGraph(model).eval(),
                    {"decoder_input_ids": prefix, "encoder_hidden_states": hidden},
                    {"decoder_input_ids": {0: batch, 1: length},
                     "encoder_hidden_states": {0: batch}}),
    }


def classifier_graphs(model: nn.Module, features: torch.Tensor) -> dict:
    from torch.export import Dim

    batch = Dim("batch", min=1, max=1024)
    return {"model": (ClassifierGraph(model).eval(), {"input_features": features},
                      {"input_features": {0: batch}})}


def text_graphs(model: nn.Module, task_model) -> dict:
    from torch.export import Dim

    tokens = task_model.tokenizer(["a short sentence to export", "and another one"], padding=True,
                                  return_tensors="pt")
    batch = Dim("batch", min=1, max=1024)
    length = Dim("length", min=2, max=model.config.max_position_embeddings)
    inputs = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
    return {"model": (TextClassifierGraph(model).eval(), inputs,
                      {name: {0: batch, 1: length} for name in inputs})}


def export_graph(module: nn.Module, inputs: dict, dynamic: dict, path: Path) -> None:
    import contextlib
    import io

    # The exporter prints its progress to stdout; the CLI's stdout is for results only.
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(module, (), str(path), kwargs=inputs, input_names=list(inputs),
                          dynamic_shapes=dynamic, dynamo=True, external_data=False)


def max_difference(module: nn.Module, inputs: dict, path: Path) -> float:
    """Largest |onnxruntime - torch| on the sample inputs (a shorter prefix for decoders)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = module(**inputs).numpy()
    got = session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})[0]
    return float(np.abs(got - expected).max())


def onnx_usage(manifest: dict) -> str:
    if manifest["task"] == "asr":
        return """
## ONNX

`encoder.onnx`: `input_features` (batch, mels, frames) -> encoder states.
`decoder.onnx`: `decoder_input_ids` (batch, length), `encoder_hidden_states` -> logits
(batch, length, vocab). Greedy decoding: start from `decoder_start_token_id` (config.json),
append the arg-max of the last position until `eos_token_id`.
"""
    return """
## ONNX

`model.onnx`: `input_features` (batch, mels, frames) -> logits (batch, labels); label names in
`config.json` (`id2label`).
"""
