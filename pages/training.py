"""Training: configure and queue runs, watch one live, stop, resume or clone it, manage the queue.

Rendering only reads: every write (start, stop, resume, clone, move, cancel) happens in a
button's branch, so any number of tabs can watch the same run.
"""


import pandas as pd
import streamlit as st

from engine.errors import WorkbenchError
from engine.models import TASK_NAMES
from ui import training_views as views
from ui.forms import settings_form
from ui.state import format_duration, get_workbench, run_label, status_badge

wb = get_workbench()
st.title("Training")

datasets, models = wb.list_datasets(), wb.list_models()
methods = {m["name"]: m for m in wb.list_methods()}

runs = wb.list_runs()
if "train.flash" in st.session_state:
    st.success(st.session_state.pop("train.flash"))
if not runs:
    st.info("No runs yet. Open **New run** below, keep the defaults and press Start.")


def watch_select() -> int:
    run_ids = [r["id"] for r in runs]
    if "train.watch_next" in st.session_state:  # a run just started: watch it
        st.session_state["train.watch_select"] = st.session_state.pop("train.watch_next")
    if st.session_state.get("train.watch_select") not in run_ids:
        st.session_state["train.watch_select"] = run_ids[0]
    labels = {r["id"]: run_label(r, with_status=False) for r in runs}
    return st.selectbox("Watch run", run_ids, format_func=labels.get, key="train.watch_select")


def run_buttons(run: dict) -> None:
    run_id, status = run["id"], run["status"]
    buttons = iter(st.columns(6))
    if status in ("queued", "running"):
        if next(buttons).button("Stop", key=f"train.stop.{run_id}",
                             help="Saves a checkpoint within one step and ends the run as stopped; "
                                  "a queued run is cancelled."):
            wb.stop_run(run_id)
            st.toast(f"Stopping run #{run_id}…")
    if status in ("stopped", "interrupted", "failed"):
        if next(buttons).button("Resume", key=f"train.resume.{run_id}",
                             help="Continues from the last checkpoint with optimizer, scheduler "
                                  "and random state."):
            wb.resume_run(run_id)
            st.toast(f"Run #{run_id} queued to resume")
    if next(buttons).button("Clone", key=f"train.clone.{run_id}",
                         help="Open the New run form with this run's settings, to change some."):
        st.session_state["train.clone_from"] = run_id
        st.rerun()


@st.fragment(run_every=1.5)
def monitor(run_id: int) -> None:
    """Live view of one run; reads only (the worker thread writes)."""
    run = wb.get_run(run_id)
    status = run["status"]
    st.markdown(f"### {run_label(run, with_status=False)}")
    status_badge(status)
    views.progress(run)
    run_buttons(run)
    if status == "queued":
        position = wb.run_summary(run_id)["queue_position"]
        st.info(f"Waiting in the queue at position {position}: one run trains at a time.")
    if run["error"]:
        st.error(run["error"])

    live = wb.live_metrics(run_id)  # downsampled series + latest values: any run length reads fast
    if status == "completed":
        final_scores(run)
    elif run["trainable_params"]:
        st.caption(f"{run['trainable_params']:,} of {run['total_params']:,} parameters train · "
                   f"peak memory {run['peak_memory_mb'] or 0:.0f} MiB")
    if live["series"]:
        views.live_charts(run_id, live)
    events = wb.run_events(run_id, limit=30)
    st.code("\n".join(f"{e['time'][11:19]} {e['level']:>7}  {e['message'].splitlines()[0]}"
                      for e in events if e["level"] != "debug") or "(no log yet)", language=None)
    if status == "completed":
        views.evaluation(run_id, wb.run_evaluation(run_id))


def final_scores(run: dict) -> None:
    final = run["metrics"] or {}
    cols = st.columns(max(1, len(final)) + 3)
    for col, (name, value) in zip(cols, final.items()):
        col.metric(name.replace("_", " ").upper() if len(name) <= 3 else name.replace("_", " "),
                   "–" if value is None else f"{value:.3f}")
    cols[-3].metric("trainable params", f"{run['trainable_params']:,}",
                    help=f"of {run['total_params']:,} in total")
    cols[-2].metric("peak memory", f"{run['peak_memory_mb']:.0f} MiB",
                    help="On a GPU: peak CUDA memory allocated. On a CPU: peak resident "
                         "memory of the whole app process (libraries included).")
    cols[-1].metric("wall time", format_duration(run["wall_time_s"]))
    share = 100 * run["trainable_params"] / max(1, run["total_params"])
    st.caption(f"{run['trainable_params']:,} of {run['total_params']:,} parameters trained "
               f"({share:.2f} %).")
    st.caption(f"Adapter folder: `{wb.run_summary(run['id'])['adapter_dir']}` — loads with "
               "`PeftModel.from_pretrained(base_model, folder)`.")


def queue_section() -> None:
    queue = wb.queue()
    if not queue:
        return
    st.subheader(f"Queue ({len(queue)})")
    views.queue_table(queue)
    ids = [row["id"] for row in queue if row["mine"]]
    if not ids:
        return
    pick, where, move, cancel = st.columns([2, 1, 1, 1], vertical_alignment="bottom")
    chosen = pick.selectbox("Queued run", ids, key="train.queue.run", format_func=lambda i: f"#{i}")
    position = where.number_input("Move to position", min_value=1, max_value=len(queue), value=1,
                                  step=1, key="train.queue.position")
    if move.button("Move", key="train.queue.move"):
        wb.move_run(chosen, int(position))
        st.rerun()
    if cancel.button("Cancel run…", key="train.queue.cancel"):
        st.session_state["train.queue.confirm"] = chosen
    if st.session_state.get("train.queue.confirm") in ids:
        doomed = st.session_state["train.queue.confirm"]
        st.warning(f"Cancel run #{doomed}? It leaves the queue and will not train.")
        yes, no = st.columns(2)
        if yes.button("Yes, cancel it", key="train.queue.confirm_yes", type="primary"):
            wb.cancel_run(doomed)
            st.session_state.pop("train.queue.confirm")
            st.rerun()
        if no.button("Keep it", key="train.queue.confirm_no"):
            st.session_state.pop("train.queue.confirm")
            st.rerun()


def new_run_form() -> None:
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
    same_method = source is not None and source["method"] == method_name
    st.markdown(f"**{method_name} settings**")
    method_values = settings_form(methods[method_name]["settings"], f"{prefix}.{method_name}",
                                  values=source["settings"]["method"] if same_method else None)
    st.markdown("**Training settings**")
    training_values = settings_form(wb.training_settings_schema(), f"{prefix}.training", columns=3,
                                    values=source["settings"]["training"] if source else None)
    if fitting:
        memory_hint(dataset_name, model_name, method_name, method_values, training_values)
    if st.button("Start", type="primary", disabled=not fitting, key="train.start"):
        try:
            run_id = wb.submit_run(dataset_name, model_name, method_name, method_values, training_values)
            st.session_state.pop("train.clone_from", None)
            st.session_state["train.watch_next"] = run_id
            st.session_state["train.flash"] = (f"Run #{run_id} queued: it starts as soon as "
                                               "the worker is free.")
            st.rerun()  # show the new run in the monitor above
        except WorkbenchError as error:
            st.error(str(error))


def memory_hint(dataset_name, model_name, method_name, method_values, training_values) -> None:
    """The memory estimate before launch: a caption when it fits, a warning when it does not."""
    try:
        plan = wb.estimate_run(dataset_name, model_name, method_name, method_values, training_values)
    except WorkbenchError:
        return  # Start shows the problem with the settings
    if plan["fits"]:
        st.caption(f"Memory: about {plan['estimate_mb']:,.0f} MiB needed on {plan['device']}, "
                   f"{plan['free_mb']:,.0f} MiB free (a rough estimate).")
    else:
        st.warning(plan["message"])


if runs:
    monitor(watch_select())

queue_section()

with st.expander("New run", expanded=not runs or "train.clone_from" in st.session_state):
    if not datasets or not models:
        st.info("You need a dataset and a model first: `python -m engine demo` adds both.")
    else:
        new_run_form()

if runs:
    st.subheader("All runs")
    st.dataframe(pd.DataFrame([{
        "run": r["id"], "status": r["status"], "method": r["method"], "model": r["model_name"],
        "dataset": r["dataset_name"], "step": f"{r['step']}/{r['total_steps'] or '?'}",
        "created": r["created_at"],
    } for r in runs]), hide_index=True, width="stretch")
