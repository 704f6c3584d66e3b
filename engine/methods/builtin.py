"""Imports the built-in methods so each registers itself (one module per method)."""

from engine.methods import full, lora, qlora  # noqa: F401
