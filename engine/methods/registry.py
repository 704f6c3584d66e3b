"""The registry of PEFT methods: built-in and third-party methods register the same way.

A method is a lowercase name, a one-line help, a settings dataclass (every field with a default
and a help string) and ``apply(model, settings, context) -> model``. A method that must change
how the base model is loaded (4-bit quantisation) also gives ``load_kwargs(settings, context)``.

Third-party packages expose a ``Method`` (or a callable returning one) in the entry-point group
``lessismore.methods``; see docs/plugins.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from engine.errors import MethodError

ENTRY_POINT_GROUP = "lessismore.methods"
_NAME = re.compile(r"^[a-z][a-z0-9-]{1,39}$")


@dataclass
class MethodContext:
    """What a method may know about the model it is applied to."""

    task: str  # "asr", "audio-classification", "text-classification"
    family: str  # "whisper", ...
    default_target_modules: list[str]  # what the family targets when the user names none
    head_modules: list[str]  # task heads that a PEFT method trains in full
    linear_module_names: list[str]  # every nn.Linear of the model (for validating targets)
    unquantized_modules: list[str] = field(default_factory=list)  # kept full precision by k-bit methods
    device: str = "cpu"
    compute_dtype: str = "float32"
    gradient_checkpointing: bool = False
    model_dir: Path | None = None  # the base model's folder (LoftQ reads the original weights)
    total_steps: int = 0  # optimizer steps the run will take (AdaLoRA schedules ranks with it)

    @classmethod
    def for_task_model(cls, task_model: Any, **overrides: Any) -> "MethodContext":
        """The context a TaskModel (instance or class) implies; ``overrides`` set the rest."""
        values = dict(task=task_model.task, family=task_model.family,
                      default_target_modules=list(task_model.default_target_modules),
                      head_modules=list(task_model.head_modules),
                      unquantized_modules=list(task_model.unquantized_modules),
                      linear_module_names=[], model_dir=getattr(task_model, "model_dir", None))
        return cls(**{**values, **overrides})


def no_load_kwargs(settings: Any, context: MethodContext) -> dict:
    return {}


@dataclass(frozen=True)
class Method:
    name: str
    help: str
    settings_cls: type
    apply: Callable[[Any, Any, MethodContext], Any]
    load_kwargs: Callable[[Any, MethodContext], dict] = no_load_kwargs
    is_adapter: bool = True  # saves a PEFT adapter folder (False: a full transformers model)
    # Called after every optimizer step, before gradients are cleared (AdaLoRA's rank update).
    on_optimizer_step: Callable[[Any, int], None] | None = None
    source: str = "built-in"
    extra: dict = field(default_factory=dict)  # idea, formula, pros, cons (Methods page)


_REGISTRY: dict[str, Method] = {}
_loaded = False


def register_method(*, name: str, help: str, settings_cls: type, apply: Callable,
                    load_kwargs: Callable | None = None, is_adapter: bool = True,
                    on_optimizer_step: Callable | None = None, source: str = "built-in",
                    **extra: Any) -> Method:
    """Add a method to the registry; refuses bad names and duplicates."""
    if not _NAME.match(name or ""):
        raise MethodError(f"method name {name!r} must be lowercase letters, digits and '-', "
                          "2-40 characters, starting with a letter")
    if name in _REGISTRY:
        raise MethodError(f"a method named {name!r} is already registered "
                          f"(by {_REGISTRY[name].source})")
    if not callable(apply):
        raise MethodError(f"method {name!r}: apply must be callable")
    method = Method(name=name, help=help, settings_cls=settings_cls, apply=apply,
                    load_kwargs=load_kwargs or no_load_kwargs, is_adapter=is_adapter,
                    on_optimizer_step=on_optimizer_step, source=source, extra=extra)
    _REGISTRY[name] = method
    return method


def unregister_method(name: str) -> None:
    _REGISTRY.pop(name, None)


def get_method(name: str) -> Method:
    ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MethodError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def all_methods() -> list[Method]:
    ensure_loaded()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def ensure_loaded() -> None:
    """Import the built-in methods, then every installed plugin (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from engine.methods import builtin  # noqa: F401  (registers the built-in methods)

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        load_plugin(entry)


def load_plugin(entry: Any) -> None:
    """Load one entry point; a broken plugin is reported, not fatal to the workbench."""
    import logging

    try:
        target = entry.load()
        if callable(target) and not isinstance(target, Method):
            target = target()
        if isinstance(target, Method) and target.name not in _REGISTRY:
            _REGISTRY[target.name] = target
    except Exception as error:  # a plugin must never take the app down
        logging.getLogger(__name__).warning("method plugin %s failed to load: %s", entry.name, error)
