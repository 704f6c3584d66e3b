"""LessIsMore Workbench engine: datasets, models, PEFT methods and training, without any UI.

Import ``Workbench`` from here; pages, the command line and tests all go through it.
"""

from engine.errors import WorkbenchError

__all__ = ["Workbench", "WorkbenchError", "data_home"]


def __getattr__(name: str):
    """``Workbench`` and ``data_home`` on first use (PEP 562): they import torch and
    transformers (~8 s on 2 cores), which ``python -m engine --help`` and the light modules
    under ``engine`` (names, errors, settings parsing) do not need."""
    if name in ("Workbench", "data_home"):
        from engine import workbench  # noqa: PLC0415 - the point of this function

        return getattr(workbench, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
