"""Forms generated from settings dataclasses (engine.settings.describe)."""

from __future__ import annotations

import streamlit as st


def settings_form(fields: list[dict], key_prefix: str, columns: int = 2,
                  values: dict | None = None) -> dict:
    """One widget per field, laid out in columns; returns ``{name: value}``."""
    values = values or {}
    result = {}
    if not fields:
        st.caption("This method has no settings of its own.")
        return result
    cols = st.columns(columns)
    for index, field in enumerate(fields):
        with cols[index % columns]:
            result[field["name"]] = _widget(field, f"{key_prefix}.{field['name']}",
                                            values.get(field["name"], field["default"]))
    return result


def _widget(field: dict, key: str, value):
    label, help_text = field["name"], field["help"]
    if field["choices"]:
        choices = list(field["choices"])
        return st.selectbox(label, choices, index=choices.index(value) if value in choices else 0,
                            help=help_text, key=key)
    if field["type"] == "bool":
        return st.checkbox(label, value=bool(value), help=help_text, key=key)
    if field["type"] == "int":
        return int(st.number_input(label, value=int(value), step=1, help=help_text, key=key,
                                   min_value=field["min"], max_value=field["max"]))
    if field["type"] == "float":
        return float(st.number_input(label, value=float(value), help=help_text, key=key,
                                     format="%g", step=None,
                                     min_value=None if field["min"] is None else float(field["min"]),
                                     max_value=None if field["max"] is None else float(field["max"])))
    return st.text_input(label, value=str(value), help=help_text, key=key)
