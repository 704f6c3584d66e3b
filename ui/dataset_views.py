"""The sections of the Datasets page: overview, item browser, export/delete, import form.

Each function draws one section from workbench calls; nothing here decides anything about data.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import streamlit as st

from engine.data.archives import ImportLimits
from engine.data.pipeline import ImportOptions
from engine.data.validation import KINDS, report_from_dict
from engine.errors import WorkbenchError
from engine.text import safe_name
from ui import dataset_charts as charts
from ui.confirm import confirm_by_typing
from ui.forms import bounded_number
from ui.state import md_text

PAGE_SIZE = 25
TASK_CHOICES = {"detect": None, "speech recognition": "asr", "audio classification": "audio-classification",
                "text classification": "text-classification"}
ALL = "(all)"


# ---------------------------------------------------------------------------- overview
def overview(wb, dataset: dict) -> None:
    stats = wb.dataset_stats(dataset["name"])
    columns = st.columns(len(stats["splits"]) + 2)
    for column, (split, count) in zip(columns, sorted(stats["splits"].items(), key=_split_rank)):
        column.metric(split, f"{count:,}")
    if stats["total_hours"]:
        columns[-2].metric("total audio", _hours(stats["total_hours"]))
    if dataset["labels"]:
        columns[-1].metric("classes", len(dataset["labels"]))
    left, right = st.columns(2)
    if stats["duration_histogram"]:
        left.plotly_chart(charts.duration_histogram(stats), key="datasets.chart.durations")
    if stats["labels"]:
        right.plotly_chart(charts.label_distribution(stats), key="datasets.chart.labels")
    elif stats["transcript_words"]:
        right.plotly_chart(charts.transcript_lengths(stats), key="datasets.chart.words")
    if stats["formats"]:
        st.caption("Originals before conversion to 16 kHz mono")
        st.dataframe(pd.DataFrame(stats["formats"]), hide_index=True)
    if dataset["report"]:
        report_view(report_from_dict(dataset["report"]), expanded=False)


def report_view(report, expanded: bool = True) -> None:
    """The import report grouped by kind, worst first."""
    (st.warning if report.blocking else st.success)(report.summary())
    for kind, problems in report.by_kind().items():
        skipped = any(p.skipped for p in problems)
        with st.expander(f"{KINDS.get(kind, kind)} ({len(problems)})", expanded=expanded and skipped,
                         icon=":material/block:" if skipped else ":material/info:"):
            st.dataframe(pd.DataFrame([{"where": p.where, "what": p.message} for p in problems[:500]]),
                         hide_index=True, width="stretch")


# ---------------------------------------------------------------------------- items
def item_browser(wb, dataset: dict) -> None:
    name = dataset["name"]
    search_col, split_col, label_col = st.columns([3, 1, 1])
    query = search_col.text_input("Search text, label or file name", key=f"datasets.search.{name}")
    split = split_col.selectbox("Split", [ALL, *(dataset["splits"] or [])], key=f"datasets.split.{name}")
    label = ALL
    if dataset["labels"]:
        label = label_col.selectbox("Label", [ALL, *dataset["labels"]], key=f"datasets.label.{name}")
    filters = dict(split=None if split == ALL else split, query=query, label=None if label == ALL else label)
    total = wb.find_items(name, limit=0, **filters)[1]
    if not total:
        st.info("No items match." if query or split != ALL or label != ALL else "This dataset has no items.")
        return
    pages = max(1, math.ceil(total / PAGE_SIZE))
    page = bounded_number(f"Page (of {pages}; {total:,} items)", 1, pages, 1,
                          f"datasets.page.{name}.{split}.{label}.{query}")
    rows, _ = wb.find_items(name, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE, **filters)
    st.dataframe(pd.DataFrame([_row(item, dataset) for item in rows]), hide_index=True, width="stretch")
    choices = {f"{item['split']} #{item['position']}: {_short(item)}": item for item in rows}
    picked = st.selectbox("Look at an item", list(choices), key=f"datasets.item.{name}")
    item_detail(wb, dataset, choices[picked])


def item_detail(wb, dataset: dict, item: dict) -> None:
    with st.container(border=True):
        if item["file"]:
            st.audio(str(wb.item_file(dataset, item)))
            view = wb.item_view(dataset["name"], item["id"])
            wave_col, mel_col = st.columns(2)
            wave_col.plotly_chart(charts.waveform(view), key=f"datasets.wave.{item['id']}")
            mel_col.plotly_chart(charts.spectrogram(view), key=f"datasets.mel.{item['id']}")
        st.caption(f"from {md_text(item['source_name'])}" + (f" · {item['sample_rate']} Hz, {item['channels']} ch, "
                                                    f"{item['duration_s']:.2f} s" if item["sample_rate"] else ""))
        if dataset["is_demo"] or dataset["owner_id"] != wb.owner_id:
            st.markdown(f"**{md_text(item['text'] or item['label'])}**" + (
                f" → {md_text(item['label'])}" if item["text"] and item["label"] else ""))
            st.caption("Read-only: export it and import the zip under a new name to edit a copy.")
            return
        _edit_item(wb, dataset, item)


def _edit_item(wb, dataset: dict, item: dict) -> None:
    key = f"datasets.edit.{item['id']}"
    with st.form(key):
        text = label = None
        if dataset["task"] != "audio-classification":
            text = st.text_area("Transcript" if dataset["task"] == "asr" else "Text", item["text"] or "",
                                key=f"{key}.text")
        if dataset["task"] != "asr":
            label = st.text_input("Label", item["label"] or "", key=f"{key}.label")
        saved = st.form_submit_button("Save the change")
    if saved:
        try:
            updated = wb.update_item(dataset["name"], item["id"], text=text, label=label)
            st.success(f"Saved; {dataset['name']} is now version {updated['version']}.")
        except WorkbenchError as error:
            st.error(str(error))
    sure = st.checkbox("This item is bad: remove it", key=f"{key}.sure")
    if st.button("Remove item", disabled=not sure, key=f"{key}.remove"):
        updated = wb.remove_item(dataset["name"], item["id"])
        st.success(f"Removed; {dataset['name']} is now version {updated['version']} "
                   f"({updated['num_items']} items).")
        st.rerun()


# ---------------------------------------------------------------------------- export and delete
def manage(wb, dataset: dict) -> None:
    name = dataset["name"]
    st.markdown(f"Version **{dataset['version']}** · {dataset['num_items']:,} items · imported "
                f"{dataset['created_at']}")
    history = wb.dataset_history(name)
    if history:
        st.dataframe(pd.DataFrame([{"time": h["time"], "change": h["action"], "item": h["item_id"],
                                    "before": _describe(h["before"]), "after": _describe(h["after"]),
                                    "version": h["version_after"]} for h in history]),
                     hide_index=True, width="stretch")
    else:
        st.caption("No edits since import.")
    if st.button("Prepare a zip (audiofolder layout)", key="datasets.export"):
        with st.spinner("Zipping…"):
            st.session_state["datasets.export_path"] = str(wb.export_dataset(name))
    exported = st.session_state.get("datasets.export_path")
    if exported and Path(exported).is_file() and Path(exported).name.startswith(_slug(name)):
        with open(exported, "rb") as handle:
            st.download_button("Download the zip", handle, file_name=Path(exported).name,
                               mime="application/zip", key="datasets.download", on_click="ignore")
        st.caption('Opens with `datasets.load_dataset("audiofolder", data_dir=...)` once unzipped.')
    st.divider()
    if dataset["owner_id"] != wb.owner_id:
        st.caption("Shared with you read-only.")
        return
    st.markdown("**Delete this dataset.** Its files go; runs that used it keep their record and "
                "metrics and say the dataset is gone.")

    def delete() -> None:
        wb.delete_dataset(name)
        st.session_state.pop("datasets.selected", None)

    confirm_by_typing("datasets.delete", name, "Type the dataset's name to confirm", "Delete dataset",
                      delete)


# ---------------------------------------------------------------------------- import
def import_form(wb) -> None:
    limits = ImportLimits()
    if flash := st.session_state.pop("datasets.flash", None):
        st.success(flash)
    plan = st.session_state.get("datasets.plan")
    if plan is None:
        _choose_source(wb, limits)
    else:
        _review_plan(wb, plan)


def _choose_source(wb, limits: ImportLimits) -> None:
    # With accounts on, a typed server path is for admins under LIM_IMPORT_ROOTS only
    # (engine/workbench/datasets.py check_server_path): the app's process can read everyone's files.
    sources = ["Upload a file"] + (["A folder or file on this machine"] if wb.server_import_allowed() else [])
    where = st.radio("From", sources, horizontal=True, key="datasets.import.from")
    uploaded = path = None
    if where == "Upload a file":
        uploaded = st.file_uploader("A .zip, .csv, .jsonl or .parquet file", key="datasets.upload",
                                    type=["zip", "csv", "jsonl", "parquet"], max_upload_size=limits.max_upload_mb)
    else:
        path = st.text_input("Path", placeholder="/home/me/recordings", key="datasets.import.path")
    options = _options_form()
    if st.button("Check", type="primary", key="datasets.check"):
        if not uploaded and not (path or "").strip():
            st.warning("Choose a file to upload or type a path first.")
            return
        progress = st.progress(0.0, text="Reading and checking every item…")
        source = wb.save_upload(uploaded.name, uploaded) if uploaded else path.strip()
        st.session_state["datasets.plan"] = wb.check_import(source, options, _progress_to(progress),
                                                            name=uploaded.name if uploaded else None)
        st.session_state["datasets.options"] = options
        st.session_state["datasets.import.name"] = _slug(Path(uploaded.name if uploaded else path.strip()).stem)
        st.rerun()


def _progress_to(bar):
    return lambda done, total, what: bar.progress(done / total, text=f"{done:,} / {total:,}: {what}")


def _options_form() -> ImportOptions:
    with st.expander("Options: task, columns, splits"):
        left, middle, right = st.columns(3)
        task = left.selectbox("Task", list(TASK_CHOICES), key="datasets.import.task")
        splits = middle.selectbox("Splits", ["auto", "keep", "new"], key="datasets.import.splits",
                                  help="auto keeps the splits the data came with when it has more than "
                                       "one, otherwise makes new ones (stratified by label)")
        seed = right.number_input("Seed", value=42, step=1, key="datasets.import.seed")
        validation = left.slider("Validation share", 0.0, 0.4, 0.1, 0.05, key="datasets.import.validation")
        test = middle.slider("Test share", 0.0, 0.4, 0.1, 0.05, key="datasets.import.test")
        keep = right.checkbox("Keep the original files too", key="datasets.import.keep_originals")
        columns = st.columns(3)
        chosen = [c.text_input(f"{role} column (blank: detect)", key=f"datasets.import.{role}")
                  for c, role in zip(columns, ("audio", "text", "label"))]
    return ImportOptions(task=TASK_CHOICES[task], splits=splits, seed=int(seed),
                         validation_fraction=validation, test_fraction=test, keep_originals=keep,
                         audio_column=chosen[0].strip() or None, text_column=chosen[1].strip() or None,
                         label_column=chosen[2].strip() or None)


def _review_plan(wb, plan) -> None:
    chosen = plan.columns
    st.markdown(f"Read **{plan.name or plan.source.name}** as **{chosen.task}** · columns: audio `{chosen.audio}`, "
                f"text `{chosen.text}`, label `{chosen.label}` · splits "
                + ", ".join(f"{k} {v}" for k, v in plan.report.split_counts.items()))
    report_view(plan.report)
    _change_choices(wb, plan)
    name = st.text_input("Name", key="datasets.import.name")
    skipped = len(plan.report.blocking)
    go = st.button(f"Import {len(plan.items):,} items" + (f", skipping {skipped}" if skipped else ""),
                   type="primary", key="datasets.import.go")
    if st.button("Cancel", key="datasets.import.cancel"):
        wb.discard_import(st.session_state.pop("datasets.plan"))
        st.rerun()
    if go:
        progress = st.progress(0.0, text="Converting audio to 16 kHz mono…")
        imported = wb.commit_import(plan, name, on_progress=_progress_to(progress))
        st.session_state.pop("datasets.plan")
        st.session_state["datasets.flash"] = (f"Imported {imported['name']}: {imported['num_items']:,} "
                                              f"items ({imported['task']}).")
        st.rerun()


def _change_choices(wb, plan) -> None:
    """Task and columns as detected, changeable from the columns the source really has."""
    with st.expander("Change the task or the columns"):
        columns = [None, *plan.table.columns]
        current = plan.columns
        cols = st.columns(4)
        tasks = list(TASK_CHOICES.values())[1:]
        task = cols[0].selectbox("Task", tasks, index=tasks.index(current.task), key="datasets.recheck.task")
        picked = [col.selectbox(f"{role} column", columns, index=columns.index(value),
                                format_func=lambda c: c or "(none)", key=f"datasets.recheck.{role}")
                  for col, role, value in zip(cols[1:], ("audio", "text", "label"),
                                              (current.audio, current.text, current.label))]
        if st.button("Check again", key="datasets.recheck"):
            options = st.session_state.get("datasets.options") or ImportOptions()
            options.task, options.audio_column, options.text_column, options.label_column = task, *picked
            progress = st.progress(0.0, text="Checking again…")
            st.session_state["datasets.plan"] = wb.recheck_import(plan, options, _progress_to(progress))
            st.rerun()


def _row(item: dict, dataset: dict) -> dict:
    row = {"split": item["split"], "#": item["position"]}
    if item["file"]:
        row |= {"file": item["source_name"], "seconds": item["duration_s"]}
    if dataset["task"] != "audio-classification":
        row["text"] = item["text"]
    if dataset["task"] != "asr":
        row["label"] = item["label"]
    return row


def _short(item: dict) -> str:
    text = item["text"] or item["label"] or ""
    return text if len(text) <= 60 else text[:57] + "…"


def _describe(values: dict | None) -> str:
    return "; ".join(f"{k}: {v}" for k, v in (values or {}).items() if v is not None) or "(removed)"


def _hours(hours: float) -> str:
    return f"{hours:.2f} h" if hours >= 1 else f"{hours * 60:.1f} min"


def _slug(text: str) -> str:
    return safe_name(text)


def _split_rank(pair) -> int:
    return {"train": 0, "validation": 1, "test": 2}.get(pair[0], 3)
