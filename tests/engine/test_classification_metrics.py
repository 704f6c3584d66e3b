"""Classification metrics (engine/metrics.py) on probabilities as a half-precision model gives them."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss

from engine.metrics import classification_metrics


def test_half_precision_probabilities_score_without_warnings_as_their_renormalised_selves():
    torch.manual_seed(0)
    probabilities = torch.softmax(torch.randn(64, 4), dim=1).half().float().numpy()  # rows sum to 1 ± 1e-3
    labels = list(np.random.default_rng(0).integers(0, 4, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-learn warns on rows that do not sum to one
        metrics = classification_metrics(labels, probabilities)
    exact = probabilities.astype(np.float64) / probabilities.astype(np.float64).sum(axis=1, keepdims=True)
    assert metrics["loss"] == pytest.approx(log_loss(labels, exact, labels=[0, 1, 2, 3]), rel=1e-12)
    assert metrics["accuracy"] == np.mean(np.argmax(exact, axis=1) == np.asarray(labels))
