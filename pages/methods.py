"""Methods: every registered PEFT method, its idea and formula, and what it costs on a model.

Generated from the plugins' own metadata, so a newly installed plugin appears here too. The
parts are in ui/method_views.py.
"""

import streamlit as st

from ui import method_views as views
from ui.state import get_workbench

wb = get_workbench()
st.title("Methods")
st.caption("Parameter-efficient fine-tuning techniques side by side. Built-in and installed "
           "plugins are listed the same way (see docs/plugins.md to add your own).")

methods = wb.list_methods()
for problem in wb.method_problems():  # a broken plugin, or one whose name is taken
    st.warning(problem)
models = wb.list_models()
results = {}
if models:
    results = views.costs(wb, methods, models)
else:
    st.info("Register a model (or run `python -m engine demo`) to see costs on a real architecture.")

views.methods_table(methods, results)
for method in methods:
    views.details(method)
