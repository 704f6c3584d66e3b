"""Playground: try a model before and after fine-tuning on a demo item, a file or your voice.
The parts are in ui/playground.py."""

import streamlit as st

from ui import playground as views
from ui.state import get_workbench

wb = get_workbench()
cache = views.get_model_cache()
st.title("Playground")

models = wb.list_models()
if not models:
    st.info("No model yet: `python -m engine demo` adds the tiny-whisper preset.")
    st.stop()

model, run = views.choose_model_and_run(wb, models)
task = views.choose_task(model, run)
datasets = [d for d in wb.list_datasets() if d["task"] == task]
if model["is_preset"]:
    st.caption("⚠️ The preset is untrained (random weights): the base model's answers are noise; "
               "a short run on the demo makes them better, not good.")

chosen = views.choose_input(wb, task, datasets, run)
if not chosen:
    st.info("Pick a demo item, upload a file or record yourself to hear what the models make of it.")
    st.stop()
views.show_input(chosen)
views.answers(wb, cache, model["name"], task, datasets, chosen, run)
