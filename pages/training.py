"""Training: configure and queue runs, watch one live, stop, resume, clone, export or delete it,
manage the queue.

Rendering only reads: every write (start, stop, resume, clone, move, cancel, delete) happens in
a button's branch, so any number of tabs can watch the same run. The monitor, the queue and
the list of all runs are fragments that refresh themselves, so they always agree.
"""


import streamlit as st

from engine.errors import NotFoundError, WorkbenchError
from ui import training_views as views
from ui.exports import export_panel
from ui.state import format_duration, get_workbench, run_label, status_badge
from ui.training_form import new_run_form

wb = get_workbench()
st.title("Training")
views.device_profile(wb.device_profile())

datasets, models = wb.list_datasets(), wb.list_models()
methods = {m["name"]: m for m in wb.list_methods()}

runs = wb.list_runs()
if "train.flash" in st.session_state:  # a toast: it goes by itself, never stays up stale
    st.toast(st.session_state.pop("train.flash"), icon=":material/check_circle:")
if not runs:
    st.info("No runs yet. Open **New run** below, keep the defaults and press Start.")


def watch_select() -> int:
    run_ids = [r["id"] for r in runs]
    if "train.watch_next" in st.session_state:  # a run just started: watch it
        st.session_state["train.watch_select"] = st.session_state.pop("train.watch_next")
    if st.session_state.get("train.watch_select") not in run_ids:  # a fresh tab
        st.session_state["train.watch_select"] = views.default_run(runs)
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
    if status not in ("queued", "running"):
        if next(buttons).button("Delete…", key=f"train.delete.{run_id}", icon=":material/delete:",
                             help="Delete this run with its checkpoints, adapter, metrics and log."):
            st.session_state["train.delete.confirm"] = run_id
    if st.session_state.get("train.delete.confirm") == run_id:
        confirm_delete(run)


def confirm_delete(run: dict) -> None:
    st.warning(f"Delete run #{run['id']} ({run['method']} on {run['dataset_name']})? Its "
               "checkpoints, adapter, metrics and log go; exports you downloaded stay yours.")
    yes, no = st.columns(2)
    if yes.button("Yes, delete it", key="train.delete.yes", type="primary"):
        st.session_state.pop("train.delete.confirm")
        try:
            wb.delete_run(run["id"])
            st.session_state["train.flash"] = f"Run #{run['id']} deleted."
            st.rerun()
        except WorkbenchError as error:
            st.error(str(error))
    if no.button("Keep it", key="train.delete.no"):
        st.session_state.pop("train.delete.confirm")
        st.rerun()


@st.fragment(run_every=1.5)
def monitor(run_id: int, shown_status: str) -> None:
    """Live view of one run; reads only (the worker thread writes)."""
    try:
        run = wb.get_run(run_id)
    except NotFoundError:  # deleted from another tab or the command line
        st.rerun()
    status = run["status"]
    if status != shown_status:  # the whole page follows (export and delete appear when it ends)
        st.rerun()
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
    views.event_log(wb.run_events(run_id, limit=30))
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


def take_home(run: dict) -> None:
    """Export a finished run (the Playground's buttons), outside the live fragment: an export
    can take minutes and must not be cut short by a refresh."""
    if run["status"] != "completed" or not run["adapter_dir"]:
        return
    family = next((m["family"] for m in models if m["name"] == run["model_name"]), None)
    with st.expander(f"Take run #{run['id']} home", icon=":material/download:"):
        export_panel(wb, run, family, "train.export")


@st.fragment(run_every=3)
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


@st.fragment(run_every=2)
def all_runs() -> None:
    st.subheader("All runs")
    views.runs_table(wb.list_runs())


if runs:
    watched = watch_select()
    watched_run = next(r for r in runs if r["id"] == watched)
    monitor(watched, watched_run["status"])
    take_home(watched_run)

queue_section()

with st.expander("New run", expanded=not runs or "train.clone_from" in st.session_state):
    if not datasets or not models:
        st.info("You need a dataset and a model first: `python -m engine demo` adds both.")
    else:
        new_run_form(wb, datasets, models, methods)

if runs:
    all_runs()
