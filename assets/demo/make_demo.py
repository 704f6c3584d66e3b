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
DATASETS = ("demo-speech", "demo-commands", "demo-text", "demo-voices")
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


def degrade(speech, rng, snr_db=(15.0, 30.0)):
    """Pad with short random silences, add white or pink noise, peak-normalise."""
    lead, tail = (int(rng.uniform(0.03, 0.15) * SR) for _ in range(2))
    audio = np.concatenate([np.zeros(lead), speech, np.zeros(tail)])
    snr_db = rng.uniform(*snr_db)
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


# ---------------------------------------------------------------------- demo-voices
# Fast, accented, noisy speech for the real whisper-base: open-ended sentences from templates
# (no numbers: Whisper writes digits, and formatting is not what this set is about), spoken at 140-200 words per
# minute over noise at 14-26 dB SNR. Test sentences are never in train (new combinations of the
# same words) and test/validation voices never speak in train, so the test split measures
# what a fine-tuned model learned about the voices and the pace, not memorised sentences.
FAST_NAMES = ["diana", "marco", "priya", "oliver", "fatima", "lucas", "amelia", "kenji",
              "sofia", "daniel", "grace", "omar", "hannah", "victor", "chloe", "samuel",
              "nadia", "peter", "laura", "felix"]
FAST_JOBS = ["plumber", "teacher", "nurse", "pilot", "baker", "farmer", "lawyer", "painter",
             "doctor", "chef", "driver", "singer", "banker", "dentist", "gardener", "writer"]
FAST_PLACES = ["london", "paris", "boston", "madrid", "tokyo", "berlin", "chicago", "dublin",
               "lisbon", "vienna", "toronto", "sydney", "cairo", "oslo", "rome", "denver"]
FAST_THINGS = ["apples", "shoes", "books", "candles", "flowers", "tickets", "plates", "lamps",
               "blankets", "pencils", "cookies", "bottles"]
FAST_COUNTS = ["some", "many", "several", "a few", "no", "enough", "extra", "new"]
FAST_DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
FAST_ANIMALS = ["cat", "dog", "horse", "rabbit", "parrot", "goat", "fox", "turtle"]
FAST_ADJECTIVES = ["old", "lazy", "tiny", "happy", "noisy", "clever", "hungry", "gentle"]
FAST_SPOTS = ["table", "bridge", "window", "stairs", "tree", "sofa", "fence", "wagon"]
FAST_TEMPLATES = [
    "{name} works as a {job} in {place}",
    "{name} bought {count} {things} on {day}",
    "the {adjective} {animal} sleeps under the {spot}",
    "{name} will visit {place} next {day}",
    "my friend {name} is a {adjective} {job}",
    "we saw {count} {animal}s near the {spot}",
    "{name} sold the {things} to a {job} from {place}",
    "on {day} the {job} fixed the {spot}",
]
FAST_TRAIN_VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc",
                     "en-us+f3", "en+f2", "en-us+m3", "en-gb-x-rp+f4", "en-029+m1",
                     "en-gb-x-gbcwmd+f5", "en-us+m7", "en+f1"]
FAST_HELDOUT_VOICES = ["en-us+f2", "en+m3", "en-gb-scotland+f3", "en-029+f4",
                       "en-gb-x-gbclan+m1", "en-us-nyc+f5", "en-gb-x-rp+m5", "en-us+f4"]
FAST_SPLITS = {"train": 320, "validation": 40, "test": 80}
FAST_SPEED = (140, 201)          # words per minute
FAST_SNR_DB = (14.0, 26.0)
FAST_SECONDS = (0.8, 4.5)


def fast_sentences(rng, count, taken):
    """``count`` distinct sentences from the templates, none of them in ``taken``."""
    sentences = []
    while len(sentences) < count:
        template = FAST_TEMPLATES[rng.integers(len(FAST_TEMPLATES))]
        pick = lambda words: words[rng.integers(len(words))]  # noqa: E731
        text = template.format(name=pick(FAST_NAMES), job=pick(FAST_JOBS), place=pick(FAST_PLACES),
                               count=pick(FAST_COUNTS), things=pick(FAST_THINGS),
                               day=pick(FAST_DAYS), animal=pick(FAST_ANIMALS),
                               adjective=pick(FAST_ADJECTIVES), spot=pick(FAST_SPOTS))
        if text not in taken:
            taken.add(text)
            sentences.append(text)
    return sentences


def write_voices(root, rng):
    """demo-voices: train / validation / test, OGG Vorbis (small in git; the import
    converts to 16 kHz FLAC like any upload)."""
    summary, taken = [], set()
    with tempfile.TemporaryDirectory() as tmpdir:
        for split, count in FAST_SPLITS.items():
            voices = FAST_TRAIN_VOICES if split == "train" else FAST_HELDOUT_VOICES
            (root / split).mkdir(parents=True)
            rows, total = [], 0.0
            for i, text in enumerate(fast_sentences(rng, count, taken), 1):
                voice = voices[rng.integers(len(voices))]
                speed, pitch = int(rng.integers(*FAST_SPEED)), int(rng.integers(20, 81))
                raw, rate = synthesize(text, voice, speed, pitch, tmpdir)
                trimmed, _ = librosa.effects.trim(raw, top_db=35)
                speech = librosa.resample(trimmed.astype(np.float64), orig_sr=rate, target_sr=SR)
                audio = degrade(speech, rng, snr_db=FAST_SNR_DB)
                seconds = len(audio) / SR
                if not FAST_SECONDS[0] <= seconds <= FAST_SECONDS[1]:
                    raise ValueError(f"{text!r} ({voice}, {speed} wpm) is {seconds:.2f} s")
                name = f"{i:04d}.ogg"
                sf.write(root / split / name, audio, SR, format="OGG", subtype="VORBIS")
                rows.append((name, text))
                total += seconds
            with open(root / split / "metadata.csv", "w", newline="") as fh:
                csv.writer(fh, lineterminator="\n").writerows([("file_name", "transcription")] + rows)
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
    parser.add_argument("--only", choices=DATASETS, action="append",
                        help="rewrite only this dataset (repeatable); default: all")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        parser.error("espeak-ng not found on PATH (apt-get install espeak-ng)")
    chosen = args.only or list(DATASETS)
    for name in chosen:
        shutil.rmtree(args.out / name, ignore_errors=True)
    summary = []
    if set(chosen) & {"demo-speech", "demo-commands", "demo-text"}:
        # The first three sets share one generator (their files depend on each other's draws).
        rng = np.random.default_rng(args.seed)
        speech = write_audio_set(args.out / "demo-speech", SENTENCES, SPEECH_PER_SENTENCE,
                                 "transcription", SPEECH_SECONDS, rng)
        commands = write_audio_set(args.out / "demo-commands", COMMANDS, COMMAND_PER_WORD,
                                   "label", COMMAND_SECONDS, rng)
        text = write_text_set(args.out / "demo-text", rng)
        summary += speech + commands + text
    if "demo-voices" in chosen:
        summary += write_voices(args.out / "demo-voices",
                                     np.random.default_rng([args.seed, 2]))
    for split, count, seconds in summary:
        extra = f"  {seconds:7.1f} s" if seconds is not None else ""
        print(f"{split:26s} {count:4d} rows{extra}")
    for name in chosen:
        print(f"{name:26s} {folder_size(args.out / name) / 1e6:6.2f} MB on disk")


if __name__ == "__main__":
    main()
