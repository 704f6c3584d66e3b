"""The registry of PEFT methods: built-in and third-party methods register the same way.

A method is a lowercase name, a one-line help, a settings dataclass (every field with a default
and a help string) and ``apply(model, settings, context) -> model``. A method that must change
how the base model is loaded (4-bit quantisation) also gives ``load_kwargs(settings, context)``.

Every method comes in through the entry-point group ``lessismore.methods``: the built-in
ones are declared in the workbench's own pyproject.toml, third-party packages declare theirs
the same way (a ``Method``, or a callable returning one; docs/plugins.md). ``ensure_loaded``
loads the group once, built-ins first, and every method passes ``add_method``'s checks; a
plugin that is broken or whose name is taken is logged and listed by ``plugin_problems()``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from engine.errors import MethodError
# What a method decided from data (MethodContext.report), as JSON in runs/<id>/ and its adapter/
# (named in engine/names.py; plugins import it from here, as docs/methods.md says).
from engine.names import METHOD_REPORT  # noqa: F401

ENTRY_POINT_GROUP = "lessismore.methods"
DISTRIBUTION = "lessismore-workbench"  # this project (pyproject.toml), whose methods are built in
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
    # ``sample_batches(n)``: up to n collated batches of real training items (cmra and qass
    # measure the model on them before training); None where no data is at hand (estimates).
    sample_batches: Callable[[int], list[dict]] | None = None
    # ``load_base(**kwargs)``: the base model loaded anew (qass measures it in full precision
    # before choosing what to quantise); None where no loader is at hand.
    load_base: Callable[..., Any] | None = None
    # What the method decided (qass's 16-bit layers, cmra's ranks; ``Method.decisions`` adds
    # what it decided while training), kept as JSON in the run's folder and beside its adapter. A resumed run or a reloaded adapter gets the
    # recorded report back here, so the same decision is never measured twice.
    report: dict = field(default_factory=dict)
    log: Callable[[str], None] = field(default=lambda message: None)  # the run's event log

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
    # For adapters with modules of their own inside peft's LoRA layers (a convolution, a
    # router), which ``PeftModel.from_pretrained`` alone cannot rebuild:
    # ``load_adapter(base, adapter_dir, settings, context) -> model``.
    load_adapter: Callable[[Any, Path, Any, MethodContext], Any] | None = None
    # Why the adapter cannot be merged into the base weights (empty: it can).
    merge_refusal: str = ""
    # ``step_metrics(model) -> {name: value}``: logged with every training step (mma's router).
    step_metrics: Callable[[Any], dict] | None = None
    # ``decisions(model) -> dict``: what the method decided while training (mma's routing over
    # the steps, ta-qlora's kernel drift), merged into its report (METHOD_REPORT) at every
    # checkpoint and at the end of the run.
    decisions: Callable[[Any], dict] | None = None
    # ``task_options(settings) -> dict``: options the method sets on the task model, for
    # training and for every later load (qass trims silence and pads to the longest clip).
    task_options: Callable[[Any], dict] | None = None


_REGISTRY: dict[str, Method] = {}
_loaded = False
_loading = threading.RLock()
# What went wrong while loading entry points (a broken plugin, a name clash), for the pages and
# the command line to show; each is also logged as a warning.
_problems: list[str] = []
logger = logging.getLogger(__name__)


def make_method(*, name: str, help: str, settings_cls: type, apply: Callable,
                load_kwargs: Callable | None = None, is_adapter: bool = True,
                on_optimizer_step: Callable | None = None, source: str = "built-in",
                load_adapter: Callable | None = None, merge_refusal: str = "",
                step_metrics: Callable | None = None, task_options: Callable | None = None,
                decisions: Callable | None = None, **extra: Any) -> Method:
    """A ``Method`` from keywords (``extra``: idea, formula, advantages, limitations), not yet
    registered: a method module names it in an entry point, or ``register_method`` adds it."""
    return Method(name=name, help=help, settings_cls=settings_cls, apply=apply,
                  load_kwargs=load_kwargs or no_load_kwargs, is_adapter=is_adapter,
                  on_optimizer_step=on_optimizer_step, source=source, extra=extra,
                  load_adapter=load_adapter, merge_refusal=merge_refusal,
                  step_metrics=step_metrics, task_options=task_options, decisions=decisions)


def register_method(**keywords: Any) -> Method:
    """``make_method(**keywords)``, added to the registry with ``add_method``'s checks."""
    return add_method(make_method(**keywords))


def add_method(method: Method) -> Method:
    """The one way into the registry, for built-in and third-party methods alike: refuses bad
    names, a name already taken, an ``apply`` that cannot be called and settings that are not a
    dataclass with a default for every field."""
    name = method.name
    if not isinstance(name, str) or not _NAME.match(name):
        raise MethodError(f"method name {name!r} must be lowercase letters, digits and '-', "
                          "2-40 characters, starting with a letter")
    if name in _REGISTRY:
        raise MethodError(f"a method named {name!r} is already registered "
                          f"(by {_REGISTRY[name].source})")
    if not callable(method.apply):
        raise MethodError(f"method {name!r}: apply must be callable")
    if not (isinstance(method.settings_cls, type) and dataclasses.is_dataclass(method.settings_cls)):
        raise MethodError(f"method {name!r}: settings_cls must be a dataclass")
    no_default = [f.name for f in dataclasses.fields(method.settings_cls)
                  if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if no_default:
        raise MethodError(f"method {name!r}: every setting needs a default ({', '.join(no_default)} "
                          "has none)")
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


def plugin_problems() -> list[str]:
    """Why an entry point did not add its method (broken, or its name taken), one line each."""
    ensure_loaded()
    return list(_problems)


def ensure_loaded() -> None:
    """Load every method of the entry-point group once: the workbench's own first, so a
    third-party method can never replace a built-in one, then the rest by distribution."""
    global _loaded
    with _loading:  # the worker thread and a page may ask at once; the second waits
        if _loaded:
            return
        _loaded = True  # (a plugin that asks for a method while loading gets those loaded so far)
        found = list(entry_points(group=ENTRY_POINT_GROUP))
        if not any(_is_builtin(entry) for entry in found):
            # Not installed (a bare checkout run with PYTHONPATH): pyproject.toml declares them.
            logger.warning("the workbench is not installed (pip install -e .); reading its "
                           "built-in methods from pyproject.toml")
            found += builtin_entry_points_from_pyproject()
        elif _PYPROJECT.is_file():
            # An editable install keeps the entry points of the day it was installed; a
            # checkout that declares newer built-ins still offers them (from pyproject.toml).
            installed = {entry.name for entry in found if _is_builtin(entry)}
            found += [entry for entry in builtin_entry_points_from_pyproject()
                      if entry.name not in installed]
        for entry in sorted(found, key=lambda e: (not _is_builtin(e), _distribution(e), e.name)):
            load_plugin(entry)


def load_plugin(entry: Any) -> Method | None:
    """Load one entry point and add its method through ``add_method``. A broken plugin or one
    whose name is taken is reported (logged as a warning, listed by ``plugin_problems``),
    never fatal to the workbench and never dropped silently. Returns the method added."""
    ensure_loaded()  # the built-ins come first, whoever loads a plugin
    package = _distribution(entry)
    where = f"{entry.name} = {entry.value}" + (f" (package {package})" if package else "")
    try:
        target = entry.load()
        if callable(target) and not isinstance(target, Method):
            target = target()  # a function returning a Method, or registering one itself
            if target is None:  # it called register_method: the checks have run
                return _REGISTRY.get(entry.name)
        if not isinstance(target, Method):
            raise MethodError(f"it gave {type(target).__name__}, not an engine.methods.Method")
        taken = _REGISTRY.get(target.name)
        if taken is not None and (taken.apply, taken.settings_cls) == (target.apply, target.settings_cls):
            return taken  # the very same method, loaded again
        if taken is not None:
            _report(f"method plugin {where} was not loaded: the name {target.name!r} is taken by "
                    f"the method from {taken.source}; give the plugin's method another name to "
                    "use it")
            return None
        if target.source == "built-in" and not _is_builtin(entry):  # say where it came from
            target = dataclasses.replace(target, source=package or entry.value)
        return add_method(target)
    except Exception as error:  # a plugin must never take the app down
        _report(f"method plugin {where} failed to load: {error}")
        return None


def _report(problem: str) -> None:
    logger.warning(problem)
    if problem not in _problems:
        _problems.append(problem)


def _distribution(entry: Any) -> str:
    dist = getattr(entry, "dist", None)
    return dist.name if dist is not None else ""


def _is_builtin(entry: Any) -> bool:
    return _distribution(entry) == DISTRIBUTION or (not _distribution(entry)
                                                     and entry.value.startswith("engine.methods."))


_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"  # in a checkout


def builtin_entry_points_from_pyproject() -> list[EntryPoint]:
    """The built-in methods' entry points as pyproject.toml declares them."""
    try:
        declared = tomllib.loads(_PYPROJECT.read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as error:
        raise MethodError(f"cannot find the built-in methods: install the workbench "
                          f"(pip install -e .): {error}") from error
    return [EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in declared.items()]
