"""Device profiles: their defaults reach new runs, the planner and the form; the GPU cap's decision."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST

from engine.errors import SettingsError
from engine.training import profiles
from engine.training.evaluation import ItemDataset
from engine.training.profiles import (GIB, PROFILES, active_profile, cap_gpu_memory,
                                      detect_jetson_profile, gpu_memory_fraction)

NANO = PROFILES["jetson-orin-nano-8gb"]
H200_BYTES = int(139.8 * GIB)


def test_every_profile_leaves_room_for_the_os_and_the_app_and_chooses_valid_settings():
    from engine import settings as settings_lib
    from engine.training.settings import TrainingSettings

    assert {"jetson-orin-nano-8gb", "jetson-orin-nx-16gb", "jetson-agx-orin-64gb", "laptop-cpu",
            "server-gpu"} <= set(PROFILES)
    for profile in PROFILES.values():
        built = settings_lib.build(TrainingSettings, profile.training_defaults())  # all valid
        if profile.memory_gib is not None:
            assert 0 < profile.training_gib < profile.memory_gib - 2  # OS + app take 2 GiB or more
            assert built.memory_budget_gb == profile.training_gib
    assert NANO.training_gib == 4.5 and NANO.dataloader_num_workers == 0
    assert PROFILES["server-gpu"].training_defaults()["memory_budget_gb"] == 0.0  # no cap


def test_the_profile_comes_from_lim_profile(monkeypatch, tmp_path):
    monkeypatch.delenv("LIM_PROFILE", raising=False)
    assert active_profile() is None
    monkeypatch.setenv("LIM_PROFILE", "jetson-orin-nx-16gb")
    assert active_profile() is PROFILES["jetson-orin-nx-16gb"]
    monkeypatch.setenv("LIM_PROFILE", "orin-nano")
    with pytest.raises(SettingsError, match="unknown device profile 'orin-nano'; choose one of jetson-orin-nano-8gb"):
        active_profile()
    # auto: the board by its memory where L4T's release file exists, nothing elsewhere
    release = tmp_path / "nv_tegra_release"
    assert detect_jetson_profile(release, total_bytes=8 * GIB) is None
    release.write_text("# R36 (release), REVISION: 4.0\n")
    assert detect_jetson_profile(release, total_bytes=int(7.4 * GIB)).name == "jetson-orin-nano-8gb"
    assert detect_jetson_profile(release, total_bytes=int(15.3 * GIB)).name == "jetson-orin-nx-16gb"
    assert detect_jetson_profile(release, total_bytes=int(61.3 * GIB)).name == "jetson-agx-orin-64gb"
    monkeypatch.setattr(profiles, "JETSON_RELEASE_FILE", release)
    monkeypatch.setattr(detect_jetson_profile, "__defaults__", (release, int(7.4 * GIB)))
    monkeypatch.setenv("LIM_PROFILE", "auto")
    assert active_profile() is NANO


def test_the_gpu_cap_is_the_profiles_share_of_the_gpu():
    assert gpu_memory_fraction(NANO, H200_BYTES) == pytest.approx(4.5 / 139.8)
    assert gpu_memory_fraction(PROFILES["jetson-agx-orin-64gb"], 80 * GIB) == pytest.approx(57 / 80)
    assert gpu_memory_fraction(PROFILES["jetson-agx-orin-64gb"], 48 * GIB) is None  # GPU smaller than the share
    assert gpu_memory_fraction(PROFILES["server-gpu"], H200_BYTES) is None  # the whole GPU
    assert gpu_memory_fraction(None, H200_BYTES) is None
    assert cap_gpu_memory(None, "cuda") is None
    assert cap_gpu_memory(NANO, "cpu") == "device profile jetson-orin-nano-8gb (no CUDA device: nothing to cap)"


@pytest.mark.gpu
def test_the_cap_holds_on_a_real_gpu():
    total = torch.cuda.get_device_properties(0).total_memory
    try:
        message = cap_gpu_memory(NANO, "cuda")
        assert "capped at 4.5 GiB" in message
        torch.cuda.empty_cache()
        inside = torch.empty(int(3 * GIB), dtype=torch.uint8, device="cuda")  # within the share
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(int(2 * GIB), dtype=torch.uint8, device="cuda")  # 5 GiB in all: over it
        del inside
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)  # the rest of the session: the whole GPU
        torch.cuda.empty_cache()
    assert total > 5 * GIB


def test_new_runs_start_from_the_profiles_defaults_and_given_values_win(workbench, monkeypatch):
    monkeypatch.setenv("LIM_PROFILE", "jetson-orin-nano-8gb")
    schema = {field["name"]: field["default"] for field in workbench.training_settings_schema()}
    assert schema["memory_budget_gb"] == 4.5 and schema["per_device_train_batch_size"] == 4
    assert schema["audio_padding"] == "longest" and schema["learning_rate"] == 1e-3  # untouched
    plan = workbench.check_run("demo-speech", "tiny-whisper", "qlora", {},
                               {"max_steps": 2, "per_device_train_batch_size": 2})
    training = plan["training_settings"]
    assert training["per_device_train_batch_size"] == 2  # given
    assert (training["memory_budget_gb"], training["audio_padding"],
            training["dataloader_num_workers"]) == (4.5, "longest", 0)  # the profile's
    command = workbench.train_command("demo-speech", "tiny-whisper", "qlora", {}, training)
    assert "--profile jetson-orin-nano-8gb" in command
    assert "per_device_train_batch_size=2" in command and "memory_budget_gb" not in command
    shown = workbench.device_profile()
    assert shown["name"] == "jetson-orin-nano-8gb" and shown["defaults"]["memory_budget_gb"] == 4.5
    monkeypatch.delenv("LIM_PROFILE")
    plain = workbench.check_run("demo-speech", "tiny-whisper", "qlora", {}, {"max_steps": 2})
    assert plain["training_settings"]["memory_budget_gb"] == 0.0 and workbench.device_profile() is None


def test_a_run_under_a_profile_is_planned_into_its_budget(workbench, monkeypatch):
    monkeypatch.setenv("LIM_PROFILE", "jetson-orin-nano-8gb")
    settings = {key: value for key, value in FAST.items() if key != "per_device_train_batch_size"}
    run_id = workbench.submit_run("demo-speech", "tiny-whisper", "qlora", {}, settings)
    run = workbench.wait_for_run(run_id)
    assert run["status"] == "completed", run["error"]
    assert run["settings"]["training"]["per_device_train_batch_size"] == 4
    log = [event["message"] for event in workbench.run_events(run_id)]
    assert any(m.startswith("memory plan for 4.50 GiB") for m in log)  # the planner got the budget
    expected = cap_gpu_memory(NANO, "cpu") if not torch.cuda.is_available() else "capped at 4.5 GiB"
    assert any(expected in m for m in log)


def augmented(recipe, batches) -> list[dict]:
    """The batches training sees: built by the recipe's stream, masked in this thread."""
    with recipe.batch_stream(batches) as stream:
        return [recipe.augment(batch) for _, batch in stream]


def test_dataloader_workers_give_the_same_batches(workbench, monkeypatch):
    """Workers only encode items: collation and SpecAugment (random masks from the training
    thread's generator) stay in the training thread, so with workers the epochs' batches are
    exactly those without; past the first epoch the feature cache serves and no worker starts."""
    from engine.training.recipe import FineTuneRecipe

    remembered = []
    original = ItemDataset.remember
    monkeypatch.setattr(ItemDataset, "remember",
                        lambda self, indices, encoded: remembered.append(len(indices)) or original(self, indices, encoded))
    epochs = {}
    for workers in (0, 2):
        run_id = workbench.submit_run("demo-commands", "tiny-whisper", "lora", {},
                                      {**FAST, "per_device_train_batch_size": 24, "spec_augment": True,
                                       "dataloader_num_workers": workers})
        recipe = FineTuneRecipe(workbench.storage, workbench.storage.claim_next_run("test", run_id=run_id),
                                should_stop=lambda: False)
        recipe.setup()
        torch.manual_seed(0)  # SpecAugment's masks
        epochs[workers] = [augmented(recipe, recipe.epoch_batches(epoch)) for epoch in (0, 1)]
        assert recipe.augment is not None and recipe.train_data.holds(recipe.epoch_batches(2))
        if workers:  # the masks are random: another seed gives other batches, so equality means something
            torch.manual_seed(1)
            other = augmented(recipe, recipe.epoch_batches(0))[0]
            assert not torch.equal(other["input_features"], epochs[2][0][0]["input_features"])
        workbench.storage.update_run(run_id, status="cancelled")
    assert sum(remembered) == 120  # 120 train items: the first epoch from the workers, then the cache
    for plain, parallel in zip(sum(epochs[0], []), sum(epochs[2], []), strict=True):
        assert plain.keys() == parallel.keys()
        for key in plain:
            assert torch.equal(plain[key], parallel[key]), key


def test_the_command_line_takes_a_profile_anywhere(home, monkeypatch, capsys):
    import json

    from engine.cli import main

    monkeypatch.setenv("LIM_PROFILE", "")  # restored after the test (--profile sets it)
    assert main(["profiles", "list", "--json", "--profile", "jetson-orin-nx-16gb"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows if row["active"]] == ["jetson-orin-nx-16gb"]
    assert main(["--profile", "orin", "profiles", "list"]) == 1
    assert capsys.readouterr().err.startswith("error: unknown device profile 'orin'")


def test_the_rehearsal_says_where_a_short_runs_time_goes(capsys):
    """benchmarks/jetson_rehearsal.py splits a run's wall time by its stored metrics' training
    clock; a setting for every case must be KEY=VALUE."""
    from benchmarks.jetson_rehearsal import main, phases

    rows = [{"name": "train/loss", "wall_time": t} for t in (20.0, 21.0, 35.5)]
    rows += [{"name": "train/samples_per_s", "wall_time": 35.5}, {"name": "test/wer", "wall_time": 41.0}]
    assert phases(rows, wall=50.0) == {"first_step": 20.0, "later_steps": 15.5,
                                       "final_evaluation": 5.5, "outside_training": 9.0}
    assert phases([], wall=3.0) is None  # failed before its first step
    with pytest.raises(SystemExit) as exit_:
        main(["--json", "x.json", "--set", "compile_layers"])
    assert exit_.value.code == 2 and "--set wants KEY=VALUE" in capsys.readouterr().err
