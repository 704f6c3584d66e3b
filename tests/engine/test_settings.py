"""Settings dataclasses: conversion from text, validation naming the field."""

from __future__ import annotations

import dataclasses

import pytest

from engine import settings as settings_lib
from engine.errors import SettingsError
from engine.methods.qlora import QLoraSettings
from engine.methods.registry import all_methods
from engine.training.settings import TrainingSettings


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
