"""Short audio: Whisper padded to the batch's longest clip, the encoder run on that window.

What equals what, and where it stops:
* features: a clip's "longest" features are the first T frames of its 30 s features, value for
  value, and a padded batch is the first T_max frames of the 30 s batch (the padding is the
  clip's own silence frame, which is what 30 s padding puts there);
* the encoder at the full window is the stock encoder, bit for bit; below it, it is the stock
  computation with positions [0, T/2) (checked against a hand-written reference);
* against 30 s padding, every position whose conv receptive field holds audio enters layer 0
  with exactly the stock value; the window's last position does not (conv2's zero padding
  where 30 s padding has silence), which is why clips keep a few silent frames. After layer 0
  the outputs differ: self-attention attends over T/2 positions instead of the whole window,
  so each position's output changes. With attention cut (out_proj zeroed: every layer is
  then position-wise) the whole encoder output matches on the positions that hold audio,
  which shows attention is the only source of the difference.

The tiny-whisper preset's window is 5 s (500 frames); a 1-layer model with the real 30 s
window (3000 frames) checks the full-window identity at Whisper's own size.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import FAST

from engine import settings as settings_lib
from engine.errors import ModelError, SettingsError
from engine.models import task_model_for
from engine.models.whisper_window import (
    CONV_CONTEXT_FRAMES,
    install_window,
    is_windowed,
)
from engine.training.settings import TrainingSettings

LENGTHS = [3_000, 11_111, 16_000, 40_000]  # samples at 16 kHz: 0.19 s to 2.5 s


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    from engine.models.presets import TINY_WHISPER, build_preset

    folder = tmp_path_factory.mktemp("tiny-whisper")
    build_preset(TINY_WHISPER, folder)
    return folder


def clips(lengths=LENGTHS, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]


def audio_positions(num_samples: int) -> int:
    """Encoder positions whose receptive field (mel frames 2k-2 .. 2k+2) holds audio."""
    audio_frames = math.ceil((num_samples + 200) / 160)  # n_fft // 2 = 200, hop 160
    return (audio_frames + 1) // 2 + 1


def layer0_inputs(model, features) -> torch.Tensor:
    """What the encoder's first layer receives: conv1, conv2, gelu, + positions."""
    seen = []
    handle = model.get_encoder().layers[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        model.get_encoder()(features)
    handle.remove()
    return seen[0]


def cut_attention(model) -> None:
    for layer in model.get_encoder().layers:
        layer.self_attn.out_proj.weight.data.zero_()


# ---------------------------------------------------------------------- features and collate
def test_clip_features_are_the_first_frames_of_30s_features_and_collate_pads_to_the_longest(whisper_dir):
    full = task_model_for("whisper", "asr", whisper_dir)
    short = task_model_for("whisper", "asr", whisper_dir, audio_padding="longest")
    window = full.feature_extractor.nb_max_frames
    audio = clips(LENGTHS + [90_000])  # the last is longer than the 5 s window: cut, as 30s does
    stock = [full.features(a) for a in audio]
    own = [short.features(a) for a in audio]
    for clip, s, o in zip(audio, stock, own):
        frames = o.shape[-1]
        assert frames % 2 == 0 and frames <= window
        assert frames >= min(window, math.ceil((len(clip) + 200) / 160) + CONV_CONTEXT_FRAMES)
        np.testing.assert_array_equal(o, s[:, :frames])

    examples = [{"input_features": f, "labels": [1, 2]} for f in own[:4]]
    batch = short.collate(examples)
    longest = max(f.shape[-1] for f in own[:4])
    assert batch["input_features"].shape == (4, 80, longest) and longest < window
    assert set(batch) == {"input_features", "labels"}  # the ASR encoder takes no mask
    expected = np.stack([s[:, :longest] for s in stock[:4]])
    np.testing.assert_array_equal(batch["input_features"].numpy(), expected)

    classify = task_model_for("whisper", "audio-classification", whisper_dir, ["a", "b"],
                              audio_padding="longest")
    batch = classify.collate([{"input_features": f, "labels": 0} for f in own[:4]])
    assert batch["attention_mask"].sum(dim=1).tolist() == [f.shape[-1] for f in own[:4]]
    assert full.collate([{"input_features": stock[0], "labels": [1]}])["input_features"].shape[-1] == window
    # Memory estimates see the window too.
    assert short.fake_batch(2, seconds=1.0)["input_features"].shape[-1] == short.clip_frames(16_000) == 108
    assert full.fake_batch(2, seconds=1.0)["input_features"].shape[-1] == window


# ---------------------------------------------------------------------- the encoder
def test_at_the_full_30s_window_the_windowed_encoder_is_the_stock_encoder():
    from transformers import WhisperConfig, WhisperForAudioClassification

    config = WhisperConfig(vocab_size=64, pad_token_id=0, bos_token_id=0, eos_token_id=0,
                           decoder_start_token_id=1, d_model=16, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                           decoder_ffn_dim=32, max_source_positions=1500)  # Whisper's 3000 frames
    torch.manual_seed(0)
    stock = WhisperForAudioClassification(config).eval()
    windowed = WhisperForAudioClassification(config).eval()
    windowed.load_state_dict(stock.state_dict())
    install_window(windowed)
    features = torch.randn(2, 80, 3000)
    with torch.no_grad():
        expected = stock.get_encoder()(features).last_hidden_state
        got = windowed.get_encoder()(features).last_hidden_state
        assert torch.equal(got, expected)
        # Without a mask the classifier pools every position, as the stock forward does.
        assert torch.equal(windowed(features).logits, stock(features).logits)
        with pytest.raises(ValueError, match="length 3000"):
            stock.get_encoder()(features[..., :400])
        assert windowed.get_encoder()(features[..., :400]).last_hidden_state.shape == (2, 200, 16)
        with pytest.raises(ValueError, match="window is 3000"):
            windowed.get_encoder()(torch.randn(1, 80, 3002))


def test_a_short_window_is_the_stock_computation_with_the_first_positions(whisper_dir):
    model = task_model_for("whisper", "asr", whisper_dir, audio_padding="longest").load().eval()
    encoder = model.get_encoder()
    features = torch.randn(3, 80, 136)
    with torch.no_grad():
        hidden = torch.nn.functional.gelu(encoder.conv1(features))
        hidden = torch.nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)  # (B, 68, d)
        hidden = hidden + encoder.embed_positions.weight[:68]
        for layer in encoder.layers:
            hidden = layer(hidden, None)
        reference = encoder.layer_norm(hidden)
        got = encoder(features).last_hidden_state
    torch.testing.assert_close(got, reference, rtol=0, atol=0)


@pytest.mark.parametrize("samples", LENGTHS)
def test_positions_holding_audio_match_30s_padding_until_attention_mixes_in_the_window(
        whisper_dir, samples):
    full = task_model_for("whisper", "asr", whisper_dir)
    short = task_model_for("whisper", "asr", whisper_dir, audio_padding="longest")
    stock, windowed = full.load().eval(), short.load().eval()
    [audio] = clips([samples])
    stock_features = torch.from_numpy(full.features(audio))[None]
    own_features = torch.from_numpy(short.features(audio))[None]
    keep = audio_positions(samples)
    last = own_features.shape[-1] // 2 - 1
    assert keep <= last  # the silent frames keep audio away from the window's edge

    stock_in, own_in = layer0_inputs(stock, stock_features), layer0_inputs(windowed, own_features)
    torch.testing.assert_close(own_in[:, :keep], stock_in[:, :keep], rtol=0, atol=1e-6)
    torch.testing.assert_close(own_in[:, :last], stock_in[:, :last], rtol=0, atol=1e-6)
    # The window's last position sees conv2's zero padding where 30 s padding has silence.
    assert (own_in[:, last] - stock_in[:, last]).abs().max() > 1e-3

    with torch.no_grad():
        stock_out = stock.get_encoder()(stock_features).last_hidden_state[:, :keep]
        own_out = windowed.get_encoder()(own_features).last_hidden_state[:, :keep]
    assert (own_out - stock_out).abs().max() > 1e-3  # attention saw 1/3 .. 1/40 of the window
    cut_attention(stock)
    cut_attention(windowed)
    with torch.no_grad():
        stock_out = stock.get_encoder()(stock_features).last_hidden_state[:, :keep]
        own_out = windowed.get_encoder()(own_features).last_hidden_state[:, :keep]
    torch.testing.assert_close(own_out, stock_out, rtol=0, atol=1e-5)


def test_classification_pools_each_clip_over_its_own_positions(whisper_dir):
    task_model = task_model_for("whisper", "audio-classification", whisper_dir, ["a", "b", "c"],
                                audio_padding="longest")
    torch.manual_seed(0)
    model = task_model.load().eval()
    cut_attention(model)  # so that only the pooling could see the batch's padding
    short, long = (task_model.features(a) for a in clips([8_000, 40_000]))
    alone = task_model.predict(model, task_model.collate([{"input_features": short}]))
    padded_batch = task_model.collate([{"input_features": short}, {"input_features": long}])
    batched = task_model.predict(model, padded_batch)
    np.testing.assert_allclose(batched[0], alone[0], rtol=0, atol=1e-6)
    unmasked = task_model.predict(model, {"input_features": padded_batch["input_features"]})
    assert np.abs(np.array(unmasked[0]) - alone[0]).max() > 1e-4  # pooled over silence too


# ---------------------------------------------------------------------- settings
def test_audio_padding_is_a_setting_with_two_choices(whisper_dir):
    assert TrainingSettings().audio_padding == "30s"
    assert settings_lib.build(TrainingSettings, {"audio_padding": "longest"}).audio_padding == "longest"
    with pytest.raises(SettingsError, match="audio_padding must be one of 30s, longest, got 'short'"):
        settings_lib.build(TrainingSettings, {"audio_padding": "short"})
    with pytest.raises(ModelError, match="audio_padding must be one of 30s, longest"):
        task_model_for("whisper", "asr", whisper_dir, audio_padding="5s")


def test_a_bad_audio_padding_is_refused_at_submit(workbench):
    from engine.errors import WorkbenchError

    with pytest.raises(WorkbenchError, match="audio_padding"):
        workbench.submit_run("demo-commands", "tiny-whisper", "lora", {},
                             {**FAST, "audio_padding": "10s"})
    assert workbench.list_runs() == []


# ---------------------------------------------------------------------- real runs
def lora_weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


@pytest.mark.parametrize("dataset, method, extra", [
    ("demo-speech", "lora", {}),
    ("demo-commands", "qlora", {"gradient_checkpointing": True}),
])
def test_a_short_run_trains_evaluates_and_reloads_on_windowed_inputs(workbench, dataset, method, extra):
    from engine.data.audio import load_audio
    from engine.inference import LoadedModel, predict_item
    from engine.training.recipe import FineTuneRecipe

    run_id = workbench.submit_run(dataset, "tiny-whisper", method, {},
                                  {**FAST, "audio_padding": "longest", "learning_rate": 1e-2, **extra})
    recipe = FineTuneRecipe(workbench.storage, workbench.storage.claim_next_run("test", run_id=run_id),
                            should_stop=lambda: False)
    recipe.setup()
    assert is_windowed(recipe.model)
    window = recipe.task_model.feature_extractor.nb_max_frames
    frames: list[tuple[bool, int]] = []
    recipe.model.get_encoder().register_forward_pre_hook(
        lambda module, args: frames.append((module.training, args[0].shape[-1])))
    before = lora_weights(recipe.model)
    assert before

    assert recipe.train() == "completed"
    after = lora_weights(recipe.model)
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert not unchanged
    trained_frames = [t for training, t in frames if training]
    evaluated_frames = [t for training, t in frames if not training]
    assert len(trained_frames) == FAST["max_steps"] and evaluated_frames  # train, then generate/score
    assert max(trained_frames + evaluated_frames) < window / 2  # demo clips are < 2.4 s of 5
    assert all(t % 2 == 0 for t in trained_frames + evaluated_frames)

    run = workbench.get_run(run_id)
    assert run["metrics"][recipe.task_model.primary_metric] is not None
    saved = recipe.run_dir / "adapter" / "workbench.json"
    assert '"audio_padding": "longest"' in saved.read_text()

    task_model, model = workbench.load_trained(run_id)  # the Playground's path
    assert task_model.audio_padding == "longest" and is_windowed(model)
    frames.clear()
    model.get_encoder().register_forward_pre_hook(
        lambda module, args: frames.append((module.training, args[0].shape[-1])))
    loaded = LoadedModel(task_model, model, run_id, 0, 0.0)
    item = recipe.eval_items[0]
    assert predict_item(loaded, {"file": item["file"]}, recipe.dataset_dir)["output"] is not None
    assert frames == [(False, task_model.features(load_audio(recipe.dataset_dir / item["file"])).shape[-1])]


def test_every_nth_batch_trains_on_the_whole_window(workbench):
    """full_window_every=2: batches 2 and 4 are padded to the model's whole window with each
    clip's own silence (what 30 s padding gives), the others to their longest clip, so a model
    trained on short windows keeps working under standard whole-window inference."""
    from engine.training.recipe import FineTuneRecipe

    run_id = workbench.submit_run("demo-speech", "tiny-whisper", "lora", {},
                                  {**FAST, "audio_padding": "longest", "full_window_every": 2})
    recipe = FineTuneRecipe(workbench.storage, workbench.storage.claim_next_run("test", run_id=run_id),
                            should_stop=lambda: False)
    recipe.setup()
    window = recipe.task_model.feature_extractor.nb_max_frames
    seen: list[torch.Tensor] = []
    recipe.model.get_encoder().register_forward_pre_hook(
        lambda module, args: seen.append(args[0].detach().clone()) if module.training else None)
    assert recipe.train() == "completed"
    frames = [features.shape[-1] for features in seen]
    assert frames[1] == frames[3] == window and max(frames[0], frames[2]) < window / 2
    # the widened batch is the 30 s batch: its clips' features under 30 s padding
    items = [recipe.train_items[i] for i in recipe.epoch_batches(0)[1]]
    standard = task_model_for("whisper", "asr", recipe.model_dir, audio_padding="30s")
    expected = torch.from_numpy(np.stack([standard.encode_audio(item, recipe.dataset_dir) for item in items]))
    torch.testing.assert_close(seen[1], expected)
