"""PEFT method plugins: one module per built-in method; every method, built-in or third-party,
is an entry point of the group ``lessismore.methods`` (registry.py loads them)."""

from engine.methods.registry import (
    ENTRY_POINT_GROUP,
    Method,
    MethodContext,
    add_method,
    all_methods,
    get_method,
    make_method,
    plugin_problems,
    register_method,
)

__all__ = ["ENTRY_POINT_GROUP", "Method", "MethodContext", "add_method", "all_methods", "get_method",
           "make_method", "plugin_problems", "register_method"]
