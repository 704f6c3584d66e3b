"""Settings dataclasses: conversion from text, validation naming the field; a run's settings
(RunSettings) from and to its stored record, and the one place that reads them."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from engine import settings as settings_lib
from engine.errors import MethodError, SettingsError
from engine.methods import register_method
from engine.methods.lora import LoraSettings
from engine.methods.qlora import QLoraSettings
from engine.methods.registry import all_methods, unregister_method
from engine.training.settings import (RunSettings, TrainingSettings, planned_steps, split_settings,
                                      stored_training)


def test_strings_are_converted_by_field_type():
    built = settings_lib.build(QLoraSettings, {"r": "16", "lora_dropout": "0.1",
                                               "bnb_4bit_use_double_quant": "false"})
    assert (built.r, built.lora_dropout, built.bnb_4bit_use_double_quant) == (16, 0.1, False)
    assert settings_lib.build(TrainingSettings, {"learning_rate": 1}).learning_rate == 1.0


@pytest.mark.parametrize("values, message", [
    ({"r": "eight"}, "r must be a int"),
    ({"r": 0}, "r must be at least 1"),
    ({"bnb_4bit_quant_type": "int3"}, "bnb_4bit_quant_type must be one of nf4, fp4"),
    ({"bnb_4bit_use_double_quant": "maybe"}, "bnb_4bit_use_double_quant must be a bool"),
    ({"rank": 4}, "unknown qlora setting rank"),
])
def test_bad_values_name_the_field(values, message):
    with pytest.raises(SettingsError, match=message):
        settings_lib.build(QLoraSettings, values, section="qlora")


def test_assignments_parse_and_reject_garbage():
    assert settings_lib.parse_assignments(["r=8", "target_modules=q_proj,v_proj"]) == {
        "r": "8", "target_modules": "q_proj,v_proj"}
    with pytest.raises(SettingsError, match="key=value"):
        settings_lib.parse_assignments(["r"])


# Every settings class the workbench ships: training and each built-in method's.
SETTINGS_CLASSES = [TrainingSettings, *dict.fromkeys(
    method.settings_cls for method in all_methods() if method.source == "built-in")]


def test_every_settings_class_is_checked():
    assert len(SETTINGS_CLASSES) >= 8 and QLoraSettings in SETTINGS_CLASSES


@pytest.mark.parametrize("cls", SETTINGS_CLASSES, ids=lambda cls: cls.__name__)
def test_every_field_has_a_default_and_help(cls):
    for field in dataclasses.fields(cls):
        has_default = (field.default is not dataclasses.MISSING
                       or field.default_factory is not dataclasses.MISSING)
        assert has_default, f"{cls.__name__}.{field.name} has no default"
        assert field.metadata.get("help"), f"{cls.__name__}.{field.name} has no help"
    settings_lib.build(cls, {})  # the defaults themselves pass the checks


@pytest.mark.parametrize("name, value, problem", [
    ("per_device_train_batch_size", 0, "per_device_train_batch_size must be at least 1, got 0"),
    ("max_steps", -5, "max_steps must be at least -1, got -5"),
    ("max_grad_norm", -3.0, "max_grad_norm must be at least 0.0, got -3.0"),
    ("learning_rate", float("nan"), "learning_rate must be a finite number, got nan"),
    ("precision", "fp8", "precision must be one of auto, fp32, bf16, fp16, got 'fp8'"),
    ("max_steps", 10, None),
])
def test_one_fields_problem_is_what_build_would_refuse(name, value, problem):
    """The form checks each widget with ``field_problem``; it says what ``build`` says."""
    [field] = [f for f in settings_lib.describe(TrainingSettings) if f["name"] == name]
    assert settings_lib.field_problem(name, value, field) == problem
    if problem:
        with pytest.raises(SettingsError, match=problem.split(",")[0]):
            settings_lib.build(TrainingSettings, {name: value})


def test_assignments_are_the_inverse_of_parsing():
    values = {"r": 16, "lora_dropout": 0.1, "use_dora": True, "target_modules": "q_proj,v_proj",
              "lora_alpha": 16}
    defaults = {f["name"]: f["default"] for f in settings_lib.describe(QLoraSettings)}
    pairs = settings_lib.assignments(values, defaults)
    assert "lora_alpha=16" not in pairs  # the default: left out
    parsed = settings_lib.parse_assignments(pairs)
    rebuilt = settings_lib.as_dict(settings_lib.build(QLoraSettings, parsed))
    assert {k: rebuilt[k] for k in values} == values


def test_optimizer_steps_count_epochs_of_batches_over_the_accumulation():
    assert TrainingSettings(max_steps=7).optimizer_steps(1000) == 7
    epochs = TrainingSettings(num_train_epochs=2.0, per_device_train_batch_size=8, gradient_accumulation_steps=2)
    assert epochs.optimizer_steps(120) == 15  # 15 batches an epoch, 30 in all, 2 a step


# ---------------------------------------------------------------------------- a run's settings
def test_run_settings_round_trip_through_their_record():
    built = RunSettings.build("qlora", "asr", {"r": "16", "lora_dropout": 0.1},
                              {"learning_rate": "2e-4", "max_steps": 30, "spec_augment": True,
                               "language": "de"})
    record = built.to_record()
    assert record["method"] == "qlora" and record["task"] == "asr"
    assert RunSettings.from_record(record) == built
    assert record["settings"]["method"]["r"] == 16
    assert record["settings"]["training"]["learning_rate"] == 2e-4
    # every field of both dataclasses is in the record, so the run keeps its values even if a
    # default changes later
    assert set(record["settings"]["training"]) == {f.name for f in dataclasses.fields(TrainingSettings)}
    assert set(record["settings"]["method"]) == {f.name for f in dataclasses.fields(QLoraSettings)}


def test_a_stored_run_reads_back_what_it_was_submitted_with(workbench):
    """Through a real SQLite row: submit, read the row, rebuild, compare."""
    run_id = workbench.submit_run("demo-speech", "tiny-whisper", "lora", {"r": 4, "lora_alpha": 8},
                                  {"max_steps": 3, "seed": 7, "audio_padding": "longest"})
    run = workbench.get_run(run_id)
    settings = RunSettings.from_record(run)
    assert (settings.method, settings.task) == ("lora", "asr")
    assert (settings.method_settings.r, settings.training.seed, settings.training.audio_padding) == (4, 7, "longest")
    assert settings.to_record()["settings"] == run["settings"]


def test_a_record_missing_keys_gets_the_dataclass_defaults():
    """An older run stored fewer settings than exist now: each missing one is its default."""
    record = {"id": 3, "method": "qlora", "task": "asr",
              "settings": {"method": {"r": 4}, "training": {"max_steps": 9}}}
    settings = RunSettings.from_record(record)
    assert settings.method_settings == QLoraSettings(r=4)
    assert settings.training == TrainingSettings(max_steps=9)
    assert settings.task_options() == {"generation_max_length": TrainingSettings().generation_max_length,
                                       "audio_padding": TrainingSettings().audio_padding,
                                       "language": TrainingSettings().language,
                                       "speech_task": TrainingSettings().task, "generation_cache": "dynamic"}
    bare = RunSettings.from_record({"method": "lora", "task": "text-classification", "settings": None})
    assert bare.training == TrainingSettings() and bare.method_settings == LoraSettings()
    assert stored_training({"settings": {}}) == TrainingSettings()


@pytest.mark.parametrize("settings, message", [
    ({"training": {"learning_rate": "fast"}}, "run 7's stored settings: learning_rate must be a float, got 'fast'"),
    ({"training": {"precision": "fp8"}}, "run 7's stored settings: precision must be one of"),
    ({"method": {"r": 0}}, "run 7's stored settings: r must be at least 1, got 0"),
    ({"training": {"colour": "red"}}, "run 7's stored settings: unknown training setting colour"),
])
def test_an_invalid_stored_value_names_the_run_and_the_field(settings, message):
    with pytest.raises(SettingsError, match=message):
        RunSettings.from_record({"id": 7, "method": "qlora", "task": "asr", "settings": settings})


def test_run_settings_are_checked_on_construction():
    with pytest.raises(SettingsError, match="qlora settings must be a QLoraSettings, got LoraSettings"):
        RunSettings("qlora", "asr", LoraSettings(), TrainingSettings())
    with pytest.raises(SettingsError, match="learning_rate must be a float, got 'fast'"):
        RunSettings("lora", "asr", LoraSettings(), TrainingSettings(learning_rate="fast"))
    with pytest.raises(SettingsError, match="max_steps must be positive"):
        RunSettings("lora", "asr", LoraSettings(), TrainingSettings(max_steps=0))
    with pytest.raises(SettingsError, match="r must be at least 1"):
        RunSettings("lora", "asr", LoraSettings(r=0))
    with pytest.raises(SettingsError, match="task must be one of asr, audio-classification"):
        RunSettings("lora", "translation", LoraSettings())
    with pytest.raises(MethodError, match="unknown method 'nope'"):
        RunSettings("nope", "asr", LoraSettings())
    assert RunSettings("lora", "asr", LoraSettings(), TrainingSettings(learning_rate=1)).training.learning_rate == 1


@dataclasses.dataclass
class ClashingSettings:  # a plugin's settings that reuse a training setting's name
    learning_rate: float = settings_lib.setting(0.5, "The plugin's own rate.")
    depth: int = settings_lib.setting(2, "Layers.", min=1)


@pytest.fixture
def clashing_method():
    register_method(name="clash-test", help="reuses learning_rate", settings_cls=ClashingSettings,
                    apply=lambda model, settings, context: model)
    yield "clash-test"
    unregister_method("clash-test")


def test_a_key_of_both_groups_is_refused(clashing_method, workbench):
    message = "learning_rate is both a clash-test setting and a training setting"
    with pytest.raises(SettingsError, match=message):
        split_settings(clashing_method, {"learning_rate": "0.1", "depth": "3"})
    with pytest.raises(SettingsError, match=message):
        workbench.split_settings(clashing_method, {"learning_rate": "0.1"})
    settings = RunSettings.build(clashing_method, "asr", {"learning_rate": 0.25})  # nested: no doubt
    with pytest.raises(SettingsError, match=message):
        settings.with_changes({"learning_rate": 0.3})
    # keys that only one group knows still go where they belong
    assert split_settings(clashing_method, {"depth": "3", "seed": "1"}) == ({"depth": "3"}, {"seed": "1"})
    with pytest.raises(SettingsError, match="unknown setting colour"):
        split_settings(clashing_method, {"colour": "red"})


# Non-default values in many fields of both groups: a clone must carry every one of them.
CLONED_METHOD = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": "q_proj,v_proj"}
CLONED_TRAINING = {"max_steps": 3, "eval_steps": 0, "save_steps": 0, "per_device_train_batch_size": 2,
                   "learning_rate": 5e-4, "seed": 11, "weight_decay": 0.01, "warmup_steps": 1,
                   "lr_scheduler_type": "cosine", "spec_augment": True, "generation_max_length": 16,
                   "audio_padding": "longest", "save_total_limit": 3, "prefetch_batches": 1}


def test_a_clone_keeps_every_setting(workbench):
    original = workbench.submit_run("demo-speech", "tiny-whisper", "qlora", CLONED_METHOD, CLONED_TRAINING)
    source = workbench.get_run(original)
    clone = workbench.get_run(workbench.clone_run(original))
    assert (clone["method"], clone["task"], clone["settings"]) == (source["method"], source["task"],
                                                                   source["settings"])
    changed = workbench.get_run(workbench.clone_run(original, {"r": 8, "seed": 12}))
    assert changed["settings"]["method"] == {**source["settings"]["method"], "r": 8}
    assert changed["settings"]["training"] == {**source["settings"]["training"], "seed": 12}


def test_a_clone_of_an_older_run_gets_defaults_for_what_it_did_not_store(workbench):
    original = workbench.submit_run("demo-speech", "tiny-whisper", "qlora", CLONED_METHOD, CLONED_TRAINING)
    workbench.storage.update_run(original, settings={"method": {"r": 4}, "training": {"max_steps": 3,
                                                                                      "seed": 11}})
    clone = workbench.get_run(workbench.clone_run(original))
    assert clone["settings"]["method"] == settings_lib.as_dict(QLoraSettings(r=4))
    assert clone["settings"]["training"] == settings_lib.as_dict(TrainingSettings(max_steps=3, seed=11))


def test_planned_steps_come_from_the_run_or_its_max_steps():
    assert planned_steps({"total_steps": 12, "settings": {"training": {"max_steps": 30}}}) == 12
    assert planned_steps({"total_steps": None, "settings": {"training": {"max_steps": 30}}}) == 30
    # an epoch-based run that has not started: unknown (not -1, which a sum would subtract)
    assert planned_steps({"total_steps": None, "settings": {"training": {"num_train_epochs": 2.0}}}) is None


# ---------------------------------------------------------------------------- one reader
# Reads of a stored run's settings that carry their own default: ``training.get("max_steps", -1)``,
# ``run["settings"]["training"].get(...)``, ``settings.get("training", {})``. A stored run's
# settings are read through RunSettings.from_record / stored_training, where the defaults are
# the dataclasses' own.
ROOT = Path(__file__).resolve().parents[2]
SETTINGS_MODULE = ROOT / "engine" / "training" / "settings.py"
TRAINING_FIELDS = {f.name for f in dataclasses.fields(TrainingSettings)}


def raw_settings_reads(source: str) -> list[str]:
    """``X.get("key", ...)`` calls where X reads a run's settings: the key is ``training`` on
    something named like settings, or a training setting on something named like training or
    settings."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get" and node.args and isinstance(node.args[0], ast.Constant)):
            continue
        key, receiver = node.args[0].value, ast.unparse(node.func.value).lower()
        if (key == "training" and "settings" in receiver) or (
                key in TRAINING_FIELDS and ("training" in receiver or "settings" in receiver)):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_raw_read_check_finds_the_patterns_it_forbids():
    assert raw_settings_reads('n = run["settings"]["training"].get("max_steps", -1)')
    assert raw_settings_reads('t = (run["settings"] or {}).get("training", {})')
    assert raw_settings_reads('x = training.get("generation_max_length", 48)')
    assert not raw_settings_reads('x = cell.get("size"); y = stored_training(run).max_steps')


def test_no_module_reads_stored_settings_with_its_own_default():
    offenders = {}
    for folder in ("engine", "ui", "pages", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path != SETTINGS_MODULE:
                found = raw_settings_reads(path.read_text(encoding="utf-8"))
                if found:
                    offenders[str(path.relative_to(ROOT))] = found
    assert not offenders, f"read these through RunSettings.from_record / stored_training: {offenders}"
