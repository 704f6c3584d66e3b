"""Short audio for Whisper: pad each batch to its longest clip instead of the model's window.

transformers' ``WhisperEncoder`` refuses any input but its whole window (3000 log-mel frames,
30 s, for real Whisper; 500 for tiny-whisper) and adds every one of its positional embeddings.
For 1-5 s clips most of that compute is spent on silence. With ``audio_padding="longest"``:

* ``window_frames`` picks a clip's own frame count: the frames whose STFT window touches audio,
  plus ``CONV_CONTEXT_FRAMES`` of silence, rounded up to even (conv2 has stride 2), at most the
  model's window. The waveform is zero-padded to exactly that many hops before the log-mel, so
  the features are the first frames of what 30 s padding gives, value for value.
* ``pad_batch`` pads a batch to its longest clip by repeating each clip's last frame, which is
  silence (the clamped log-mel floor the feature extractor gives zeros in that clip): the
  padded batch is again the first T frames of the 30 s features.
* ``install_window`` gives the model's encoder *instance* a forward that takes T <= window
  frames and adds the first ceil(T/2) positions, by moving that one instance to a subclass
  that overrides ``forward`` only (same name, so ``save_pretrained`` writes a stock model).
  The weights, peft's LoRA layers inside, bitsandbytes' 4-bit linears and gradient
  checkpointing (the layers checkpoint themselves) are untouched. For audio classification the
  mean pooling is masked to each clip's own positions (``windowed_classification_forward``).

Where this equals the 30 s encoder: exactly at T = window. Below it, every position whose
conv receptive field holds audio gets exactly the stock layer-0 input (``CONV_CONTEXT_FRAMES``
keeps the conv's zero padding at the window's end away from them); self-attention then sees
T/2 positions instead of the window's 1500 (less silence), so later layers differ. Whisper was
pretrained on 30 s windows; fine-tuning with "longest" adapts it to the short context.

No attention mask hides the padding: Whisper always attended to silence, and the decoder's
cross-attention takes no encoder mask in transformers 5.23. So a clip's encoding depends on
how much silence follows it, i.e. on its batch's longest clip: a Playground prediction (a
batch of one) can differ slightly from the evaluation's for the same clip.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import nn

# Silent frames kept after a clip's last audio frame. An encoder position k sees mel frames
# 2k-2 .. 2k+2 (conv1 kernel 3, conv2 kernel 3 stride 2); the last position of a T-frame
# window also sees conv zero padding where 30 s padding has silence. With 5 silent frames
# every position that sees audio lies before that boundary.
CONV_CONTEXT_FRAMES = 5


def window_frames(num_samples: int, *, hop_length: int, n_fft: int, max_frames: int) -> int:
    """Log-mel frames one clip of ``num_samples`` is given: even, at most ``max_frames``."""
    audio_frames = math.ceil((num_samples + n_fft // 2) / hop_length)  # windows touching audio
    frames = audio_frames + CONV_CONTEXT_FRAMES
    return min(max_frames, frames + frames % 2)


def pad_batch(features: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, n_mels, T_max) features and a (B, T_max) frame mask (1 = the clip's own frames).

    Each clip is padded with copies of its last frame: silence, since every clip shorter than
    the window ends in ``CONV_CONTEXT_FRAMES`` silent frames (a clip at the window is never
    padded). Silence in Whisper's log-mel is the clip's own floor (its max - 8 in log10 units),
    not a constant, so this is what 30 s padding puts there."""
    longest = max(f.shape[-1] for f in features)
    longest += longest % 2
    batch = np.empty((len(features), features[0].shape[0], longest), dtype=np.float32)
    mask = torch.zeros(len(features), longest, dtype=torch.long)
    for row, clip in enumerate(features):
        frames = clip.shape[-1]
        batch[row, :, :frames] = clip
        batch[row, :, frames:] = clip[:, -1:]
        mask[row, :frames] = 1
    return torch.from_numpy(batch), mask


# ---------------------------------------------------------------------- encoder
def windowed_encoder_forward(self, input_features: torch.Tensor, attention_mask=None, **kwargs):
    """WhisperEncoder.forward for any T <= the window: positions 0 .. ceil(T/2)-1 are added.

    Otherwise the stock forward line for line (same layers, dropout, LayerDrop), so at T =
    window it returns exactly what the stock forward returns. ``attention_mask`` is ignored,
    as in the stock encoder."""
    from transformers.modeling_outputs import BaseModelOutput

    inputs_embeds = nn.functional.gelu(self.conv1(input_features))
    inputs_embeds = nn.functional.gelu(self.conv2(inputs_embeds))
    inputs_embeds = inputs_embeds.permute(0, 2, 1)  # (B, ceil(T/2), d_model)
    positions = inputs_embeds.shape[1]
    if positions > self.embed_positions.num_embeddings:
        window = self.embed_positions.num_embeddings * self.conv1.stride[0] * self.conv2.stride[0]
        raise ValueError(f"Whisper's window is {window} log-mel frames; got {input_features.shape[-1]}")
    position_ids = torch.arange(positions, device=inputs_embeds.device)
    hidden_states = inputs_embeds + self.embed_positions(position_ids)
    hidden_states = nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
    for encoder_layer in self.layers:
        if self.training and self.layerdrop > 0.0 and torch.rand([]) < self.layerdrop:
            continue  # LayerDrop
        hidden_states = encoder_layer(hidden_states, None, **kwargs)
    return BaseModelOutput(last_hidden_state=self.layer_norm(hidden_states))


@functools.cache
def _decorated_encoder_forward():
    # The stock forward's decorators: config defaults, return_dict, and output_hidden_states /
    # output_attentions recorded by hooks (audio classification's weighted layer sum uses them).
    from transformers.utils.generic import merge_with_config_defaults
    from transformers.utils.output_capturing import capture_outputs

    return merge_with_config_defaults(capture_outputs(windowed_encoder_forward))


def install_window(model: nn.Module) -> nn.Module:
    """Let ``model`` (WhisperForConditionalGeneration or WhisperForAudioClassification) take
    windows shorter than 30 s; call before wrapping it with peft. Returns ``model``."""
    _set_forward(model.get_encoder(), _decorated_encoder_forward())
    if type(model).__name__ == "WhisperForAudioClassification":
        _set_forward(model, windowed_classification_forward)
    return model


def is_windowed(model: nn.Module) -> bool:
    return getattr(model.get_encoder(), "audio_window", False)


def _set_forward(module: nn.Module, forward) -> None:
    # A class swap rather than an instance attribute: a bound method stored on the module is a
    # reference cycle (its tensors wait for the garbage collector after the model is dropped).
    # (accelerate's multi-device dispatch hooks would wrap the old forward; the engine loads
    # on one device, where transformers installs none, 4-bit included.)
    if not getattr(module, "audio_window", False):
        module.__class__ = _windowed_class(type(module), forward)


@functools.cache
def _windowed_class(base: type, forward) -> type:
    """``base`` with ``forward`` replaced, under its own name: save_pretrained records the
    class name as the model's architecture."""
    return type(base.__name__, (base,), {"forward": forward, "audio_window": True,
                                         "__module__": base.__module__, "__qualname__": base.__qualname__})


# ---------------------------------------------------------------------- classification
def windowed_classification_forward(self, input_features=None, attention_mask=None, labels=None,
                                    encoder_outputs=None, **kwargs):
    """WhisperForAudioClassification.forward with the mean pooled over each clip's own positions.

    ``attention_mask`` is the (B, T) frame mask of ``pad_batch``; position k covers frames 2k
    and 2k+1. A clip of F frames is pooled over its first F/2 - 1 positions: the last one sees
    the conv's zero padding when the clip is alone and silence when it is padded, and holds no
    audio (``CONV_CONTEXT_FRAMES``). Unmasked, a 1 s clip padded to its batch's 5 s neighbour
    would be pooled over 80 % silence, and its prediction would depend on the batch it landed
    in (the playground's batch of one included); masked, only self-attention still sees the
    padding. Without a mask every position is pooled, as the stock forward does."""
    from transformers.modeling_outputs import SequenceClassifierOutput

    if self.config.use_weighted_layer_sum:
        kwargs["output_hidden_states"] = True
    if encoder_outputs is None:
        encoder_outputs = self.encoder(input_features, **kwargs)
    if self.config.use_weighted_layer_sum:
        hidden_states = torch.stack(encoder_outputs.hidden_states, dim=1)
        norm_weights = nn.functional.softmax(self.layer_weights, dim=-1)
        hidden_states = (hidden_states * norm_weights.view(-1, 1, 1)).sum(dim=1)
    else:
        hidden_states = encoder_outputs[0]
    hidden_states = self.projector(hidden_states)  # (B, P, proj)
    if attention_mask is None:
        pooled = hidden_states.mean(dim=1)
    else:
        own_positions = (attention_mask.sum(dim=1, keepdim=True) + 1) // 2 - 1  # (B, 1)
        positions = torch.arange(hidden_states.shape[1], device=hidden_states.device)
        keep = (positions < own_positions.clamp(min=1).to(positions.device)).unsqueeze(-1)
        pooled = (hidden_states * keep).sum(dim=1) / keep.sum(dim=1)
    logits = self.classifier(pooled)
    loss = None
    if labels is not None:
        loss = nn.functional.cross_entropy(logits.view(-1, self.config.num_labels),
                                           labels.to(logits.device).view(-1))
    return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=encoder_outputs.hidden_states,
                                    attentions=encoder_outputs.attentions)
