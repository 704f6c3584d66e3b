"""Training: configure and queue runs, watch one live, stop, resume, clone, export or delete it,
manage the queue. The live parts are in ui/training_monitor.py, the form in ui/training_form.py."""


import streamlit as st

from ui import training_monitor as live
from ui.confirm import show_flash
from ui.state import get_workbench, link_not_found
from ui.training_form import new_run_form
from ui.training_views import device_profile

wb = get_workbench()
st.title("Training")
device_profile(wb.device_profile())

datasets, models = wb.list_datasets(), wb.list_models()
methods = {m["name"]: m for m in wb.list_methods()}
runs = wb.list_runs()
show_flash("train")
if not runs:
    link_not_found("run", "Run")
    st.info("No runs yet. Open **New run** below, keep the defaults and press Start.")
else:
    watched = live.watch_select(runs)
    live.monitor(wb, watched["id"], watched["status"])
    live.take_home(wb, watched, models)

live.queue_section(wb)

with st.expander("New run", expanded=not runs or "train.clone_from" in st.session_state):
    if not datasets or not models:
        st.info("You need a dataset and a model first: `python -m engine demo` adds both.")
    else:
        new_run_form(wb, datasets, models, methods)

if runs:
    live.all_runs(wb)
