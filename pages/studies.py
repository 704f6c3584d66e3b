"""Studies: launch a grid of runs from one form, watch it train, read what it found."""

import streamlit as st

from engine.errors import NotFoundError, WorkbenchError
from engine.studies import STATISTIC_TEXT
from ui import studies as views
from ui.state import get_workbench, md_text

wb = get_workbench()
st.title("Studies")
st.caption("A study trains every combination of methods × ranks (or parameter budgets) × target "
           "sets × seeds on one dataset and model, as ordinary queued runs, and shows which "
           "differences are larger than the noise between seeds.")
if "studies.flash" in st.session_state:
    st.toast(st.session_state.pop("studies.flash"), icon=":material/check_circle:")

studies = wb.list_studies()
with st.expander("New study", expanded=not studies, icon=":material/add:"):
    launched = views.launch_form(wb)
    if launched is not None:
        st.session_state["studies.chosen"] = launched
        st.session_state["studies.flash"] = f"Study {launched} queued."
        st.rerun()

if not studies:
    st.info("No studies yet. Pick a dataset, a model, two methods and a few seeds above and "
            "launch one: each combination becomes a run in the queue, and this page fills in "
            "as they finish.", icon=":material/science:")
    st.stop()

by_id = {s["id"]: s for s in studies}
if st.session_state.get("studies.chosen") not in by_id:
    st.session_state["studies.chosen"] = studies[0]["id"]
chosen = st.selectbox("Study", list(by_id), key="studies.chosen",
                      format_func=lambda i: f"#{i} {by_id[i]['name']} ({by_id[i]['status']})"
                      + ("" if by_id[i]["owner_id"] == wb.owner_id else f" · {by_id[i]['owner']}'s"))


@st.fragment(run_every=2)
def progress(study_id: int, shown_status: str, shown_ended: int) -> None:
    """While the study trains: how far it is; the whole page follows when a run ends (the
    table gains its result) and when the study ends."""
    try:
        now = wb.study_progress(study_id)
    except NotFoundError:  # deleted from the command line
        st.rerun()
    if (now["status"], now["runs_ended"]) != (shown_status, shown_ended):
        st.rerun()
    views.progress(now)


def actions(summary: dict) -> None:
    mine = summary["owner_id"] == wb.owner_id
    if not mine:
        whose = "Shared by" if summary["shared"] else "Owned by"
        stoppable = wb.see_all and summary["status"] in ("queued", "running")
        st.caption(f"{whose} **{md_text(summary['owner'])}**: read-only here"
                   + (" (as an admin you may stop it: the device is everybody's)." if stoppable else "."))
    if summary["status"] in ("queued", "running"):
        if not (mine or wb.see_all):
            return
        if st.button("Stop study", icon=":material/stop_circle:", key="studies.stop",
                     help="Cancel its queued runs; its running run stops at the next step "
                          "with a checkpoint."):
            outcome = wb.stop_study(summary["id"])
            st.session_state["studies.flash"] = (f"Study {summary['id']}: {outcome['cancelled']} "
                                                 f"runs cancelled, {outcome['stopping']} stopping.")
            st.rerun()
        return
    if not mine:
        return
    if st.button("Delete study…", icon=":material/delete:", key="studies.delete",
                 help="Delete the study and all its runs."):
        st.session_state["studies.delete.confirm"] = summary["id"]
    if st.session_state.get("studies.delete.confirm") == summary["id"]:
        st.warning(f"Delete study #{summary['id']} and its {summary['runs_total']} runs with their "
                   "metrics, checkpoints and adapters? This cannot be undone.")
        yes, no = st.columns(2)
        if yes.button("Yes, delete them", type="primary", key="studies.delete.yes"):
            st.session_state.pop("studies.delete.confirm")
            try:
                removed = wb.delete_study(summary["id"])
                st.session_state["studies.flash"] = f"Study {summary['id']} deleted with {len(removed)} runs."
            except WorkbenchError as error:
                st.session_state["studies.flash"] = str(error)
            st.rerun()
        if no.button("Keep it", key="studies.delete.no"):
            st.session_state.pop("studies.delete.confirm")
            st.rerun()


summary = wb.study_summary(chosen)
if summary["status"] != by_id[chosen]["status"]:  # a run ended between the two reads
    st.rerun()
st.subheader(summary["name"])
st.caption(f"{summary['model']} on {summary['dataset']} · methods {', '.join(summary['grid']['methods'])}"
           f" · seeds {', '.join(map(str, summary['grid']['seeds']))}")
if summary["status"] in ("queued", "running"):
    progress(summary["id"], summary["status"], summary["runs_ended"])
else:
    views.progress(summary)
actions(summary)

table = summary["table"]
if not any(row["completed"] for row in table):
    st.info("No run of this study has completed yet: the table, the charts and the "
            "differences appear here as runs finish.")
    st.stop()

st.markdown("#### Every cell (mean ± standard deviation over its seeds)")
st.dataframe(views.table_frame(table), hide_index=True, width="stretch", key="studies.table")

st.markdown("#### Larger than seed noise?")
cells = [row["cell"] for row in table]
reference = st.selectbox("Compare every cell against", cells, key=f"studies.reference.{chosen}")
differences = wb.study_summary(chosen, reference)["differences"] if reference != summary["reference"] \
    else summary["differences"]
st.dataframe(views.differences_frame(differences), hide_index=True, width="stretch",
             key="studies.differences")
st.caption(STATISTIC_TEXT)

st.markdown("#### Quality against cost")
charts = views.figures(table)
for tab, (name, figure) in zip(st.tabs(["vs trainable parameters", "vs peak memory"]), charts.items()):
    tab.plotly_chart(figure, key=f"studies.{name}")
st.caption("One point per cell at its mean, bars of one standard deviation; the dashed line "
           "joins the cells no other cell beats on both quality and cost. Peak memory on a CPU "
           "is the whole process's resident memory: compare memory on a GPU.")

left, right = st.columns(2)
left.download_button("Table as CSV", views.study_csv(table), file_name=f"study-{chosen}.csv",
                     mime="text/csv", icon=":material/table:", key="studies.csv")
right.download_button("Read-only report (HTML)", lambda: views.report(wb, {**summary, "differences": differences,
                                                                         "reference": reference}),
                      file_name=f"study-{chosen}.html", mime="text/html", icon=":material/article:",
                      key="studies.html", help="The Compare page's self-contained report of the "
                      "study's runs, with this table and its differences on top.")
