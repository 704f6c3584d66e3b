"""What a dataset looks like: aggregate statistics (from SQL) and views of one clip.

    stats = dataset_stats(storage, dataset_id)    # counts, hours, histograms, labels, formats
    view = audio_view(path)                       # waveform envelope + log-mel spectrogram

Both return plain numbers and lists, so the page draws them and tests check them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.data.audio import SAMPLE_RATE, load_audio

HISTOGRAM_BUCKET_S = 0.5


def dataset_stats(storage, dataset_id: int, bucket_s: float = HISTOGRAM_BUCKET_S) -> dict:
    """Counts per split, total hours, duration and transcript-length histograms, labels, formats."""
    raw = storage.item_stats(dataset_id, bucket_s)
    totals = raw["totals"]
    labels: dict[str, dict[str, int]] = {}
    for label, split, count in raw["labels"]:
        labels.setdefault(label, {})[split] = count
    return {
        "splits": raw["splits"],
        "items": totals["items"],
        "total_hours": (totals["seconds"] or 0) / 3600,
        "shortest_s": totals["shortest"], "longest_s": totals["longest"],
        "duration_histogram": [{"from_s": bucket * bucket_s, "to_s": (bucket + 1) * bucket_s,
                                "items": count} for bucket, count in raw["durations"]],
        "labels": labels,
        "transcript_words": [{"words": words, "items": count} for words, count in raw["text_words"]],
        "formats": [{"sample_rate": rate, "channels": channels, "items": count}
                    for rate, channels, count in raw["formats"]],
    }


def audio_view(path: Path, points: int = 2000, n_mels: int = 80) -> dict:
    """The waveform (min/max envelope of ``points`` columns) and a log-mel spectrogram in dB."""
    import librosa

    samples = load_audio(path)
    seconds = len(samples) / SAMPLE_RATE
    envelope = _envelope(samples, points)
    mel = librosa.feature.melspectrogram(y=samples, sr=SAMPLE_RATE, n_fft=400, hop_length=160,
                                         n_mels=n_mels)  # Whisper's front end: 25 ms window, 10 ms hop
    log_mel = librosa.power_to_db(mel, ref=np.max)        # (n_mels, frames)
    return {
        "seconds": seconds,
        "time": np.linspace(0, seconds, len(envelope["low"])).tolist(),
        "low": envelope["low"], "high": envelope["high"],
        "mel_db": log_mel.round(1).tolist(),
        "mel_time": (np.arange(log_mel.shape[1]) * 160 / SAMPLE_RATE).tolist(),
        "mel_hz": librosa.mel_frequencies(n_mels=n_mels, fmax=SAMPLE_RATE / 2).round().tolist(),
    }


def _envelope(samples: np.ndarray, points: int) -> dict:
    if len(samples) == 0:
        return {"low": [0.0], "high": [0.0]}
    columns = min(points, len(samples))
    usable = len(samples) // columns * columns
    blocks = samples[:usable].reshape(columns, -1)  # (columns, samples per column)
    return {"low": blocks.min(axis=1).tolist(), "high": blocks.max(axis=1).tolist()}
