"""Studies: launch a grid of runs from one form, watch it train, read what it found (the parts
are in ui/studies.py)."""

import streamlit as st

from ui import studies as views
from ui.confirm import flash, show_flash
from ui.state import get_workbench, link_not_found

wb = get_workbench()
st.title("Studies")
st.caption("A study trains every combination of methods × ranks (or parameter budgets) × target "
           "sets × any setting's values (learning rate, ...) × seeds on one dataset and model, as "
           "ordinary queued runs, and compares each method with a reference, paired by seed and by "
           "test item, with 95 % intervals and Holm-corrected p-values.")
show_flash("studies")

studies = wb.list_studies()
with st.expander("New study", expanded=not studies, icon=":material/add:"):
    launched = views.launch_form(wb)
    if launched is not None:
        st.session_state["studies.chosen"] = launched
        if "studies.flash" not in st.session_state:  # sent to Ray: the form said where
            flash("studies", f"Study {launched} queued.")
        st.rerun()

with st.expander("Merge parts run elsewhere", icon=":material/merge:"):
    views.merge_section()

if not studies:
    link_not_found("study", "Study")
    st.info("No studies yet. Pick a dataset, a model, two methods and a few seeds above and "
            "launch one: each combination becomes a run in the queue, and this page fills in "
            "as they finish.", icon=":material/science:")
    st.stop()

chosen = views.choose_study(wb, studies)
summary = wb.study_summary(chosen)
if summary["status"] != next(s["status"] for s in studies if s["id"] == chosen):
    st.rerun()  # a run ended between the two reads
st.subheader(summary["name"])
st.caption(f"{summary['model']} on {summary['dataset']} · methods {', '.join(summary['grid']['methods'])}"
           f" · seeds {', '.join(map(str, summary['grid']['seeds']))}")
if summary["status"] in ("queued", "running"):
    views.live_progress(wb, summary["id"], summary["status"], summary["runs_ended"])
else:
    views.progress(summary)
views.actions(wb, summary)
views.results(wb, summary)
