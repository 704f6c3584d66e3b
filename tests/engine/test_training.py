"""Real training runs on the demo: learning, adapters that reload, stop, resume, the queue."""

from __future__ import annotations

import json
import time

import pytest
import torch
from conftest import FAST

from engine.training.recipe import FineTuneRecipe


def wait_until(predicate, timeout=120.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("timed out waiting")


def claimed_recipe(workbench, run_id):
    run = workbench.storage.claim_next_run("test", run_id=run_id)
    recipe = FineTuneRecipe(workbench.storage, run, should_stop=lambda: False)
    recipe.setup()
    return recipe


def first_batch(recipe, split_items):
    data = [recipe.task_model.encode(item, recipe.dataset_dir) for item in split_items[:4]]
    return recipe.task_model.collate(data)


def test_qlora_run_learns_and_its_adapter_reloads_with_peft(workbench):
    from peft import PeftModel
    from transformers import BitsAndBytesConfig, WhisperForConditionalGeneration

    run_id = workbench.submit_run("demo-speech", "tiny-whisper", "qlora", {"r": 8},
                                  {**FAST, "max_steps": 30, "learning_rate": 1e-2,
                                   "per_device_train_batch_size": 8})
    recipe = claimed_recipe(workbench, run_id)
    assert type(recipe.model.base_model.model.model.encoder.layers[0].fc1).__name__ == "Linear4bit"
    assert recipe.train() == "completed"

    losses = [m["value"] for m in workbench.run_metrics(run_id, ["train/loss"])]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1  # it learned, clearly

    batch = first_batch(recipe, recipe.eval_items)
    recipe.model.eval()
    with torch.no_grad():
        engine_logits = recipe.model(**batch).logits

    # Outside the app: plain transformers + peft, nothing from the engine.
    adapter_dir = recipe.run_dir / "adapter"
    assert (adapter_dir / "adapter_config.json").is_file()
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.float32,
                                      llm_int8_skip_modules=["proj_out"])
    base = WhisperForConditionalGeneration.from_pretrained(recipe.model_dir, device_map="cpu",
                                                           quantization_config=quantization)
    reloaded = PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        reloaded_logits = reloaded(**batch).logits
    # Loaded for inference, bitsandbytes repacks 4-bit weights for its bf16 AVX-512 CPU kernel
    # (training keeps the plain layout), so logits agree to bf16 precision, not bit for bit.
    torch.testing.assert_close(reloaded_logits, engine_logits, rtol=1e-2, atol=5e-3)

    # ...and it transcribes exactly what the engine transcribes.
    assert recipe.task_model.predict(reloaded, batch) == recipe.task_model.predict(recipe.model, batch)


def test_finished_run_reports_what_a_student_needs(workbench):
    run_id = workbench.submit_run("demo-commands", "tiny-whisper", "qlora", {}, FAST)
    summary = workbench.wait_for_run(run_id)
    assert summary["status"] == "completed", summary["error"]
    assert set(summary["metrics"]) == {"accuracy", "macro_f1", "roc_auc", "loss"}
    assert 0 < summary["trainable_params"] < summary["total_params"]
    assert summary["peak_memory_mb"] > 0 and summary["wall_time_s"] > 0
    assert summary["step"] == summary["total_steps"] == FAST["max_steps"]
    meta = json.loads((workbench.home / "runs" / str(run_id) / "adapter" / "workbench.json").read_text())
    assert meta["labels"] == workbench.get_dataset("demo-commands")["labels"]
    assert [m["name"] for m in workbench.run_metrics(run_id, ["eval/accuracy"])] == ["eval/accuracy"]


@pytest.mark.parametrize("on_start", [True, False])
def test_eval_on_start_scores_the_untouched_model_and_the_run_shows_before_and_after(workbench, on_start):
    run_id = workbench.submit_run("demo-commands", "tiny-whisper", "lora", {},
                                  {**FAST, "eval_on_start": on_start, "learning_rate": 1e-2})
    summary = workbench.wait_for_run(run_id)
    assert summary["status"] == "completed", summary["error"]
    points = {m["step"]: m["value"] for m in workbench.run_metrics(run_id, ["eval/accuracy"])}
    scored = workbench.run_evaluation(run_id)["validation_before"]
    if not on_start:
        assert 0 not in points and scored is None
        return
    assert sorted(points) == [0, FAST["max_steps"]]  # the zero-shot point, then the final one
    assert scored["steps"] == FAST["max_steps"]
    assert scored["before"]["accuracy"] == points[0] and scored["after"]["accuracy"] == points[FAST["max_steps"]]
    assert set(scored["before"]) == set(scored["after"]) == {"accuracy", "macro_f1", "roc_auc", "loss"}


def test_eval_on_start_scores_the_test_split_too_so_the_final_score_has_a_before(workbench):
    """The final score is on the test split; its before was missing (issue 27: "WER 0.012 (test
    split)" above "71.9 % → 1.4 %" on validation)."""
    dataset = workbench.get_dataset("demo-commands")
    for item in workbench.storage.dataset_items(dataset["id"], "validation")[:6]:  # a test split
        workbench.storage.change_item(dataset["id"], item["id"], "edit", {"split": "test"}, "with-test")
    run_id = workbench.submit_run("demo-commands", "tiny-whisper", "lora", {},
                                  {**FAST, "eval_on_start": True, "learning_rate": 1e-2})
    summary = workbench.wait_for_run(run_id)
    assert summary["status"] == "completed", summary["error"]
    result = workbench.run_evaluation(run_id)
    points = {m["step"]: m["value"] for m in workbench.run_metrics(run_id, ["test/accuracy"])}
    assert result["split"] == "test" and sorted(points) == [0, FAST["max_steps"]]
    scored = result["test_before"]
    assert scored["split"] == "test" and scored["steps"] == FAST["max_steps"]
    assert scored["before"]["accuracy"] == points[0] and scored["after"] == result["metrics"]
    assert result["validation_before"]["split"] == "validation"


def test_a_short_window_run_scores_the_untouched_whisper_on_its_whole_window(workbench):
    """Pretrained Whisper knows only its whole window: step 0 is scored on it, the trained
    model on the run's own short windows, and the run says which was which."""
    run_id = workbench.submit_run("demo-speech", "tiny-whisper", "lora", {},
                                  {**FAST, "max_steps": 2, "eval_on_start": True, "audio_padding": "longest"})
    recipe = claimed_recipe(workbench, run_id)
    window = recipe.task_model.feature_extractor.nb_max_frames
    widths, collate = [], recipe.task_model.collate

    def recording(examples):
        batch = collate(examples)
        if not recipe.model.training:  # evaluation batches only
            widths.append((recipe.step, batch["input_features"].shape[-1]))
        return batch

    recipe.task_model.collate = recording
    assert recipe.train() == "completed"
    assert {w for step, w in widths if step == 0} == {window}
    assert max(w for step, w in widths if step == 2) < window  # the run's own, shorter windows
    scores = workbench.run_evaluation(run_id)["validation_before"]
    assert (scores["before_window"], scores["after_window"]) == ("30s", "longest")


def test_a_run_logs_throughput_and_utilisation_and_compare_reads_them(workbench, monkeypatch):
    from statistics import mean

    from engine.flops import forward_flops_per_sample
    from engine.training import monitoring as m

    monkeypatch.setenv("LIM_PEAK_TFLOPS", "0.5")  # a CPU has no known peak: give it one
    run_id = workbench.submit_run("demo-commands", "tiny-whisper", "lora", {}, {**FAST, "max_steps": 2})
    recipe = claimed_recipe(workbench, run_id)
    recipe.eval_items = recipe.eval_items[:2]  # the final evaluation is not what this test is about
    assert recipe.train() == "completed"
    first = recipe.task_model.collate([recipe.train_data[i] for i in recipe.epoch_batches(0)[0]])
    flops = recipe.train_flops_per_sample
    assert flops == 2 * forward_flops_per_sample(recipe.task_model, batch=first)  # adapters: 2 x
    names = [m.SAMPLES_PER_S, m.AUDIO_SECONDS_PER_S, m.AUDIO_HOURS_PER_HOUR, m.TFLOPS, m.MFU_PERCENT]
    logged = {name: [row["value"] for row in workbench.run_metrics(run_id, [name])] for name in names}
    assert all(len(values) == 2 for values in logged.values()), logged
    for samples, seconds, hours, tflops, mfu in zip(*logged.values()):
        assert hours == pytest.approx(seconds)
        assert tflops == pytest.approx(samples * flops / 1e12)
        assert mfu == pytest.approx(100 * tflops / 0.5)

    [row] = workbench.compare_runs([run_id])
    assert row["samples_per_second"] == pytest.approx(mean(logged[m.SAMPLES_PER_S]))  # what was logged
    assert row["audio_hours_per_hour"] == pytest.approx(mean(logged[m.AUDIO_HOURS_PER_HOUR]))
    assert row["mfu_percent"] == pytest.approx(mean(logged[m.MFU_PERCENT]))
    assert row["device"] == "CPU"


def test_a_model_whose_flops_cannot_be_counted_still_trains(workbench, monkeypatch):
    from engine.training import monitoring

    def broken(*args, **kwargs):
        raise RuntimeError("no meta kernel for this op")

    monkeypatch.setattr(monitoring, "forward_flops_per_sample", broken)
    run_id = workbench.submit_run("demo-commands", "tiny-whisper", "lora", {}, FAST)
    recipe = claimed_recipe(workbench, run_id)
    assert recipe.train_flops_per_sample is None
    assert any(e["level"] == "warning" and "no meta kernel" in e["message"]
               for e in workbench.run_events(run_id))
    # what train() does per step
    recipe.recorder.step(1, 0.5, 2.0, 1.0, {"train/samples_per_s": 8.0}, recipe.scheduler.get_last_lr()[0])
    assert [row["name"] for row in workbench.run_metrics(run_id) if row["name"].startswith("train/")] == [
        "train/grad_norm", "train/learning_rate", "train/loss", "train/samples_per_s"]


def test_stop_saves_a_checkpoint_and_resume_finishes_without_duplicates(workbench):
    workbench.start_worker()
    run_id = workbench.submit_run("demo-speech", "tiny-whisper", "lora", {},
                                  {**FAST, "max_steps": 400, "per_device_train_batch_size": 2,
                                   "eval_on_start": True})
    wait_until(lambda: (workbench.get_run(run_id)["step"] or 0) >= 3)
    assert workbench.stop_run(run_id) == "stopping"
    wait_until(lambda: workbench.get_run(run_id)["status"] == "stopped")

    run = workbench.get_run(run_id)
    state = json.loads((workbench.home / run["checkpoint_dir"] / "state.json").read_text())
    assert state["step"] == run["step"] < 400
    assert (workbench.home / run["checkpoint_dir"] / "trainable.safetensors").is_file()

    # Resume with fewer total steps left to keep the test short: change max_steps in place.
    settings = run["settings"]
    settings["training"]["max_steps"] = run["step"] + 3
    workbench.storage.update_run(run_id, settings=settings, total_steps=run["step"] + 3)
    workbench.resume_run(run_id)
    wait_until(lambda: workbench.get_run(run_id)["status"] in ("completed", "failed"))
    final = workbench.get_run(run_id)
    assert final["status"] == "completed", final["error"]
    steps = [m["step"] for m in workbench.run_metrics(run_id, ["train/loss"])]
    assert steps == list(range(1, final["step"] + 1))  # no duplicated or missing points
    assert any("resumed from the checkpoint" in e["message"] for e in workbench.run_events(run_id))
    # The untouched model was scored once, before the first step, not again on resuming.
    assert [e for e in workbench.run_events(run_id) if "step 0: validation" in e["message"]][1:] == []
    assert [m["step"] for m in workbench.run_metrics(run_id, ["eval/wer"])] == [0, final["step"]]


def test_submitted_runs_train_one_after_the_other(workbench):
    workbench.start_worker()
    first = workbench.submit_run("demo-commands", "tiny-whisper", "lora", {}, FAST)
    # The second submit's checks (a memory dry run) can outlast the first run's few steps, so
    # its status right after submitting says nothing; the events' order says they never overlapped.
    second = workbench.submit_run("demo-commands", "tiny-whisper", "full", {}, FAST)
    wait_until(lambda: workbench.get_run(second)["status"] == "completed")
    assert workbench.get_run(first)["status"] == "completed"
    events = workbench.storage._rows("select run_id, message, id from run_events order by id")
    first_done = next(e["id"] for e in events if e["run_id"] == first and e["message"] == "run completed")
    second_started = next(e["id"] for e in events if e["run_id"] == second and e["message"] == "started")
    assert first_done < second_started


def test_runs_left_running_by_a_dead_process_become_interrupted(demo_home):
    from engine import Workbench

    first = Workbench(demo_home)
    run_id = first.submit_run("demo-commands", "tiny-whisper", "lora", {}, FAST)
    first.storage.claim_next_run("localhost-that-is-gone:999999999:1")
    first.storage.update_run(run_id, worker=f"{__import__('socket').gethostname()}:999999999:1")
    second = Workbench(demo_home)  # a restart
    assert second.get_run(run_id)["status"] == "interrupted"


@pytest.mark.parametrize("settings, field", [
    ({"learning_rate": 0}, "learning_rate"),
    ({"learning_rate": -1e-3}, "learning_rate"),
    ({"per_device_train_batch_size": 100000}, "per_device_train_batch_size"),
    ({"max_steps": 0}, "max_steps"),
    ({"r": 0}, "r"),
    ({"lr_scheduler_type": "zigzag"}, "lr_scheduler_type"),
    ({"bogus": 1}, "bogus"),
])
def test_invalid_settings_are_refused_at_submit_naming_the_field(workbench, settings, field):
    from engine.errors import WorkbenchError

    method_values, training_values = ({k: v for k, v in settings.items() if k == "r"},
                                      {k: v for k, v in settings.items() if k != "r"})
    with pytest.raises(WorkbenchError, match=field):
        workbench.submit_run("demo-speech", "tiny-whisper", "qlora", method_values, training_values)
    assert workbench.list_runs() == []


def test_a_target_module_the_model_lacks_is_refused_with_the_valid_choices(workbench):
    from engine.errors import WorkbenchError

    with pytest.raises(WorkbenchError, match="query") as refused:
        workbench.submit_run("demo-speech", "tiny-whisper", "lora",
                             {"target_modules": "query,value"}, FAST)
    assert "q_proj" in str(refused.value)  # the valid choices come with the refusal
    assert workbench.list_runs() == []


def test_a_memory_budget_is_planned_logged_and_trains(workbench):
    """memory_budget_gb: the planner's choice is logged, the run micro-batches as planned and
    every LoRA weight still trains; a budget no plan fits is refused with the numbers."""
    budget = 0.05  # the tiny model at batch 4 needs more than this without a plan
    run_id = workbench.submit_run("demo-commands", "tiny-whisper", "qlora", {},
                                  {**FAST, "memory_budget_gb": budget})
    summary = workbench.wait_for_run(run_id)
    assert summary["status"] == "completed", summary
    events = [e["message"] for e in workbench.run_events(run_id)]
    plan = next(m for m in events if m.startswith("memory plan for 0.05 GiB"))
    assert "micro-batch" in plan and "checkpointed layers" in plan
    too_small = workbench.submit_run("demo-commands", "tiny-whisper", "qlora", {},
                                     {**FAST, "memory_budget_gb": 0.0001})
    failed = workbench.wait_for_run(too_small)
    assert failed["status"] == "failed"
    assert "too small for this model" in (failed.get("error") or "")


def test_compiled_kernels_are_kept_in_the_data_home(workbench, monkeypatch):
    """torch.compile's cache goes to LIM_HOME/cache/compiled (inductor's default, in /tmp, is
    gone after a reboot or in a new container, and a short run then compiles all over again);
    a folder the user names in TORCHINDUCTOR_CACHE_DIR is kept. (Compiling the model's layers
    is tests/engine/test_fast_path.py's.)"""
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir, triton_cache_dir

    from engine.progress import COMPILING
    from engine.training import step

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # as inductor leaves it
    compiled = []
    monkeypatch.setattr(step, "compile_layers", lambda model: compiled.append(model) or 1)
    phases = []
    update_run = workbench.storage.update_run

    def recorded(run_id, **values):  # the phases the live monitor and the command line read
        if "phase" in values:
            phases.append(values["phase"])
        return update_run(run_id, **values)

    monkeypatch.setattr(workbench.storage, "update_run", recorded)
    run_id = workbench.submit_run("demo-commands", "tiny-whisper", "lora", {},
                                  {**FAST, "max_steps": 2, "compile_layers": "on"})
    summary = workbench.wait_for_run(run_id)
    assert summary["status"] == "completed", summary["error"]
    assert compiled  # compile_layers was asked for
    cache = workbench.home / "cache" / "compiled"
    messages = [event["message"] for event in workbench.run_events(run_id)]
    assert any(f"reused from {cache}" in message for message in messages)
    # the first batch of a shape compiles: the run said so while it ran, then trained on
    training = [phase for phase in phases if phase is None or phase == COMPILING]
    assert training[:2] == [COMPILING, None] and training[-1] is None
    assert phases.count(COMPILING) <= 2  # two steps: at most two shapes (a short last batch)
    assert workbench.get_run(run_id)["phase"] is None

    # where inductor now writes its graphs and Triton its kernels (a first compile into an
    # empty folder takes half a minute on 2 cores, so the folder is asked, not filled)
    assert cache_dir() == str(cache) and cache.is_dir()
    assert triton_cache_dir(0).startswith(str(cache))
    mine = workbench.home / "elsewhere"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(mine))
    assert step.use_compile_cache(cache) == mine
