"""SpecAugment-style masking of log-mel features, for training batches only."""

from __future__ import annotations

import torch


class SpecAugment:
    """Mask one random frequency band and one random time span per example.

    Drawn from torch's global generator, whose state every checkpoint saves, so a resumed run
    masks exactly what an uninterrupted one would.
    """

    def __init__(self, freq_mask_param: int, time_mask_param: int):
        import torchaudio.transforms as T

        self.masks = []
        if freq_mask_param:
            self.masks.append(T.FrequencyMasking(freq_mask_param, iid_masks=True))
        if time_mask_param:
            self.masks.append(T.TimeMasking(time_mask_param, iid_masks=True))

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        features = batch.get("input_features")
        if features is None or features.dim() != 3:  # not audio: nothing to mask
            return batch
        masked = features.unsqueeze(1)  # (B, 1, n_mels, frames): one mask per example
        for mask in self.masks:
            masked = mask(masked)
        return {**batch, "input_features": masked.squeeze(1)}
