"""Provenance (engine/training/provenance.py) and a run's decisions, read generically."""

from __future__ import annotations

import json

from conftest import FAST

from engine.methods.registry import METHOD_REPORT
from engine.training.provenance import PROVENANCE_FILE, code_version, collect, read_provenance, record_start


def test_a_resumed_start_keeps_the_first_record_and_adds_what_changed(tmp_path):
    run, dataset, model = {"dataset_version": "abc123"}, {"name": "demo-text"}, {"name": "tiny-bert", "source": "x"}
    first = collect(run, dataset, model, {"train": 200, "validation": 50, "test": 0}, "cpu")
    assert (first.get("commit") or first.get("version")) == (code_version().get("commit")
                                                              or code_version().get("version"))
    assert first["device"]["type"] == "cpu" and first["packages"]["torch"]
    assert first["data_fingerprint"] == {"dataset": "demo-text", "version": "abc123",
                                         "items": {"train": 200, "validation": 50, "test": 0}}
    assert read_provenance(tmp_path) is None
    record_start(tmp_path, first)
    record_start(tmp_path, dict(first, started_at="later"))  # the same setting: nothing added
    assert read_provenance(tmp_path) == first
    moved = dict(first, device={"type": "cuda", "name": "NVIDIA H100", "capability": "9.0"})
    stored = record_start(tmp_path, moved)
    assert stored["device"] == first["device"] and stored["resumed"][0]["device"]["name"] == "NVIDIA H100"
    assert json.loads((tmp_path / PROVENANCE_FILE).read_text()) == stored


def test_a_runs_decisions_are_its_method_report_and_the_metrics_its_method_logs(workbench):
    """Whatever a method records (wt-methods' methods add their own), read generically: the
    report file, and a summary of every metric outside the recipe's own prefixes."""
    run_id = workbench.submit_run("demo-text", "tiny-bert", "lora", {}, FAST)
    folder = workbench.storage.files.run_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / METHOD_REPORT).write_text(json.dumps({"method": "cmra", "ranks": {"layer.0": 4}}))
    for step, weight in ((1, 0.5), (2, 0.7), (3, 0.6)):
        workbench.storage.add_metrics(run_id, step, step * 1.0, {"router/audio_w0": weight, "train/loss": 1.0 / step,
                                                                 "eval/accuracy": 0.5})
    decisions = workbench.run_summary(run_id)["decisions"]
    assert decisions["method_report"] == {"method": "cmra", "ranks": {"layer.0": 4}}
    assert decisions["step_metrics"] == {"router/audio_w0": {
        "first_step": 1, "last_step": 3, "first": 0.5, "last": 0.6, "min": 0.5, "max": 0.7,
        "mean": 0.6, "steps": 3}}
    assert workbench.run_summary(run_id)["provenance"] is None  # never started: nothing recorded


def test_a_copied_tree_without_history_records_the_declared_commit_and_what_its_git_says(monkeypatch):
    """The lent GPU machine gets a copy of the tree whose git names an older base commit: the
    commit declared in LIM_SOURCE_COMMIT is recorded, marked as declared, beside the checkout's."""
    read = code_version.__wrapped__()
    monkeypatch.setenv("LIM_SOURCE_COMMIT", "0123abc")
    declared = code_version.__wrapped__()
    assert declared["commit"] == "0123abc" and declared["commit_from"] == "LIM_SOURCE_COMMIT"
    assert declared["checkout"] == read and read["commit"] != "0123abc"  # the suite runs in a git checkout
    monkeypatch.delenv("LIM_SOURCE_COMMIT")
    assert code_version.__wrapped__() == read and "commit_from" not in read
