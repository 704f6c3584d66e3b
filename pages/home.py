"""Home: what is in the workbench, what the machine has, and the latest runs. The parts are in
ui/home_views.py."""

import streamlit as st

from ui import home_views as views
from ui.state import get_workbench

wb = get_workbench()
st.title("LessIsMore Workbench")
st.caption("Fine-tune Whisper and BERT-family models with parameter-efficient methods "
           "(QLoRA first) on modest hardware. Less memory, fewer trainable parameters.")

st.subheader("Start here: watch a real Whisper learn")
views.demo_story(wb)
views.counters(wb)  # read after the demo button, and again every few seconds
datasets, models = wb.list_datasets(), wb.list_models()

st.subheader("This machine")
views.machine(wb.system_info())

left, right = st.columns(2)
with left:
    st.subheader("Datasets")
    views.datasets_table(datasets)
    st.page_link("pages/datasets.py", label="Open datasets", icon=":material/graphic_eq:")
with right:
    st.subheader("Models")
    views.models_table(models)
    st.page_link("pages/models.py", label="Open models", icon=":material/neurology:")

st.subheader("Recent runs")
views.recent_runs(wb)
st.page_link("pages/training.py", label="Start a run", icon=":material/model_training:")
