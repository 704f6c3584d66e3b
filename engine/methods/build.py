"""The one model-building path: load a base model the way a method needs it, then apply it.

A run trains what ``build_method_model`` returns, and the memory dry run
(engine/memory/dryrun.py) builds its fake-tensor model through the same function, handing
in ``load`` (build from the config on fake tensors instead of reading weights) and ``apply``
(the structure only), so the two cannot drift apart: the context the method sees, its
``load_kwargs``, the linear layer names and the error a failing method raises are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from engine.errors import MethodError, WorkbenchError
from engine.methods.registry import Method, MethodContext
from engine.models import linear_module_names


def build_method_model(task_model, method: Method, method_settings, *, device: str = "cpu",
                       family: str | None = None, seed: int | None = None, total_steps: int = 100,
                       gradient_checkpointing: bool = False,
                       load: Callable[[dict], Any] | None = None,
                       apply: Callable[[Any, Any, MethodContext], Any] | None = None,
                       sample_batches: Callable[[int], list[dict]] | None = None,
                       report: dict | None = None, log: Callable[[str], None] | None = None):
    """The model a run of ``method`` trains on ``task_model``.

    ``load(load_kwargs)`` replaces reading the weights (default: ``task_model.load`` and a move
    to ``device`` unless the method places the model itself with a ``device_map``);
    ``apply(model, settings, context)`` replaces ``method.apply``. A run hands in
    ``sample_batches``, ``report`` and ``log`` (registry.MethodContext): methods that measure
    the model first (cmra, qass) use them and fill ``report`` in place with what they decided;
    the dry run hands in none of them, and such methods then decide without measuring.
    """
    if seed is not None:
        torch.manual_seed(seed)  # new heads and LoRA weights start the same every run

    def load_base(**kwargs):
        model = task_model.load(**kwargs)
        return model if "device_map" in kwargs else model.to(device)

    context = MethodContext.for_task_model(
        task_model, **({"family": family} if family else {}), device=device,
        gradient_checkpointing=gradient_checkpointing, total_steps=total_steps,
        sample_batches=sample_batches, load_base=load_base if load is None else None,
        report=report if report is not None else {}, log=log or (lambda message: None))
    load_kwargs = method.load_kwargs(method_settings, context)
    if seed is not None:
        torch.manual_seed(seed)  # a method that measured the model first drew nothing from this
    if load is None:
        model = task_model.load(**load_kwargs)
        if "device_map" not in load_kwargs:
            model = model.to(device)
    else:
        model = load(load_kwargs)
    context.linear_module_names = linear_module_names(model)
    try:
        return (apply or method.apply)(model, method_settings, context)
    except (torch.OutOfMemoryError, MemoryError, WorkbenchError):
        raise  # the worker explains out-of-memory with numbers; typed errors speak for themselves
    except Exception as error:
        # A MethodError, not ``type(error)(message)``: an exception class whose constructor
        # takes other arguments would raise a TypeError here and lose the original error.
        raise MethodError(f"method {method.name!r} failed to apply: "
                          f"{type(error).__name__}: {error}") from error
