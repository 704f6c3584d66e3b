"""The final evaluation: the test split when there is one, rows worst first, confusion matrix."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
from conftest import FAST

from engine.training.evaluation import per_example_rows
from engine.metrics import confusion_counts


def test_speech_rows_carry_per_item_error_rates_worst_first():
    asr = SimpleNamespace(task="asr", reference=lambda item: item["text"])
    items = [{"split": "test", "position": i, "file": f"{i}.flac", "text": text}
             for i, text in enumerate(["open the door", "turn it off", "play music"])]
    rows = per_example_rows(asr, items, ["open the door", "turn off", "stop now please"])
    assert [r["position"] for r in rows] == [2, 1, 0]
    assert rows[0]["wer"] == pytest.approx(3 / 2) and rows[1]["wer"] == pytest.approx(1 / 3)
    assert rows[2]["wer"] == 0 and rows[2]["cer"] == 0


def test_classification_rows_put_confident_mistakes_first_and_count_confusions():
    labels = ["no", "yes"]
    model = SimpleNamespace(task="audio-classification", labels=labels)
    items = [{"split": "test", "position": i, "label": label} for i, label in enumerate(["yes", "no", "yes", "no"])]
    probabilities = [[0.2, 0.8], [0.6, 0.4], [0.9, 0.1], [0.45, 0.55]]
    rows = per_example_rows(model, items, probabilities)
    assert [(r["position"], r["correct"]) for r in rows] == [(2, False), (3, False), (0, True), (1, True)]
    assert rows[0]["prediction"] == "no" and rows[0]["confidence"] == pytest.approx(0.9)
    assert confusion_counts(labels, rows) == [[1, 1], [1, 1]]


def test_a_dataset_with_a_test_split_is_scored_on_it(workbench, tmp_path):
    source = workbench.home / workbench.get_dataset("demo-commands")["path"]
    folder = tmp_path / "with-test"
    shutil.copytree(source, folder)
    # The validation clips become the test split (copying them would make duplicates, which
    # the importer refuses): train + test, so evaluation must use test.
    (folder / "validation").rename(folder / "test")
    workbench.import_dataset(folder, "commands-with-test")
    run_id = workbench.submit_run("commands-with-test", "tiny-whisper", "lora", {}, FAST)
    summary = workbench.wait_for_run(run_id)
    assert summary["status"] == "completed", summary["error"]
    result = workbench.run_evaluation(run_id)
    assert result["split"] == "test" and not result["fell_back_to_validation"]
    assert len(result["rows"]) == workbench.dataset_split_counts("commands-with-test")["test"]
    assert sum(map(sum, result["confusion"])) == len(result["rows"])
    test_points = {m["name"]: m["value"] for m in workbench.run_metrics(run_id) if m["name"].startswith("test/")}
    assert test_points["test/accuracy"] == pytest.approx(summary["metrics"]["accuracy"])
    correct = sum(row["correct"] for row in result["rows"])
    assert summary["metrics"]["accuracy"] == pytest.approx(correct / len(result["rows"]))


def test_item_cache_encodes_each_item_once_within_its_budget(tmp_path):
    """Cached items are what encoding again gives, each is encoded once, the budget holds,
    and a caller changing its copy does not change the cache."""
    import numpy as np

    from engine.training.evaluation import ItemDataset

    calls = []

    class Counting:
        def encode(self, item, dataset_dir):
            calls.append(item["id"])
            return {"input_features": np.full((4, 8), float(item["id"]), dtype=np.float32),
                    "labels": [item["id"], 7]}

    items = [{"id": i} for i in range(6)]
    per_item = 4 * 8 * 4 + 2 * 8
    data = ItemDataset(items, Counting(), tmp_path, cache_mb=4 * per_item / 2**20)
    first = [data[i] for i in range(6)]
    again = [data[i] for i in range(6)]
    assert calls[:6] == list(range(6)) and calls[6:] == [4, 5]  # four fit, two re-encoded
    assert data.cached_bytes == 4 * per_item
    for a, b in zip(first, again):
        assert np.array_equal(a["input_features"], b["input_features"]) and a["labels"] == b["labels"]
    again[0]["labels"] = "changed"
    assert data[0]["labels"] == [0, 7]
    uncached = ItemDataset(items, Counting(), tmp_path)
    calls.clear()
    [uncached[i] for i in (0, 0)]
    assert calls == [0, 0]


def test_evaluation_reports_its_phase_and_examples_done_as_it_goes(workbench, monkeypatch):
    from storage import Storage

    seen = []
    update_run = Storage.update_run

    def spy(self, run_id, **fields):
        if "phase" in fields or "phase_done" in fields:
            seen.append((fields.get("phase", "…"), fields.get("phase_done"), fields.get("phase_total")))
        return update_run(self, run_id, **fields)

    monkeypatch.setattr(Storage, "update_run", spy)
    run_id = workbench.submit_run("demo-speech", "tiny-whisper", "lora", {},
                                  {**FAST, "per_device_eval_batch_size": 16})
    assert workbench.wait_for_run(run_id)["status"] == "completed"
    validation = workbench.dataset_split_counts("demo-speech")["validation"]  # 40: batches of 16, 16, 8
    assert seen[0] == ("final evaluation on the validation split", 0, validation)
    done = [d for phase, d, _ in seen[1:-1]]
    assert done == sorted(done) and done[-1] == validation and 16 in done  # the first batch, at once
    assert seen[-1] == (None, None, None)  # the phase ends with the evaluation
    run = workbench.get_run(run_id)
    assert (run["phase"], run["phase_done"], run["phase_total"]) == (None, None, None)
