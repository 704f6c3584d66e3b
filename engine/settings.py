"""Settings dataclasses: defaults, help strings, validation and ``key=value`` parsing.

Every settings field carries ``metadata={"help": ...}`` and optionally ``"choices"``,
``"min"`` / ``"max"``. The Training page builds its form from these fields and the command line
parses ``--set key=value`` with the same types, so both stay in step with the code.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from engine.errors import SettingsError


def setting(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field with a default and a help text (plus ``choices``, ``min``, ``max``)."""
    return dataclasses.field(default=default, metadata={"help": help, **extra})


def describe(settings_cls: type) -> list[dict]:
    """One dict per field: name, type name, default, help, choices, min, max."""
    hints = typing.get_type_hints(settings_cls)
    return [
        {
            "name": f.name,
            "type": hints[f.name].__name__,
            "default": f.default,
            "help": f.metadata.get("help", ""),
            "choices": f.metadata.get("choices"),
            "min": f.metadata.get("min"),
            "max": f.metadata.get("max"),
        }
        for f in dataclasses.fields(settings_cls)
    ]


def build(settings_cls: type, values: dict[str, Any] | None = None, *, section: str = "") -> Any:
    """Make ``settings_cls`` from ``values`` (strings are converted), validating every field."""
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(settings_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SettingsError(
            f"unknown {section + ' ' if section else ''}setting {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(known)) or 'none'}")
    hints = typing.get_type_hints(settings_cls)
    converted = {name: _convert(name, hints[name], value) for name, value in values.items()}
    instance = settings_cls(**converted)
    validate(instance)
    return instance


# Integers a JSON reader in any language reads exactly (and SQLite stores): 2**53.
LARGEST_INT = 2**53


def validate(instance: Any) -> None:
    """Check choices and bounds of every field, then the class's own ``validate()`` if any.

    Non-finite numbers are refused for every field of every settings class: NaN passes any
    ``<`` / ``>`` bound, and settings are stored as JSON, where NaN and Infinity are not valid
    (SQLite's json_extract refuses such rows)."""
    for f in dataclasses.fields(instance):
        problem = field_problem(f.name, getattr(instance, f.name), f.metadata)
        if problem:
            raise SettingsError(problem)
    check = getattr(instance, "validate", None)
    if callable(check):
        check()


def check(instance: Any) -> None:
    """``validate`` plus the type of every field: what ``build`` makes sure of, for an object
    made some other way (``RunSettings`` checks its parts with this on construction)."""
    hints = typing.get_type_hints(type(instance))
    for f in dataclasses.fields(instance):
        value, kind = getattr(instance, f.name), hints[f.name]
        if not (kind is float and isinstance(value, int) and not isinstance(value, bool)):
            _check_type(f.name, kind, value)
    validate(instance)


def field_problem(name: str, value: Any, rules: dict) -> str | None:
    """What is wrong with one field's value under its ``choices`` / ``min`` / ``max`` (a
    ``describe()`` row or a field's metadata), naming the field; None when it is fine. The
    form checks each widget with this before Start, so it says what ``build`` would refuse."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be a finite number, got {value}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > LARGEST_INT:
        return f"{name} must be at most {rules.get('max') or LARGEST_INT}, got {value}"
    choices = rules.get("choices")
    if choices is not None and value not in choices:
        return f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}"
    low, high = rules.get("min"), rules.get("max")
    if low is not None and value < low:
        return f"{name} must be at least {low}, got {value}"
    if high is not None and value > high:
        return f"{name} must be at most {high}, got {value}"
    return None


def convert_field(settings_cls: type, name: str, value: Any) -> Any:
    """One field's ``value`` as ``build`` would take it (text converted to the field's type)
    and checked against its own choices and bounds, without the other fields: what a study's
    grid axis checks each of its values with before any cell is built (the cell's whole run
    settings are checked again then)."""
    hints = typing.get_type_hints(settings_cls)
    rules = next(f.metadata for f in dataclasses.fields(settings_cls) if f.name == name)
    converted = _convert(name, hints[name], value)
    problem = field_problem(name, converted, rules)
    if problem:
        raise SettingsError(problem)
    return converted


def as_dict(instance: Any) -> dict[str, Any]:
    return dataclasses.asdict(instance)


def parse_assignments(pairs: list[str]) -> dict[str, str]:
    """``["r=8", "learning_rate=1e-3"]`` -> ``{"r": "8", "learning_rate": "1e-3"}``."""
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"--set expects key=value, got {pair!r}")
        values[key.strip()] = value.strip()
    return values


def assignments(values: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
    """``["r=16", "learning_rate=0.0001"]`` for the values that differ from ``defaults``: the
    inverse of ``parse_assignments`` (booleans as true/false, floats exactly as repr gives)."""
    return [f"{name}={_text(value)}" for name, value in values.items()
            if name not in defaults or value != defaults[name]]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _convert(name: str, kind: Any, value: Any) -> Any:
    if isinstance(value, str) and kind is not str:
        return _parse(name, kind, value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    _check_type(name, kind, value)
    return value


def _parse(name: str, kind: Any, text: str) -> Any:
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError
        return kind(text)
    except ValueError:
        raise SettingsError(f"{name} must be a {kind.__name__}, got {text!r}") from None


def _check_type(name: str, kind: Any, value: Any) -> None:
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if not ok:
        raise SettingsError(f"{name} must be a {kind.__name__}, got {value!r}")


# ---------------------------------------------------------------------------- the app's settings
# One place for the settings of the workbench itself (not of a run): each field is read from the
# environment variable ``LIM_<NAME>`` (upper case), else from the optional TOML config file
# (``LIM_CONFIG``, default ``workbench.toml`` in the working directory), else its default.
CONFIG_FILE = "workbench.toml"


@dataclasses.dataclass(frozen=True)
class WorkbenchConfig:
    home: str = setting("data", "The data home: database, datasets, models and runs (LIM_HOME).")
    auth: str = setting("off", "on: every person signs up and logs in, and sees only their own "
                        "items and shared ones; off: one local owner, no log-in (LIM_AUTH).",
                        choices=["on", "off"])
    signup: str = setting("open", "With auth on: open: anyone who reaches the log-in page makes "
                          "an account (a class); admin: after the first account (the admin), only an "
                          "admin makes accounts, on the Account page or with `python -m engine users "
                          "add` (LIM_SIGNUP).", choices=["open", "admin"])
    session_timeout_minutes: int = setting(
        60, "Minutes without a page interaction after which a browser session is logged out "
        "(LIM_SESSION_TIMEOUT_MINUTES).", min=1, max=60 * 24 * 30)
    max_upload_mb: int = setting(
        2048, "Largest upload or archive in MB; Streamlit's server.maxUploadSize must agree "
        "(LIM_MAX_UPLOAD_MB).", min=1, max=1_000_000)
    max_unpacked_mb: int = setting(8192, "Most MB a zip may unpack to (LIM_MAX_UNPACKED_MB).",
                                   min=1, max=10_000_000)
    max_files: int = setting(200_000, "Most files in a zip (LIM_MAX_FILES).", min=1, max=100_000_000)
    # Audio packs about 1.1:1, text tables 3-10:1; a zip bomb packs 1000:1 and more.
    max_compression_ratio: int = setting(100, "Highest compression ratio of a zip, per entry and "
                                         "overall (LIM_MAX_COMPRESSION_RATIO).", min=1, max=100_000)
    import_roots: str = setting(
        "", "With auth on, the only folders (separated by ':') under which an admin may import "
        "from a path on the server; empty: nobody may, everybody uploads. Never the data home "
        "(LIM_IMPORT_ROOTS).")
    slots: str = setting(
        "auto", "How many runs one machine trains at once (LIM_SLOTS): auto (one on the CPU; on a "
        "GPU as many as fit by their memory estimates and the memory free) or a number. Every "
        "process on the machine (the app, train --wait, worker) counts against it "
        "(engine/training/slots.py; docs/studies.md).")
    device: str = setting("auto", "Where runs train: auto (a CUDA GPU when there is one), cpu, "
                          "cuda or cuda:N (LIM_DEVICE).")
    profile: str = setting("", "Device profile: defaults of new runs and, on a CUDA GPU, a memory "
                           "cap (LIM_PROFILE; `python -m engine profiles list`; auto: the Jetson "
                           "this runs on; empty or none: no profile). --profile sets it per command.")
    peak_tflops: float = setting(0.0, "Peak dense bf16 TFLOP/s that MFU divides by, for a GPU the "
                                 "workbench does not know (LIM_PEAK_TFLOPS; 0: its own table).",
                                 min=0.0, max=1e6)
    playground_cache_mb: int = setting(2048, "MB of models the Playground keeps loaded, least "
                                       "recently used first out (LIM_PLAYGROUND_CACHE_MB).",
                                       min=0, max=10_000_000)
    tracking: str = setting(
        "none", "Experiment tracking of new runs (their `tracking` setting's default): none, "
        "tensorboard, mlflow or both (LIM_TRACKING).", choices=["none", "tensorboard", "mlflow", "both"])
    distributed_timeout_min: float = setting(
        120.0, "Minutes a GPU process of a multi-GPU run waits for the others; rank 0 evaluates "
        "alone meanwhile, so this bounds an evaluation (LIM_DISTRIBUTED_TIMEOUT_MIN).",
        min=1.0, max=60 * 24 * 7)

    def validate(self) -> None:
        parse_slots(self.slots)
        if self.device not in ("auto", "cpu", "cuda") and not (
                self.device.startswith("cuda:") and self.device[5:].isdigit()):
            raise SettingsError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


SLOTS_AUTO, MAX_SLOTS = "auto", 64


def parse_slots(value: str | int) -> int | None:
    """``slots``: ``auto`` -> None (engine/training/slots.py decides per claim), else the fixed
    number of runs one machine trains at once."""
    text = str(value).strip().lower()
    if text == SLOTS_AUTO:
        return None
    number = int(text) if text.isdigit() else 0
    if not 1 <= number <= MAX_SLOTS:
        raise SettingsError(f"slots must be auto or a whole number from 1 to {MAX_SLOTS}, got {value!r}")
    return number


def load_config(environ: typing.Mapping[str, str] | None = None) -> WorkbenchConfig:
    """The workbench's settings from ``LIM_*`` variables over the config file over defaults."""
    import os
    import tomllib
    from pathlib import Path

    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = Path(environ.get("LIM_CONFIG") or CONFIG_FILE)
    if path.is_file():
        try:
            values.update(tomllib.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise SettingsError(f"the config file {path} cannot be read: {error}") from None
    elif environ.get("LIM_CONFIG"):
        raise SettingsError(f"LIM_CONFIG names {path}, which is not a file")
    for field in dataclasses.fields(WorkbenchConfig):
        variable = f"LIM_{field.name.upper()}"
        value = environ.get(variable, "").strip()
        if value:
            try:  # each variable alone first, so that an error names the variable to fix
                build(WorkbenchConfig, {field.name: value})
            except SettingsError as error:
                raise SettingsError(f"{variable}={value!r}: {error}; fix it or unset {variable}") from None
            values[field.name] = value
    return build(WorkbenchConfig, values, section="workbench")
