"""One process of a multi-GPU run: what torchrun starts (engine/training/distributed.py).

    python -m torch.distributed.run --nproc-per-node 2 --standalone -m engine.training.rank \\
        LIM_HOME/runs/<id>/distributed/launch.json

Every rank builds the run's ``FineTuneRecipe`` with a ``DataParallel`` (engine/training/
parallel.py) and trains. Rank 0 opens the database and reports exactly as a one-process run
does (progress, metrics, events, checkpoints, the adapter); the others read their inputs
from the launch file and write only their log, ``distributed/rank-<r>.log``. Rank 0 ends by
writing ``result.json``; a rank that fails writes ``error-rank<r>.json`` and exits 1, and
torchrun ends the others.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

import psutil

from engine.training.parallel import DataParallel
from engine.training.recipe import FineTuneRecipe
from engine.training.worker import failure_message
from storage import Storage
from storage.files import FileStore

logger = logging.getLogger("lim.rank")


class RankLog:
    """What the recipe asks of ``Storage``, for a rank other than 0: its inputs come from the
    launch file, and what it would report goes to its log only (rank 0 reports for all)."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.files = FileStore(Path(spec["home"]))

    def find_dataset(self, dataset_id, owner_id=None) -> dict:
        return self.spec["dataset"]

    def find_model(self, model_id, owner_id=None) -> dict:
        return self.spec["model"]

    def dataset_items(self, dataset_id, split: str) -> list[dict]:
        return self.spec["items"][split]

    def add_event(self, run_id: int, message: str, level: str = "info") -> None:
        logger.log(logging.getLevelName(level.upper()) if level != "debug" else logging.DEBUG, message)

    def update_run(self, run_id: int, **fields) -> None:
        pass  # rank 0 keeps the run's record

    def add_metrics(self, run_id: int, step: int, wall_time: float, values: dict) -> None:
        pass  # rank 0 logs the averaged loss and the whole run's throughput

    def delete_metrics_after(self, run_id: int, step: int) -> None:
        pass

    def close(self) -> None:
        pass


def parent_gone(pid: int | None) -> bool:
    """The process that launched the run (the worker) has ended: nobody records the outcome."""
    return bool(pid) and not psutil.pid_exists(pid)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec_path = Path(args[0])
    spec = json.loads(spec_path.read_text())
    folder, run = spec_path.parent, spec["run"]
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(filename=folder / f"rank-{rank}.log", level=logging.INFO,
                        format=f"%(asctime)s rank {rank} %(levelname)s %(message)s")
    parallel = storage = None
    device = "cpu"
    try:
        parallel = DataParallel.from_environment()
        if parallel is None:
            raise RuntimeError("engine.training.rank runs under torchrun with WORLD_SIZE > 1")
        device = parallel.device
        logger.info("%s: run %s", parallel.describe(), run["id"])
        storage = Storage(spec["home"]) if parallel.is_main else RankLog(spec)
        parent = spec.get("parent_pid") if os.environ.get("GROUP_RANK", "0") == "0" else None

        def should_stop() -> bool:  # asked on rank 0 only (FineTuneRecipe.decide)
            if parent_gone(parent):
                storage.add_event(run["id"], "the process that started this run ended; stopping "
                                  "with a checkpoint", "warning")
                return True
            return storage.stop_requested(run["id"])

        recipe = FineTuneRecipe(storage, run, should_stop, parallel=parallel)
        recipe.setup()
        status = recipe.train()
        recipe.cleanup(status)  # rank 0's experiment tracking (a failed rank's stays open)
        logger.info("run %s", status)
        if parallel.is_main:
            write_json(folder / "result.json", {"status": status, "peak_memory_mb": recipe.memory.peak_mb})
        return 0
    except BaseException as error:  # noqa: BLE001 (every failure is reported, then the rank exits)
        logger.exception("rank %s failed", rank)
        if not isinstance(error, (KeyboardInterrupt, SystemExit)):
            write_json(folder / f"error-rank{rank}.json", {
                "rank": rank, "time": time.time(), "message": failure_message(run, error, device),
                "traceback": traceback.format_exc()})
        return 1
    finally:
        if parallel is not None:
            parallel.close()
        if storage is not None:
            storage.close()


def write_json(path: Path, value: dict) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(value))
    partial.replace(path)


if __name__ == "__main__":
    sys.exit(main())
