"""Settings dataclasses: conversion from text, validation naming the field."""

from __future__ import annotations

import pytest

from engine import settings as settings_lib
from engine.errors import SettingsError
from engine.methods.qlora import QLoraSettings
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


def test_every_field_has_a_default_and_help():
    for cls in (TrainingSettings, QLoraSettings):
        for field in settings_lib.describe(cls):
            assert field["help"], field["name"]
