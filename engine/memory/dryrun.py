"""How much memory a run will need, worked out before launch by a dry run on fake tensors.

``estimate_training_memory`` builds the model from its config under ``FakeTensorMode`` (no
real memory, no weights read, no arithmetic), applies the method's adapter structure through the run's own model-building path
(``engine.methods.build.build_method_model``), and runs one
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

from engine.memory.plan import apply_checkpointing
from engine.methods.build import build_method_model

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
    """What one training step needs, by part (MiB). ``total_mb`` is the one number the pages,
    the form and the submit check show, and the number a run's ``peak_memory_mb`` is measured
    against: the step's tensors plus ``process_mb``, the memory the training process already
    holds (on a CPU its resident set: Python, torch, the app; on a GPU the CUDA allocations
    already made), which the measurement includes too (engine/memory/measure.py)."""

    weights_mb: float  # the base model's parameters and buffers, at their stored precision
    trainable_mb: float  # new trainable weights (adapters, heads) not already in the base
    gradients_mb: float
    optimizer_mb: float  # AdamW: two fp32 moments per trainable parameter
    activations_mb: float  # peak of everything else during a step (activations, temporaries)
    trainable_params: int
    total_params: int
    process_mb: float = 0.0  # what the training process holds before the run (see above)

    @property
    def training_mb(self) -> float:
        """The step's own tensors: what must be free for the run to start."""
        return (self.weights_mb + self.trainable_mb + self.gradients_mb + self.optimizer_mb
                + self.activations_mb)

    @property
    def total_mb(self) -> float:
        return self.process_mb + self.training_mb

    def as_dict(self) -> dict:
        return {**self.__dict__, "training_mb": self.training_mb, "total_mb": self.total_mb}


def estimate_training_memory(task_model, method, method_settings, *, batch_size: int,
                             sequence_length: int | None = None, seconds: float | None = None,
                             label_tokens: int = 32, gradient_checkpointing: bool = False,
                             precision: str = "fp32") -> MemoryEstimate:
    """Dry-run one optimizer step of ``method`` on ``task_model``'s model with a fake batch.

    ``seconds`` sets the audio length (audio models), ``sequence_length`` the tokens (text);
    ``precision`` "bf16" (or "fp16") runs the step under 16-bit autocast, as training on a GPU
    does; ``gradient_checkpointing`` checkpoints every layer, as the recipe does with it on.
    The model is built by the run's own path (``build_method_model``). Run it in a process of
    its own (``engine.memory.child``): fake tensors have crashed the interpreter's garbage
    collection when other threads were alive.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):  # shapes and sizes only: nothing allocated
        built = _build_fake(task_model, method, method_settings, gradient_checkpointing)
        model, base, quantized, bits, head_twin = (built[k] for k in (
            "model", "base", "quantized", "bits", "head_twin"))
        if gradient_checkpointing:
            apply_checkpointing(model, True)
        weights = _weight_bytes(base, quantized, bits) + sum(
            buffer.numel() * buffer.element_size() for buffer in model.buffers())
        trainable = [p for p in model.parameters() if p.requires_grad]
        new_trainable = head_twin + sum(p.numel() * p.element_size() for p in trainable if id(p) not in base)
        total_params = sum(p.numel() for p in base.values())
        trainable_params = sum(p.numel() for p in trainable)
        batch = task_model.fake_batch(batch_size, sequence_length=sequence_length, seconds=seconds,
                                      label_tokens=label_tokens)
        optimizer = torch.optim.AdamW(trainable, lr=1e-4)
        model.train()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision in ("bf16", "fp16"))
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
        del model, optimizer, batch, trainable, base, tracker, built
        gc.collect()  # free the fake model's reference cycles while its mode is alive
    if bits:
        activations += _largest_dequantized_bytes(quantized)
    return MemoryEstimate(weights / MIB, new_trainable / MIB, gradients / MIB, optimizer_state / MIB,
                          activations / MIB, trainable_params, total_params)


def _build_fake(task_model, method, method_settings, gradient_checkpointing: bool) -> dict:
    """The run's model (``build_method_model``), built from its config on fake tensors.

    Loading is replaced by ``build_from_config``; a method that loads its base in k bits (its
    ``load_kwargs`` ask bitsandbytes for 4 or 8 bits) gets the LoRA structure on the
    unquantised fake model, since bitsandbytes' kernels cannot run on fake tensors, and its
    base weights are counted at their quantised size. Heads are marked trainable rather than
    deep-copied by peft's ``modules_to_save`` (deep copies of fake tensors crash later); their
    twin is counted instead.
    """
    found: dict = {"head_twin": 0, "bits": None, "quantized": {}}

    def load(load_kwargs: dict):
        config = load_kwargs.get("quantization_config")
        found["bits"] = 4 if getattr(config, "load_in_4bit", False) else (
            8 if getattr(config, "load_in_8bit", False) else None)
        model = task_model.build_from_config()
        found["base"] = {id(p): p for p in model.parameters()}
        if found["bits"]:
            found["quantized"] = _quantizable(model, task_model.unquantized_modules)
        return model

    def apply(model, settings, context):
        heads = list(context.head_modules)
        if method.is_adapter:
            context.head_modules = []
        if found["bits"]:
            from engine.methods.lora import apply_lora

            for parameter in model.parameters():
                parameter.requires_grad_(False)
            model = _apply_structure(apply_lora, model, _as_lora_settings(settings), context)
        else:
            model = _apply_structure(method.apply, model, settings, context)
        if method.is_adapter:
            for name, parameter in model.named_parameters():
                if any(part in name.split(".") for part in heads):
                    parameter.requires_grad_(True)
                    found["head_twin"] += parameter.numel() * parameter.element_size()
        return model

    found["model"] = build_method_model(task_model, method, method_settings, load=load, apply=apply,
                                        gradient_checkpointing=gradient_checkpointing)
    return found


def _as_lora_settings(settings):
    """LoRA's settings from a k-bit method's own (ta-qlora, mma, ... carry more fields or fewer):
    the fields the two share, LoRA's defaults for the rest. Their extra parts (a temporal
    convolution, routers) are a few hundred parameters per layer and are not counted."""
    import dataclasses

    from engine.methods.lora import LoraSettings

    if isinstance(settings, LoraSettings):
        return settings
    shared = {f.name: getattr(settings, f.name) for f in dataclasses.fields(LoraSettings)
              if hasattr(settings, f.name)}
    return LoraSettings(**shared)


def _apply_structure(apply, model, settings, context):
    """Apply a method to a fake model. peft moves each new adapter to its base layer's device
    with Module.to(), which must swap parameters in place, and fake parameters cannot be
    swapped. Everything already lives on the same fake device, so the moves are skipped while
    the method builds its structure (only then; the training step itself is untouched)."""
    from unittest import mock

    with mock.patch.object(torch.nn.Module, "to", lambda module, *args, **kwargs: module):
        return apply(model, settings, context)


def _quantizable(model, unquantized: list[str]) -> dict[int, torch.nn.Parameter]:
    """The linear weights bitsandbytes would quantise (transformers' skip rule: prefix or suffix)."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    chosen = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and should_convert_module(name, unquantized):
            chosen[id(module.weight)] = module.weight
    # Tied output layers (Whisper's proj_out) share the embedding and are never quantised.
    return chosen


def _weight_bytes(base: dict, quantized: dict, bits: int | None) -> int:
    """The base model's parameters, k-bit ones at their packed size."""
    total = 0
    for key, parameter in base.items():
        if key in quantized:
            total += _kbit_bytes(parameter.numel(), parameter.shape, bits)
        else:
            total += parameter.numel() * parameter.element_size()
    return total


def _kbit_bytes(numel: int, shape: torch.Size, bits: int) -> int:
    if bits == 4:  # NF4 packs two per byte; one absmax per 64 weights (8-bit with double quant)
        return math.ceil(numel / 2) + math.ceil(numel / 64) + 4 * math.ceil(numel / (64 * 256))
    return numel + 4 * shape[0]  # int8 with one fp32 scale per output row


def _largest_dequantized_bytes(quantized: dict) -> int:
    return max((p.numel() * 4 for p in quantized.values()), default=0)
