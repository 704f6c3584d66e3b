"""Typed errors whose message a student can act on.

The page shows ``str(error)``; the log keeps the traceback. Raise the most specific one.
"""


class WorkbenchError(Exception):
    """Base class: the message is written for the person using the workbench. ``fix``: the
    settings (name -> value) that remove the problem when there is an obvious one, e.g.
    ``{"per_device_train_batch_size": 4}``; a form offers it as one click."""

    def __init__(self, *args, fix: dict | None = None):
        super().__init__(*args)
        self.fix = dict(fix or {})


class NotFoundError(WorkbenchError):
    """A dataset, model, method or run that does not exist (or is not yours)."""


class DatasetError(WorkbenchError):
    """Data that cannot be imported or used as asked."""


class ModelError(WorkbenchError):
    """A model that cannot be registered, loaded or used for the task."""


class MethodError(WorkbenchError):
    """A PEFT method that cannot be registered or applied."""


class SettingsError(WorkbenchError):
    """A setting with a bad value; the message names the field."""


class RunError(WorkbenchError):
    """A run that cannot be started, stopped or resumed in its current state."""


class ExportError(WorkbenchError):
    """A run that cannot be exported (no adapter yet, a bad output path, a failed conversion)."""


class AuthError(WorkbenchError):
    """A sign-up, log-in or account change that is refused (the message says why)."""


class ClusterError(WorkbenchError):
    """A Ray cluster that cannot be reached or used as asked (not installed, a bad address, a
    machine without the shared data home)."""
