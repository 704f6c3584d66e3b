"""Reading audio as 16 kHz mono float32, the form every audio model here consumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.errors import DatasetError

SAMPLE_RATE = 16_000
AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg"}


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode ``path`` to mono float32 at ``sample_rate`` (resampling when needed)."""
    import soundfile

    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:  # soundfile raises LibsndfileError, RuntimeError, ...
        raise DatasetError(f"cannot read audio file {Path(path).name}: {error}") from error
    mono = samples.mean(axis=1)  # (frames, channels) -> (frames,)
    if rate != sample_rate:
        import librosa

        mono = librosa.resample(mono, orig_sr=rate, target_sr=sample_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def trim_silence(audio: np.ndarray, top_db: float) -> np.ndarray:
    """``audio`` without its leading and trailing silence: what lies more than ``top_db``
    below the clip's loudest frame (librosa.effects.trim). A clip with no quiet edge comes
    back unchanged; one that is silence throughout is kept whole (nothing to select)."""
    if top_db <= 0 or audio.size == 0:
        return audio
    import librosa

    trimmed, _ = librosa.effects.trim(audio, top_db=top_db)
    return np.ascontiguousarray(trimmed) if trimmed.size else audio
