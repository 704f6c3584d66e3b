"""Models: what is registered, what it is made of, what a run will cost; register and delete.
The parts are in ui/model_views.py."""

import streamlit as st

from engine.models import TASK_NAMES
from ui import model_views as views
from ui.confirm import show_flash
from ui.state import get_workbench, linked_selectbox

wb = get_workbench()
st.title("Models")
show_flash("models")

models = wb.list_models()
if not models:
    st.info("No models yet. `python -m engine demo` adds the presets; register one below.")
else:
    views.models_table(models)
    model = wb.get_model(linked_selectbox("model", "Inspect a model", [m["name"] for m in models],
                                          key="models.selected", noun="Model"))
    st.markdown(model["description"] or "")
    task = st.radio("Task", model["tasks"], horizontal=True, format_func=TASK_NAMES.get,
                    key="models.task")
    views.architecture(wb.model_architecture(model["name"], task), task)
    views.run_needs(model, task, tuple(m["name"] for m in wb.list_methods()))
    views.delete_model(wb, model)

st.divider()
st.subheader("Register a model")
views.register(wb)
