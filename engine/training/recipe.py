"""The fine-tuning recipe: one run from its stored record to a saved adapter.

Protocol (as in torchtune's recipes): ``setup()`` loads data, model and method and restores the
newest checkpoint when there is one; ``train()`` runs optimizer steps, writing metrics and
events to storage as it goes (``RunRecorder``, engine/training/monitoring.py), and returns the
final status; ``finish()`` scores the test split and writes the per-example table (``RunScoring``,
engine/training/evaluation.py, which also scores every validation point); ``save()`` writes the
adapter (or full model) with ``workbench.json`` beside it (engine/training/run_meta.py);
``cleanup()`` closes the experiment tracking (engine/training/tracking.py), which gets every
metric, the settings and the adapter too. The worker thread calls these; nothing here knows
about threads or pages.

Resuming is exact: the batches of an epoch are a pure function of ``seed`` and the epoch, and
a checkpoint holds weights, optimizer, scheduler, gradient scaler, callback and RNG state, so
a stopped and resumed run logs the losses an uninterrupted one logs.

With ``parallel`` (one of the processes of a multi-GPU run, engine/training/parallel.py) each
rank trains on its shard of every batch and gradients are averaged before each step; rank 0
alone evaluates, writes checkpoints (with every rank's RNG state) and the adapter, and decides
when to stop; the other ranks' ``storage`` only logs (engine/training/rank.py).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from engine.errors import DatasetError, MethodError
from engine.memory import MemoryMeter
from engine.methods import get_method
from engine.methods.build import build_method_model
from engine.models import count_parameters, task_model_for
from engine.names import ADAPTER_DIR
from engine.training.augment import SpecAugment
from engine.training.callbacks import EarlyStopping, TimeLimit
from engine.training.batches import Prefetcher
from engine.training.checkpoint import (latest_checkpoint, load_checkpoint, restore_rank_rng, rng_state,
                                        save_checkpoint)
from engine.training.evaluation import EvaluationStopped, ItemDataset, RunScoring
from engine.training.monitoring import RunRecorder, Throughput, count_flops
from engine.training.parallel import DataParallel
from engine.training.preflight import run_inputs
from engine.training.profiles import active_profile, cap_gpu_memory
from engine.training.provenance import collect, record_start
from engine.training.run_meta import RunMeta, read_method_report, write_adapter_files, write_method_report
from engine.training.settings import RunSettings
from engine.training.step import prepare_training
from engine.training.slots import claimed_device
from engine.training.tracking import Tracking
from storage import Storage

__all__ = ["FineTuneRecipe", "ItemDataset"]


# What rank 0 tells every rank after each optimizer step (FineTuneRecipe.decide).
GO_ON, FINISH_EARLY, STOP, TIME_UP = 0, 1, 2, 3


class FineTuneRecipe:
    def __init__(self, storage: Storage, run: dict, should_stop: Callable[[], bool],
                 parallel: DataParallel | None = None):
        self.storage, self.run, self.should_stop = storage, run, should_stop
        self.parallel = parallel
        self.is_main = parallel is None or parallel.is_main
        self.run_id = run["id"]
        self.run_dir = storage.files.run_dir(self.run_id)
        self.settings = RunSettings.from_record(run)
        self.config, self.method_settings = self.settings.training, self.settings.method_settings
        self.method = get_method(run["method"])
        self.device = parallel.device if parallel else claimed_device(run)
        if self.device.startswith("cuda:"):  # one GPU of several: this thread's current device too
            torch.cuda.set_device(self.device)
        self.tracking = Tracking([], self.log)  # nothing until setup opens the run's choice

    def log(self, message: str, level: str = "info") -> None:
        self.storage.add_event(self.run_id, message, level)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.config
        dataset = self.storage.find_dataset(self.run["dataset_id"], owner_id=self.run["owner_id"])
        model_record = self.storage.find_model(self.run["model_id"], owner_id=self.run["owner_id"])
        self.dataset_dir, self.model_dir = run_inputs(self.storage.files, self.run, dataset, model_record)
        self.model_record = model_record
        self.train_items = self.storage.dataset_items(dataset["id"], "train")
        self.eval_items = self.storage.dataset_items(dataset["id"], "validation")
        self.test_items = self.storage.dataset_items(dataset["id"], "test")
        if not self.train_items:
            raise DatasetError(f"dataset {dataset['name']!r} has no items in its train split; "
                               "add some, or import it again with a train split")
        self.task_model = task_model_for(model_record["family"], dataset["task"], self.model_dir,
                                         dataset["labels"], **self.settings.task_options())
        self.count_steps()
        if self.is_main:  # what produced this run's numbers (engine/training/provenance.py)
            record_start(self.run_dir, collect(
                self.run, dataset, model_record, {"train": len(self.train_items), "validation": len(
                    self.eval_items), "test": len(self.test_items)}, self.device,
                self.parallel.world_size if self.parallel else 1))
        capped = cap_gpu_memory(active_profile(), self.device)  # before the model takes memory
        if capped:
            self.log(capped)
        self.model = self.build_model()
        if self.parallel:
            self.parallel.broadcast_parameters([p for p in self.model.parameters() if p.requires_grad])
            # Each rank draws its own dropout and masking (the ranks see different examples).
            torch.manual_seed(cfg.seed * 1000 + self.parallel.rank)
        self.trainable_params, self.total_params = count_parameters(self.model)
        if self.trainable_params == 0:
            raise MethodError(f"method {self.method.name!r} left no parameter to train; check its "
                              "target_modules (or the equivalent setting) against this model")
        self.build_optimization()
        self.early_stopping = EarlyStopping(f"{self.task_model.primary_metric}",
                                            cfg.early_stopping_patience)
        self.step, self.micro_batches, self.wall_offset = 0, 0, float(self.run.get("wall_time_s") or 0)
        self.restore()
        self.augment = SpecAugment(cfg.freq_mask_param, cfg.time_mask_param) if (
            cfg.spec_augment and dataset["task"] != "text-classification") else None
        if cfg.feature_device == "auto" and self.device.startswith("cuda") and hasattr(
                self.task_model, "extract_features_on") and self.task_model.extract_features_on(self.device):
            self.log("log-mel features are computed per batch on the GPU")
        self.train_data = ItemDataset(self.train_items, self.task_model, self.dataset_dir,
                                      cache_mb=cfg.feature_cache_mb)
        self.train_flops_per_sample, self.peak_tflops = count_flops(  # for the utilisation metrics
            self.task_model, lambda: self.task_model.collate([self.train_data[i] for i in self.epoch_batches(0)[0]]),
            not self.method.is_adapter, self.device, self.parallel.world_size if self.parallel else 1, self.log)
        self.memory = MemoryMeter(self.device)
        self.storage.update_run(self.run_id, total_steps=self.total_steps, step=self.step,
                                trainable_params=self.trainable_params, total_params=self.total_params)
        if self.is_main and cfg.tracking != "none":
            self.tracking = Tracking.open(cfg.tracking, home=self.storage.files.home, run_dir=self.run_dir,
                                          run=self.run, settings=self.settings,
                                          resumed_at=self.step, log=self.log)
        self.recorder = RunRecorder(  # each step's metrics and each evaluation's, to storage and tracking
            self.storage, self.run_id, self.tracking, self.device, self.memory, self.train_flops_per_sample,
            self.peak_tflops, (lambda: self.method.step_metrics(self.model)) if self.method.step_metrics else None)
        self.scoring = RunScoring(  # the evaluations, on rank 0 (engine/training/evaluation.py)
            self.storage, self.run, self.settings, model_record=model_record, task_model=self.task_model,
            model=self.model, dataset_dir=self.dataset_dir, run_dir=self.run_dir, device=self.device,
            autocast=self.trainer.autocast, should_stop=self.should_stop, recorder=self.recorder, log=self.log,
            wall_offset=self.wall_offset)
        where = (f"{self.parallel.world_size} processes, {self.device} on this one" if self.parallel
                 else self.device)
        self.log(f"{self.method.name} on {model_record['name']} ({where}): "
                 f"{self.trainable_params:,} of {self.total_params:,} parameters train; "
                 f"{len(self.train_items)} train / {len(self.eval_items)} validation / "
                 f"{len(self.test_items)} test items; {self.total_steps} steps")

    def count_steps(self) -> None:
        """Optimizer steps of the whole run (methods like AdaLoRA schedule with it)."""
        cfg = self.config
        self.batches_per_epoch = math.ceil(len(self.train_items) / self.global_batch_size)
        self.total_steps = cfg.optimizer_steps(len(self.train_items))

    def build_model(self) -> torch.nn.Module:
        # A resumed run reuses what its method decided the first time (the same 16-bit layers,
        # the same ranks), so its checkpoint fits the model.
        self.method_report = read_method_report(self.run_dir)
        model = build_method_model(self.task_model, self.method, self.method_settings,
                                   family=self.model_record["family"], device=self.device,
                                   seed=self.config.seed, total_steps=self.total_steps,
                                   gradient_checkpointing=self.config.gradient_checkpointing,
                                   sample_batches=self.sample_batches, report=self.method_report,
                                   log=self.log)
        self.write_method_report()
        return model

    def write_method_report(self) -> None:
        """The method's report in the run's folder, with what it decided while training so far
        (``Method.decisions``: mma's routing, ta-qlora's kernel drift) merged in."""
        if self.method.decisions is not None and getattr(self, "model", None) is not None:
            self.method_report.update(self.method.decisions(self.model))
        if self.method_report:
            write_method_report(self.run_dir, self.method_report)

    def sample_batches(self, count: int) -> list[dict]:
        """The first ``count`` batches of the first epoch, collated (methods measure on them)."""
        return [self.task_model.collate([self.task_model.encode(self.train_items[i], self.dataset_dir)
                                         for i in batch])
                for batch in self.epoch_batches(0)[:count]]

    def build_optimization(self) -> None:
        """Memory plan, checkpointing, compiled layers, optimizer, schedule, scaler, CUDA graphs:
        ``prepare_training``, the set-up the speed benchmark's engine side shares."""
        prepared = prepare_training(
            self.model, self.config, self.device, self.total_steps, plan_batch=self.longest_batch,
            on_optimizer_step=self.method.on_optimizer_step, log=self.log,
            parallel=self.parallel is not None, compile_cache=self.storage.files.home / "cache" / "compiled",
            on_phase=self.show_phase if self.is_main else None)
        self.trainer, self.memory_plan = prepared.step, prepared.plan
        self.optimizer, self.scheduler = self.trainer.optimizer, self.trainer.scheduler
        self.scaler = self.trainer.scaler

    def show_phase(self, phase: str | None) -> None:
        """What the run is doing between steps (compiling for a new batch shape), for the
        live monitor and the command line; None when it trains again."""
        self.storage.update_run(self.run_id, phase=phase, phase_done=None, phase_total=None)

    def longest_batch(self) -> dict[str, torch.Tensor]:
        """A batch of the longest training items (their shapes bound every later batch's): what
        a memory budget is planned for."""
        size = self.config.per_device_train_batch_size
        longest = sorted(self.train_items, reverse=True, key=lambda item: (
            item.get("duration_s") or 0, len(item.get("text") or "")))[:size]
        return self.task_model.collate([self.task_model.encode(item, self.dataset_dir)
                                        for item in longest])

    def restore(self) -> None:
        folder = latest_checkpoint(self.run_dir)
        if folder is None:
            return
        state = load_checkpoint(folder, self.model, self.optimizer, self.scheduler, self.scaler)
        if self.parallel:
            restore_rank_rng(state.get("rng_ranks") or [], self.parallel.rank, self.config.seed, self.step, self.log)
        self.step, self.micro_batches = state["step"], state["micro_batches"]
        self.wall_offset = state["wall_time"]
        self.early_stopping.load_state_dict(state.get("early_stopping") or {})
        # Points logged after the checkpoint are replayed by this resume; drop the old ones.
        self.storage.delete_metrics_after(self.run_id, self.step)
        self.log(f"resumed from the checkpoint at step {self.step}")

    # ------------------------------------------------------------------ training
    @property
    def global_batch_size(self) -> int:
        """Examples of one micro-batch over every rank (one per_device batch per rank)."""
        return self.config.per_device_train_batch_size * (self.parallel.world_size if self.parallel else 1)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The shuffled batches of one epoch: a pure function of seed and epoch, so a resumed
        run sees exactly the batches an uninterrupted one would. With several ranks these are
        the batches of all of them together (``shard`` takes each rank's part)."""
        generator = torch.Generator().manual_seed(self.config.seed * 1000 + epoch)
        order = torch.randperm(len(self.train_items), generator=generator).tolist()
        size = self.global_batch_size
        return [order[i: i + size] for i in range(0, len(order), size)]

    def collate_train(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """A training batch before augmentation (built on the prefetch thread: no RNG here)."""
        batch = self.task_model.collate(examples)
        if self.trainer.graphs is not None:  # few shapes, each captured once
            batch = self.task_model.bucket(batch)
        return batch

    def batch_stream(self, batches: list[list[int]]) -> Prefetcher:
        """The epoch's ``(indices, batch)`` before augmentation, built ahead (engine/training/batches.py)."""
        return Prefetcher(self.train_data.__getitem__, self.collate_train, batches,
                          items=self.worker_items(batches), depth=self.config.prefetch_batches,
                          threads=min(4, os.cpu_count() or 1), pin=self.device.startswith("cuda"))

    def worker_items(self, batches: list[list[int]]):
        """With ``dataloader_num_workers``, worker processes decode and encode the epoch's items
        (while uncached ones remain) and yield them batch by batch, for the prefetcher to
        collate; None: the prefetcher's own threads fetch them. Either way collation,
        bucketing and SpecAugment never run in a worker."""
        workers = self.config.dataloader_num_workers
        if not workers or self.train_data.holds(batches):
            return None
        # A generator of its own: the loader's base-seed draw must not move the global stream.
        loader = DataLoader(self.train_data, batch_sampler=batches, collate_fn=list,
                            num_workers=workers, generator=torch.Generator().manual_seed(self.config.seed))
        return (self.train_data.remember(indices, examples) for indices, examples in zip(batches, loader))

    def train(self) -> str:
        cfg = self.config
        accumulation = cfg.gradient_accumulation_steps
        started = time.perf_counter()
        time_limit, throughput = TimeLimit(cfg.max_time_minutes), Throughput()
        if self.is_main:  # the clock starts: elapsed moves from here (engine/training/clock.py)
            self.storage.update_run(self.run_id, wall_time_s=self.wall_offset, wall_time_at=time.time())
        self.model.train()
        self.running_loss, self.seen_in_step = 0.0, 0  # a step's micro-batches may span epochs
        if cfg.eval_on_start and self.micro_batches == 0 and self.is_main:
            try:
                self.scoring.evaluate_untouched(started, self.eval_items, self.test_items, self.step)
            except EvaluationStopped:  # nothing trained yet: no checkpoint, resume starts afresh
                self.log("stopped while scoring the untouched model, before the first step")
                return "stopped"
        while self.step < self.total_steps:
            epoch, offset = divmod(self.micro_batches, self.batches_per_epoch)
            batches = self.epoch_batches(epoch)[offset:]
            mine = [self.parallel.shard(b) for b in batches] if self.parallel else batches
            # Batches are built ahead on another thread; SpecAugment draws its masks here, in
            # this thread, from the one RNG stream a checkpoint saves, so a resumed run masks
            # exactly as an uninterrupted one.
            with self.batch_stream([b for b in mine if b]) as stream:
                outcome = self.train_epoch(batches, mine, iter(stream), accumulation, started,
                                           time_limit, throughput)
            if outcome is not None:
                return outcome
        return self.finish_or_stop(started)

    def finish_or_stop(self, started: float) -> str:
        """``finish``, or "stopped" with a checkpoint when Stop comes during its evaluations
        (a resume then scores and saves what this would have)."""
        try:
            self.finish(started)
        except EvaluationStopped:
            if self.parallel:  # the other ranks have left (finish is rank 0's): no collective now
                self.log(f"stopped during the final evaluation at step {self.step}; resume continues "
                         "from the last checkpoint")
                return "stopped"
            self.checkpoint(self.wall_offset + time.perf_counter() - started)
            self.log(f"stopped during the final evaluation at step {self.step}; checkpoint saved, "
                     "resume to score and save the run")
            return "stopped"
        return "completed"

    def train_epoch(self, batches, mine, stream, accumulation, started, time_limit, throughput) -> str | None:
        """One epoch's (remaining) batches, ``mine`` this rank's share of each (all of it on one
        device); a status when the run ends inside it."""
        cfg = self.config
        for indices, my_indices in zip(batches, mine):
            if my_indices:  # a rank's share of a short last batch may be empty
                _, batch = next(stream)
                if self.augment is not None:
                    batch = self.augment(batch)
                if cfg.full_window_every and self.micro_batches % cfg.full_window_every == cfg.full_window_every - 1:
                    batch = self.task_model.whole_window(batch)  # a function of the position: resumes alike
                share = self.parallel.share(len(my_indices), len(indices)) if self.parallel else 1.0
                self.running_loss += self.trainer.forward_backward(batch, share / accumulation) * share
            self.seen_in_step += 1
            self.micro_batches += 1
            throughput.add(len(indices), sum(self.train_items[i]["duration_s"] or 0 for i in indices))
            if self.micro_batches % accumulation:
                continue
            if self.parallel:  # every rank's gradients and loss, averaged
                self.running_loss = self.parallel.average(self.trainer.parameters, self.running_loss)
            grad_norm = self.optimizer_step()
            self.step += 1
            wall = self.wall_offset + time.perf_counter() - started
            self.recorder.step(self.step, wall, float(self.running_loss) / self.seen_in_step, grad_norm,
                               throughput.take(), self.scheduler.get_last_lr()[0])
            self.running_loss, self.seen_in_step = 0.0, 0
            outcome = self.after_step(started, time_limit)
            if outcome is not None:
                return outcome
            if self.step >= self.total_steps:
                break
        return None

    def after_step(self, started: float, time_limit: TimeLimit) -> str | None:
        """Evaluate, checkpoint, and decide whether the run ends here (a status) or goes on."""
        cfg = self.config
        wall = lambda: self.wall_offset + time.perf_counter() - started  # noqa: E731
        decision = self.decide(started, time_limit)
        if decision == FINISH_EARLY:
            if self.is_main:
                self.log(f"early stopping at step {self.step}: validation "
                         f"{self.early_stopping.metric} has not improved for "
                         f"{self.early_stopping.patience} evaluations (best {self.early_stopping.best:.4f})")
            return self.finish_or_stop(started)
        if cfg.save_steps and self.step % cfg.save_steps == 0 and self.step < self.total_steps:
            self.checkpoint(wall())
        if decision == STOP:
            self.checkpoint(wall())
            self.log(f"stopped at step {self.step} of {self.total_steps}; checkpoint saved")
            return "stopped"
        if decision == TIME_UP:
            self.checkpoint(wall())
            self.log(f"time limit of {cfg.max_time_minutes:g} minutes reached at step {self.step}; "
                     "checkpoint saved, resume to continue", "warning")
            return "stopped"
        return None

    def decide(self, started: float, time_limit: TimeLimit) -> int:
        """Whether the run goes on after this step: rank 0 evaluates and asks (validation,
        stop requests, the time limit), every other rank is told its answer."""
        cfg = self.config
        decision = GO_ON
        if self.is_main:
            early = False
            if cfg.eval_steps and self.step % cfg.eval_steps == 0 and self.step < self.total_steps:
                try:
                    early = self.early_stopping.update(
                        self.scoring.evaluate_and_record(self.eval_items, self.step, started))
                except EvaluationStopped:  # Stop during the evaluation: the run stops at this step
                    self.log(f"stop requested during the evaluation at step {self.step}; it was dropped")
                    return self.parallel.decide(STOP) if self.parallel else STOP
            if early:
                decision = FINISH_EARLY
            elif self.should_stop():
                decision = STOP
            elif time_limit.reached() and self.step < self.total_steps:
                decision = TIME_UP
        return self.parallel.decide(decision) if self.parallel else decision

    def optimizer_step(self) -> float | None:
        return self.trainer.optimizer_step(self.step + 1)

    def checkpoint(self, wall: float) -> None:
        """Rank 0 writes the checkpoint, with every rank's RNG state (all ranks call this)."""
        state = {"step": self.step, "micro_batches": self.micro_batches, "wall_time": wall,
                 "early_stopping": self.early_stopping.state_dict()}
        if self.parallel:
            state["rng_ranks"] = self.parallel.gather_json(rng_state())
            state["world_size"] = self.parallel.world_size
        if not self.is_main:
            return
        folder = save_checkpoint(
            self.run_dir, self.model, self.optimizer, self.scheduler, state,
            scaler=self.scaler, keep=self.config.save_total_limit)
        self.write_method_report()  # a resumed run goes on from what was decided by now
        self.storage.update_run(self.run_id, checkpoint_dir=self.storage.files.relative(folder),
                                wall_time_s=wall, wall_time_at=time.time())

    def finish(self, started: float) -> None:
        """The last validation point, the final score on the test split, the adapter (rank 0)."""
        if not self.is_main:
            return
        final = self.scoring.final(started, self.step, self.eval_items, self.test_items)
        self.save()
        # The run's wall time includes its final scoring (elapsed never jumps back at the end).
        self.storage.update_run(self.run_id, metrics=final, wall_time_at=time.time(),
                                wall_time_s=self.wall_offset + time.perf_counter() - started)

    # ------------------------------------------------------------------ saving
    def save(self) -> Path:
        """The adapter (a PEFT folder) or, for full fine-tuning, a transformers model folder."""
        out = self.run_dir / ADAPTER_DIR
        shutil.rmtree(out, ignore_errors=True)
        self.model.save_pretrained(out)
        if hasattr(self, "method_report"):
            self.write_method_report()
        # Beside it: processor files (a full model), workbench.json, the method's report.
        write_adapter_files(out, RunMeta(
            run_id=self.run_id, method=self.method.name, task=self.task_model.task,
            family=self.task_model.family, base_model=self.run["model_name"],
            base_model_path=str(self.model_dir), labels=self.task_model.labels,
            settings=self.settings.to_record()["settings"]), getattr(self, "method_report", None),
            model_dir=None if self.method.is_adapter else self.model_dir)
        self.storage.update_run(self.run_id, adapter_dir=self.storage.files.relative(out))
        self.log(f"saved {'adapter' if self.method.is_adapter else 'model'} to {out}")
        self.tracking.artifact(out)
        return out

    def cleanup(self, status: str) -> None:
        """After the run, whichever way it ended: close its experiment tracking (never raises)."""
        self.tracking.close(status)
