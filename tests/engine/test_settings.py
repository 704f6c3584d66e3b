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
