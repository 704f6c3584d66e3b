"""One memory number (issue 13 item 1, issue 14 item 8): for one configuration the facade's
estimate, the New run form and the Models page show the same figure."""

from __future__ import annotations

from test_pages import app, open_page  # noqa: F401  (fixture)

BATCH = 4


def test_the_form_and_the_models_page_show_the_facades_number(app, demo_home, monkeypatch):  # noqa: F811
    import engine.memory
    from engine import Workbench

    # What the process holds moves between two reads; fixed here so the figures compare exactly.
    monkeypatch.setattr(engine.memory, "process_memory_mb", lambda device: 1000.0)
    workbench = Workbench(demo_home)
    assert len(workbench.get_dataset("demo-text")["labels"]) == 2  # the Models page's 2 classes
    check = workbench.check_run("demo-text", "tiny-bert", "lora", {},
                                {"per_device_train_batch_size": BATCH})["memory"]
    tokens = check["shape"]["sequence_length"]  # the longest demo-text item, as tiny-bert reads it
    assert check["shape"] == {"batch_size": BATCH, "sequence_length": tokens} and tokens > 1
    expected = workbench.estimate_memory("tiny-bert", ["lora"], task="text-classification",
                                         batch_size=BATCH, sequence_length=tokens)["lora"]
    assert expected["total_mb"] == 1000.0 + expected["training_mb"] and expected["training_mb"] > 0
    assert check["estimate_mb"] == expected["total_mb"]
    shown = f"about {expected['total_mb']:,.0f} MiB at peak"

    open_page(app, "pages/training.py")
    app.selectbox(key="train.dataset").select("demo-text").run()
    app.selectbox(key="train.model").select("tiny-bert")
    app.selectbox(key="train.method").select("lora")
    app.number_input(key="train.training.per_device_train_batch_size").set_value(BATCH).run()
    assert not app.exception, app.exception
    memory = [c.value for c in app.caption if c.value.startswith("Memory:")]
    assert memory and shown in memory[0], memory

    open_page(app, "pages/models.py")
    app.selectbox(key="models.selected").select("tiny-bert").run()
    app.number_input(key="models.batch").set_value(BATCH)
    app.number_input(key="models.length.tiny-bert.text-classification").set_value(tokens).run()
    app.button(key="models.estimate").click().run()
    assert not app.exception, app.exception
    table = app.dataframe[-1].value.set_index("method")
    assert table.loc["lora", "peak MiB"] == round(expected["total_mb"])
