"""The playground predicts what evaluation predicted, and keeps models loaded within a budget."""

from __future__ import annotations

import numpy as np
import pytest
from trained_runs import make_trained_home

from engine.errors import DatasetError
from engine.inference import ModelCache


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_template):
    workbench, runs = make_trained_home(tmp_path_factory, demo_template)
    yield workbench, runs
    workbench.storage.close()


@pytest.mark.parametrize("which", ["speech", "commands"])
def test_playground_prediction_equals_the_evaluation_prediction(trained, which):
    workbench, runs = trained
    run = runs[which]
    cache = ModelCache()
    for item, expected in zip(run["items"], run["predictions"]):
        got = workbench.predict({"file": item["file"]}, run["dataset_dir"], model="tiny-whisper",
                                task=run["task"], run_id=run["run_id"], cache=cache)
        if which == "speech":
            assert got["output"] == expected
        else:
            np.testing.assert_allclose(got["output"], expected, rtol=1e-5, atol=1e-6)
        assert got["latency_s"] > 0
    assert cache.loads == 1  # one load, then every prediction reused it


def test_uploaded_audio_goes_the_same_way_as_a_dataset_item(trained):
    workbench, runs = trained
    run = runs["commands"]
    item = run["items"][0]
    audio = (run["dataset_dir"] / item["file"]).read_bytes()
    cache = ModelCache()
    uploaded = workbench.predict_audio(audio, "../../weird name.flac", model="tiny-whisper",
                                       task=run["task"], run_id=run["run_id"], cache=cache)
    np.testing.assert_allclose(uploaded["output"], run["predictions"][0], rtol=1e-5, atol=1e-6)
    assert uploaded["loaded_now"] and cache.loads == 1
    with pytest.raises(DatasetError, match="cannot read audio"):
        workbench.predict_audio(b"not audio at all", "x.wav", model="tiny-whisper",
                                task=run["task"], run_id=run["run_id"], cache=cache)


def test_base_model_answers_with_the_runs_labels(trained):
    workbench, runs = trained
    run = runs["commands"]
    labels = workbench.get_dataset("demo-commands")["labels"]
    base = workbench.predict({"file": run["items"][0]["file"]}, run["dataset_dir"],
                             model="tiny-whisper", task=run["task"], labels=labels,
                             cache=ModelCache())
    assert len(base["output"]) == len(labels) and base["labels"] == labels
    assert abs(sum(base["output"]) - 1) < 1e-5


def test_cache_evicts_the_least_recently_used_model_past_its_budget(trained):
    workbench, runs = trained
    speech, commands = runs["speech"]["run_id"], runs["commands"]["run_id"]
    labels = workbench.get_dataset("demo-commands")["labels"]
    entries = {"speech": dict(run_id=speech), "commands": dict(run_id=commands),
               "base": dict(run_id=None, task="audio-classification", labels=labels)}
    probe = ModelCache()
    sizes = {name: workbench.loaded_model("tiny-whisper", cache=probe, **kw).size_bytes
             for name, kw in entries.items()}
    cache = ModelCache(budget_bytes=sum(sizes.values()) - 1)  # all three do not fit, any two do

    first = workbench.loaded_model("tiny-whisper", cache=cache, **entries["speech"])
    workbench.loaded_model("tiny-whisper", cache=cache, **entries["commands"])
    assert workbench.loaded_model("tiny-whisper", cache=cache, **entries["speech"]) is first  # a hit
    assert cache.loads == 2
    workbench.loaded_model("tiny-whisper", cache=cache, **entries["base"])
    assert [key[2] for key in cache.keys()] == [speech, None]  # commands was least recently used
    assert cache.used_bytes() == sizes["speech"] + sizes["base"] <= cache.budget_bytes
    assert cache.loads == 3

    tiny = ModelCache(budget_bytes=1)  # smaller than any model: the newest one still stays
    workbench.loaded_model("tiny-whisper", speech, cache=tiny)
    workbench.loaded_model("tiny-whisper", commands, cache=tiny)
    assert [key[2] for key in tiny.keys()] == [commands]


def test_a_text_model_predicts_a_typed_sentence_like_evaluation_did(workbench):
    """The playground's text path: a typed sentence through the same encode/collate/predict."""
    from conftest import FAST

    from engine.training.recipe import FineTuneRecipe

    run_id = workbench.submit_run("demo-text", "tiny-bert", "lora", {}, {**FAST, "max_steps": 3})
    run = workbench.storage.claim_next_run("test", run_id=run_id)
    recipe = FineTuneRecipe(workbench.storage, run, should_stop=lambda: False)
    recipe.setup()
    assert recipe.train() == "completed"
    items = recipe.eval_items[:4]
    _, expected = recipe.scoring.evaluate(items)
    cache = ModelCache()
    for item, probabilities in zip(items, expected):
        got = workbench.predict({"text": item["text"]}, model="tiny-bert", task="text-classification",
                                run_id=run_id, cache=cache)
        np.testing.assert_allclose(got["output"], probabilities, rtol=1e-5, atol=1e-6)
        assert got["labels"] == ["negative", "positive"]
    base = workbench.predict({"text": "the lecture was great"}, model="tiny-bert",
                             task="text-classification", labels=["negative", "positive"], cache=cache)
    assert len(base["output"]) == 2 and abs(sum(base["output"]) - 1) < 1e-5
