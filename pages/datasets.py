"""Datasets: what is there, a page of items with audio players, import and delete."""

import math

import pandas as pd
import streamlit as st

from engine.errors import WorkbenchError
from ui.state import get_workbench

PAGE_SIZE = 10
wb = get_workbench()
st.title("Datasets")

datasets = wb.list_datasets()
if not datasets:
    st.info("No datasets yet. Add the demo sets with `python -m engine demo`, or import a folder below.")
else:
    st.dataframe(pd.DataFrame([{
        "name": d["name"], "task": d["task"], "items": d["num_items"],
        "splits": ", ".join(d["splits"] or []), "classes": len(d["labels"] or []) or None,
        "version": d["version"], "shared": "demo (read-only)" if d["shared"] else "yours",
    } for d in datasets]), hide_index=True, width="stretch")

    names = [d["name"] for d in datasets]
    name = st.selectbox("Inspect a dataset", names, key="datasets.selected")
    dataset = wb.get_dataset(name)
    if dataset["description"]:
        st.caption(dataset["description"])
    counts = wb.dataset_split_counts(name)
    cols = st.columns(len(counts) + 1)
    for col, (split, count) in zip(cols, counts.items()):
        col.metric(split, count)
    if dataset["labels"]:
        cols[-1].metric("classes", len(dataset["labels"]))

    split = st.radio("Split", list(counts), horizontal=True, key="datasets.split")
    pages = max(1, math.ceil(counts.get(split, 0) / PAGE_SIZE))
    page = st.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1, step=1,
                           key=f"datasets.page.{name}.{split}")
    items = wb.dataset_items(name, split, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    for item in items:
        with st.container(border=True):
            text_col, audio_col = st.columns([2, 3])
            target = item["text"] if dataset["task"] != "audio-classification" else item["label"]
            extra = f" → **{item['label']}**" if dataset["task"] == "text-classification" else ""
            text_col.markdown(f"`{item['position']:04d}` {target}{extra}")
            if item["duration_s"]:
                text_col.caption(f"{item['duration_s']:.2f} s")
            if item["file"]:
                audio_col.audio(str(wb.item_file(dataset, item)))

    if dataset["shared"]:
        st.caption("Demo datasets are shared read-only; `python -m engine demo` restores them.")
    elif dataset["owner_id"] == wb.owner_id:
        @st.dialog("Delete dataset?")
        def confirm_delete(dataset_name: str) -> None:
            st.write(f"Delete **{dataset_name}** and its files? Runs that used it keep their "
                     "record and metrics.")
            if st.button("Delete", type="primary", key="datasets.confirm_delete"):
                wb.delete_dataset(dataset_name)
                st.rerun()

        if st.button("Delete this dataset…", key="datasets.delete"):
            confirm_delete(name)

st.divider()
st.subheader("Import a dataset folder")
st.caption("An audiofolder (`train/metadata.csv` with `file_name` and `transcription` or `label`) "
           "or a folder of `train.csv` / `validation.csv` with `text` and `label`.")
with st.form("datasets.import"):
    folder = st.text_input("Folder on this machine")
    new_name = st.text_input("Name")
    submitted = st.form_submit_button("Import")
if submitted:
    try:
        with st.spinner("Importing…"):
            imported = wb.import_dataset(folder, new_name)
        st.success(f"Imported {imported['name']}: {imported['num_items']} items ({imported['task']}).")
    except WorkbenchError as error:
        st.error(str(error))
