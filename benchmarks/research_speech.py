"""The research speech set (issue 28): synthetic English speech with power for comparisons.

    python -m benchmarks.research_speech --out /tmp/research-speech [--seed 2028] [--train 2400]

An ``audiofolder`` with ``train`` / ``validation`` / ``test`` splits (OGG Vorbis, 16 kHz mono:
small enough to carry to the GPU machine; the import converts to FLAC like any upload) and
``metadata.csv`` (file_name, transcription, voice, engine) per split. What a reviewer asks of
a test set, and how it is met:

- **Held-out speakers**: the test split's voices are never in train or validation: espeak-ng
  accent+variant pairs (assets/demo/make_demo.py's held-out list) and Festival's ``ked``
  diphone voice; train uses other espeak-ng pairs and Festival's ``kal`` and ``slt`` (HTS).
- **Held-out sentences**: every sentence is drawn once; no test sentence is in train or
  validation (the same closed vocabulary, new combinations).
- **Two synthesis engines** (espeak-ng formant synthesis; Festival diphone and HTS voices),
  speed (espeak-ng 130-210 words/min; Festival ``Duration_Stretch`` 0.8-1.25), pitch, white or
  pink noise at 8-30 dB SNR on 70 % of clips and 35-45 dB on the rest, and leading/trailing
  silence of 0.05-1.2 s (so that silence trimming has something to find).

MBROLA voices are not packaged for English in this Debian (``apt-cache search mbrola`` lists
none), hence Festival as the second engine. Needs ``espeak-ng`` and ``festival`` with
``festvox-kallpc16k``, ``festvox-kdlpc16k`` (ked) and ``festvox-us-slt-hts`` (apt-get). Every
random choice comes from one seeded generator, so a rerun writes the same clips.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import subprocess
import tempfile
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

# The demo's synthesis helpers and vocabulary live in assets/demo/make_demo.py (a script, not a
# package): loaded from there rather than copied, so both sets are made the same way.
_spec = importlib.util.spec_from_file_location(
    "make_demo", Path(__file__).resolve().parents[1] / "assets" / "demo" / "make_demo.py")
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)

SR = demo.SR
SPLITS = {"train": 2400, "validation": 300, "test": 600}
ESPEAK_TRAIN = demo.FAST_TRAIN_VOICES + ["en-gb-x-gbclan", "en-us+m1", "en-gb+m4", "en-029+f1"]
ESPEAK_HELDOUT = demo.FAST_HELDOUT_VOICES
FESTIVAL_TRAIN = ["kal_diphone", "cmu_us_slt_arctic_hts"]
FESTIVAL_HELDOUT = ["ked_diphone"]
FESTIVAL_SHARE = 0.35  # of each split's clips
SECONDS = (0.8, 8.0)


def voices_for(split: str) -> tuple[list[str], list[str]]:
    """(espeak-ng voices, Festival voices) of a split: test's are held out."""
    if split == "test":
        return ESPEAK_HELDOUT, FESTIVAL_HELDOUT
    return ESPEAK_TRAIN, FESTIVAL_TRAIN


def festival(text: str, voice: str, stretch: float, tmpdir: str) -> tuple[np.ndarray, int]:
    wav = Path(tmpdir) / "festival.wav"
    subprocess.run(["text2wave", "-o", str(wav), "-eval", f"(voice_{voice})",
                    "-eval", f"(Parameter.set 'Duration_Stretch {stretch:.3f})"],
                   input=text.encode(), check=True, capture_output=True)
    audio, rate = sf.read(wav, dtype="float32")
    return audio, rate


def degrade(speech: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Silence before and after (0.05-1.2 s), noise (white or pink; most clips 8-30 dB SNR,
    the rest nearly clean), peak-normalised to -3 dBFS."""
    lead, tail = (int(rng.uniform(0.05, 1.2) * SR) for _ in range(2))
    audio = np.concatenate([np.zeros(lead), speech, np.zeros(tail)])
    snr_db = rng.uniform(8.0, 30.0) if rng.random() < 0.7 else rng.uniform(35.0, 45.0)
    noise = rng.standard_normal(len(audio)) if rng.random() < 0.5 else demo.pink_noise(len(audio), rng)
    audio = audio + noise * np.sqrt(np.mean(speech ** 2)) / 10 ** (snr_db / 20)
    return (audio * 10 ** (-3 / 20) / np.max(np.abs(audio))).astype(np.float32)


def make_clip(text: str, split: str, rng: np.random.Generator, tmpdir: str) -> tuple[np.ndarray, str, str]:
    espeak_voices, festival_voices = voices_for(split)
    if rng.random() < FESTIVAL_SHARE:
        voice, engine = festival_voices[rng.integers(len(festival_voices))], "festival"
        raw, rate = festival(text, voice, float(rng.uniform(0.8, 1.25)), tmpdir)
    else:
        voice, engine = espeak_voices[rng.integers(len(espeak_voices))], "espeak-ng"
        raw, rate = demo.synthesize(text, voice, int(rng.integers(130, 211)), int(rng.integers(20, 81)), tmpdir)
    trimmed, _ = librosa.effects.trim(raw, top_db=35)
    speech = librosa.resample(trimmed.astype(np.float64), orig_sr=rate, target_sr=SR)
    audio = degrade(speech, rng)
    if not SECONDS[0] <= len(audio) / SR <= SECONDS[1]:
        raise ValueError(f"{text!r} ({engine} {voice}) is {len(audio) / SR:.2f} s, outside {SECONDS}")
    return audio, voice, engine


def build(out: Path, seed: int = 2028, splits: dict[str, int] | None = None,
          progress: bool = True) -> dict[str, dict]:
    """Write the set under ``out`` (replacing its split folders); returns per-split counts,
    seconds and voices."""
    from tqdm import tqdm

    splits = splits or SPLITS
    rng = np.random.default_rng(seed)
    taken: set[str] = set()
    summary = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        for split, count in splits.items():
            folder = out / split
            folder.mkdir(parents=True, exist_ok=True)
            rows, seconds, voices = [], 0.0, set()
            for i, text in enumerate(tqdm(demo.fast_sentences(rng, count, taken), desc=split,
                                          disable=not progress), 1):
                audio, voice, engine = make_clip(text, split, rng, tmpdir)
                name = f"{i:05d}.ogg"
                sf.write(folder / name, audio, SR, format="OGG", subtype="VORBIS")
                rows.append((name, text, voice, engine))
                seconds += len(audio) / SR
                voices.add(f"{engine}:{voice}")
            with open(folder / "metadata.csv", "w", newline="") as handle:
                csv.writer(handle, lineterminator="\n").writerows(
                    [("file_name", "transcription", "voice", "engine")] + rows)
            summary[split] = {"clips": len(rows), "seconds": round(seconds, 1), "voices": sorted(voices)}
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=2028)
    for split, count in SPLITS.items():
        parser.add_argument(f"--{split}", type=int, default=count, help=f"clips in {split} ({count})")
    args = parser.parse_args(argv)
    summary = build(args.out, args.seed, {s: getattr(args, s) for s in SPLITS})
    for split, facts in summary.items():
        print(f"{split}: {facts['clips']} clips, {facts['seconds'] / 60:.1f} min, "
              f"{len(facts['voices'])} voices")


if __name__ == "__main__":
    main()
