"""Build the small synthetic demo datasets shipped with LessIsMore Workbench.

Makes three datasets next to this script (Hugging Face ``audiofolder`` /
CSV layout, ``train`` and ``validation`` splits):

* ``demo-speech/``   speech recognition: short English sentences from a closed
  vocabulary, FLAC 16 kHz mono 16-bit, ``metadata.csv`` = file_name,transcription
* ``demo-commands/`` audio classification: ten command words,
  ``metadata.csv`` = file_name,label
* ``demo-text/``     text classification: ``train.csv`` / ``validation.csv``
  with columns text,label (positive / negative)

All audio is synthesised with the espeak-ng binary (no third-party recordings),
trimmed, resampled to 16 kHz with librosa, padded with a little silence, mixed
with seeded white/pink noise (SNR 15-30 dB) and peak-normalised to -3 dBFS.
Every random choice comes from one seeded numpy Generator, so reruns write
identical files.  Rerun with (requires ``espeak-ng`` on PATH)::

    python assets/demo/make_demo.py [--out FOLDER] [--seed 1234]

The three dataset folders in FOLDER are deleted and rewritten; nothing else is
touched.
"""
import argparse
import csv
import itertools
import shutil
import subprocess
import tempfile
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

SR = 16000
DATASETS = ("demo-speech", "demo-commands", "demo-text")
# Validation voices are accent+variant pairs never used for training.  British
# English with a variant is spelled "en+f2": espeak-ng 1.51 silently ignores
# the variant in "en-gb+f2" ("en" is the same voice as "en-gb").
TRAIN_VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc",
                "en-us+f3", "en+f2", "en-us+m3", "en-gb-x-rp+f4", "en-029+m1", "en-gb-x-gbcwmd+f5"]
VALID_VOICES = ["en-us+f2", "en+m3", "en-gb-scotland+f3", "en-029+f4", "en-gb-x-gbclan+m1",
                "en-us-nyc+f5"]
SENTENCES = [
    "turn the light on", "turn the light off", "turn the fan on", "turn the fan off",
    "turn the heater on", "turn the radio off", "open the red door", "open the blue door",
    "close the red door", "close the front door", "open the kitchen window",
    "close the kitchen window", "open the small window", "close the big window",
    "play some music now", "play a song", "play some music please", "stop the music",
    "stop the music now", "stop the alarm", "set an alarm for five",
    "set a timer for ten minutes", "set a timer for five minutes", "start the timer",
    "stop the timer", "turn the music up", "turn the music down", "turn the radio up",
    "call my mom", "call my mom now", "show me the red light", "turn the green light on",
    "turn the blue light off", "open the front door please", "close the door please",
    "play the radio", "show me the timer", "make the light green", "make the light blue",
    "turn the kitchen light on",
]
COMMANDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
SPEECH_PER_SENTENCE = (3, 1)     # (train, validation) clips per sentence
COMMAND_PER_WORD = (12, 3)       # (train, validation) clips per word
SPEECH_SECONDS = (0.5, 4.5)
COMMAND_SECONDS = (0.3, 1.5)
TEXT_PER_LABEL = (100, 25)       # (train, validation) sentences per label


def synthesize(text, voice, speed, pitch, tmpdir):
    """Run espeak-ng and return its audio as float32 at its native rate."""
    wav = Path(tmpdir) / "tts.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "-v", voice, "-s", str(speed),
                    "-p", str(pitch), text], check=True, capture_output=True)
    audio, rate = sf.read(wav, dtype="float32")
    return audio, rate


def pink_noise(n, rng):
    """Pink (1/f power) noise with unit RMS, shaped in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(len(spectrum), dtype=np.float64)
    freqs[0] = 1.0
    noise = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    return noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)


def degrade(speech, rng):
    """Pad with short random silences, add white or pink noise, peak-normalise."""
    lead, tail = (int(rng.uniform(0.03, 0.15) * SR) for _ in range(2))
    audio = np.concatenate([np.zeros(lead), speech, np.zeros(tail)])
    snr_db = rng.uniform(15.0, 30.0)
    if rng.random() < 0.5:
        noise = rng.standard_normal(len(audio))
    else:
        noise = pink_noise(len(audio), rng)
    speech_rms = np.sqrt(np.mean(speech ** 2))
    audio = audio + noise * speech_rms / 10 ** (snr_db / 20)
    return (audio * 10 ** (-3 / 20) / np.max(np.abs(audio))).astype(np.float32)


def make_clip(text, voice, rng, tmpdir, bounds):
    """Synthesise one clip with random speed/pitch; check its duration."""
    speed, pitch = int(rng.integers(130, 191)), int(rng.integers(30, 71))
    raw, rate = synthesize(text, voice, speed, pitch, tmpdir)
    trimmed, _ = librosa.effects.trim(raw, top_db=35)
    speech = librosa.resample(trimmed.astype(np.float64), orig_sr=rate, target_sr=SR)
    audio = degrade(speech, rng)
    seconds = len(audio) / SR
    if not bounds[0] <= seconds <= bounds[1]:
        raise ValueError(f"{text!r} ({voice}, {speed} wpm) is {seconds:.2f} s, "
                         f"outside {bounds}")
    return audio


def plan_split(items, per_item, voices, rng):
    """List (text, voice) pairs: per_item clips per item, voices spread evenly."""
    plan = []
    for item in items:
        order = rng.permutation(len(voices))
        plan += [(item, voices[order[k % len(voices)]]) for k in range(per_item)]
    return [plan[i] for i in rng.permutation(len(plan))]


def write_audio_set(root, items, per_item, column, bounds, rng):
    """Write one audio dataset (train + validation); return summary rows."""
    summary = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for split, n, voices in (("train", per_item[0], TRAIN_VOICES),
                                 ("validation", per_item[1], VALID_VOICES)):
            (root / split).mkdir(parents=True)
            rows, total = [], 0.0
            for i, (text, voice) in enumerate(plan_split(items, n, voices, rng), 1):
                audio = make_clip(text, voice, rng, tmpdir, bounds)
                name = f"{i:04d}.flac"
                sf.write(root / split / name, audio, SR, subtype="PCM_16", format="FLAC",
                         compression_level=1.0)
                rows.append((name, text))
                total += len(audio) / SR
            with open(root / split / "metadata.csv", "w", newline="") as fh:
                csv.writer(fh, lineterminator="\n").writerows([("file_name", column)] + rows)
            summary.append((f"{root.name}/{split}", len(rows), total))
    return summary


TEXT_SUBJECTS = ["lecture", "audio", "movie", "meal", "service", "hotel", "concert", "book",
                 "video", "teacher", "coffee", "room", "show", "game", "trip", "app"]
TEXT_WORDS = {
    "positive": ["great", "excellent", "wonderful", "amazing", "lovely", "fantastic",
                 "brilliant", "good", "pleasant", "superb"],
    "negative": ["awful", "terrible", "horrible", "boring", "bad", "dreadful", "poor",
                 "disappointing", "annoying", "useless"],
}
TEXT_TEMPLATES = ["the {s} was {w}", "what a {w} {s}", "i thought the {s} was {w}",
                  "this {s} is {w}", "honestly the {s} felt {w}", "a really {w} {s}"]


def write_text_set(root, rng):
    """Write text-classification CSVs from templates; no text in both splits."""
    root.mkdir(parents=True)
    splits = {"train": [], "validation": []}
    for label, words in TEXT_WORDS.items():
        texts = sorted({t.format(s=s, w=w) for t, s, w in
                        itertools.product(TEXT_TEMPLATES, TEXT_SUBJECTS, words)})
        picked = [texts[i] for i in rng.permutation(len(texts))[:sum(TEXT_PER_LABEL)]]
        splits["train"] += [(t, label) for t in picked[:TEXT_PER_LABEL[0]]]
        splits["validation"] += [(t, label) for t in picked[TEXT_PER_LABEL[0]:]]
    summary = []
    for split, rows in splits.items():
        rows = [rows[i] for i in rng.permutation(len(rows))]
        with open(root / f"{split}.csv", "w", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerows([("text", "label")] + rows)
        summary.append((f"{root.name}/{split}", len(rows), None))
    return summary


def folder_size(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="folder to write the three datasets into")
    parser.add_argument("--seed", type=int, default=1234, help="random seed")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        parser.error("espeak-ng not found on PATH (apt-get install espeak-ng)")
    for name in DATASETS:
        shutil.rmtree(args.out / name, ignore_errors=True)
    rng = np.random.default_rng(args.seed)
    summary = write_audio_set(args.out / "demo-speech", SENTENCES, SPEECH_PER_SENTENCE,
                              "transcription", SPEECH_SECONDS, rng)
    summary += write_audio_set(args.out / "demo-commands", COMMANDS, COMMAND_PER_WORD,
                               "label", COMMAND_SECONDS, rng)
    summary += write_text_set(args.out / "demo-text", rng)
    for split, count, seconds in summary:
        extra = f"  {seconds:7.1f} s" if seconds is not None else ""
        print(f"{split:26s} {count:4d} rows{extra}")
    for name in DATASETS:
        print(f"{name:26s} {folder_size(args.out / name) / 1e6:6.2f} MB on disk")


if __name__ == "__main__":
    main()
