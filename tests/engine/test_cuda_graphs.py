"""CUDA graphs of the training step (engine/training/graphs.py) and the batch buckets they need.

The buckets are checked on the CPU (CI): padded batches give the same loss or logits. The
graphs themselves need a GPU (``gpu`` marker, skipped without CUDA): a graphed run trains to
the same losses as an eager one, every trainable parameter moves, dropout draws new masks on
every replay, and a shape that cannot be captured runs eagerly instead.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks import train_speed
from engine import settings as settings_lib
from engine.methods import get_method
from engine.models.base import pad_to_multiple
from engine.models.encoders import TextClassification
from engine.models.presets import PRESETS, build_preset
from engine.models.whisper import WhisperSpeechRecognition
from engine.methods.build import build_method_model
from engine.training.settings import TrainingSettings
from engine.training.step import TrainStep, wants_graphs


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    return train_speed.prepare_model("tiny-whisper", tmp_path_factory.mktemp("graphs"), "cpu")


def test_pad_to_multiple():
    x = torch.arange(6.0).view(1, 2, 3)
    padded = pad_to_multiple(x, -1, 4, value=-1)
    assert padded.shape == (1, 2, 4) and padded[..., 3].eq(-1).all()
    repeated = pad_to_multiple(x, 2, 5, repeat_last=True)
    assert torch.equal(repeated[..., 3:], x[..., 2:3].expand(1, 2, 2))
    assert pad_to_multiple(x, -1, 3) is x  # already a multiple
    assert pad_to_multiple(x, -1, 100, limit=4).shape[-1] == 4  # never past the limit
    assert pad_to_multiple(x, -1, 100, limit=2).shape[-1] == 3  # and never shrinks


def test_whisper_buckets_leave_the_loss_unchanged(tiny_whisper):
    task = WhisperSpeechRecognition(tiny_whisper)
    model = task.load().eval()
    rng = np.random.default_rng(0)
    frames = task.feature_extractor.nb_max_frames
    examples = [{"input_features": rng.standard_normal((80, frames)).astype(np.float32),
                 "labels": rng.integers(0, 500, size=n).tolist()} for n in (5, 9, 3)]
    batch = task.collate(examples)
    bucketed = task.bucket(batch)
    # 30 s windows: one wide label bucket (64 tokens, or the decoder's positions if fewer)
    width = min(64, task.max_label_tokens)
    assert batch["labels"].shape[1] == 9 and bucketed["labels"].shape[1] == width > 9
    assert bucketed["labels"][:, 9:].eq(-100).all()
    assert torch.equal(bucketed["input_features"], batch["input_features"])  # 30 s: untouched
    with torch.no_grad():
        torch.testing.assert_close(model(**bucketed).loss, model(**batch).loss)
    short = WhisperSpeechRecognition(tiny_whisper, audio_padding="longest")
    assert short.bucket(batch)["labels"].shape[1] == 16  # short windows: the decoder weighs more


def test_short_audio_windows_grow_to_whole_seconds(tiny_whisper):
    task = WhisperSpeechRecognition(tiny_whisper, audio_padding="longest")
    rng = np.random.default_rng(1)
    clips = [rng.standard_normal((80, n)).astype(np.float32) for n in (130, 171)]
    batch = task.collate([{"input_features": c, "labels": [1, 2]} for c in clips])
    assert batch["input_features"].shape[-1] == 172
    bucketed = task.bucket(batch)
    assert bucketed["input_features"].shape[-1] == 200
    # the added frames repeat each clip's last (silent) frame, as pad_batch pads
    torch.testing.assert_close(bucketed["input_features"][:, :, 172:],
                               batch["input_features"][:, :, 171:172].expand(-1, -1, 28))
    window = task.feature_extractor.nb_max_frames
    long = task.collate([{"input_features": rng.standard_normal((80, window - 20)).astype(np.float32),
                          "labels": [1]}])
    assert task.bucket(long)["input_features"].shape[-1] == window  # capped at the window


def test_text_buckets_leave_the_logits_unchanged(tmp_path):
    build_preset(PRESETS["tiny-bert"], tmp_path / "bert")
    task = TextClassification(tmp_path / "bert", labels=["neg", "pos"])
    model = task.load().eval()
    batch = task.collate([task.encode({"text": t, "label": "pos"}, tmp_path)
                          for t in ("a short one", "and a somewhat longer sentence here")])
    bucketed = task.bucket(batch)
    assert bucketed["input_ids"].shape[1] % 16 == 0 and bucketed["input_ids"].shape[1] > batch["input_ids"].shape[1]
    assert bucketed["attention_mask"][:, batch["input_ids"].shape[1]:].eq(0).all()
    with torch.no_grad():
        torch.testing.assert_close(model(**bucketed).logits, model(**batch).logits, atol=1e-5, rtol=1e-5)


def test_graphs_only_on_cuda_without_offload():
    assert wants_graphs("auto", "cuda") and wants_graphs("auto", "cuda:1")
    assert not wants_graphs("auto", "cpu")
    assert not wants_graphs("off", "cuda")
    assert not wants_graphs("auto", "cuda", offload=True)
    with pytest.raises(Exception, match="cuda_graphs"):
        settings_lib.build(TrainingSettings, {"cuda_graphs": "sometimes"})


# --------------------------------------------------------------------------- on a GPU
def _trainer(model_dir, *, graphs: bool, dropout: float, lr: float = 1e-2):
    task = WhisperSpeechRecognition(model_dir)
    method = get_method("qlora")
    method_settings = settings_lib.build(method.settings_cls, {
        "r": 8, "lora_alpha": 16, "lora_dropout": dropout, "target_modules": "q_proj,v_proj"},
        section="qlora")
    model = build_method_model(task, method, method_settings, family="whisper", device="cuda",
                               seed=0, total_steps=20)
    config = TrainingSettings(per_device_train_batch_size=4, learning_rate=lr, max_steps=20,
                              warmup_steps=0, seed=0)
    messages: list[str] = []
    step = TrainStep(model, config, "cuda", 20, cuda_graphs=graphs, on_message=messages.append)
    model.train()
    return task, model, step, messages


def _batches(task, count=6):
    generator = torch.Generator().manual_seed(0)
    frames = task.feature_extractor.nb_max_frames
    out = []
    for index in range(count):  # two label widths: two graphs
        width = 10 if index % 2 else 24
        out.append(task.bucket({"input_features": torch.randn(4, 80, frames, generator=generator),
                                "labels": torch.randint(0, 500, (4, width), generator=generator)}))
    return out


@pytest.mark.gpu
def test_graphed_steps_train_like_eager_ones(tiny_whisper):
    losses = {}
    for graphs in (False, True):
        torch.manual_seed(0)
        task, model, step, messages = _trainer(tiny_whisper, graphs=graphs, dropout=0.0)
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        run = []
        for index, batch in enumerate(_batches(task, 8)):
            run.append(float(step.forward_backward(batch)))
            step.optimizer_step(index + 1)
        losses[graphs] = run
        after = dict(model.named_parameters())
        unchanged = [n for n, p in before.items() if torch.equal(p, after[n].detach())]
        assert not unchanged, f"not trained (graphs={graphs}): {unchanged}"
    assert len(step.graphs.graphs) == 2 and step.graphs.replays == 4, messages
    # Without dropout a replay runs the very kernels the eager step runs.
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_each_replay_draws_new_dropout_masks(tiny_whisper):
    torch.manual_seed(0)
    task, model, step, _ = _trainer(tiny_whisper, graphs=True, dropout=0.3, lr=0.0)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # B starts at zero, which would hide the dropped LoRA input
            parameter.data.normal_()
    batch = _batches(task, 1)[0]
    losses = [float(step.forward_backward(batch)) for _ in range(5)]
    step.optimizer.zero_grad(set_to_none=False)
    assert step.graphs.replays == 3  # steps 3-5: the capture's own replay and two more
    assert len(set(losses[2:])) == 3, losses  # the replays differ: new masks each time


@pytest.mark.gpu
def test_a_shape_that_cannot_be_captured_runs_eagerly():
    from engine.training.graphs import CapturedSteps

    weight = torch.nn.Parameter(torch.ones(3, device="cuda"))

    def run(batch, scale):
        kept = torch.nn.functional.dropout(torch.ones_like(weight), 0.5).ne(0).sum()
        loss = (batch["x"] * weight).sum() * scale + 0 * kept
        loss.backward()
        if loss.item() > 1e9:  # a host sync: capture must refuse it
            raise AssertionError
        return loss.detach()

    messages: list[str] = []
    captured = CapturedSteps(run, [weight], warmup=1, on_message=messages.append)
    x = {"x": torch.ones(3, device="cuda")}
    for _ in range(3):
        captured(x, 1.0)
    assert not captured.graphs and captured.replays == 0
    assert any("capture failed" in m for m in messages)
    assert "item" in captured.last_error  # where it broke off
    # after the failed capture, random ops (the dropout above) still run
    torch.testing.assert_close(weight.grad, torch.full((3,), 3.0, device="cuda"))


def test_whisper_decoder_masks_skip_the_packed_sequence_check(tiny_whisper, monkeypatch):
    """Training forwards build the decoder's causal mask without the packed-sequence check,
    which syncs with the host eagerly and builds a different mask under graph capture."""
    from transformers import masking_utils

    task = WhisperSpeechRecognition(tiny_whisper)
    model = task.load().train()
    model.config.use_cache = False  # as TrainStep trains
    frames = task.feature_extractor.nb_max_frames
    batch = {"input_features": torch.randn(2, 80, frames), "labels": torch.randint(0, 500, (2, 7))}
    with torch.no_grad():
        expected = model(**batch).loss  # (dropout 0 in the preset)

    def refuse(*args, **kwargs):
        raise AssertionError("packed-sequence check ran")

    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", refuse)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).loss, expected)


def test_eager_attention_still_gets_a_causal_decoder_mask(tiny_whisper):
    """Only SDPA may go without a mask tensor (it applies causality itself); eager attention
    must still be masked, so both give the same loss."""
    from transformers import WhisperForConditionalGeneration

    WhisperSpeechRecognition(tiny_whisper)  # installs the decoder-mask wrapper
    batch = {"input_features": torch.randn(2, 80, 500), "labels": torch.randint(0, 500, (2, 9))}
    logits = []
    for attention in ("sdpa", "eager"):
        model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper, attn_implementation=attention)
        model.config.use_cache = False  # as TrainStep trains: no cache, the wrapper's case
        with torch.no_grad():
            logits.append(model.train()(**batch).logits)
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-4)


def test_compiled_layers_run_eagerly_outside_training():
    """Layers compile for training only: evaluation and generation (whose key/value cache grows
    a step at a time) call the eager forward instead of recompiling for every length."""
    from torch._dynamo.utils import counters

    from engine.training.step import _compile_for_training

    class Block(torch.nn.Module):  # torch's own modules are not traced from their _call_impl
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)

        def forward(self, x):
            return torch.relu(self.proj(x)) + x

    torch._dynamo.reset()
    layer = Block()
    _compile_for_training(layer)
    x = torch.randn(4, 8)
    expected = torch.relu(layer.proj(x)) + x
    layer.train()
    torch.testing.assert_close(layer(x), expected)
    compiled = counters["stats"]["unique_graphs"]
    assert compiled >= 1
    layer.eval()
    for length in range(2, 6):  # new shapes: a compiled call would recompile for each
        ones = torch.ones(length, 8)
        torch.testing.assert_close(layer(ones), torch.relu(layer.proj(ones)) + ones)
    layer.train()
    with torch.no_grad():
        layer(torch.ones(7, 8))
    assert counters["stats"]["unique_graphs"] == compiled


def test_no_graphs_for_models_that_drop_layers_at_random(tiny_whisper):
    """LayerDrop draws on the CPU in Python; a captured graph would replay one draw forever."""
    from engine.training.step import layer_drop

    task = WhisperSpeechRecognition(tiny_whisper)
    model = task.load()
    assert layer_drop(model) == ""
    model.config.encoder_layerdrop = 0.1
    assert layer_drop(model) == "encoder_layerdrop=0.1"
    messages: list[str] = []
    step = TrainStep(model, TrainingSettings(max_steps=2), "cpu", 2, cuda_graphs=True,
                     on_message=messages.append)
    assert step.graphs is None and "encoder_layerdrop=0.1" in messages[0]


def test_auto_compiles_only_runs_long_enough_to_win_compiling_back():
    """Compiling costs half a minute or more per batch shape on a GPU and makes a step 18-24 %
    faster: "auto" compiles GPU runs of COMPILE_MIN_STEPS or more, never on the CPU; "on" and
    "off" are obeyed. A short GPU run says why it is not compiled."""
    from engine.training.step import COMPILE_MIN_STEPS, prepare_training, wants_compile

    assert wants_compile("auto", "cuda", COMPILE_MIN_STEPS) and wants_compile("auto", "cuda:1", None)
    assert not wants_compile("auto", "cuda", COMPILE_MIN_STEPS - 1)  # the demo's 96 steps, say
    assert not wants_compile("auto", "cpu", 10 * COMPILE_MIN_STEPS)
    assert wants_compile("on", "cuda", 2) and wants_compile("on", "cpu", 2)
    assert not wants_compile("off", "cuda", 10 * COMPILE_MIN_STEPS)

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    messages: list[str] = []
    prepared = prepare_training(model, TrainingSettings(max_steps=96), "cuda", 96, log=messages.append)
    assert prepared.compiled_layers == 0
    assert any("96 steps end before compiling would pay for itself" in m for m in messages)
