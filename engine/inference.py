"""Predictions from a finished run, loaded the way anyone outside the app would load it.

The base model is loaded with the run method's own loading options (4-bit for qlora), then
``peft.PeftModel.from_pretrained`` attaches the adapter folder; a full fine-tune is a plain
transformers folder. The playground and the tests use this.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine import settings as settings_lib
from engine.errors import RunError
from engine.methods import MethodContext, get_method
from engine.models import TaskModel, task_model_for


def load_trained(workbench, run_id: int, device: str = "cpu") -> tuple[TaskModel, torch.nn.Module]:
    run = workbench.get_run(run_id)
    if not run["adapter_dir"]:
        raise RunError(f"run {run_id} has no saved adapter (status {run['status']})")
    adapter_dir = workbench.storage.files.resolve(run["adapter_dir"])
    model_record = workbench.get_model(run["model_id"])
    dataset = workbench.storage.find_dataset(run["dataset_id"], workbench.owner_id)
    labels = dataset["labels"] if dataset else []
    method = get_method(run["method"])
    base_dir = workbench.storage.files.resolve(model_record["path"])
    if not method.is_adapter:
        task_model = task_model_for(model_record["family"], run["task"], adapter_dir, labels)
        return task_model, task_model.load().to(device).eval()
    task_model = task_model_for(model_record["family"], run["task"], base_dir, labels,
                                generation_max_length=run["settings"]["training"]["generation_max_length"])
    method_settings = settings_lib.build(method.settings_cls, run["settings"]["method"])
    context = MethodContext(task=run["task"], family=model_record["family"],
                            default_target_modules=task_model.default_target_modules,
                            head_modules=task_model.head_modules,
                            unquantized_modules=task_model.unquantized_modules,
                            linear_module_names=[], device=device, model_dir=base_dir)
    load_kwargs = method.load_kwargs(method_settings, context)
    base = task_model.load(**load_kwargs)
    if "device_map" not in load_kwargs:
        base = base.to(device)
    return task_model, load_adapter(base, adapter_dir).eval()


def load_adapter(base: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(base, adapter_dir)
