"""Runs written straight into a data home (no training): fast, exact numbers for Compare tests."""

from __future__ import annotations

import math

SEEDED = [  # method, method settings, training settings, final WER, peak MiB, adapter bytes, tags
    ("qlora", {"r": 8}, {"learning_rate": 1e-3}, 0.42, 300.0, 4_000, ["baseline"]),
    ("lora", {"r": 16}, {"learning_rate": 1e-3}, 0.40, 500.0, 8_000, []),
    ("full", {}, {"learning_rate": 1e-4}, 0.38, 1200.0, 90_000, ["baseline"]),
]
STEPS = 40
# method -> (samples/s every step, MFU % or None: qlora and lora "trained" on a CPU, full on a GPU)
THROUGHPUT = {"qlora": (20.0, None), "lora": (30.0, None), "full": (40.0, 12.5)}
CLIP_SECONDS, TFLOP_PER_SAMPLE = 2.5, 0.01


def throughput_metrics(method: str) -> dict[str, float]:
    samples, mfu = THROUGHPUT[method]
    values = {"train/samples_per_s": samples, "train/audio_hours_per_hour": samples * CLIP_SECONDS,
              "train/tflops": samples * TFLOP_PER_SAMPLE, "system/cpu_percent": 50.0}
    if mfu is not None:
        values.update({"train/mfu_percent": mfu, "system/gpu_memory_mb": 900.0})
    return values


def seed_runs(home) -> list[int]:
    from engine import Workbench

    workbench = Workbench(home)
    ids = []
    for method, method_settings, training, wer, peak, adapter_bytes, tags in SEEDED:
        run_id = workbench.submit_run("demo-speech", "tiny-whisper", method, method_settings,
                                      {"max_steps": STEPS, "per_device_train_batch_size": 4, **training})
        for step in range(1, STEPS + 1):
            values = {"train/loss": 3.0 * math.exp(-step / 10) + wer, **throughput_metrics(method)}
            if step % 10 == 0:
                values["eval/wer"] = wer + 1.0 / step
            workbench.storage.add_metrics(run_id, step, step * 0.5, values)
        adapter = workbench.storage.files.run_dir(run_id) / "adapter"
        adapter.mkdir()
        (adapter / "adapter_model.safetensors").write_bytes(b"\0" * adapter_bytes)
        workbench.storage.update_run(
            run_id, status="completed", step=STEPS, total_steps=STEPS, wall_time_s=STEPS * 0.5,
            trainable_params=1000 * (1 + len(ids)), total_params=100_000, peak_memory_mb=peak,
            metrics={"wer": wer, "cer": wer / 2}, adapter_dir=workbench.storage.files.relative(adapter))
        workbench.tag_run(run_id, tags)
        ids.append(run_id)
    workbench.storage.close()
    return ids


def hold_worker(workbench) -> int:
    """A run "training" in this very process: the app's worker leaves the queue alone while it
    lasts (its heartbeat stays fresh for an hour, however slow the machine). Returns its id."""
    import os
    import socket
    import time

    from conftest import FAST

    blocker = workbench.submit_run("demo-commands", "tiny-whisper", "lora", {}, FAST)
    workbench.storage.claim_next_run(f"{socket.gethostname()}:{os.getpid()}:0", run_id=blocker)
    workbench.storage.update_run(blocker, heartbeat_at=time.time() + 3600)
    return blocker
