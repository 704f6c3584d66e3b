"""Training: configure and start a run, then watch it live, stop or resume it."""


import pandas as pd
import streamlit as st

from engine.errors import WorkbenchError
from engine.models import TASK_NAMES
from ui.charts import metric_figure
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


@st.fragment(run_every=1.5)
def monitor(run_id: int) -> None:
    """Live view of one run; reads only (the worker thread writes)."""
    run = wb.get_run(run_id)
    status, step, total = run["status"], run["step"] or 0, run["total_steps"]
    st.markdown(f"### {run_label(run, with_status=False)}")
    status_badge(status)
    fraction = min(1.0, step / total) if total else 0.0
    elapsed = run["wall_time_s"] or 0.0
    eta = elapsed / step * (total - step) if step and total and status == "running" else None
    st.progress(fraction, text=f"step {step} / {total or '?'} · elapsed {format_duration(elapsed)}"
                               + (f" · ETA {format_duration(eta)}" if eta is not None else ""))

    buttons = st.columns(6)
    if status in ("queued", "running"):
        if buttons[0].button("Stop", key=f"train.stop.{run_id}",
                             help="Saves a checkpoint and ends the run as stopped."):
            wb.stop_run(run_id)
            st.toast(f"Stopping run #{run_id}…")
    if status in ("stopped", "interrupted", "failed"):
        if buttons[0].button("Resume", key=f"train.resume.{run_id}",
                             help="Continues from the last checkpoint."):
            wb.resume_run(run_id)
            st.toast(f"Run #{run_id} queued to resume")
    if status == "queued":
        st.info("Waiting for the worker: one run trains at a time.")
    if run["error"]:
        st.error(run["error"])

    metrics = wb.run_metrics(run_id)
    if status == "completed":
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
        st.caption(f"Adapter folder: `{wb.run_summary(run_id)['adapter_dir']}` — loads with "
                   "`PeftModel.from_pretrained(base_model, folder)`.")
    elif run["trainable_params"]:
        st.caption(f"{run['trainable_params']:,} of {run['total_params']:,} parameters train · "
                   f"peak memory {run['peak_memory_mb'] or 0:.0f} MiB")

    if metrics:
        by_run = {f"#{run_id}": metrics}
        left, right = st.columns(2)
        left.plotly_chart(metric_figure(by_run, "train/loss"), key=f"train.loss.{run_id}")
        right.plotly_chart(metric_figure(by_run, "system/memory_mb"), key=f"train.memory.{run_id}")
    events = wb.run_events(run_id, limit=30)
    st.code("\n".join(f"{e['time'][11:19]} {e['level']:>7}  {e['message'].splitlines()[0]}"
                      for e in events if e["level"] != "debug") or "(no log yet)", language=None)


if runs:
    monitor(watch_select())

with st.expander("New run", expanded=not runs):
    if not datasets or not models:
        st.info("You need a dataset and a model first: `python -m engine demo` adds both.")
    else:
        d_col, m_col, x_col = st.columns(3)
        dataset_name = d_col.selectbox(
            "Dataset", [d["name"] for d in datasets], key="train.dataset",
            format_func=lambda n: f"{n} ({TASK_NAMES[wb.get_dataset(n)['task']]})")
        task = wb.get_dataset(dataset_name)["task"]
        fitting = [m["name"] for m in models if task in (m["tasks"] or [])]
        model_name = m_col.selectbox("Model", fitting, key="train.model",
                                     help="Only models that can do this dataset's task are listed.")
        method_names = list(methods)
        method_name = x_col.selectbox("Method", method_names, key="train.method",
                                      index=method_names.index("qlora") if "qlora" in methods else 0,
                                      format_func=lambda n: f"{n}: {methods[n]['help']}")
        if not fitting:
            st.warning(f"No registered model can do {TASK_NAMES[task]} yet.")
        if model_name and wb.get_model(model_name)["is_preset"]:
            st.caption("⚠️ This preset is untrained (random weights): expect the loss to fall but "
                       "predictions to stay poor. It makes the whole loop visible in seconds.")
        st.markdown(f"**{method_name} settings**")
        method_values = settings_form(methods[method_name]["settings"], f"train.{method_name}")
        st.markdown("**Training settings**")
        training_values = settings_form(wb.training_settings_schema(), "train.training", columns=3)
        if st.button("Start", type="primary", disabled=not fitting, key="train.start"):
            try:
                run_id = wb.submit_run(dataset_name, model_name, method_name, method_values,
                                       training_values)
                st.session_state["train.watch_next"] = run_id
                st.session_state["train.flash"] = (f"Run #{run_id} queued: it starts as soon as "
                                                   "the worker is free.")
                st.rerun()  # show the new run in the monitor above
            except WorkbenchError as error:
                st.error(str(error))

if runs:
    st.subheader("All runs")
    st.dataframe(pd.DataFrame([{
        "run": r["id"], "status": r["status"], "method": r["method"], "model": r["model_name"],
        "dataset": r["dataset_name"], "step": f"{r['step']}/{r['total_steps'] or '?'}",
        "created": r["created_at"],
    } for r in runs]), hide_index=True, width="stretch")
