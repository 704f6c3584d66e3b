"""The process-wide workbench, shared by every browser session."""

from __future__ import annotations

import streamlit as st

from engine import Workbench, data_home


@st.cache_resource(show_spinner="Starting the workbench…")
def _workbench_for(home: str) -> Workbench:
    workbench = Workbench(home)
    workbench.start_worker()  # one background training thread for the whole app
    return workbench


def get_workbench() -> Workbench:
    """The engine for the data home in ``LIM_HOME`` (made once, then cached)."""
    return _workbench_for(str(data_home().resolve()))


STATUS_ICONS = {
    "queued": "⏳", "running": "🏃", "completed": "✅", "failed": "❌", "stopped": "⏹️",
    "interrupted": "⚠️", "cancelled": "🚫",
}


def run_label(run: dict) -> str:
    icon = STATUS_ICONS.get(run["status"], "")
    return (f"#{run['id']} {icon} {run['method']} · {run['model_name']} on {run['dataset_name']} "
            f"({run['status']})")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"
