"""Models: registered models and presets, register a local folder, delete."""

import pandas as pd
import streamlit as st

from engine.errors import WorkbenchError
from ui.state import get_workbench

wb = get_workbench()
st.title("Models")

models = wb.list_models()
if not models:
    st.info("No models yet. `python -m engine demo` adds the untrained `tiny-whisper` preset.")
else:
    st.dataframe(pd.DataFrame([{
        "name": m["name"], "family": m["family"], "tasks": ", ".join(m["tasks"] or []),
        "parameters": m["num_parameters"],
        "kind": "⚠️ untrained preset (random weights)" if m["is_preset"] else "registered",
        "source": m["source"],
    } for m in models]), hide_index=True, width="stretch")
    if any(m["is_preset"] for m in models):
        st.warning("Presets are **untrained**: their weights are random. They make the whole loop "
                   "run offline in seconds, so losses fall but transcripts stay poor. Register a "
                   "pretrained model for real results.")
    name = st.selectbox("Details", [m["name"] for m in models], key="models.selected")
    model = wb.get_model(name)
    st.markdown(model["description"] or "")
    st.json({k: model[k] for k in ("name", "family", "tasks", "num_parameters", "source", "path")},
            expanded=False)
    if model["owner_id"] == wb.owner_id and not model["shared"]:
        @st.dialog("Delete model?")
        def confirm_delete(model_name: str) -> None:
            st.write(f"Delete **{model_name}** and its files? Runs that used it keep their record.")
            if st.button("Delete", type="primary", key="models.confirm_delete"):
                wb.delete_model(model_name)
                st.rerun()

        if st.button("Delete this model…", key="models.delete"):
            confirm_delete(name)

st.divider()
st.subheader("Register a local model folder")
st.caption("A folder in transformers format (config.json, weights, processor files).")
with st.form("models.register"):
    folder = st.text_input("Folder on this machine")
    new_name = st.text_input("Name")
    submitted = st.form_submit_button("Register")
if submitted:
    try:
        registered = wb.register_model(folder, new_name)
        st.success(f"Registered {registered['name']} ({registered['family']}).")
    except WorkbenchError as error:
        st.error(str(error))
