"""PEFT method plugins: one module per built-in method, plus third-party entry points."""

from engine.methods.registry import (
    ENTRY_POINT_GROUP,
    Method,
    MethodContext,
    all_methods,
    get_method,
    register_method,
)

__all__ = ["ENTRY_POINT_GROUP", "Method", "MethodContext", "all_methods", "get_method",
           "register_method"]
