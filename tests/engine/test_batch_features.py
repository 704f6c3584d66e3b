"""Batches built ahead on a thread, and 30 s log-mel features extracted per batch (on the GPU
when training on one): the same batches, the same features, the same run."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import FAST

from engine.models import task_model_for
from engine.training.batches import Prefetcher

from tests.engine.test_resume import RESUME, history


def whisper(workbench, padding: str):
    model, dataset = workbench.get_model("tiny-whisper"), workbench.get_dataset("demo-speech")
    task = task_model_for("whisper", "asr", workbench.home / model["path"], None, audio_padding=padding)
    items = workbench.storage.dataset_items(dataset["id"], split="train")[:6]
    return task, items, workbench.home / dataset["path"]


def test_batched_features_equal_per_item_features(workbench):
    task, items, folder = whisper(workbench, "30s")
    per_item = task.collate([task.encode(item, folder) for item in items])
    assert task.extract_features_on("cpu")
    encoded = [task.encode(item, folder) for item in items]
    assert "audio" in encoded[0] and "input_features" not in encoded[0]
    batched = task.collate(encoded)
    assert batched["input_features"].shape == per_item["input_features"].shape
    torch.testing.assert_close(batched["input_features"], per_item["input_features"], rtol=0, atol=1e-5)
    assert torch.equal(batched["labels"], per_item["labels"])


def test_short_windows_keep_per_item_features(workbench):
    task, items, folder = whisper(workbench, "longest")
    assert not task.extract_features_on("cpu")
    assert "input_features" in task.encode(items[0], folder)


@pytest.mark.gpu
def test_gpu_features_equal_cpu_features(workbench):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    task, items, folder = whisper(workbench, "30s")
    cpu = task.collate([task.encode(item, folder) for item in items])
    assert task.extract_features_on("cuda")
    gpu = task.collate([task.encode(item, folder) for item in items])
    torch.testing.assert_close(gpu["input_features"], cpu["input_features"], rtol=0, atol=1e-4)


def make_batch(items: list[dict]) -> dict:
    return {"x": torch.tensor([item["x"] for item in items])}


def test_prefetcher_yields_every_batch_in_order():
    batches = [[3, 1], [0, 2], [5, 4]]
    fetched_on = set()

    def fetch(i):
        fetched_on.add(threading.current_thread().name)
        return {"x": i * 10}

    for depth in (0, 2):
        with Prefetcher(fetch, make_batch, batches, depth=depth, threads=2) as stream:
            got = [(indices, batch["x"].tolist()) for indices, batch in stream]
        assert got == [([3, 1], [30, 10]), ([0, 2], [0, 20]), ([5, 4], [50, 40])]
    assert any(name.startswith("lim-decode") for name in fetched_on)


def test_prefetcher_raises_a_failed_batch_where_it_is_consumed():
    def fetch(i):
        if i == 4:
            raise ValueError("cannot read audio file 4.wav")
        return {"x": i}

    seen = []
    with pytest.raises(ValueError, match="4.wav"):
        with Prefetcher(fetch, make_batch, [[0], [1], [4], [5]], depth=2, threads=1) as stream:
            for indices, _ in stream:
                seen.append(indices)
    assert seen == [[0], [1]]


def test_leaving_early_stops_the_thread():
    stream = Prefetcher(lambda i: {"x": i}, make_batch, [[i] for i in range(1000)], depth=2, threads=1)
    with stream:
        next(iter(stream))
    assert stream.thread is not None and not stream.thread.is_alive()


def test_a_prefetched_run_trains_exactly_like_one_built_step_by_step(workbench):
    runs = {}
    for depth in (0, 2):
        settings = {**RESUME, "spec_augment": True, "prefetch_batches": depth, "eval_steps": 0}
        runs[depth] = workbench.submit_run("demo-speech", "tiny-whisper", "lora", {"lora_dropout": 0.2},
                                           settings)
        assert workbench.wait_for_run(runs[depth])["status"] == "completed"
    eager, prefetched = history(workbench, runs[0]), history(workbench, runs[2])
    for name in ("train/loss", "train/grad_norm"):
        assert [s for s, _ in prefetched[name]] == [s for s, _ in eager[name]] == [1, 2, 3, 4, 5, 6]
        assert [v for _, v in prefetched[name]] == pytest.approx([v for _, v in eager[name]], rel=1e-6)
    assert FAST  # the shared quick settings: no checkpoints, small evaluation
