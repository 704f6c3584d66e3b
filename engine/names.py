"""Names the engine, the pages and the stored runs share, defined once (as peft's
utils/constants.py): the metrics a run logs, the files of its folder, and the audio padding
choices. Plain strings only: this module imports nothing, so the views import it instead of
the modules that write these names (engine/training/monitoring.py needs torch and psutil).

A run's metric is ``<group>/<name>``: ``train/*`` per optimizer step, ``system/*`` the machine
at that step, ``eval/*`` a validation score (``eval/wer``), ``test/*`` a test-split score; any
other group is a method's own (``Method.step_metrics``: mma's ``router/*``).
"""

from __future__ import annotations

# ---------------------------------------------------------------- metric groups
TRAIN_PREFIX = "train/"
SYSTEM_PREFIX = "system/"
EVAL_PREFIX = "eval/"  # validation scores: eval/ + a TaskModel.score key (wer, accuracy, loss, ...)
TEST_PREFIX = "test/"  # test-split scores, the same keys
# The metric prefix of each split the recipe scores.
SPLIT_PREFIXES = {"validation": EVAL_PREFIX, "test": TEST_PREFIX}
# Every metric the recipe logs itself starts with one of these (training, machine, validation
# and test scores); any other name is a method's own (``Method.step_metrics``: mma's router/*).
RECIPE_METRIC_PREFIXES = (TRAIN_PREFIX, SYSTEM_PREFIX, EVAL_PREFIX, TEST_PREFIX)

# ---------------------------------------------------------------- per optimizer step
LOSS = "train/loss"
LEARNING_RATE = "train/learning_rate"
GRAD_NORM = "train/grad_norm"  # before clipping
# Per-step throughput metrics (names the Training and Compare pages read).
SAMPLES_PER_S = "train/samples_per_s"
AUDIO_SECONDS_PER_S = "train/audio_seconds_per_s"
AUDIO_HOURS_PER_HOUR = "train/audio_hours_per_hour"  # the same ratio, as speech people say it
TFLOPS = "train/tflops"  # achieved model TFLOP/s
MFU_PERCENT = "train/mfu_percent"  # model-FLOPs utilisation: achieved / the device's peak, in %
# The machine at each step (engine/training/monitoring.py), and the run's own memory
# (engine.memory.MemoryMeter).
CPU_PERCENT, GPU_MEMORY_MB = "system/cpu_percent", "system/gpu_memory_mb"  # every run / GPU runs
RAM_USED_MB = "system/ram_used_mb"
MEMORY_MB = "system/memory_mb"

# ---------------------------------------------------------------- a run's folder (runs/<id>/)
ADAPTER_DIR = "adapter"  # the adapter (a PEFT folder) or, for full fine-tuning, the model
RUN_META_FILE = "workbench.json"  # beside the adapter: what it was trained from (RunMeta)
EVALUATION_FILE = "evaluation.json"  # the final evaluation: split, metrics, confusion matrix
PREDICTIONS_FILE = "predictions.jsonl"  # its rows, reference vs prediction, worst first
# What a method decided from data (MethodContext.report), as JSON in runs/<id>/ and its adapter/.
METHOD_REPORT = "method_report.json"
PROVENANCE_FILE = "provenance.json"  # what the run started with (engine/training/provenance.py)
CHECKPOINTS_DIR = "checkpoints"  # checkpoint-<step>/ folders (engine/training/checkpoint.py)

# ---------------------------------------------------------------- Whisper's input window
WHOLE_WINDOW = "30s"  # every clip padded to the model's whole window, as Whisper was pretrained
LONGEST = "longest"  # each batch padded to its longest clip; the encoder runs on that window
AUDIO_PADDINGS = (WHOLE_WINDOW, LONGEST)  # the ``audio_padding`` choices
