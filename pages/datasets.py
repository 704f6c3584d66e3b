"""Datasets: what is there, what is in one (charts, searchable items, a player per clip), import."""

import pandas as pd
import streamlit as st

from engine.errors import WorkbenchError
from ui import dataset_views as views
from ui.state import get_workbench, linked_selectbox

wb = get_workbench()
st.title("Datasets")

datasets = wb.list_datasets()
if not datasets:
    st.info("No datasets yet. Import your own below, or add the demo sets with `python -m engine demo`.")
else:
    st.dataframe(pd.DataFrame([{
        "name": d["name"], "task": d["task"], "items": d["num_items"],
        "splits": ", ".join(d["splits"] or []), "classes": str(len(d["labels"])) if d["labels"] else "–",
        "version": d["version"], "shared": "demo (read-only)" if d["is_demo"] else "yours",
    } for d in datasets]), hide_index=True, width="stretch")

    name = linked_selectbox("dataset", "Inspect a dataset", [d["name"] for d in datasets],
                            key="datasets.selected", noun="Dataset")
    dataset = wb.get_dataset(name)
    if dataset["description"]:
        st.caption(dataset["description"])
    overview, items, manage = st.tabs(["Overview", "Items", "Export and delete"])
    with overview:
        views.overview(wb, dataset)
    with items:
        views.item_browser(wb, dataset)
    with manage:
        views.manage(wb, dataset)

st.divider()
st.subheader("Import a dataset")
st.caption("A zip or folder in the audiofolder layout (audio + `metadata.csv`/`metadata.jsonl`), audio in "
           "one folder per class, a CSV / JSONL / Parquet table of text + label or of audio paths + "
           "transcripts, or a folder saved with `datasets.save_to_disk`. Audio is converted once to "
           "16 kHz mono.")
try:
    views.import_form(wb)
except WorkbenchError as error:
    st.error(str(error))
