"""Model FLOPs per example (against hand counts), the training multiplier, the device peaks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.errors import SettingsError
from engine.flops import (
    forward_flops_per_sample,
    peak_tflops,
    peak_tflops_of,
    training_flops_per_sample,
)
from engine.models.base import TaskModel
from engine.training.monitoring import MFU_PERCENT, TFLOPS, utilisation_metrics


class TwoLinears(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden, self.out = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x)))


class TwoLinearsTask(TaskModel):
    def build_from_config(self):
        return TwoLinears()

    def fake_batch(self, batch_size, **_):
        return {"x": torch.randn(batch_size, 8)}


# A multiply and an add per weight per input row (biases and the ReLU are not model FLOPs).
TWO_LINEARS_FLOPS = 2 * (8 * 16 + 16 * 4)


def test_a_tiny_linear_model_counts_two_flops_per_weight_per_example(tmp_path):
    task = TwoLinearsTask(tmp_path)
    assert forward_flops_per_sample(task) == TWO_LINEARS_FLOPS  # its fake batch, on meta
    # Per example, whatever the batch size; a sequence of 3 rows is 3 times the work.
    assert forward_flops_per_sample(task, batch={"x": torch.zeros(5, 3, 8)}) == 3 * TWO_LINEARS_FLOPS
    # A builder is called on the meta device; a model on the CPU is counted where it is.
    assert forward_flops_per_sample(task, TwoLinears, {"x": torch.zeros(2, 8)}) == TWO_LINEARS_FLOPS
    assert forward_flops_per_sample(task, TwoLinears(), {"x": torch.zeros(2, 8)}) == TWO_LINEARS_FLOPS


def transformer_layer_flops(tokens: int, width: int, ffn: int) -> int:
    """Q, K, V, O projections and the feed-forward pair, plus the two attention matmuls."""
    return 2 * tokens * (4 * width * width + 2 * width * ffn) + 2 * 2 * tokens * tokens * width


def test_tiny_bert_counts_what_the_architecture_does(workbench):
    labels = ["a", "b", "c"]
    task = workbench.task_model("tiny-bert", "text-classification", labels)
    config = task.config()
    d, tokens = config.hidden_size, 16
    expected = (config.num_hidden_layers * transformer_layer_flops(tokens, d, config.intermediate_size)
                + 2 * d * d + 2 * d * len(labels))  # pooler, classifier
    batch = task.fake_batch(2, sequence_length=tokens)
    batch["attention_mask"][1, 10:] = 0  # padding costs the same work
    assert forward_flops_per_sample(task, batch=batch) == expected


def test_tiny_whisper_asr_counts_encoder_decoder_and_vocabulary(workbench):
    task = workbench.task_model("tiny-whisper", "asr")
    c = task.config()
    d, ffn, frames, labels = c.d_model, c.encoder_ffn_dim, 2 * c.max_source_positions, 32
    positions = c.max_source_positions  # the second convolution halves the frames
    convolutions = 2 * c.num_mel_bins * 3 * d * frames + 2 * d * 3 * d * positions
    encoder = c.encoder_layers * transformer_layer_flops(positions, d, ffn)
    cross_attention = 2 * labels * 2 * d * d + 2 * positions * 2 * d * d + 2 * 2 * labels * positions * d
    decoder = c.decoder_layers * (transformer_layer_flops(labels, d, ffn) + cross_attention)
    expected = convolutions + encoder + decoder + 2 * labels * d * c.vocab_size  # tied output layer
    assert forward_flops_per_sample(task) == expected  # fake batch: 5 s window, 32 label tokens


def test_training_is_three_forwards_with_the_base_weights_and_two_without():
    assert training_flops_per_sample(1e9, trains_base_weights=True) == 3e9
    assert training_flops_per_sample(1e9, trains_base_weights=False) == 2e9


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835),
    ("NVIDIA H200", 989), ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA L4", 121), ("NVIDIA L40S", 362),
    ("NVIDIA GeForce RTX 4090", 165), ("Orin", 42.5), ("Tesla T4", None), ("NVIDIA L40", None),
])
def test_peak_tflops_by_gpu_name(name, peak):
    assert peak_tflops_of(name) == peak


def test_peak_is_unknown_on_a_cpu_unless_set(monkeypatch):
    monkeypatch.delenv("LIM_PEAK_TFLOPS", raising=False)
    assert peak_tflops("cpu") is None
    monkeypatch.setenv("LIM_PEAK_TFLOPS", "50")
    assert peak_tflops("cpu") == 50.0
    for bad in ("fast", "-3"):
        monkeypatch.setenv("LIM_PEAK_TFLOPS", bad)
        with pytest.raises(SettingsError, match="LIM_PEAK_TFLOPS"):
            peak_tflops("cpu")


def test_utilisation_metrics():
    assert utilisation_metrics(40.0, 5e12, 989.0) == {TFLOPS: 200.0, MFU_PERCENT: pytest.approx(20.22, abs=0.01)}
    assert utilisation_metrics(40.0, 5e12, None) == {TFLOPS: 200.0}  # a CPU: no utilisation %
    assert utilisation_metrics(40.0, None, 989.0) == {}  # FLOPs unknown: nothing
