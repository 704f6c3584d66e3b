"""The final evaluation: the test split when there is one, rows worst first, confusion matrix."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import FAST

from engine.training.evaluation import item_scores, per_example_rows
from engine.metrics import confusion_counts, speech_metrics


def test_speech_rows_carry_per_item_error_rates_worst_first():
    asr = SimpleNamespace(task="asr", reference=lambda item: item["text"])
    items = [{"split": "test", "position": i, "file": f"{i}.flac", "text": text}
             for i, text in enumerate(["open the door", "turn it off", "play music"])]
    rows = per_example_rows(asr, items, ["open the door", "turn off", "stop now please"])
    assert [r["position"] for r in rows] == [2, 1, 0]
    assert rows[0]["wer"] == pytest.approx(3 / 2) and rows[1]["wer"] == pytest.approx(1 / 3)
    assert rows[2]["wer"] == 0 and rows[2]["cer"] == 0
    # word errors and reference words: 3 of 2 ("stop now please" for "play music"), 1 of 3, 0 of 3
    assert [(r["errors"], r["words"]) for r in rows] == [(3, 2), (1, 3), (0, 3)]
    scores = item_scores({"task": "asr", "split": "test", "rows": rows})
    assert scores == {"split": "test", "metric": "wer", "positions": [0, 1, 2], "scores": [0, 1, 3],
                      "weights": [3, 3, 2]}
    corpus = speech_metrics([i["text"] for i in items], ["open the door", "turn off", "stop now please"])["wer"]
    assert sum(scores["scores"]) / sum(scores["weights"]) == pytest.approx(corpus)  # not the mean of item WERs
    # rows written before errors and words were kept: recovered from the text and the item WER
    old = [{key: value for key, value in row.items() if key not in ("errors", "words")} for row in rows]
    assert item_scores({"task": "asr", "split": "test", "rows": old}) == scores


def test_classification_rows_put_confident_mistakes_first_and_count_confusions():
    labels = ["no", "yes"]
    model = SimpleNamespace(task="audio-classification", labels=labels)
    items = [{"split": "test", "position": i, "label": label} for i, label in enumerate(["yes", "no", "yes", "no"])]
    probabilities = [[0.2, 0.8], [0.6, 0.4], [0.9, 0.1], [0.45, 0.55]]
    rows = per_example_rows(model, items, probabilities)
    assert [(r["position"], r["correct"]) for r in rows] == [(2, False), (3, False), (0, True), (1, True)]
    assert rows[0]["prediction"] == "no" and rows[0]["confidence"] == pytest.approx(0.9)
    assert confusion_counts(labels, rows) == [[1, 1], [1, 1]]
    assert item_scores({"task": "audio-classification", "split": "test", "rows": rows}) == {
        "split": "test", "metric": "accuracy", "positions": [0, 1, 2, 3], "scores": [1, 1, 0, 0],
        "weights": [1, 1, 1, 1]}


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


# ------------------------------------------------ evaluation never hangs a worker (issue 27, item 2)
class StopDuringEvaluation:
    """A stop request that fires once the run is in its ``nth`` evaluation phase (no timing)."""

    def __init__(self, storage, run_id: int, nth: int = 1):
        self.storage, self.run_id, self.nth, self.seen, self.last = storage, run_id, nth, 0, None

    def __call__(self) -> bool:
        phase = self.storage.get_run(self.run_id, owner_id=None)["phase"]
        if phase and phase != self.last:
            self.seen += 1
        self.last = phase
        return bool(phase) and self.seen >= self.nth


def test_a_model_that_only_emits_timestamp_zero_is_transcribed_in_bounded_time(workbench):
    """What hung: Whisper's own generate loops until each clip's "seek" passes its end, and a
    segment that ends at timestamp 0.00 never moves it (checked by hand: transformers 5.23's
    ``model.generate`` on this model had not returned after 60 s). Evaluation's greedy decoding
    stops after ``generation_max_length`` tokens whatever the model emits."""
    import time

    from engine.models import task_model_for
    from engine.training.evaluation import ItemDataset

    model_dir = workbench.home / workbench.get_model("tiny-whisper")["path"]
    task = task_model_for("whisper", "asr", model_dir, generation_max_length=48)
    model = task.load().eval()
    zero = model.generation_config.no_timestamps_token_id + 1  # <|0.00|> for Whisper
    with torch.no_grad():  # the output layer (tied to the embeddings) always picks it
        row = model.get_output_embeddings().weight
        row[zero] = 50 * model.get_decoder().embed_tokens.weight.mean(0).sign()
    dataset = workbench.get_dataset("demo-speech")
    items = workbench.dataset_items("demo-speech", "validation", limit=4)
    batch = task.collate([ItemDataset(items, task, workbench.home / dataset["path"])[i] for i in range(4)])
    started = time.monotonic()
    assert task.predict(model, batch) == ["", "", "", ""]  # timestamps are not text
    assert time.monotonic() - started < 30


def _speech_setup(workbench):
    from engine.training.recipe import FineTuneRecipe

    run_id = workbench.submit_run("demo-speech", "tiny-whisper", "qlora", {}, FAST)
    run = workbench.storage.claim_next_run("test", run_id=run_id)
    recipe = FineTuneRecipe(workbench.storage, run, should_stop=lambda: False)
    recipe.setup()
    return recipe


def test_stop_inside_generation_ends_it_and_the_evaluation(workbench):
    from engine.models.base import GenerationLimit
    from engine.training.evaluation import EvaluationStopped, ItemDataset, evaluate

    recipe = _speech_setup(workbench)
    task, items = recipe.task_model, recipe.eval_items[:4]
    task.generation_max_length = 40
    batch = task.collate([ItemDataset(items, task, recipe.dataset_dir)[i] for i in range(4)])
    calls = []

    def stop_on_third_token() -> bool:
        calls.append(1)
        return len(calls) >= 3

    limit = GenerationLimit(stop_on_third_token, poll_s=0)
    free = task.predict(recipe.model, batch)
    cut = task.predict(recipe.model, batch, limit)
    assert limit.stopped and not limit.timed_out and len(calls) == 3
    assert sum(len(t) for t in cut) < sum(len(t) for t in free) or all(not t for t in free)
    calls.clear()
    with pytest.raises(EvaluationStopped):
        evaluate(recipe.model, task, items, recipe.dataset_dir, 2, torch.autocast("cpu", enabled=False),
                 should_stop=lambda: bool(calls.append(1)) or len(calls) >= 2)
    assert recipe.model.training  # the mode is restored


def test_a_batch_past_its_time_limit_is_cut_reported_and_the_rest_go_on(workbench):
    from engine.training.evaluation import evaluate

    recipe = _speech_setup(workbench)
    slow = []
    metrics, predictions = evaluate(recipe.model, recipe.task_model, recipe.eval_items[:6], recipe.dataset_dir,
                                    2, torch.autocast("cpu", enabled=False), batch_limit_s=0.0,
                                    on_slow_batch=lambda batch, seconds: slow.append(batch))
    assert slow == [1, 2, 3] and len(predictions) == 6 and "wer" in metrics


def test_stop_during_an_evaluation_stops_the_run_and_resume_finishes_it(workbench):
    from engine.training.worker import execute_run

    settings = {**FAST, "max_steps": 4, "eval_steps": 2, "save_steps": 0}
    run_id = workbench.submit_run("demo-speech", "tiny-whisper", "qlora", {}, settings)
    claimed = workbench.storage.claim_next_run("test-host:1:1", run_id=run_id)
    stop = StopDuringEvaluation(workbench.storage, run_id)
    status = execute_run(workbench.storage, claimed, type("Stop", (), {"is_set": lambda self: stop()})())
    run = workbench.get_run(run_id)
    assert status == "stopped" and run["step"] == 2 and run["checkpoint_dir"]
    assert any("during the evaluation at step 2" in e["message"] for e in workbench.run_events(run_id))
    workbench.resume_run(run_id)
    assert workbench.wait_for_run(run_id)["status"] == "completed"


def test_stop_during_the_final_test_evaluation_keeps_a_checkpoint_to_finish_from(workbench):
    from engine.training.worker import execute_run

    run_id = workbench.submit_run("demo-speech", "tiny-whisper", "qlora", {}, {**FAST, "max_steps": 2})
    claimed = workbench.storage.claim_next_run("test-host:1:1", run_id=run_id)
    stop = StopDuringEvaluation(workbench.storage, run_id)  # the first phase: the final validation
    status = execute_run(workbench.storage, claimed, type("Stop", (), {"is_set": lambda self: stop()})())
    assert status == "stopped" and workbench.get_run(run_id)["metrics"] in (None, {})
    workbench.resume_run(run_id)
    done = workbench.wait_for_run(run_id)
    assert done["status"] == "completed" and done["step"] == 2 and "wer" in done["metrics"]


# ------------------------------------------- the untouched model's scores, kept (issue 31, whole run)
def step0(workbench, run_id: int) -> dict:
    return {row["name"]: row["value"] for row in workbench.storage.metrics(run_id, ["eval/wer", "eval/cer", "test/wer",
                                                                                    "test/cer"]) if row["step"] == 0}


def test_a_run_that_trains_differently_reuses_the_untouched_models_scores(workbench):
    """Step 0 is the same work for runs that differ only in how they train (a study's learning
    rates): the second run records the first's scores, which equal what it would have computed."""
    from engine.training.evaluation import UNTOUCHED_DIR

    settings = {**FAST, "eval_on_start": True, "max_steps": 2}
    first = workbench.submit_run("demo-speech", "tiny-whisper", "lora", {}, settings)
    assert workbench.wait_for_run(first)["status"] == "completed"
    second = workbench.submit_run("demo-speech", "tiny-whisper", "lora", {}, {**settings, "learning_rate": 3e-3})
    assert workbench.wait_for_run(second)["status"] == "completed"
    reused = [e["message"] for e in workbench.run_events(second) if "untouched model's scores from run" in e["message"]]
    assert reused and f"from run {first}" in reused[0]
    # demo-speech has no test split: step 0 is the validation split's
    assert step0(workbench, second) == step0(workbench, first) and set(step0(workbench, first)) == {
        "eval/wer", "eval/cer"}
    # without the kept scores it computes the same numbers itself
    shutil.rmtree(workbench.storage.files.home / UNTOUCHED_DIR)
    third = workbench.submit_run("demo-speech", "tiny-whisper", "lora", {}, {**settings, "learning_rate": 3e-3})
    assert workbench.wait_for_run(third)["status"] == "completed"
    assert not any("untouched model's scores from run" in e["message"] for e in workbench.run_events(third))
    assert step0(workbench, third) == step0(workbench, first)
    # a setting that decides the scores (the seed: a new head's weights; here a different key) scores anew
    fourth = workbench.submit_run("demo-speech", "tiny-whisper", "lora", {}, {**settings, "seed": 7})
    assert workbench.wait_for_run(fourth)["status"] == "completed"
    assert not any("untouched model's scores from run" in e["message"] for e in workbench.run_events(fourth))


def test_a_damaged_kept_score_is_ignored(tmp_path):
    from engine.training.evaluation import UNTOUCHED_DIR, read_untouched, untouched_key, write_untouched

    from engine.training.settings import RunSettings

    settings = RunSettings.build("lora", "asr", {"r": 8}, {"learning_rate": 1e-3, "seed": 1})
    key = untouched_key(settings, {"model": 1})
    assert untouched_key(settings.with_changes({"learning_rate": 3e-3, "max_steps": 9}), {"model": 1}) == key
    assert untouched_key(settings.with_changes({"seed": 2}), {"model": 1}) != key
    assert untouched_key(settings.with_changes({"r": 16}), {"model": 1}) != key
    assert untouched_key(settings, {"model": 2}) != key
    write_untouched(tmp_path, key, {"run_id": 3, "validation": {"wer": 0.5}, "test": None})
    assert read_untouched(tmp_path, key)["validation"] == {"wer": 0.5}
    (tmp_path / UNTOUCHED_DIR / f"{key}.json").write_text("{not json")
    assert read_untouched(tmp_path, key) is None
    assert list((tmp_path / UNTOUCHED_DIR).glob("*.tmp")) == []


def test_evaluation_runs_longest_first_and_answers_in_the_items_order(workbench):
    """Issue 31: batches of similar lengths, longest first; the predictions and the scores are
    the items' own, in their order (the same as one item at a time)."""
    from engine.training.evaluation import evaluate, length_order

    clips = [{"duration_s": 1.0}, {"duration_s": 3.5}, {"duration_s": 2.0}, {"duration_s": 3.5}]
    assert length_order(clips) == [1, 3, 2, 0]  # by seconds, longest first; ties in their order
    items = [{"text": "ab"}, {"text": "abcdef"}, {"text": "x"}, {"text": ""}, {"text": "abc"}]
    assert length_order(items) == [1, 4, 0, 2, 3]  # text without seconds: by its length
    seen = []

    class Echo:  # predicts each item's own text, records the batches it was given
        def encode(self, item, folder):
            return {"text": item["text"]}

        def collate(self, examples):
            return [e["text"] for e in examples]

        def predict(self, model, batch, limit=None):
            seen.append(batch)
            return list(batch)

        def reference(self, item):
            return item["text"]

        def score(self, predictions, references):
            return {"equal": predictions == references}

    model = torch.nn.Linear(1, 1)
    metrics, predictions = evaluate(model, Echo(), items, workbench.home, 2, torch.autocast("cpu", enabled=False))
    assert predictions == [item["text"] for item in items] and metrics == {"equal": True}
    assert seen == [["abcdef", "abc"], ["ab", "x"], [""]]

    recipe = _speech_setup(workbench)  # a real model: batched, sorted transcripts = one at a time
    task, items = recipe.task_model, recipe.eval_items[:5]
    task.generation_max_length = 8
    autocast = torch.autocast("cpu", enabled=False)
    batched = evaluate(recipe.model, task, items, recipe.dataset_dir, 4, autocast)
    alone = evaluate(recipe.model, task, items, recipe.dataset_dir, 1, autocast)
    assert batched == alone
