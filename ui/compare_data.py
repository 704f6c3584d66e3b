"""Cached, downsampled metric series for the Compare page.

The engine stores each run's series downsampled (about 1,000 points) when the run ends, so a
first render reads those, not 100,000 rows per run (engine/series.py). On top of that, a rerun
of the page (any widget change) is served by ``st.cache_data`` keyed by data home, run id, the
run's last step and the metric name.
"""

from __future__ import annotations

import streamlit as st

from ui.state import get_workbench


@st.cache_data(max_entries=4000, show_spinner=False)
def display_series(home: str, run_id: int, last_step: int, name: str) -> dict[str, list]:
    """``{"step", "wall_time", "value"}`` of one metric, downsampled for display."""
    return get_workbench().display_series(run_id, name)


@st.cache_data(max_entries=2000, show_spinner=False)
def metric_names(home: str, run_id: int, last_step: int) -> list[str]:
    return get_workbench().run_metric_names(run_id)
