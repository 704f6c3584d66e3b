"""Rules every source file keeps (docs/security.md), checked on the syntax tree: a new call that
breaks one fails here, naming the file and line."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for folder in ("engine", "storage", "ui", "pages", "benchmarks", "examples")
           for p in (ROOT / folder).rglob("*.py")] + [ROOT / "app.py", ROOT / "server.py"]


def all_calls() -> list[tuple[str, ast.Call]]:
    """(file:line, call) of every call in the project's sources."""
    return [(f"{path.relative_to(ROOT)}:{node.lineno}", node) for path in SOURCES
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(node, ast.Call)]


def keyword(call: ast.Call, name: str):
    """A keyword argument's constant value; "missing" or "not a constant" otherwise."""
    found = [k.value for k in call.keywords if k.arg == name]
    if not found:
        return "missing"
    return found[0].value if isinstance(found[0], ast.Constant) else "not a constant"


def test_torch_load_always_passes_weights_only_true():
    torch_loads = [(where, call) for where, call in all_calls()
                   if isinstance(call.func, ast.Attribute) and call.func.attr == "load"
                   and getattr(call.func.value, "id", "") == "torch"]
    assert torch_loads, "the checkpoint loader's torch.load should be found"
    assert [(where, keyword(call, "weights_only")) for where, call in torch_loads
            if keyword(call, "weights_only") is not True] == []


def test_no_remote_code_and_no_raw_html():
    calls = all_calls()
    assert [where for where, call in calls if keyword(call, "trust_remote_code") is True] == []
    assert [where for where, call in calls if keyword(call, "unsafe_allow_html") is True] == []
    # One script on a page: the log-in's way to the cookie route (ui/auth.py), a URL of a random
    # code and the page's address, percent-encoded (no quote or "<" can reach the script).
    scripts = [where for where, call in calls if keyword(call, "unsafe_allow_javascript") is True]
    assert [where.split(":")[0] for where in scripts] == ["ui/auth.py"]
