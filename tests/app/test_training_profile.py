"""The Training page under a device profile: it says which, what it chose, and the form starts there."""

from __future__ import annotations

from test_pages import app, open_page  # noqa: F401  (fixture)


def test_the_page_shows_the_profile_and_the_form_starts_from_its_choices(app, demo_home, monkeypatch):  # noqa: F811
    from engine import Workbench

    monkeypatch.setenv("LIM_PROFILE", "jetson-orin-nano-8gb")
    open_page(app, "pages/training.py")
    [shown] = [box.value for box in app.info if "Device profile" in box.value]
    assert "jetson-orin-nano-8gb" in shown and "4.5 GiB for training" in shown
    assert "memory budget (GiB) 4.5" in shown and "batch 4" in shown and "audio padding longest" in shown
    assert "no CUDA GPU here" in shown
    assert app.number_input(key="train.training.per_device_train_batch_size").value == 4
    assert app.number_input(key="train.training.memory_budget_gb").value == 4.5
    assert app.selectbox(key="train.training.audio_padding").value == "longest"
    app.button(key="train.start").click().run()
    assert not app.exception
    [run] = Workbench(demo_home).list_runs()
    training = run["settings"]["training"]
    assert (training["per_device_train_batch_size"], training["memory_budget_gb"],
            training["dataloader_num_workers"]) == (4, 4.5, 0)


def test_without_a_profile_the_page_says_how_to_choose_one(app, monkeypatch):  # noqa: F811
    monkeypatch.delenv("LIM_PROFILE", raising=False)
    open_page(app, "pages/training.py")
    assert any("Device profile: none" in caption.value for caption in app.caption)
    assert app.number_input(key="train.training.per_device_train_batch_size").value == 8
