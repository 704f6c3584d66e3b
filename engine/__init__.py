"""LessIsMore Workbench engine: datasets, models, PEFT methods and training, without any UI.

Import ``Workbench`` from here; pages, the command line and tests all go through it.
"""

from engine.errors import WorkbenchError
from engine.workbench import Workbench, data_home

__all__ = ["Workbench", "WorkbenchError", "data_home"]
