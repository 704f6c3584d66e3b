"""How much memory a run will need, worked out before launch by a dry run on fake tensors.

``estimate_training_memory`` builds the model from its config under ``FakeTensorMode`` (no
real memory, no weights read, no arithmetic), applies the method's adapter structure, and runs one
forward/backward/AdamW step on a fake batch of the chosen size while a dispatch-mode tracker
records every tensor storage created and freed (fake storages know their size). That gives weights, trainable weights,
gradients, optimizer state and peak activations without allocating any of it, for any batch
size or audio length, in seconds.

k-bit methods cannot run their bitsandbytes kernels on fake tensors, so their base weights are
counted at their quantised size (4-bit NF4: 0.5 byte + block scales; 8-bit: 1 byte + row scales)
and the largest dequantised weight is added as transient memory.
"""

from __future__ import annotations

import gc
import math
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

MIB = 2**20


class TensorMemoryTracker(TorchDispatchMode):
    """Live and peak bytes of the tensor storages created by ops inside the context.

    A storage counts from the first op output that uses it until the last tensor on it dies
    (views share their base's storage). Tensor weakrefs tell when; weakrefs on storage objects
    are avoided on purpose, since fake storages do not survive them.
    """

    def __init__(self, existing: list[torch.Tensor] = ()):
        super().__init__()
        # Storages that exist before the context (weights): views of them (a transposed weight
        # in a matmul) are new tensors but no new memory, so they are never counted.
        self.existing = {tensor.untyped_storage()._cdata for tensor in existing}
        self.storages: dict[int, list[int]] = {}  # storage id -> [bytes, live tensors]
        self.refs: dict[int, weakref.ref] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        if id(tensor) in self.refs:
            return
        key = tensor.untyped_storage()._cdata
        if key in self.existing:
            return
        entry = self.storages.get(key)
        if entry is None:
            entry = self.storages[key] = [tensor.untyped_storage().nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        tensor_id = id(tensor)
        self.refs[tensor_id] = weakref.ref(tensor, lambda _, k=key, t=tensor_id: self._release(k, t))

    def _release(self, key: int, tensor_id: int) -> None:
        self.refs.pop(tensor_id, None)
        entry = self.storages.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.storages[key]


@dataclass
class MemoryEstimate:
    weights_mb: float  # the base model's parameters and buffers, at their stored precision
    trainable_mb: float  # new trainable weights (adapters, heads) not already in the base
    gradients_mb: float
    optimizer_mb: float  # AdamW: two fp32 moments per trainable parameter
    activations_mb: float  # peak of everything else during a step (activations, temporaries)
    trainable_params: int
    total_params: int

    @property
    def total_mb(self) -> float:
        return (self.weights_mb + self.trainable_mb + self.gradients_mb + self.optimizer_mb
                + self.activations_mb)

    def as_dict(self) -> dict:
        return {**self.__dict__, "total_mb": self.total_mb}


def estimate_training_memory(task_model, method, method_settings, *, batch_size: int,
                             sequence_length: int | None = None, seconds: float | None = None,
                             label_tokens: int = 32, gradient_checkpointing: bool = False,
                             precision: str = "fp32") -> MemoryEstimate:
    """Dry-run one optimizer step of ``method`` on ``task_model``'s model with a fake batch.

    ``seconds`` sets the audio length (audio models), ``sequence_length`` the tokens (text);
    ``precision`` "bf16" runs the step under bf16 autocast, as training on a GPU does.
    """


    quantized_bits = {"qlora": 4, "qlora-8bit": 8}.get(method.name)
    return _dry_run(task_model, method, method_settings, quantized_bits, batch_size,
                    sequence_length, seconds, label_tokens, gradient_checkpointing, precision)


def _apply_structure(apply, model, settings, context):
    """Apply a method to a fake model. peft moves each new adapter to its base layer's device
    with Module.to(), which must swap parameters in place, and fake parameters cannot be
    swapped. Everything already lives on the same fake device, so the moves are skipped while
    the method builds its structure (only then; the training step itself is untouched)."""
    from unittest import mock

    with mock.patch.object(torch.nn.Module, "to", lambda module, *args, **kwargs: module):
        return apply(model, settings, context)


def _dry_run(task_model, method, method_settings, quantized_bits, batch_size, sequence_length,
             seconds, label_tokens, gradient_checkpointing, precision) -> MemoryEstimate:
    from torch._subclasses.fake_tensor import FakeTensorMode

    from engine.methods import MethodContext
    from engine.models.base import linear_module_names

    with FakeTensorMode(allow_non_fake_inputs=True):  # shapes and sizes only: nothing allocated
        model = task_model.build_from_config()
        context = MethodContext.for_task_model(
            task_model, linear_module_names=linear_module_names(model),
            gradient_checkpointing=gradient_checkpointing, total_steps=100)
        quantized = set() if quantized_bits is None else _quantizable(model, task_model.unquantized_modules)
        base = {id(p): p for p in model.parameters()}
        weights = _weight_bytes(model, quantized, quantized_bits)
        heads = list(task_model.head_modules)
        if method.is_adapter:
            # peft would deep-copy each head into a trainable twin (modules_to_save), and deep
            # copies of fake tensors crash later; mark the heads trainable and count the twin.
            context.head_modules = []
        if quantized_bits:
            from engine.methods.lora import apply_lora

            for parameter in model.parameters():
                parameter.requires_grad_(False)
            model = _apply_structure(apply_lora, model, method_settings, context)
        else:
            model = _apply_structure(method.apply, model, method_settings, context)
        head_twin = 0
        if method.is_adapter:
            for name, parameter in model.named_parameters():
                if any(part in name.split(".") for part in heads):
                    parameter.requires_grad_(True)
                    head_twin += parameter.numel() * parameter.element_size()
        trainable = [p for p in model.parameters() if p.requires_grad]
        new_trainable = head_twin + sum(p.numel() * p.element_size() for p in trainable if id(p) not in base)
        total_params = sum(p.numel() for p in base.values())
        trainable_params = sum(p.numel() for p in trainable)
        batch = task_model.fake_batch(batch_size, sequence_length=sequence_length, seconds=seconds,
                                      label_tokens=label_tokens)
        optimizer = torch.optim.AdamW(trainable, lr=1e-4)
        model.train()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
        with TensorMemoryTracker(list(model.parameters()) + list(model.buffers())) as tracker:
            with autocast:
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            gradients = sum(p.grad.numel() * p.grad.element_size() for p in trainable if p.grad is not None)
            optimizer_state = sum(t.numel() * t.element_size() for state in optimizer.state.values()
                                  for t in state.values() if isinstance(t, torch.Tensor))
        # The tracker saw gradients and optimizer state too; the rest of its peak is activations.
        activations = max(0, tracker.peak - gradients - optimizer_state)
        del model, optimizer, batch, trainable, base, tracker
        gc.collect()  # free the fake model's reference cycles while its mode is alive
    if quantized_bits:
        activations += _largest_dequantized_bytes(quantized)
    return MemoryEstimate(weights / MIB, new_trainable / MIB, gradients / MIB, optimizer_state / MIB,
                          activations / MIB, trainable_params, total_params)


def _quantizable(model, unquantized: list[str]) -> dict[int, torch.nn.Parameter]:
    """The linear weights bitsandbytes would quantise (transformers' skip rule: prefix or suffix)."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    chosen = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and should_convert_module(name, unquantized):
            chosen[id(module.weight)] = module.weight
    # Tied output layers (Whisper's proj_out) share the embedding and are never quantised.
    return chosen


def _weight_bytes(model, quantized: dict, bits: int | None) -> int:
    total = 0
    for parameter in model.parameters():
        if id(parameter) in quantized:
            total += _kbit_bytes(parameter.numel(), parameter.shape, bits)
        else:
            total += parameter.numel() * parameter.element_size()
    total += sum(buffer.numel() * buffer.element_size() for buffer in model.buffers())
    return total


def _kbit_bytes(numel: int, shape: torch.Size, bits: int) -> int:
    if bits == 4:  # NF4 packs two per byte; one absmax per 64 weights (8-bit with double quant)
        return math.ceil(numel / 2) + math.ceil(numel / 64) + 4 * math.ceil(numel / (64 * 256))
    return numel + 4 * shape[0]  # int8 with one fp32 scale per output row


def _largest_dequantized_bytes(quantized: dict) -> int:
    return max((p.numel() * 4 for p in quantized.values()), default=0)


def load_with_method(task_model, method, settings, device: str = "cpu"):
    """The real model a run of ``method`` trains: base loaded as the method loads it, then applied."""
    from engine.methods import MethodContext
    from engine.models.base import linear_module_names

    context = MethodContext.for_task_model(task_model, total_steps=100, device=device)
    load_kwargs = method.load_kwargs(settings, context)
    model = task_model.load(**load_kwargs)
    if "device_map" not in load_kwargs:
        model = model.to(device)
    context.linear_module_names = linear_module_names(model)
    return method.apply(model, settings, context)


def measure_training_memory_mb(model, batch: dict, lr: float = 1e-4) -> float:
    """Measured peak tensor memory of one real forward/backward/AdamW step, in MiB.

    On CUDA this is ``torch.cuda.max_memory_allocated`` over the step plus what was allocated
    before it. On a CPU there is no allocator counter, so the torch profiler's per-op memory
    accounting, replayed in time order, gives the peak of what the step allocates, added to
    the bytes of the model's own tensors (parameters, buffers, 4-bit quantisation state).
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr)
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        _step(model, batch, optimizer)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / MIB
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _step(model, batch, optimizer)
    # Each op's own allocations minus frees (self usage, children excluded), plus the
    # "[memory]" events for frees that happen outside any op, replayed in time order.
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    current = peak = 0
    for event in events:
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return (model_tensor_bytes(model) + peak) / MIB


def _step(model, batch, optimizer) -> None:
    model.train()
    model(**batch).loss.backward()
    optimizer.step()


def model_tensor_bytes(model) -> int:
    seen, total = set(), 0
    tensors = list(model.parameters()) + list(model.buffers())
    for parameter in model.parameters():  # bitsandbytes keeps block scales beside a 4-bit weight
        state = getattr(parameter, "quant_state", None)
        if state is not None:
            tensors += [t for t in (state.absmax, getattr(state.state2, "absmax", None),
                                    getattr(state, "code", None)) if isinstance(t, torch.Tensor)]
    for tensor in tensors:
        key = tensor.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += tensor.untyped_storage().nbytes()
    return total


# ---------------------------------------------------------------------- out-of-process use
# Dry runs on fake tensors have crashed the interpreter in garbage collection when other
# threads were alive (a Streamlit app, a training worker). The app therefore asks a short-lived
# child process (``python -m engine.models.memory``) for estimates: a crash there costs one
# estimate, never the app.

def estimate_in_subprocess(request: dict, timeout: float = 300) -> dict[str, dict | str]:
    """``request``: family, task, model_dir, labels, methods [{name, settings}], batch_size,
    seconds, sequence_length, precision, optionally audio_padding ("30s" or "longest": Whisper's
    window is then ``seconds`` long). Returns method -> estimate dict or reason text."""
    import json
    import subprocess
    import sys

    try:
        done = subprocess.run([sys.executable, "-m", "engine.models.memory"], input=json.dumps(request),
                              capture_output=True, text=True, timeout=timeout,
                              cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    except subprocess.TimeoutExpired:
        return {m["name"]: f"no estimate: took longer than {timeout:.0f} s" for m in request["methods"]}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    results = json.loads(lines[-1]) if lines else {}
    for method in request["methods"]:
        results.setdefault(method["name"], f"no estimate: the estimator stopped (exit {done.returncode})")
    return results


def _main() -> None:
    import json
    import sys
    import warnings
    from pathlib import Path

    from engine import settings as settings_lib
    from engine.methods import get_method
    from engine.models import task_model_for

    warnings.filterwarnings("ignore")
    request = json.loads(sys.stdin.read())
    task_model = task_model_for(request["family"], request["task"], Path(request["model_dir"]),
                                request["labels"], audio_padding=request.get("audio_padding", "30s"))
    results = {}
    for entry in request["methods"]:
        try:
            method = get_method(entry["name"])
            settings = settings_lib.build(method.settings_cls, entry.get("settings"), section=method.name)
            results[method.name] = estimate_training_memory(
                task_model, method, settings, batch_size=request["batch_size"],
                seconds=request["seconds"], sequence_length=request["sequence_length"],
                precision=request["precision"]).as_dict()
        except Exception as error:  # one method's failure must not lose the others
            results[entry["name"]] = f"no estimate: {type(error).__name__}: {str(error).splitlines()[0]}"
        print(json.dumps(results), flush=True)  # partial results survive a later crash


if __name__ == "__main__":
    _main()
