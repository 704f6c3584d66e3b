"""The fine-tuning recipe: one run from its stored record to a saved adapter.

Protocol (as in torchtune's recipes): ``setup()`` loads data, model and method and restores the
newest checkpoint when there is one; ``train()`` runs optimizer steps, writing metrics and
events to storage as it goes, and returns the final status; ``finish()`` scores the test split
and writes the per-example table; ``save()`` writes the adapter (or full model); ``cleanup()``
closes the experiment tracking (engine/training/tracking.py), which gets every metric, the
settings and the adapter too. The worker thread calls these; nothing here knows about threads
or pages.

Resuming is exact: the batches of an epoch are a pure function of ``seed`` and the epoch, and
a checkpoint holds weights, optimizer, scheduler, gradient scaler, callback and RNG state, so
a stopped and resumed run logs the losses an uninterrupted one logs.

With ``parallel`` (one of the processes of a multi-GPU run, engine/training/parallel.py) each
rank trains on its shard of every batch and gradients are averaged before each step; rank 0
alone evaluates, writes checkpoints (with every rank's RNG state) and the adapter, and decides
when to stop; the other ranks' ``storage`` only logs (engine/training/rank.py).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from engine.errors import DatasetError, MethodError, ModelError, NotFoundError
from engine.flops import forward_flops_per_sample, peak_tflops, training_flops_per_sample
from engine.memory import MemoryMeter
from engine.methods import get_method
from engine.methods.build import build_method_model
from engine.methods.registry import METHOD_REPORT
from engine.models import count_parameters, task_model_for
from engine.models.base import GENERATION_BATCH_LIMIT_S
from engine.training.augment import SpecAugment
from engine.training.callbacks import EarlyStopping, TimeLimit
from engine.training.batches import Prefetcher
from engine.training.checkpoint import (latest_checkpoint, load_checkpoint, rng_state, save_checkpoint,
                                        set_rng_state)
from engine.training.evaluation import (EvaluationStopped, ItemDataset, evaluate, per_example_rows, read_untouched,
                                        untouched_key, write_evaluation, write_untouched)
from engine.training.monitoring import SAMPLES_PER_S, Throughput, system_sample, utilisation_metrics
from engine.training.parallel import DataParallel
from engine.training.profiles import active_profile, cap_gpu_memory
from engine.training.provenance import code_version, collect, device_description, package_versions, record_start
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
        self.dataset_dir, self.model_dir = self.find_inputs(dataset, model_record)
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
        self.train_flops_per_sample, self.peak_tflops = self.count_flops()
        self.memory = MemoryMeter(self.device)
        self.storage.update_run(self.run_id, total_steps=self.total_steps, step=self.step,
                                trainable_params=self.trainable_params, total_params=self.total_params)
        if self.is_main and cfg.tracking != "none":
            self.tracking = Tracking.open(cfg.tracking, home=self.storage.files.home, run_dir=self.run_dir,
                                          run=self.run, settings=self.settings,
                                          resumed_at=self.step, log=self.log)
        where = (f"{self.parallel.world_size} processes, {self.device} on this one" if self.parallel
                 else self.device)
        self.log(f"{self.method.name} on {model_record['name']} ({where}): "
                 f"{self.trainable_params:,} of {self.total_params:,} parameters train; "
                 f"{len(self.train_items)} train / {len(self.eval_items)} validation / "
                 f"{len(self.test_items)} test items; {self.total_steps} steps")

    def find_inputs(self, dataset: dict | None, model_record: dict | None) -> tuple[Path, Path]:
        """The dataset's and the model's folders, or a typed error naming what went missing
        since the run was submitted (the run keeps the names it was made with)."""
        if dataset is None:
            raise NotFoundError(f"dataset {self.run['dataset_name']!r} of this run was deleted; "
                                "import it again and start a new run")
        if model_record is None:
            raise NotFoundError(f"model {self.run['model_name']!r} of this run was deleted; "
                                "register it again and start a new run")
        dataset_dir = self.storage.files.resolve(dataset["path"])
        model_dir = self.storage.files.resolve(model_record["path"])
        if not dataset_dir.is_dir():
            raise DatasetError(f"the files of dataset {dataset['name']!r} are gone ({dataset_dir}); "
                               "delete it and import it again")
        if not model_dir.is_dir():
            raise ModelError(f"the files of model {model_record['name']!r} are gone ({model_dir}); "
                             "delete it and register it again")
        return dataset_dir, model_dir

    def count_steps(self) -> None:
        """Optimizer steps of the whole run (methods like AdaLoRA schedule with it)."""
        cfg = self.config
        self.batches_per_epoch = math.ceil(len(self.train_items) / self.global_batch_size)
        self.total_steps = cfg.optimizer_steps(len(self.train_items))

    def count_flops(self) -> tuple[float | None, float | None]:
        """Model FLOPs of one training example (on the first batch's padded shapes, counted on
        the meta device) and the device's peak TFLOP/s, for the utilisation metrics
        (engine/flops.py). Never fails a run: what cannot be worked out is not logged."""
        base_trains = not self.method.is_adapter
        try:
            first = self.task_model.collate([self.train_data[i] for i in self.epoch_batches(0)[0]])
            flops = training_flops_per_sample(forward_flops_per_sample(self.task_model, batch=first),
                                              trains_base_weights=base_trains)
        except Exception as error:  # noqa: BLE001 (a run trains without these figures)
            self.log(f"no utilisation figures: counting the model's FLOPs failed ({error!r})", "warning")
            return None, None
        try:
            peak = peak_tflops(self.device)
        except ValueError as error:
            self.log(f"no utilisation %: {error}", "warning")
            peak = None
        if peak and self.parallel:  # samples/s count every rank's examples: so does the peak
            peak *= self.parallel.world_size
        self.log(f"{flops / 1e9:.3g} GFLOP per training example ({3 if base_trains else 2} x forward); "
                 + (f"peak {peak:g} TFLOP/s" if peak else f"no known peak on {self.device}: no utilisation %"))
        return flops, peak

    def build_model(self) -> torch.nn.Module:
        # A resumed run reuses what its method decided the first time (the same 16-bit layers,
        # the same ranks), so its checkpoint fits the model.
        report_file = self.run_dir / METHOD_REPORT
        self.method_report = json.loads(report_file.read_text()) if report_file.is_file() else {}
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
        if not self.method_report:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        report_file = self.run_dir / METHOD_REPORT
        partial = report_file.with_suffix(".partial")
        partial.write_text(json.dumps(self.method_report, indent=2))
        partial.replace(report_file)  # never half-written

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
            self.restore_rank_rng(state.get("rng_ranks") or [])
        self.step, self.micro_batches = state["step"], state["micro_batches"]
        self.wall_offset = state["wall_time"]
        self.early_stopping.load_state_dict(state.get("early_stopping") or {})
        # Points logged after the checkpoint are replayed by this resume; drop the old ones.
        self.storage.delete_metrics_after(self.run_id, self.step)
        self.log(f"resumed from the checkpoint at step {self.step}")

    def restore_rank_rng(self, states: list[dict]) -> None:
        """Every rank continues its own random stream (rank 0's is the checkpoint's ``rng``)."""
        rank = self.parallel.rank
        if rank < len(states):
            set_rng_state(states[rank])
        else:  # resumed with more processes than the checkpoint saw
            torch.manual_seed(self.config.seed * 1000 + rank + 7919 * self.step)
            self.log(f"the checkpoint has no random state for rank {rank}; it draws a fresh one", "warning")

    # ------------------------------------------------------------------ training
    @property
    def global_batch_size(self) -> int:
        """Examples of one micro-batch over every rank (one per_device batch per rank)."""
        return self.config.per_device_train_batch_size * (self.parallel.world_size if self.parallel else 1)

    def autocast(self):
        return self.trainer.autocast()

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
                self.evaluate_untouched(started)
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
            self.record_step(wall, float(self.running_loss) / self.seen_in_step, grad_norm, throughput.take())
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
                    early = self.early_stopping.update(self.evaluate_and_record(wall_start=started))
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

    def record_step(self, wall: float, loss: float, grad_norm: float | None, rates: dict) -> None:
        memory_mb = self.memory.sample()
        values = {
            "train/loss": loss, "train/learning_rate": self.scheduler.get_last_lr()[0],
            "train/grad_norm": grad_norm, "system/memory_mb": memory_mb, **rates,
            **utilisation_metrics(rates[SAMPLES_PER_S], self.train_flops_per_sample, self.peak_tflops),
            **system_sample(self.device),
            **(self.method.step_metrics(self.model) if self.method.step_metrics else {}),
        }
        self.storage.add_metrics(self.run_id, self.step, wall, values)
        self.tracking.scalars(self.step, values)
        self.storage.update_run(self.run_id, step=self.step, wall_time_s=wall, wall_time_at=time.time(),
                                peak_memory_mb=self.memory.peak_mb)

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

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, items: list[dict], phase: str = "evaluation") -> tuple[dict, list]:
        """Metrics and predictions of the current model on ``items``; the run's ``phase``
        (e.g. "evaluating on the validation split") and examples done / total go to storage
        as it goes, at most twice a second, so the page shows the evaluation moving."""
        last_write = [float("-inf")]

        def report(done: int, total: int) -> None:
            if done < total and time.monotonic() - last_write[0] < 0.5:
                return
            last_write[0] = time.monotonic()
            self.storage.update_run(self.run_id, phase_done=done, phase_total=total)

        def slow(batch: int, seconds: float) -> None:
            self.log(f"{phase}: batch {batch} generated for {seconds:.0f} s and was cut there (the "
                     f"limit is {GENERATION_BATCH_LIMIT_S:.0f} s a batch); its transcripts may be "
                     "incomplete. A model that never ends its transcripts does this", "warning")

        self.storage.update_run(self.run_id, phase=phase, phase_done=0, phase_total=len(items))
        try:
            return evaluate(self.model, self.task_model, items, self.dataset_dir,
                            self.config.per_device_eval_batch_size, self.autocast(), on_progress=report,
                            should_stop=self.should_stop, on_slow_batch=slow)
        finally:
            self.storage.update_run(self.run_id, phase=None, phase_done=None, phase_total=None)

    def evaluate_and_record(self, wall_start: float, final: bool = False, label: str = "") -> dict:
        if not self.eval_items:
            return {}
        metrics, predictions = self.evaluate(
            self.eval_items, f"{'final ' if final else ''}evaluation{' of ' + label if label else ''} "
                             "on the validation split")
        self.last_validation = (metrics, predictions)
        wall = self.wall_offset + time.perf_counter() - wall_start
        values = {f"eval/{name}": value for name, value in metrics.items()}
        self.storage.add_metrics(self.run_id, self.step, wall, values)
        self.tracking.scalars(self.step, values)
        shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if v is not None)
        self.log(f"step {self.step}: validation {shown}")
        return metrics

    def evaluate_untouched(self, started: float) -> None:
        """Step 0 of the validation curve: the model as it ships, before any step. Pretrained
        Whisper only knows its whole 30 s window (on short ones it repeats itself: whisper-base
        on demo-voices, 136 % WER against 78 % on 30 s), so a run on short windows
        (``audio_padding=longest``) scores the untouched model the standard way; its later
        points use the run's own window, as its Playground and final score do."""
        home, key = self.storage.files.home, self.untouched_key()
        kept = read_untouched(home, key)
        if kept is not None and (kept.get("test") is not None) == bool(self.test_items):
            self.record_untouched(started, kept)
            return
        padding = getattr(self.task_model, "audio_padding", None)
        if padding == "longest":
            self.task_model.audio_padding = "30s"
        try:
            validation = self.evaluate_and_record(wall_start=started, label="the untouched model")
            test = None
            if self.test_items:  # the final score's split too, so its before and after are one split's
                test, _ = self.score_test(started, "evaluation of the untouched model on the test split")
        finally:
            if padding is not None:
                self.task_model.audio_padding = padding
        write_untouched(home, key, {"run_id": self.run_id, "owner_id": self.run["owner_id"],
                                    "validation": validation, "test": test})

    def untouched_key(self) -> str:
        """What decides the untouched model's scores besides the run's settings (evaluation.py)."""
        model = self.model_record
        return untouched_key(self.settings, {
            "model": {k: model.get(k) for k in ("id", "name", "source", "path", "created_at")},
            "dataset": {"id": self.run["dataset_id"], "version": self.run["dataset_version"]},
            "items": [len(self.eval_items), len(self.test_items)],
            "code": code_version(), "packages": package_versions(),
            "device": device_description(self.device)})

    def record_untouched(self, started: float, kept: dict) -> None:
        """Step 0 from an earlier run's identical scoring (``evaluate_untouched``)."""
        wall = self.wall_offset + time.perf_counter() - started
        for prefix, metrics in (("eval", kept["validation"]), ("test", kept.get("test"))):
            if metrics:
                values = {f"{prefix}/{name}": value for name, value in metrics.items()}
                self.storage.add_metrics(self.run_id, self.step, wall, values)
                self.tracking.scalars(self.step, values)
        shown = ", ".join(f"{k} {v:.3f}" for k, v in (kept["validation"] or {}).items() if v is not None)
        # another user's run is not named to this one (a shared model and dataset: same key)
        source = (f"run {kept.get('run_id')}" if kept.get("owner_id") == self.run["owner_id"]
                  else "an earlier run")
        self.log(f"step 0: validation {shown} (the untouched model's scores from {source}: "
                 "same model, data and settings that decide them, so not generated again)")

    def score_test(self, started: float, phase: str) -> tuple[dict, list]:
        """Metrics and predictions on the test split, stored as ``test/*`` at this step."""
        metrics, predictions = self.evaluate(self.test_items, phase)
        wall = self.wall_offset + time.perf_counter() - started
        values = {f"test/{name}": value for name, value in metrics.items()}
        self.storage.add_metrics(self.run_id, self.step, wall, values)
        self.tracking.scalars(self.step, values)
        return metrics, predictions

    def scores_before(self, split: str, after: dict) -> dict | None:
        """``split``'s scores at step 0 (``eval_on_start``), beside the final ones: what
        training changed, on one split. None when the run did not score the untouched model."""
        if not after or self.step == 0:
            return None
        prefix = {"validation": "eval", "test": "test"}[split]
        names = [f"{prefix}/{name}" for name in after]
        before = {row["name"].split("/", 1)[1]: row["value"]
                  for row in self.storage.metrics(self.run_id, names) if row["step"] == 0}
        if not before:
            return None
        padding = getattr(self.task_model, "audio_padding", None)
        # Windows are a Whisper matter: None for other models.
        return {"split": split, "before": before, "after": after, "steps": self.step,
                "before_window": "30s" if padding else None, "after_window": padding}

    def finish(self, started: float) -> None:
        """The last validation point, the final score on the test split, the adapter (rank 0)."""
        if not self.is_main:
            return
        validation = self.evaluate_and_record(wall_start=started, final=True)
        if self.test_items:
            split, items, fell_back = "test", self.test_items, False
            final, predictions = self.score_test(started, "final evaluation on the test split")
        elif self.eval_items:
            split, items, fell_back = "validation", self.eval_items, True
            final, predictions = validation, self.last_validation[1]
            self.log("this dataset has no test split: the final scores are on the validation "
                     "split, which also guided training (early stopping); treat them as optimistic")
        else:
            split, items, fell_back, final, predictions = None, [], True, {}, []
            self.log("no test or validation split: the run has no final score", "warning")
        if split:
            rows = per_example_rows(self.task_model, items, predictions)
            write_evaluation(self.run_dir, self.task_model, split, fell_back, final, rows,
                             validation_before=self.scores_before("validation", validation),
                             test_before=self.scores_before("test", final) if split == "test" else None)
        self.save()
        # The run's wall time includes its final scoring (elapsed never jumps back at the end).
        self.storage.update_run(self.run_id, metrics=final, wall_time_at=time.time(),
                                wall_time_s=self.wall_offset + time.perf_counter() - started)

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
            "settings": self.settings.to_record()["settings"],
        }, indent=2))
        if hasattr(self, "method_report"):
            self.write_method_report()
        if getattr(self, "method_report", None):  # reloading the adapter needs what was decided
            (out / METHOD_REPORT).write_text(json.dumps(self.method_report, indent=2))
        self.storage.update_run(self.run_id, adapter_dir=self.storage.files.relative(out))
        self.log(f"saved {'adapter' if self.method.is_adapter else 'model'} to {out}")
        self.tracking.artifact(out)
        return out

    def cleanup(self, status: str) -> None:
        """After the run, whichever way it ended: close its experiment tracking (never raises)."""
        self.tracking.close(status)
