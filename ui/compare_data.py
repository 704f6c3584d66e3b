"""Cached, downsampled metric series for the Compare page.

A rerun of the page (any widget change) must not re-read 100,000 rows per run: series are
cached with ``st.cache_data`` keyed by data home, run id, the run's last step and the metric
name, so a finished run is read once and a running run once per new step. What is cached is
the downsampled series (about 1,000 points), not the raw rows.
"""

from __future__ import annotations

import streamlit as st

from ui.downsample import kept_indices
from ui.state import get_workbench

DISPLAY_BUCKETS = 500


@st.cache_data(max_entries=4000, show_spinner=False)
def display_series(home: str, run_id: int, last_step: int, name: str) -> dict[str, list]:
    """``{"step", "wall_time", "value"}`` of one metric, downsampled for display."""
    import numpy as np

    columns = get_workbench().metric_series(run_id, name)
    if not columns["value"]:
        return columns
    keep = kept_indices(np.asarray(columns["value"], dtype=np.float64), DISPLAY_BUCKETS)
    return {key: np.asarray(values)[keep].tolist() for key, values in columns.items()}


@st.cache_data(max_entries=2000, show_spinner=False)
def metric_names(home: str, run_id: int, last_step: int) -> list[str]:
    return get_workbench().run_metric_names(run_id)
