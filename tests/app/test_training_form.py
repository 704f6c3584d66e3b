"""The New run form (ui/training_form.py): what it shows is what Start submits, every invalid
field blocks Start naming the field, absurd values are warned about before Start, the basics
come first with the rest under Advanced, and "Show the command" prints the same run headless."""

from __future__ import annotations

import shlex

import pytest
from seeded_runs import hold_worker
from test_pages import app, open_page  # noqa: F401  (fixture)

INVALID = [  # widget key, value, the setting the message must name
    ("train.training.per_device_train_batch_size", 0, "per_device_train_batch_size"),
    ("train.training.max_steps", -5, "max_steps"),
    ("train.training.max_steps", 0, "max_steps"),
    ("train.qlora.r", 0, "r must be"),
    ("train.training.gradient_accumulation_steps", 0, "gradient_accumulation_steps"),
    ("train.training.warmup_steps", -10, "warmup_steps"),
    ("train.training.max_grad_norm", -3.0, "max_grad_norm"),
    ("train.training.learning_rate", 0.0, "learning_rate"),
]


def open_form(app, demo_home):  # noqa: F811
    from engine import Workbench

    workbench = Workbench(demo_home)
    hold_worker(workbench)  # runs this test queues stay queued
    open_page(app, "pages/training.py")
    app.radio(key="train.training.train_for").set_value("steps").run()
    assert not app.exception, app.exception
    return workbench


@pytest.mark.parametrize("key, value, named", INVALID)
def test_an_invalid_field_blocks_start_with_a_message_naming_it(app, demo_home, key, value, named):  # noqa: F811
    workbench = open_form(app, demo_home)
    widget = app.number_input(key=key)
    # No bounds on the widget: a browser would refuse an out-of-range entry silently and keep
    # sending the previous value, so Start would submit something the form does not show.
    assert not widget.proto.has_min and not widget.proto.has_max
    widget.set_value(value).run()
    assert not app.exception, app.exception
    errors = [e.value for e in app.error]
    assert any(named in message for message in errors), errors
    assert app.button(key="train.start").disabled  # (AppTest, like a browser, cannot click it)
    assert len(workbench.list_runs()) == 1  # only the run holding the worker


def test_start_stores_exactly_what_the_form_shows(app, demo_home):  # noqa: F811
    workbench = open_form(app, demo_home)
    app.selectbox(key="train.dataset").select("demo-speech").run()
    changes = {"train.training.max_steps": 7, "train.qlora.r": 12, "train.training.learning_rate": 3e-4,
               "train.training.gradient_accumulation_steps": 2, "train.training.warmup_steps": 3,
               "train.training.max_grad_norm": 0.5, "train.training.per_device_train_batch_size": 2}
    for key, value in changes.items():
        app.number_input(key=key).set_value(value)
    app.run()
    assert not app.error and not app.button(key="train.start").disabled
    prefixes = ("train.training.", "train.qlora.")
    shown = {w.key: w.value for widgets in (app.number_input, app.selectbox, app.checkbox, app.text_input)
             for w in widgets if w.key and w.key.startswith(prefixes)}
    assert len(shown) > 30  # every setting but the unused "how long" one
    app.button(key="train.start").click().run()
    assert not app.exception, app.exception
    assert any("queued" in toast.value for toast in app.toast)
    run = workbench.list_runs()[0]
    stored = {f"train.training.{k}": v for k, v in run["settings"]["training"].items()}
    stored |= {f"train.qlora.{k}": v for k, v in run["settings"]["method"].items()}
    assert {key: stored[key] for key in shown} == shown
    assert {key: stored[key] for key in changes} == changes


def test_absurd_values_are_warned_before_start_with_a_human_estimate(app, demo_home):  # noqa: F811
    from engine import Workbench

    workbench = Workbench(demo_home)
    earlier = workbench.submit_run("demo-speech", "tiny-whisper", "qlora", {}, {"max_steps": 40})
    workbench.storage.update_run(earlier, status="completed", step=40, total_steps=40, wall_time_s=20.0)
    open_form(app, demo_home)
    app.selectbox(key="train.dataset").select("demo-speech")
    app.number_input(key="train.training.max_steps").set_value(10_000_000)
    app.number_input(key="train.training.learning_rate").set_value(5.0).run()
    assert not app.exception, app.exception
    warnings = " ".join(w.value for w in app.warning)
    assert "learning_rate 5 is very high" in warnings
    assert "10,000,000 steps will take about 58 days" in warnings  # 0.5 s a step, from the earlier run
    assert not app.button(key="train.start").disabled  # a warning, not a refusal
    assert any("about 58 days on this machine" in c.value for c in app.caption)


def test_basics_first_the_rest_under_advanced_with_plain_labels(app, demo_home):  # noqa: F811
    open_form(app, demo_home)
    [advanced] = [e for e in app.expander if e.label.startswith("Advanced")]
    inside = {w.key for w in advanced.number_input} | {w.key for w in advanced.selectbox}
    assert {"train.training.weight_decay", "train.training.per_device_train_batch_size",
            "train.qlora.lora_alpha"} <= inside
    assert not inside & {"train.training.max_steps", "train.training.learning_rate", "train.qlora.r",
                         "train.training.num_train_epochs"}  # the basics, above
    rate = app.number_input(key="train.training.learning_rate")
    assert rate.label == "Learning rate" and "`learning_rate`" in rate.help and "TrainingArguments" in rate.help
    assert app.number_input(key="train.qlora.r").label == "Rank"
    assert app.number_input(key="train.training.gradient_accumulation_steps").label == "Batches per optimizer step"
    app.radio(key="train.training.train_for").set_value("epochs").run()
    assert app.number_input(key="train.training.num_train_epochs").label == "Epochs"
    assert not [w for w in app.number_input if w.key == "train.training.max_steps"]  # never side by side


def test_show_the_command_prints_the_same_run_for_the_command_line(app, demo_home):  # noqa: F811
    from engine.cli import build_parser
    from engine.settings import parse_assignments

    workbench = open_form(app, demo_home)
    app.selectbox(key="train.dataset").select("demo-speech")
    app.number_input(key="train.training.max_steps").set_value(30)
    app.number_input(key="train.qlora.r").set_value(4)
    app.button(key="train.command").click().run()
    assert not app.exception, app.exception
    [command] = [c.value for c in app.code if c.value.startswith("python -m engine train")]
    assert "--dataset demo-speech --model tiny-whisper --method qlora" in command
    assert "--set r=4" in command and "--set max_steps=30" in command
    args = build_parser().parse_args(shlex.split(command)[3:])
    method, training = workbench.split_settings(args.method, parse_assignments(args.set))
    app.button(key="train.start").click().run()
    run = workbench.list_runs()[0]
    plan = workbench.check_run(args.dataset, args.model, args.method, method, training)
    assert plan["method_settings"] == run["settings"]["method"]
    assert plan["training_settings"] == run["settings"]["training"]
