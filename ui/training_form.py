"""The New run form of the Training page: the basics first, everything else under Advanced.

Basic: dataset, model, method, how long (steps or epochs), learning rate and the method's
rank. The form checks every field before Start (ui.forms) and then the whole configuration
with the engine (``Workbench.check_run``): an error blocks Start, naming the field; absurd
but legal values are warned about, with the memory and time estimates, before Start.
What Start submits is exactly what the widgets show.
"""

from __future__ import annotations

import streamlit as st

from engine.errors import WorkbenchError
from engine.models import TASK_NAMES
from ui.confirm import flash
from ui.forms import field_widget, fix_buttons, settings_form
from ui.state import format_duration

RANK_FIELDS = ("r", "init_r")  # the method's rank, where it has one (LoRA family, AdaLoRA)
HOW_LONG = {"steps": "a number of steps", "epochs": "a number of epochs"}
DEFAULT_STEPS = 100  # shown when switching to steps from an epoch-based configuration
# Where a run trains: a GPUs choice when this machine has several; machines are command-line only.
LAUNCH_FIELDS = {"gpus", "nnodes", "rdzv_endpoint"}


def new_run_form(wb, datasets: list[dict], models: list[dict], methods: dict[str, dict]) -> None:
    clone_id = st.session_state.get("train.clone_from")
    source = wb.get_run(clone_id) if clone_id is not None else None
    # A clone gets its own widget keys, so its values start from the cloned run's settings.
    prefix = f"train.clone{clone_id}" if source else "train"
    if source:
        left, right = st.columns([4, 1])
        left.info(f"Cloning run #{clone_id}: its settings are filled in; change what you want "
                  "and press Start.")
        if right.button("Start from defaults", key="train.clone_discard"):
            st.session_state.pop("train.clone_from")
            st.rerun()

    dataset_name, model_name, method_name, fitting = choose_what(wb, datasets, models, methods, source, prefix)
    method_fields = methods[method_name]["settings"]
    training_fields = wb.training_settings_schema()
    same_method = source is not None and source["method"] == method_name
    # A clone starts from what clone_run would queue (Workbench.clone_settings: a setting an
    # older run did not store at its default, as on the command line), new runs from the
    # form's defaults (the device profile's).
    cloned = wb.clone_settings(clone_id).to_record()["settings"] if source else None
    method_start = {f["name"]: f["default"] for f in method_fields} | (
        cloned["method"] if same_method else {})
    training_start = {f["name"]: f["default"] for f in training_fields} | (cloned["training"] if cloned else {})

    method_values, training_values, problems = basic_settings(
        method_fields, training_fields, method_start, training_start, prefix, method_name)
    training_values |= gpu_choice(wb.gpu_count(), training_start, prefix)
    with st.expander("Advanced: every other setting", icon=":material/tune:"):
        st.markdown(f"**{method_name} settings**")
        values, found = settings_form(method_fields, f"{prefix}.{method_name}", values=method_start,
                                      skip=set(method_values))
        method_values |= values
        problems += found
        st.markdown("**Training settings**")
        values, found = settings_form(training_fields, f"{prefix}.training", columns=3,
                                      values=training_start,
                                      skip=set(training_values) | {"max_steps", "num_train_epochs"} | LAUNCH_FIELDS)
        training_values |= values
        problems += found
    # Settings of the other "how long" unit keep their value (unused by the run) without a widget.
    training_values = {f["name"]: training_values.get(f["name"], training_start[f["name"]])
                       for f in training_fields}
    method_values = {f["name"]: method_values[f["name"]] for f in method_fields}

    blocked = not fitting or bool(problems)
    if problems:
        st.error("Fix these before Start:\n\n" + "\n".join(f"- {p}" for p in problems),
                 icon=":material/block:")
    elif fitting:
        keys = ({f["name"]: f"{prefix}.training.{f['name']}" for f in training_fields}
                | {f["name"]: f"{prefix}.{method_name}.{f['name']}" for f in method_fields})
        blocked = not preflight(wb, dataset_name, model_name, method_name, method_values, training_values,
                                keys)
    start, command = st.columns([1, 5])
    if command.button("Show the command", key="train.command", icon=":material/terminal:",
                      help="The command line that queues this same run headless."):
        st.code(wb.train_command(dataset_name, model_name, method_name, method_values, training_values),
                language="bash", wrap_lines=True)
    if start.button("Start", type="primary", disabled=blocked, key="train.start"):
        try:
            run_id = wb.submit_run(dataset_name, model_name, method_name, method_values, training_values)
            st.session_state.pop("train.clone_from", None)
            st.session_state["train.watch_next"] = run_id
            flash("train", f"Run #{run_id} queued: it starts as soon as the worker is free.")
            st.rerun()  # show the new run in the monitor above
        except WorkbenchError as error:
            st.error(str(error))


def choose_what(wb, datasets, models, methods, source, prefix) -> tuple[str, str | None, str, list]:
    d_col, m_col, x_col = st.columns(3)
    names = [d["name"] for d in datasets]
    dataset_name = d_col.selectbox(
        "Dataset", names, key=f"{prefix}.dataset",
        index=names.index(source["dataset_name"]) if source and source["dataset_name"] in names else 0,
        format_func=lambda n: f"{n} ({TASK_NAMES[wb.get_dataset(n)['task']]})")
    task = wb.get_dataset(dataset_name)["task"]
    fitting = [m["name"] for m in models if task in (m["tasks"] or [])]
    model_name = m_col.selectbox(
        "Model", fitting, key=f"{prefix}.model",
        index=fitting.index(source["model_name"]) if source and source["model_name"] in fitting else 0,
        help="Only models that can do this dataset's task are listed.")
    method_names = list(methods)
    default_method = source["method"] if source and source["method"] in methods else (
        "qlora" if "qlora" in methods else method_names[0])
    method_name = x_col.selectbox("Method", method_names, key=f"{prefix}.method",
                                  index=method_names.index(default_method),
                                  format_func=lambda n: f"{n}: {methods[n]['help']}")
    if not fitting:
        st.warning(f"No registered model can do {TASK_NAMES[task]} yet.")
    if model_name and wb.get_model(model_name)["is_preset"]:
        st.caption("⚠️ This preset is untrained (random weights): expect the loss to fall but "
                   "predictions to stay poor. It makes the whole loop visible in seconds.")
    return dataset_name, model_name, method_name, fitting


def basic_settings(method_fields, training_fields, method_start, training_start, prefix,
                   method_name) -> tuple[dict, dict, list[str]]:
    """How long (steps or epochs), learning rate, rank: ``(method, training, problems)``."""
    by_name = {f["name"]: f for f in training_fields}
    unit_col, length_col, rate_col, rank_col = st.columns(4)
    unit = unit_col.radio("Train for", list(HOW_LONG), format_func=HOW_LONG.get,
                          index=0 if training_start["max_steps"] > 0 else 1, key=f"{prefix}.training.train_for",
                          help="Steps: optimizer steps (`max_steps`). Epochs: passes over the "
                               "training split (`num_train_epochs`).")
    training, method, problems = {}, {}, []
    with length_col:
        if unit == "steps":
            start = training_start["max_steps"] if training_start["max_steps"] > 0 else DEFAULT_STEPS
            training["max_steps"], problem = field_widget(
                by_name["max_steps"], f"{prefix}.training.max_steps", start,
                extra_check=lambda v: None if v >= 1 else f"max_steps must be at least 1, got {v}")
        else:
            training["max_steps"] = -1  # -1: the run counts epochs
            training["num_train_epochs"], problem = field_widget(
                by_name["num_train_epochs"], f"{prefix}.training.num_train_epochs",
                training_start["num_train_epochs"],
                extra_check=lambda v: None if v > 0 else f"num_train_epochs must be greater than 0, got {v:g}")
        problems += [problem] if problem else []
    with rate_col:
        training["learning_rate"], problem = field_widget(
            by_name["learning_rate"], f"{prefix}.training.learning_rate", training_start["learning_rate"],
            extra_check=lambda v: None if v > 0 else f"learning_rate must be greater than 0, got {v:g}")
        problems += [problem] if problem else []
    rank = next((f for f in method_fields if f["name"] in RANK_FIELDS), None)
    with rank_col:
        if rank is not None:
            method[rank["name"]], problem = field_widget(rank, f"{prefix}.{method_name}.{rank['name']}",
                                                         method_start[rank["name"]])
            problems += [problem] if problem else []
        else:
            st.caption(f"{method_name} has no rank to set.")
    return method, training, problems


def gpu_choice(visible: int, training_start: dict, prefix: str) -> dict:
    """A "GPUs" choice when this machine has more than one GPU (one GPU, or none: no choice,
    the run trains in one process). Several machines are a command-line matter (nnodes)."""
    launch = {"gpus": 1, "nnodes": 1, "rdzv_endpoint": ""}
    if visible > 1:
        options = list(range(1, visible + 1))
        launch["gpus"] = st.selectbox(
            "GPUs", options, index=min(max(int(training_start["gpus"]), 1), visible) - 1,
            key=f"{prefix}.training.gpus",
            help="Train on this many GPUs at once (`gpus`, torchrun with data parallelism): each GPU "
                 "trains on its own batch of `per_device_train_batch_size` examples and the "
                 "gradients are averaged, so one optimizer step sees GPUs × batch size × "
                 "accumulation examples (docs/multi-gpu.md).")
    return launch


def preflight(wb, dataset_name, model_name, method_name, method_values, training_values,
              keys: dict[str, str]) -> bool:
    """The engine's checks of the whole configuration: an error (False: Start stays blocked)
    with its fix as one click when there is one (``keys``: setting -> widget key), else
    warnings, memory and how long it will take."""
    try:
        with st.spinner("Checking the configuration and estimating its memory…"):
            plan = wb.check_run(dataset_name, model_name, method_name, method_values, training_values)
    except WorkbenchError as error:
        st.error(f"Cannot start: {error}", icon=":material/block:")
        fix_buttons(error, keys, "train.fix")
        return False
    for warning in plan["warnings"]:
        st.warning(f"Check before Start (it queues anyway): {warning}.", icon=":material/warning:")
    memory = plan["memory"]
    if memory["fits"]:  # the number the Models and Methods pages show for this configuration
        st.caption(f"Memory: {memory['message']}.")
    else:
        st.warning(memory["message"])
    duration = plan["estimated_seconds"]
    st.caption(f"{plan['steps']:,} optimizer steps"
               + (f", about {format_duration(duration).removeprefix('about ')} on this machine (from "
                  "its earlier runs of this model and method)." if duration is not None else
                  "; no earlier run of this model and method to time it by."))
    return True

