"""The process-wide workbench, shared by every browser session."""

from __future__ import annotations

import re

import streamlit as st

from engine import Workbench, data_home
from engine.progress import format_duration  # noqa: F401  (the pages' one way to show a duration)


_started: list[Workbench] = []


@st.cache_resource(show_spinner="Starting the workbench…")
def _workbench_for(home: str) -> Workbench:
    workbench = Workbench(home)
    workbench.start_worker()  # one background training thread for the whole app
    workbench.start_memory_estimator()  # its imports run while the first page draws
    _started.append(workbench)
    return workbench


def shutdown_workbenches() -> None:
    """Stop every worker this process started (tests; the app itself never needs it)."""
    while _started:
        _started.pop().shutdown()
    _workbench_for.clear()


def shared_workbench() -> Workbench:
    """The engine for the data home in ``LIM_HOME`` (made once, then cached), as the local
    owner: for the log-in page and the auth gate, never for showing items."""
    return _workbench_for(str(data_home().resolve()))


def get_workbench() -> Workbench:
    """The engine as this browser session's user sees it (ui/auth.py): with ``LIM_AUTH=on``
    every call is scoped to the logged-in account; a page reached without one stops here."""
    from ui.auth import session_user

    workbench = shared_workbench()
    user = session_user(workbench)
    if user is None:
        st.warning("Log in first.")
        st.stop()
    return workbench.for_user(user) if user["id"] != workbench.owner_id else workbench


def linked_selectbox(param: str, label: str, options: list, *, key: str, noun: str,
                     parse=str, **selectbox_args):
    """``st.selectbox`` whose choice is also in the page's address (``?param=``), so a link or a
    reload opens the same item: a value in the address picks that item when the address
    changed (a link, back or forward), and a choice in the box writes it back. ``options`` are
    the items this user can see: another user's item in a link is "not found", as a wrong id."""
    linked = f"{key}.link"  # the address value this tab last followed or wrote
    wanted = st.query_params.get(param)
    if wanted is not None and wanted != st.session_state.get(linked):
        st.session_state[linked] = wanted
        try:
            value = parse(wanted)
        except ValueError:
            value = None
        if value in options:
            st.session_state[key] = value
        else:
            link_not_found(param, noun)
    chosen = st.selectbox(label, options, key=key, **selectbox_args)
    if chosen is not None and st.query_params.get(param) != str(chosen):
        st.query_params[param] = str(chosen)
    st.session_state[linked] = None if chosen is None else str(chosen)
    return chosen


def link_not_found(param: str, noun: str) -> None:
    """Say that the item a link named is not here (it does not exist or is not yours)."""
    if (wanted := st.query_params.get(param)) is not None:
        st.warning(f"{noun} {md_text(wanted[:80])} was not found: it does not exist, or it is "
                   "not yours. Showing what you have.", icon=":material/link_off:")


# Markdown's punctuation (CommonMark backslash escapes) plus Streamlit's ``:directive[...]``
# colon; no library escapes Streamlit's dialect, so it is written out here.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~:$&])")


def md_text(text: object) -> str:
    """Text from outside (a transcript, label, file or item name) safe inside ``st.markdown``:
    shown as typed, never as a link, image, HTML or colour directive."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


# status -> (Material icon, badge colour)
STATUS_BADGES = {
    "queued": (":material/schedule:", "gray"), "running": (":material/play_arrow:", "blue"),
    "completed": (":material/check_circle:", "green"), "failed": (":material/error:", "red"),
    "stopped": (":material/stop_circle:", "orange"), "interrupted": (":material/warning:", "orange"),
    "cancelled": (":material/block:", "gray"),
}


def status_badge(status: str) -> None:
    icon, color = STATUS_BADGES.get(status, (None, "gray"))
    st.badge(status, icon=icon, color=color)


def run_label(run: dict, with_status: bool = True) -> str:
    label = f"#{run['id']} {run['method']} · {run['model_name']} on {run['dataset_name']}"
    return f"{label} ({run['status']})" if with_status else label


MFU_HELP = ("Model-FLOPs utilisation: the model's training FLOPs per second (samples/s x FLOPs "
            "per example, 3 x forward for full fine-tuning, 2 x for adapters) over the device's "
            "peak dense bf16 FLOP/s. Needs a known peak: none for a CPU; set LIM_PEAK_TFLOPS for "
            "a GPU the workbench does not know.")


def mfu_text(mfu_percent: float | None, device: str | None) -> str:
    """Utilisation for display: "12.3 %", or "n/a on CPU", "n/a" (a GPU of unknown peak), "–"
    (nothing logged)."""
    if mfu_percent is not None:
        return f"{mfu_percent:.1f} %"
    return {"CPU": "n/a on CPU", "GPU": "n/a"}.get(device, "–")
