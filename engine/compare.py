"""What the Compare page shows about each run: results, costs and settings, as flat rows; and
which runs it offers (filters, the default selection).

``comparison_row(run, adapter_dir, means)`` gives one flat dict per run (the CSV export writes
exactly these; ``Workbench.compare_runs`` reads the inputs); ``differing_settings(rows)`` names
the settings that differ between the chosen runs. ``filter_runs(runs, filters)`` narrows
``Workbench.list_runs`` to the runs a user's filters allow, ``kept_selection`` carries a
selection across filter changes. No streamlit here: the page and the tests
share this code.
"""

from __future__ import annotations

import re
from pathlib import Path

from engine import settings as settings_lib
from engine.errors import SettingsError
from engine import names
from engine.training.settings import stored_training
from engine.metrics import METRIC_DIRECTION

# Row column -> the per-step metric (engine/names.py; logged by engine/training/monitoring.py)
# whose mean it shows.
MEAN_RATES = {"samples_per_second": names.SAMPLES_PER_S,
              "audio_hours_per_hour": names.AUDIO_HOURS_PER_HOUR,
              "achieved_tflops": names.TFLOPS, "mfu_percent": names.MFU_PERCENT}
# Every metric whose mean a row needs (the machine metrics tell where the run trained).
MEANS_READ = [*MEAN_RATES.values(), names.GPU_MEMORY_MB, names.CPU_PERCENT]
_TAG = re.compile(r"^[\w][\w .:+-]{0,39}$")


def clean_tags(tags: list[str] | str) -> list[str]:
    """Stripped, de-duplicated tags in the order given; refuses odd characters."""
    items = tags.split(",") if isinstance(tags, str) else list(tags)
    cleaned: list[str] = []
    for tag in (str(item).strip() for item in items):
        if not tag:
            continue
        if not _TAG.match(tag):
            raise SettingsError(f"tag {tag!r}: use up to 40 letters, digits, spaces or . : + - _")
        if tag not in cleaned:
            cleaned.append(tag)
    return cleaned


def folder_bytes(folder: Path | None) -> int | None:
    """Bytes on disk of every regular file under ``folder`` (None when there is none)."""
    if folder is None or not folder.is_dir():
        return None
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def rates(run: dict, means: dict[str, float]) -> dict:
    """Mean throughput and utilisation over the run's steps (``means`` of ``MEANS_READ``), and
    where it trained ("GPU", "CPU", or None when it logged no machine metrics). Samples/s
    falls back to steps x batch size x gradient accumulation / wall time for a run that did
    not log it; utilisation stays None where it was not logged (a CPU, an unknown GPU: no
    peak to divide by)."""
    gpu, cpu = names.GPU_MEMORY_MB, names.CPU_PERCENT  # every run logs CPU %, GPU runs both
    row = {column: means.get(name) for column, name in MEAN_RATES.items()}
    row["device"] = "GPU" if gpu in means else "CPU" if cpu in means else None
    if row["samples_per_second"] is None:
        row["samples_per_second"] = samples_per_second_from_steps(run)
    return row


def samples_per_second_from_steps(run: dict) -> float | None:
    if not run["step"] or not run["wall_time_s"]:
        return None
    training = stored_training(run)
    samples = run["step"] * training.per_device_train_batch_size * training.gradient_accumulation_steps
    return samples / run["wall_time_s"]


def primary_metric(run: dict) -> tuple[str | None, float | None]:
    """The run's headline validation metric: WER for speech, accuracy for labels."""
    metrics = run["metrics"] or {}
    for name in ("wer", "accuracy", *METRIC_DIRECTION):
        if metrics.get(name) is not None:
            return name, float(metrics[name])
    return None, None


def comparison_row(run: dict, adapter_dir: Path | None, means: dict[str, float]) -> dict:
    """``run``'s record as one flat row; ``adapter_dir``: its adapter folder (None when it has
    none), ``means``: the run's per-step means of the metrics in ``MEANS_READ``."""
    metric_name, metric_value = primary_metric(run)
    row = {
        "run": run["id"], "status": run["status"], "method": run["method"],
        "model": run["model_name"], "dataset": run["dataset_name"],
        "dataset_version": run["dataset_version"], "tags": ", ".join(run.get("tags") or []),
        "metric": metric_name, "final_metric": metric_value,
        **{f"final_{name}": value for name, value in (run["metrics"] or {}).items()},
        "trainable_params": run["trainable_params"], "total_params": run["total_params"],
        "peak_memory_mb": run["peak_memory_mb"], "adapter_bytes": folder_bytes(adapter_dir),
        **rates(run, means), "wall_time_s": run["wall_time_s"], "steps": run["step"],
    }
    # Training settings with today's defaults for keys an older run did not store; the method's
    # as stored (its plugin may no longer be installed, and Compare still shows the run).
    settings = {"method": (run["settings"] or {}).get("method") or {},
                "training": settings_lib.as_dict(stored_training(run))}
    for section, values in settings.items():
        for name, value in values.items():
            row[f"{section}.{name}"] = value
    return row


def setting_columns(rows: list[dict]) -> list[str]:
    return sorted({key for row in rows for key in row if key.startswith(("method.", "training."))})


def differing_settings(rows: list[dict]) -> list[str]:
    """Settings whose value is not the same in every row (a missing value counts as one)."""
    return [column for column in setting_columns(rows)
            if len({repr(row.get(column)) for row in rows}) > 1]


# ---------------------------------------------------------------------- which runs to compare
# Filter -> the run record's field it matches ("tag" matches any of a run's tags).
FILTER_FIELDS = {"dataset": "dataset_name", "model": "model_name", "method": "method",
                 "status": "status"}


def comparable(runs: list[dict]) -> list[dict]:
    """The runs that have something to compare: at least one step trained."""
    return [run for run in runs if run["step"]]


def filter_options(runs: list[dict]) -> dict[str, list[str]]:
    """Every filter's choices among ``runs``, sorted: ``{"dataset": [...], ..., "tag": [...]}``."""
    options = {name: sorted({run[field] for run in runs if run[field]})
               for name, field in FILTER_FIELDS.items()}
    options["tag"] = sorted({tag for run in runs for tag in run.get("tags") or []})
    return options


def filter_runs(runs: list[dict], filters: dict[str, list]) -> list[dict]:
    """The runs every non-empty filter allows (an empty filter allows all), in their order."""
    unknown = set(filters) - {*FILTER_FIELDS, "tag"}
    if unknown:
        raise ValueError(f"unknown filter {sorted(unknown)}; known: {[*FILTER_FIELDS, 'tag']}")

    def allowed(run: dict) -> bool:
        for name, wanted in filters.items():
            if not wanted:
                continue
            if name == "tag":
                if not set(wanted) & set(run.get("tags") or []):
                    return False
            elif run[FILTER_FIELDS[name]] not in wanted:
                return False
        return True

    return [run for run in runs if allowed(run)]


def default_selection(candidates: list[dict]) -> list[int]:
    """The runs chosen before the user chooses: the first three completed, else the first two."""
    return [run["id"] for run in candidates if run["status"] == "completed"][:3] or \
        [run["id"] for run in candidates[:2]]


def kept_selection(previous: list[int] | None, candidates: list[dict]) -> list[int]:
    """The chosen runs after the filters changed: those the filters still allow, or the default
    when there was no selection yet or the filters removed every chosen run (a selection the
    user emptied stays empty)."""
    if previous is None:
        return default_selection(candidates)
    allowed = {run["id"] for run in candidates}
    kept = [run_id for run_id in previous if run_id in allowed]
    return kept if kept or not previous else default_selection(candidates)
