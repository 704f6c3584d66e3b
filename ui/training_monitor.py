"""The Training page's live parts: which run to watch, its monitor and buttons, the queue and
the table of every run.

Rendering only reads: every write (stop, resume, clone, move, cancel, delete) happens in a
button's branch, so any number of tabs can watch the same run. The monitor, the queue and the
runs table are fragments that refresh themselves, so they always agree. The pieces they draw
(charts, progress, evaluation) are in ui/training_views.py.
"""

from __future__ import annotations

import streamlit as st

from engine.errors import NotFoundError
from ui import training_views as views
from ui.confirm import ask_first, asked, confirm, delete_button
from ui.exports import export_panel
from ui.forms import bounded_number
from ui.state import format_duration, linked_selectbox, run_label, status_badge


def watch_select(runs: list[dict]) -> dict:
    """The run this tab watches: the one just started, else the one a link names
    (``/training?run=3``), else the one chosen before, else ``default_run`` (a fresh tab)."""
    run_ids = [r["id"] for r in runs]
    if "train.watch_next" in st.session_state:  # a run just started: watch it
        st.session_state["train.watch_select"] = st.session_state.pop("train.watch_next")
    if st.session_state.get("train.watch_select") not in run_ids:  # a fresh tab
        st.session_state["train.watch_select"] = views.default_run(runs)
    labels = {r["id"]: run_label(r, with_status=False) for r in runs}
    watched = linked_selectbox("run", "Watch run", run_ids, key="train.watch_select", noun="Run",
                               parse=int, format_func=labels.get)
    return next(r for r in runs if r["id"] == watched)


def run_buttons(wb, run: dict) -> None:
    run_id, status = run["id"], run["status"]
    buttons = iter(st.columns(6))
    if status in ("queued", "running"):
        if next(buttons).button("Stop", key=f"train.stop.{run_id}",
                                help="Saves a checkpoint within one step and ends the run as "
                                     "stopped; a queued run is cancelled."):
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
        delete_button("train.delete", run_id,
                      f"Delete run #{run_id} ({run['method']} on {run['dataset_name']})? Its "
                      "checkpoints, adapter, metrics and log go; exports you downloaded stay yours.",
                      lambda: wb.delete_run(run_id), where=next(buttons), button_key=f"train.delete.{run_id}",
                      help="Delete this run with its checkpoints, adapter, metrics and log.",
                      done=f"Run #{run_id} deleted.", page="train")


@st.fragment(run_every=1.5)
def monitor(wb, run_id: int, shown_status: str) -> None:
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
    clock = wb.run_clock(run_id) if status == "running" else None  # (a queued run: the queue's estimate)
    views.progress(run, clock)
    views.clock_caption(clock)
    if status == "running":
        views.machine_load_line(wb.machine_load(run_id))
    run_buttons(wb, run)
    if status == "queued":
        position = wb.run_summary(run_id)["queue_position"]
        if position is not None:  # None: a worker took it a moment ago
            st.info(f"Waiting in the queue at position {position}.")
    if run["error"]:
        st.error(run["error"])

    live = wb.live_metrics(run_id)  # downsampled series + latest values: any run length reads fast
    result = wb.run_evaluation(run_id) if status == "completed" else None
    if status == "completed":
        final_scores(run, wb.run_summary(run_id)["adapter_dir"], result and result["split"])
    elif run["trainable_params"]:
        st.caption(f"{run['trainable_params']:,} of {run['total_params']:,} parameters train · "
                   f"peak memory {run['peak_memory_mb'] or 0:.0f} MiB")
    if live["series"]:
        views.live_charts(run_id, live)
    views.tracking_commands(wb.run_tracking(run_id))
    views.event_log(wb.run_events(run_id, limit=30))
    if status in views.FINISHED:
        views.method_report(run_id, wb.run_method_report(run_id))
        views.provenance(run_id, wb.run_provenance(run_id), wb.run_decisions(run_id))
    if status == "completed":
        views.evaluation(run_id, result)


def final_scores(run: dict, adapter_dir: str | None, split: str | None) -> None:
    """The final scores, each labelled with its split, in the page's one format per metric."""
    final = run["metrics"] or {}
    cols = st.columns(max(1, len(final)) + 3)
    for col, (name, value) in zip(cols, final.items()):
        col.metric(views.metric_label(name) + (f" ({split} split)" if split else ""),
                   views.metric_text(name, value))
    cols[-3].metric("trainable params", f"{run['trainable_params']:,}",
                    help=f"of {run['total_params']:,} in total")
    cols[-2].metric("peak memory", f"{run['peak_memory_mb']:.0f} MiB",
                    help="On a GPU: peak CUDA memory allocated. On a CPU: peak resident "
                         "memory of the whole app process (libraries included).")
    cols[-1].metric("wall time", format_duration(run["wall_time_s"]))
    share = 100 * run["trainable_params"] / max(1, run["total_params"])
    st.caption(f"{run['trainable_params']:,} of {run['total_params']:,} parameters trained "
               f"({share:.2f} %).")
    st.caption(f"Adapter folder: `{adapter_dir}` — loads with "
               "`PeftModel.from_pretrained(base_model, folder)`.")


def take_home(wb, run: dict, models: list[dict]) -> None:
    """Export a finished run (the Playground's buttons), outside the live fragment: an export
    can take minutes and must not be cut short by a refresh."""
    if run["status"] != "completed" or not run["adapter_dir"]:
        return
    family = next((m["family"] for m in models if m["name"] == run["model_name"]), None)
    with st.expander(f"Take run #{run['id']} home", icon=":material/download:"):
        export_panel(wb, run, family, "train.export")


@st.fragment(run_every=3)
def queue_section(wb) -> None:
    """The queue with its estimated start times; move or cancel your own queued runs."""
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
    position = bounded_number("Move to position", 1, len(queue), 1, "train.queue.position", where,
                              help="Runs take turns by owner (round robin), so your run changes "
                                   "places with your own runs only and lands on your turn nearest "
                                   "this position; an admin's move pins a run exactly there.")
    if move.button("Move", key="train.queue.move"):
        wb.move_run(chosen, int(position))
        st.rerun()
    if cancel.button("Cancel run…", key="train.queue.cancel"):
        ask_first("train.queue.cancel", chosen)
    doomed = asked("train.queue.cancel")
    if doomed in ids:
        confirm("train.queue.cancel", f"Cancel run #{doomed}? It leaves the queue and will not train.",
                lambda: wb.cancel_run(doomed), yes="Yes, cancel it")


@st.fragment(run_every=2)
def all_runs(wb) -> None:
    st.subheader("All runs")
    views.runs_table(wb.list_runs())
