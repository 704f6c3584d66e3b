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
    start, end = silence_edges(audio, top_db)
    return np.ascontiguousarray(audio[start:end]) if end > start else audio


def silence_edges(audio: np.ndarray, top_db: float, frame_length: int = 2048,
                  hop_length: int = 512) -> tuple[int, int]:
    """(start, end) samples of ``audio`` between its leading and trailing silence, exactly as
    ``librosa.effects.trim`` computes them (0.11: centred RMS frames, zero-padded, in dB below the
    loudest frame; tests/engine/test_research_methods.py compares the two). Written out because
    librosa's import pulls numba, llvmlite and scikit-learn (~60 MB) for these few lines, which
    the GPU kit and the Jetson image would otherwise have to carry."""
    padded = np.pad(np.asarray(audio, dtype=np.float64), frame_length // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame_length)[::hop_length]
    rms = np.sqrt(np.mean(frames**2, axis=-1))
    amin = 1e-10  # librosa's amplitude_to_db: amin 1e-5, in power
    db = 10 * np.log10(np.maximum(amin, rms**2)) - 10 * np.log10(max(amin, float(rms.max()) ** 2))
    loud = np.flatnonzero(db > -top_db)
    if loud.size == 0:
        return 0, 0
    return int(loud[0] * hop_length), min(audio.shape[-1], int((loud[-1] + 1) * hop_length))
