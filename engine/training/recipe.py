"""The fine-tuning recipe: one run from its stored record to a saved adapter.

Protocol (as in torchtune's recipes): ``setup()`` loads data, model and method and restores a
checkpoint when there is one; ``train()`` runs optimizer steps, writing metrics and events to
storage as it goes, and returns the final status; ``evaluate()`` scores a split; ``save()``
writes the adapter (or full model). The worker thread calls these; nothing here knows about
threads or pages.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import torch
from torch.utils.data import DataLoader, Dataset

from engine import settings as settings_lib
from engine.methods import MethodContext, get_method
from engine.models import count_parameters, linear_module_names, task_model_for
from engine.training.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from engine.training.settings import TrainingSettings
from storage import Storage


class ItemDataset(Dataset):
    """Dataset items encoded on the fly by the task model (audio decoded per access)."""

    def __init__(self, items: list[dict], task_model, dataset_dir: Path):
        self.items, self.task_model, self.dataset_dir = items, task_model, dataset_dir

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.task_model.encode(self.items[index], self.dataset_dir)


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class MemoryMeter:
    """Memory in use now and at peak: CUDA allocations on a GPU, process RSS on a CPU."""

    def __init__(self, device: str):
        self.device = device
        self.process = psutil.Process()
        self.peak_mb = 0.0
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

    def sample(self) -> float:
        if self.device.startswith("cuda"):
            now = torch.cuda.memory_allocated() / 2**20
            self.peak_mb = max(self.peak_mb, torch.cuda.max_memory_allocated() / 2**20)
        else:
            now = self.process.memory_info().rss / 2**20
            self.peak_mb = max(self.peak_mb, now)
        return now


class FineTuneRecipe:
    def __init__(self, storage: Storage, run: dict, should_stop: Callable[[], bool]):
        self.storage, self.run, self.should_stop = storage, run, should_stop
        self.run_id = run["id"]
        self.run_dir = storage.files.run_dir(self.run_id)
        self.config = settings_lib.build(TrainingSettings, run["settings"]["training"], section="training")
        self.method = get_method(run["method"])
        self.method_settings = settings_lib.build(self.method.settings_cls, run["settings"]["method"],
                                                  section=run["method"])
        self.device = pick_device()

    def log(self, message: str, level: str = "info") -> None:
        self.storage.add_event(self.run_id, message, level)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.config
        dataset = self.storage.find_dataset(self.run["dataset_id"], owner_id=self.run["owner_id"])
        model_record = self.storage.find_model(self.run["model_id"], owner_id=self.run["owner_id"])
        if dataset is None or model_record is None:
            gone = "dataset" if dataset is None else "model"
            raise RuntimeError(f"the {gone} of this run was deleted; it cannot train any more")
        self.dataset_dir = self.storage.files.resolve(dataset["path"])
        self.model_dir = self.storage.files.resolve(model_record["path"])
        self.train_items = self.storage.dataset_items(dataset["id"], "train")
        self.eval_items = self.storage.dataset_items(dataset["id"], "validation")
        if not self.train_items:
            raise RuntimeError("the dataset has no items in its train split")
        self.task_model = task_model_for(model_record["family"], dataset["task"], self.model_dir,
                                         dataset["labels"],
                                         generation_max_length=cfg.generation_max_length)

        self.batches_per_epoch = math.ceil(len(self.train_items) / cfg.per_device_train_batch_size)
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(
            cfg.num_train_epochs * self.batches_per_epoch / cfg.gradient_accumulation_steps))

        torch.manual_seed(cfg.seed)  # new heads and LoRA weights start the same on every run
        context = MethodContext(
            task=dataset["task"], family=model_record["family"],
            default_target_modules=self.task_model.default_target_modules,
            head_modules=self.task_model.head_modules,
            unquantized_modules=self.task_model.unquantized_modules,
            linear_module_names=[], device=self.device,
            gradient_checkpointing=cfg.gradient_checkpointing, model_dir=self.model_dir,
            total_steps=self.total_steps,
        )
        load_kwargs = self.method.load_kwargs(self.method_settings, context)
        model = self.task_model.load(**load_kwargs)
        if "device_map" not in load_kwargs:
            model = model.to(self.device)
        context.linear_module_names = linear_module_names(model)
        try:
            self.model = self.method.apply(model, self.method_settings, context)
        except Exception as error:
            raise type(error)(f"method {self.method.name!r} failed to apply: {error}") from error
        self.trainable_params, self.total_params = count_parameters(self.model)
        if self.trainable_params == 0:
            raise RuntimeError(f"method {self.method.name!r} left no parameter to train")

        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad],
                                           lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        from transformers import get_scheduler

        self.scheduler = get_scheduler(cfg.lr_scheduler_type, self.optimizer,
                                       num_warmup_steps=cfg.warmup_steps,
                                       num_training_steps=self.total_steps)
        self.step, self.micro_batches, self.wall_offset = 0, 0, float(self.run.get("wall_time_s") or 0)
        if has_checkpoint(self.run_dir):
            state = load_checkpoint(self.run_dir, self.model, self.optimizer, self.scheduler)
            self.step, self.micro_batches = state["step"], state["micro_batches"]
            self.wall_offset = state["wall_time"]
            # Points logged after the checkpoint are replayed by this resume; drop the old ones.
            self.storage.delete_metrics_after(self.run_id, self.step)
            self.log(f"resumed from the checkpoint at step {self.step}")
        self.train_data = ItemDataset(self.train_items, self.task_model, self.dataset_dir)
        self.memory = MemoryMeter(self.device)
        self.storage.update_run(self.run_id, total_steps=self.total_steps, step=self.step,
                                trainable_params=self.trainable_params, total_params=self.total_params)
        self.log(f"{self.method.name} on {model_record['name']} ({self.device}): "
                 f"{self.trainable_params:,} of {self.total_params:,} parameters train; "
                 f"{len(self.train_items)} train / {len(self.eval_items)} validation items; "
                 f"{self.total_steps} steps")

    # ------------------------------------------------------------------ training
    def autocast(self):
        precision = self.config.precision
        use_bf16 = precision == "bf16" or (
            precision == "auto" and self.device == "cuda" and torch.cuda.is_bf16_supported())
        return torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16,
                              enabled=use_bf16)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The shuffled batches of one epoch: a pure function of seed and epoch, so a resumed
        run sees exactly the batches an uninterrupted one would."""
        generator = torch.Generator().manual_seed(self.config.seed * 1000 + epoch)
        order = torch.randperm(len(self.train_items), generator=generator).tolist()
        size = self.config.per_device_train_batch_size
        return [order[i: i + size] for i in range(0, len(order), size)]

    def train(self) -> str:
        cfg = self.config
        accumulation = cfg.gradient_accumulation_steps
        started = time.perf_counter()
        self.model.train()
        running_loss, seen_in_step = 0.0, 0
        while self.step < self.total_steps:
            epoch, offset = divmod(self.micro_batches, self.batches_per_epoch)
            loader = DataLoader(self.train_data, batch_sampler=self.epoch_batches(epoch)[offset:],
                                collate_fn=self.task_model.collate)
            for batch in loader:
                batch = {k: v.to(self.device) for k, v in batch.items()}
                with self.autocast():
                    loss = self.model(**batch).loss
                (loss / accumulation).backward()
                running_loss += loss.item()
                seen_in_step += 1
                self.micro_batches += 1
                if self.micro_batches % accumulation:
                    continue
                grad_norm = self.optimizer_step()
                self.step += 1
                wall = self.wall_offset + time.perf_counter() - started
                self.record_step(wall, running_loss / seen_in_step, grad_norm)
                running_loss, seen_in_step = 0.0, 0
                if cfg.eval_steps and self.step % cfg.eval_steps == 0 and self.step < self.total_steps:
                    self.evaluate_and_record(wall_start=started)
                if cfg.save_steps and self.step % cfg.save_steps == 0 and self.step < self.total_steps:
                    self.checkpoint(self.wall_offset + time.perf_counter() - started)
                if self.should_stop():
                    self.checkpoint(self.wall_offset + time.perf_counter() - started)
                    self.log(f"stopped at step {self.step} of {self.total_steps}; checkpoint saved")
                    return "stopped"
                if self.step >= self.total_steps:
                    break
        final = self.evaluate_and_record(wall_start=started)
        self.save()
        self.storage.update_run(self.run_id, metrics=final)
        return "completed"

    def optimizer_step(self) -> float:
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        self.optimizer.step()
        self.scheduler.step()
        if self.method.on_optimizer_step is not None:
            self.method.on_optimizer_step(self.model, self.step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def record_step(self, wall: float, loss: float, grad_norm: float) -> None:
        memory_mb = self.memory.sample()
        self.storage.add_metrics(self.run_id, self.step, wall, {
            "train/loss": loss, "train/learning_rate": self.scheduler.get_last_lr()[0],
            "train/grad_norm": grad_norm, "system/memory_mb": memory_mb,
        })
        self.storage.update_run(self.run_id, step=self.step, wall_time_s=wall,
                                heartbeat_at=time.time(), peak_memory_mb=self.memory.peak_mb)

    def checkpoint(self, wall: float) -> None:
        save_checkpoint(self.run_dir, self.model, self.optimizer, self.scheduler,
                        {"step": self.step, "micro_batches": self.micro_batches, "wall_time": wall})
        self.storage.update_run(self.run_id, checkpoint_dir=self.storage.files.relative(self.run_dir / "checkpoint"),
                                wall_time_s=wall)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, items: list[dict]) -> tuple[dict, list]:
        """Metrics and predictions of the current model on ``items``."""
        was_training = self.model.training
        self.model.eval()
        data = ItemDataset(items, self.task_model, self.dataset_dir)
        loader = DataLoader(data, batch_size=self.config.per_device_eval_batch_size,
                            collate_fn=self.task_model.collate)
        predictions = []
        with self.autocast():
            for batch in loader:
                predictions += self.task_model.predict(self.model, batch)
        self.model.train(was_training)
        references = [self.task_model.reference(item) for item in items]
        return self.task_model.score(predictions, references), predictions

    def evaluate_and_record(self, wall_start: float) -> dict:
        if not self.eval_items:
            return {}
        metrics, _ = self.evaluate(self.eval_items)
        wall = self.wall_offset + time.perf_counter() - wall_start
        self.storage.add_metrics(self.run_id, self.step, wall,
                                 {f"eval/{name}": value for name, value in metrics.items()})
        shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if v is not None)
        self.log(f"step {self.step}: validation {shown}")
        return metrics

    # ------------------------------------------------------------------ saving
    def save(self) -> Path:
        """The adapter (a PEFT folder) or, for full fine-tuning, a transformers model folder."""
        out = self.run_dir / "adapter"
        shutil.rmtree(out, ignore_errors=True)
        self.model.save_pretrained(out)
        if not self.method.is_adapter:  # a full model also needs its tokenizer / processor files
            for source in self.model_dir.iterdir():
                if source.is_file() and not (out / source.name).exists() and source.suffix not in {
                        ".safetensors", ".bin", ".pt", ".pth"}:
                    shutil.copy2(source, out / source.name)
        (out / "workbench.json").write_text(json.dumps({
            "run_id": self.run_id, "method": self.method.name, "task": self.task_model.task,
            "family": self.task_model.family, "base_model": self.run["model_name"],
            "base_model_path": str(self.model_dir), "labels": self.task_model.labels,
            "settings": self.run["settings"],
        }, indent=2))
        self.storage.update_run(self.run_id, adapter_dir=self.storage.files.relative(out))
        self.log(f"saved {'adapter' if self.method.is_adapter else 'model'} to {out}")
        return out
