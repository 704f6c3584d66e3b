"""Playground: try a model before and after fine-tuning on a demo item, a file or your voice."""

import streamlit as st

from engine.errors import WorkbenchError
from engine.models import TASK_NAMES
from ui.exports import export_panel
from ui.playground import get_model_cache, show_answer
from ui.state import get_workbench, md_text, run_label

wb = get_workbench()
cache = get_model_cache()
st.title("Playground")

models = wb.list_models()
if not models:
    st.info("No model yet: `python -m engine demo` adds the tiny-whisper preset.")
    st.stop()


# ---------------------------------------------------------------------- model, run, task
m_col, r_col = st.columns(2)
model_name = m_col.selectbox("Model", [m["name"] for m in models], key="play.model")
model = wb.get_model(model_name)
runs = {r["id"]: r for r in wb.playground_runs(model_name)}
run_id = r_col.selectbox("Fine-tuned run", [None, *runs], key="play.run",
                         format_func=lambda i: "none: base model only" if i is None else run_label(runs[i], False),
                         help="Completed runs of this model whose adapter is on disk.")
run = runs.get(run_id)
if run is None and not runs:
    st.caption("No finished run of this model yet: train one on the **Training** page to see "
               "the difference it makes.")
if run:
    with st.expander(f"Take run #{run['id']} home", icon=":material/download:"):
        export_panel(wb, run, model["family"], "play.export")
task = run["task"] if run else st.selectbox("Task", model["tasks"], format_func=TASK_NAMES.get,
                                            key="play.task")
datasets = [d for d in wb.list_datasets() if d["task"] == task]
if model["is_preset"]:
    st.caption("⚠️ The preset is untrained (random weights): the base model's answers are noise; "
               "a short run on the demo makes them better, not good.")

# ---------------------------------------------------------------------- input
labels: list[str] = []
if run:
    labels = wb.playground_labels(run["id"])
elif task != "asr" and datasets:
    labels = datasets[0]["labels"]


def choose_demo_item() -> None:
    if not datasets:
        st.info(f"No {TASK_NAMES[task]} dataset to take items from.")
        return
    names = [d["name"] for d in datasets]
    default = names.index(run["dataset_name"]) if run and run["dataset_name"] in names else 0
    dataset = wb.get_dataset(st.selectbox("Dataset", names, index=default, key=f"play.dataset.{task}"))
    items = wb.dataset_items(dataset["name"], "validation", limit=12)
    if not items:
        st.info(f"{dataset['name']} has no validation items.")
        return
    grid = st.columns(4)
    for index, item in enumerate(items):
        caption = item["label"] or (item["text"] or "")[:28] or f"item {item['position']}"
        if grid[index % 4].button(caption, key=f"play.item.{dataset['id']}.{item['id']}",
                                  icon=":material/play_arrow:", width="stretch"):
            path = wb.item_file(dataset, item)
            st.session_state["play.input"] = {
                "kind": "item", "modality": "audio", "folder": str(path.parent), "item": {"file": path.name},
                "reference": item["label"] or item["text"], "source": f"{dataset['name']} #{item['id']}"}


def upload_or_record(kind: str) -> None:
    if kind == "upload":
        audio = st.file_uploader("Audio file", type=["wav", "flac", "mp3", "ogg"], key="play.upload")
    else:
        audio = st.audio_input("Record a few seconds", key="play.record")
    if audio is not None:
        st.session_state["play.input"] = {"kind": "audio", "modality": "audio", "bytes": audio.getvalue(),
                                          "name": audio.name, "reference": None,
                                          "source": audio.name}


if task == "text-classification":
    sentence = st.text_input("A sentence", key="play.text", placeholder="Type something to classify")
    if sentence.strip():
        st.session_state["play.input"] = {"kind": "item", "modality": "text", "folder": None, "item": {"text": sentence},
                                          "reference": None, "source": "typed"}
else:
    demo_tab, upload_tab, record_tab = st.tabs(["Demo items", "Upload a file", "Record"])
    with demo_tab:
        choose_demo_item()
    with upload_tab:
        upload_or_record("upload")
    with record_tab:
        upload_or_record("record")

chosen = st.session_state.get("play.input")
if chosen and chosen["modality"] != ("text" if task == "text-classification" else "audio"):
    chosen = None  # an input for another kind of model
if not chosen:
    st.info("Pick a demo item, upload a file or record yourself to hear what the models make of it.")
    st.stop()

# ---------------------------------------------------------------------- answers
if chosen["kind"] == "audio":
    st.audio(chosen["bytes"])
elif chosen.get("folder"):
    st.audio(f"{chosen['folder']}/{chosen['item']['file']}")
st.markdown(f"**Input:** {md_text(chosen['source'])}"
            + (f" · **reference:** {md_text(chosen['reference'])}" if chosen["reference"] else ""))


def answer(for_run: int | None) -> dict:
    options = dict(model=model_name, task=task, run_id=for_run, labels=labels, cache=cache)
    if chosen["kind"] == "audio":
        return wb.predict_audio(chosen["bytes"], chosen["name"], **options)
    return wb.predict(chosen["item"], chosen["folder"], **options)


columns = st.columns(2 if run else 1)
targets = [(None, "Base model")] + ([(run["id"], f"Fine-tuned: run #{run['id']} ({run['method']})")]
                                   if run else [])
for column, (target, title) in zip(columns, targets):
    with column:
        st.subheader(title)
        try:
            with st.spinner("Loading the model (once; then it stays loaded)…"):
                show_answer(answer(target), key=f"play.answer.{target}")
        except WorkbenchError as error:
            st.error(str(error))
        if target is None and task != "asr":
            st.caption("The base model's classifier head is untrained: its answer is a coin toss.")
st.caption(f"Models loaded: {len(cache.keys())} · {cache.used_bytes() / 2**20:.1f} MiB of a "
           f"{cache.budget_bytes / 2**20:.0f} MiB budget (least recently used go first).")
