"""Compare: pick runs, see what each bought (quality) and what it cost (memory, time, size).
The parts are in ui/compare_views.py; which runs are offered is engine/compare.py's."""

import streamlit as st

from engine.compare import comparable
from ui import compare_views as views
from ui.state import get_workbench

wb = get_workbench()
st.title("Compare runs")

runs = comparable(wb.list_runs())
if not runs:
    st.info("Nothing to compare yet: runs appear here once they have trained a step. "
            "Start one on the **Training** page.")
    st.stop()

candidates = views.filtered(runs)
if not candidates:
    st.info("No run matches these filters.")
    st.stop()
by_id = {r["id"]: r for r in runs}
chosen = views.pick_runs(candidates, by_id)
views.tag_editor(wb, by_id)
if not chosen:
    st.info("Pick at least one run.")
    st.stop()

x_axis = st.radio("x axis of the curves", ["wall_time", "step"], horizontal=True, key="compare.x",
                  format_func={"wall_time": "wall time", "step": "step"}.get)
comparison = views.Comparison(str(wb.home), chosen, by_id, wb.compare_runs(chosen), x_axis)
for tab, draw in zip(st.tabs(list(views.TABS)), views.TABS.values()):
    with tab:
        draw(comparison)
