"""Forms generated from settings dataclasses (engine.settings.describe).

Widgets carry no ``min_value`` / ``max_value``: a browser refuses an out-of-range entry by
itself (a red outline, no message) and keeps sending the previous value, so Start would
submit something other than what the form shows. Every entry goes through instead and is
checked here with the engine's own rules (``engine.settings.field_problem``); a problem is
said under its field, naming it, and the caller blocks Start.

Labels are plain language; each field's help ends with the setting's own name (the
TrainingArguments / peft name where it has one), which ``--set name=value`` takes too.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from engine.settings import field_problem

PLAIN_LABELS = {
    # training (transformers' TrainingArguments names where they exist)
    "num_train_epochs": "Epochs", "max_steps": "Steps", "per_device_train_batch_size": "Batch size",
    "per_device_eval_batch_size": "Evaluation batch size",
    "gradient_accumulation_steps": "Batches per optimizer step", "learning_rate": "Learning rate",
    "lr_scheduler_type": "Learning-rate schedule", "warmup_steps": "Warmup steps",
    "weight_decay": "Weight decay", "max_grad_norm": "Clip gradients at norm", "seed": "Random seed",
    "eval_steps": "Validate every N steps", "eval_on_start": "Score the model before training",
    "early_stopping_patience": "Stop early after N flat validations",
    "save_steps": "Checkpoint every N steps", "save_total_limit": "Checkpoints to keep",
    "precision": "Number precision", "gradient_checkpointing": "Recompute activations (less memory)",
    "memory_budget_gb": "Memory budget (GiB)", "compile_layers": "Compile layers",
    "cuda_graphs": "CUDA graphs", "feature_cache_mb": "Feature cache (MiB)",
    "spec_augment": "SpecAugment (mask bits of audio)", "freq_mask_param": "SpecAugment: widest frequency mask",
    "time_mask_param": "SpecAugment: longest time mask", "max_time_minutes": "Time limit (minutes)",
    "generation_max_length": "Longest transcript (tokens)", "generation_cache": "Decoder cache at evaluation",
    "full_window_every": "Whole-window batch every N batches", "language": "Spoken language",
    "task": "Whisper task", "audio_padding": "Audio padding",
    "tracking": "Experiment tracking (TensorBoard, MLflow)",
    # methods (peft's names)
    "r": "Rank", "lora_alpha": "Scale (alpha)", "lora_dropout": "Adapter dropout",
    "target_modules": "Layers to adapt", "use_rslora": "Rank-stabilised scaling", "use_dora": "DoRA",
    "init_lora_weights": "Adapter initialisation", "kernels": "LoRA kernels",
    "bnb_4bit_quant_type": "4-bit number type", "bnb_4bit_use_double_quant": "Quantise the scales too",
    "bnb_4bit_compute_dtype": "4-bit compute type", "upcast_frozen": "Upcast frozen weights",
    "init_r": "Starting rank", "target_r": "Average final rank", "tinit": "Steps before pruning ranks",
    "tfinal": "Final steps with fixed ranks", "deltaT": "Steps between rank updates",
    "orth_reg_weight": "Orthogonality weight", "feedforward_modules": "Feed-forward layers",
    "llm_int8_threshold": "8-bit outlier threshold",
}
# Names users know from elsewhere: the help says where.
TRAINING_ARGUMENTS = {
    "num_train_epochs", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
    "gradient_accumulation_steps", "learning_rate", "lr_scheduler_type", "warmup_steps",
    "weight_decay", "max_grad_norm", "seed", "eval_steps", "eval_on_start", "save_steps", "save_total_limit",
    "gradient_checkpointing", "generation_max_length"}
PEFT_NAMES = {"r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora", "use_dora",
              "init_lora_weights", "init_r", "target_r", "tinit", "tfinal", "deltaT",
              "orth_reg_weight", "feedforward_modules"}


def plain_label(name: str) -> str:
    return PLAIN_LABELS.get(name) or name.replace("_", " ").capitalize()


def help_text(field: dict) -> str:
    name = field["name"]
    where = (" (as in transformers' TrainingArguments)" if name in TRAINING_ARGUMENTS else
             " (as in peft's config)" if name in PEFT_NAMES else "")
    return f"{field['help']}\n\nSetting: `{name}`{where}; on the command line `--set {name}=...`."


def field_widget(field: dict, key: str, value: Any, extra_check=None) -> tuple[Any, str | None]:
    """One widget; returns its value and what is wrong with it (said under the widget too).
    ``extra_check(value)`` may add a rule of the caller's (a message or None)."""
    value = _widget(field, key, value)
    problem = field_problem(field["name"], value, field) or (extra_check(value) if extra_check else None)
    if problem:
        problem = f"{plain_label(field['name'])}: {problem}"
        st.error(problem, icon=":material/error:")
    return value, problem


def settings_form(fields: list[dict], key_prefix: str, columns: int = 2, values: dict | None = None,
                  skip: set[str] = frozenset()) -> tuple[dict, list[str]]:
    """One widget per field but those in ``skip``, in columns; returns ``({name: value}, problems)``."""
    values = values or {}
    result, problems = {}, []
    shown = [field for field in fields if field["name"] not in skip]
    if not shown:
        st.caption("This method has no settings of its own." if not fields else "Nothing more to set.")
        return result, problems
    cols = st.columns(columns)
    for index, field in enumerate(shown):
        with cols[index % columns]:
            result[field["name"]], problem = field_widget(
                field, f"{key_prefix}.{field['name']}", values.get(field["name"], field["default"]))
        if problem:
            problems.append(problem)
    return result, problems


def bounded_number(label: str, low: float, high: float, value: float, key: str, where=None,
                   **options) -> float:
    """A number box with bounds that shows the number used. Not ``min_value``/``max_value``: the
    browser would keep a refused entry (a red 0) in the box while the old value is used. An
    entry outside ``[low, high]`` is replaced in the box by the nearest bound, and a note
    under the box says so. ``options``: more of ``st.number_input``'s (step, format, help)."""
    where = where or st

    def to_bounds() -> None:
        entered = st.session_state[key]
        used = type(entered)(min(max(entered, low), high))
        if used != entered:
            st.session_state[key] = used
            st.session_state[f"{key}.note"] = (f"{label}: {_number(entered)} is outside "
                                               f"{_number(low)} to {_number(high)}, so {_number(used)} is used.")

    number = where.number_input(label, value=value, key=key, on_change=to_bounds, **options)
    if note := st.session_state.pop(f"{key}.note", None):
        where.caption(f":orange[{note}]")
    return number


def fix_buttons(error: Exception, keys: dict[str, str], key: str) -> None:
    """The engine's fix for a value that blocks Start (``WorkbenchError.fix``), as one button
    beside its message: "Set Batch size to 4" puts 4 in that box (``keys``: setting name ->
    the key of the widget that shows it; a setting without one here is left out)."""
    fix = {name: value for name, value in getattr(error, "fix", {}).items() if name in keys}
    if not fix:
        return

    def apply() -> None:
        for name, value in fix.items():
            st.session_state[keys[name]] = value

    label = " and ".join(f"{plain_label(name)} to {value}" for name, value in fix.items())
    st.button(f"Set {label}", key=key, on_click=apply, icon=":material/build:",
              help="Change the setting named in the message to the value that lets this run start.")


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _widget(field: dict, key: str, value):
    label, help_ = plain_label(field["name"]), help_text(field)
    if field["choices"]:
        choices = list(field["choices"])
        return st.selectbox(label, choices, index=choices.index(value) if value in choices else 0,
                            help=help_, key=key)
    if field["type"] == "bool":
        return st.checkbox(label, value=bool(value), help=help_, key=key)
    if field["type"] == "int":
        return int(st.number_input(label, value=int(value), step=1, help=help_, key=key))
    if field["type"] == "float":
        return float(st.number_input(label, value=float(value), help=help_, key=key, format="%g",
                                     step=None))
    return st.text_input(label, value=str(value), help=help_, key=key)
