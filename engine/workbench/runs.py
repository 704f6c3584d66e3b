"""Runs: submit, queue, move, cancel, delete, list, stop, resume, wait and tag (planning a run
is run_planning.py, what it left run_results.py)."""

from __future__ import annotations

import shutil

from engine.errors import NotFoundError, RunError, SettingsError
from engine.training.settings import stored_training
from storage import utc_now


class RunsMixin:
    # ------------------------------------------------------------------ runs
    def submit_run(self, dataset: str | int, model: str | int, method: str,
                   method_settings: dict | None = None, training_settings: dict | None = None) -> int:
        """Validate everything that can be checked before training, then queue the run."""
        plan = self.check_run(dataset, model, method, method_settings, training_settings)
        record = self._run_record(plan)
        warnings = record.pop("warnings")
        run_id = self.storage.create_run(record)
        self.storage.add_event(run_id, "queued")
        for warning in warnings:
            self.storage.add_event(run_id, warning, "warning")
        if self.worker is not None:
            self.worker.wake()
        return run_id

    def queue(self) -> list[dict]:
        """Queued runs in the order they will train, with position and time estimates
        (``engine.training.queue.queue_rows``)."""
        from engine.training.queue import queue_rows

        return queue_rows(self.storage, self.owner_id, see_all=self.see_all)

    def move_run(self, run_id: int, position: int) -> list[int]:
        """Move a queued run to ``position`` (1 = next to train); returns the queue's ids.

        The queue is fair between users (runs take turns by owner, storage/runs.py
        ``FAIR_ORDER``): an admin's move pins the run exactly there (with the runs ahead of
        it); anybody else's run changes places with their own runs only, so it lands on the
        turn of theirs nearest ``position`` (without accounts, exactly there)."""
        run = self._own_run(run_id, "moved", admin_may=True)
        if run["status"] != "queued":
            raise RunError(f"run {run['id']} is {run['status']}; only queued runs can be moved")
        if position < 1:
            raise SettingsError(f"position must be 1 or more, got {position}")
        order = self.storage.move_in_queue(run["id"], position, pin=self.see_all)
        now = order.index(run["id"]) + 1
        self.storage.add_event(run["id"], f"moved to position {now} in the queue" + (
            "" if now == min(position, len(order)) else
            f" (asked for {position}: runs take turns by owner, so a run changes places with "
            "its owner's own runs only; an admin can pin it anywhere)"))
        return order

    def cancel_run(self, run_id: int) -> None:
        """Take a queued run out of the queue (it ends ``cancelled``)."""
        run = self._own_run(run_id, "cancelled", admin_may=True)
        if run["status"] != "queued":
            raise RunError(f"run {run['id']} is {run['status']}; only queued runs can be "
                           "cancelled (stop a running one)")
        self.storage.update_run(run["id"], status="cancelled", finished_at=utc_now())
        self.storage.add_event(run["id"], "cancelled before it started")

    def delete_run(self, run_id: int) -> None:
        """Delete a run that is not queued or running: its record, metrics and log, its
        checkpoints and its adapter (exports already downloaded are not touched)."""
        run = self._own_run(run_id, "deleted")
        if run["status"] in ("queued", "running") or not self.storage.delete_run(run["id"], run["owner_id"]):
            raise RunError(f"run {run['id']} is {self.get_run(run['id'])['status']}; stop it (or "
                           "cancel it while queued) first, then delete it")
        shutil.rmtree(self.storage.files.home / "runs" / str(run["id"]), ignore_errors=True)

    def list_runs(self, limit: int | None = None) -> list[dict]:
        """The user's runs and runs shared with everybody (an admin's view: all), newest first."""
        return self.storage.list_runs(self.owner_id, limit, see_all=self.see_all)

    def get_run(self, run_id: int) -> dict:
        """A run this user may read; another user's unshared run is "not found", like a
        missing one, so ids cannot be probed."""
        run = self.storage.get_run(int(run_id), self.owner_id, see_all=self.see_all)
        if run is None:
            raise NotFoundError(f"no run {run_id}")
        return run

    def _own_run(self, run_id: int, doing: str, *, admin_may: bool = False) -> dict:
        """A run this user may change: their own (an admin may also stop, cancel or move any
        run: the device is shared). A shared run of another user is read-only."""
        run = self.get_run(run_id)
        if run["owner_id"] != self.owner_id and not (admin_may and self.see_all):
            raise RunError(f"run {run['id']} is another user's, shared with you read-only; it "
                           f"cannot be {doing} (clone it to make your own)")
        return run

    def _run_model(self, run: dict) -> dict:
        """The base model of a run this user may read (a shared run's, even if the model is not)."""
        model = self.storage.find_model(run["model_id"], run["owner_id"])
        if model is None:
            raise NotFoundError(f"the base model {run['model_name']!r} of run {run['id']} was deleted")
        return model

    def run_summary(self, run_id: int) -> dict:
        """What ``runs show --json`` prints: the contract's fields plus progress, the run's
        ``provenance`` and what its method decided (``decisions``)."""
        run = self.get_run(run_id)
        adapter = self.storage.files.resolve(run["adapter_dir"]) if run["adapter_dir"] else None
        return {
            "id": run["id"], "status": run["status"], "method": run["method"], "task": run["task"],
            "dataset": run["dataset_name"], "dataset_version": run["dataset_version"],
            "dataset_exists": self.storage.find_dataset(run["dataset_id"], run["owner_id"]) is not None,
            "owner": self._owner_name(run), "shared": bool(run.get("shared")),
            "model": run["model_name"], "settings": run["settings"], "metrics": run["metrics"] or {},
            "trainable_params": run["trainable_params"], "total_params": run["total_params"],
            "peak_memory_mb": run["peak_memory_mb"], "wall_time_s": run["wall_time_s"],
            "step": run["step"], "total_steps": run["total_steps"],
            "adapter_dir": str(adapter) if adapter else None, "error": run["error"],
            "created_at": run["created_at"], "started_at": run["started_at"],
            "finished_at": run["finished_at"], "queue_position": self._queue_position(run),
            "provenance": self.run_provenance(run["id"]), "decisions": self.run_decisions(run["id"]),
        }

    def _queue_position(self, run: dict) -> int | None:
        if run["status"] != "queued":
            return None
        queued = [r["id"] for r in self.storage.queued_runs()]
        # A worker may claim the run between the two reads: then it is no longer queued.
        return queued.index(run["id"]) + 1 if run["id"] in queued else None

    def stop_run(self, run_id: int) -> str:
        """Queued: cancelled at once. Running: stops at the next step with a checkpoint."""
        run = self._own_run(run_id, "stopped", admin_may=True)
        if run["status"] == "queued":
            self.cancel_run(run["id"])
            return "cancelled"
        if run["status"] != "running":
            raise RunError(f"run {run['id']} is {run['status']}; only queued or running runs can be stopped")
        self.storage.request_stop(run["id"])
        if self.worker is not None:
            self.worker.request_stop(run["id"])
        self.storage.add_event(run["id"], "stop requested")
        return "stopping"

    def resume_run(self, run_id: int) -> None:
        """Queue a stopped, interrupted or failed run again; it continues from its checkpoint."""
        run = self._own_run(run_id, "resumed")
        if run["status"] not in ("stopped", "interrupted", "failed"):
            raise RunError(f"run {run['id']} is {run['status']}; only stopped, interrupted or "
                           "failed runs can be resumed")
        self.storage.requeue_run(run["id"], stop_requested=0, error=None, finished_at=None)
        self.storage.add_event(run["id"], "queued to resume")
        if self.worker is not None:
            self.worker.wake()

    def other_node_command(self, run_id: int) -> str:
        """What each other machine of a multi-machine run starts (docs/multi-gpu.md)."""
        from engine.training.distributed import other_node_command, spec_path

        run = self.get_run(run_id)
        return other_node_command(spec_path(self.storage.files.home, run["id"]), stored_training(run))

    def wait_for_run(self, run_id: int, on_progress=None) -> dict:
        """Train in this process until the run ends (the CLI's ``--wait``)."""
        from engine.training.worker import run_until_done

        self.get_run(run_id)
        run_until_done(self.storage, int(run_id), on_progress=on_progress)
        return self.run_summary(run_id)

    # ------------------------------------------------------------------ tags
    def tag_run(self, run_id: int, tags: list[str] | str) -> list[str]:
        """Replace a run's tags (comma-separated text or a list); returns the clean tags."""
        from engine.compare import clean_tags

        run = self._own_run(run_id, "tagged")
        cleaned = clean_tags(tags)
        self.storage.update_run(run["id"], tags=cleaned)
        return cleaned
