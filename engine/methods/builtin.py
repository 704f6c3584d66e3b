"""Imports the built-in methods so each registers itself (one module per method)."""

from engine.methods import adalora, frozen_encoder, full, ia3, lora, qlora  # noqa: F401
