"""The Playground page's parts: the shared model cache, the model and run picker, the input
(a demo item, a file, a recording or a sentence), and each model's answer.

``st.cache_resource`` holds only the ``ModelCache`` object (one per process); what it keeps
loaded, and when it evicts, is the engine's business (engine/inference.py).
"""

from __future__ import annotations


import plotly.graph_objects as go
import streamlit as st

from engine.errors import WorkbenchError
from engine.inference import ModelCache
from engine.models import TASK_NAMES
from engine.settings import load_config
from ui.exports import export_panel
from ui.state import md_text, run_label


@st.cache_resource(show_spinner=False)
def get_model_cache() -> ModelCache:
    """One cache for every browser session; budget from ``LIM_PLAYGROUND_CACHE_MB`` (2048)."""
    budget_mb = load_config().playground_cache_mb
    return ModelCache(budget_bytes=budget_mb * 2**20)


def probability_figure(probabilities: list[float], labels: list[str], height: int = 280) -> go.Figure:
    order = sorted(range(len(probabilities)), key=lambda i: probabilities[i])
    figure = go.Figure(go.Bar(x=[probabilities[i] for i in order], y=[labels[i] for i in order],
                              orientation="h", text=[f"{probabilities[i]:.0%}" for i in order],
                              textposition="auto"))
    figure.update_layout(height=height, margin=dict(l=10, r=10, t=10, b=10),
                         xaxis=dict(range=[0, 1], title="probability"))
    return figure


def show_answer(result: dict, key: str) -> None:
    """A transcript or class probabilities, with the latency and whether the model loaded now."""
    if result["task"] == "asr":
        st.markdown(f"> {md_text(result['output'])}" if result["output"] else "> *(empty transcript)*")
    else:
        probabilities, labels = result["output"], result["labels"]
        best = max(range(len(probabilities)), key=probabilities.__getitem__)
        st.markdown(f"**{md_text(labels[best])}** ({probabilities[best]:.0%})")
        st.plotly_chart(probability_figure(probabilities, labels), key=key)
    loaded = f" · loaded in {result['load_s']:.1f} s" if result["loaded_now"] else " · already loaded"
    st.caption(f"latency {result['latency_s'] * 1000:.0f} ms{loaded}")


# ---------------------------------------------------------------------- model, run, task
def choose_model_and_run(wb, models: list[dict]) -> tuple[dict, dict | None]:
    """The model, and a completed run of it to set beside the base (None: the base alone);
    a chosen run's export buttons."""
    m_col, r_col = st.columns(2)
    model = wb.get_model(m_col.selectbox("Model", [m["name"] for m in models], key="play.model"))
    runs = {r["id"]: r for r in wb.playground_runs(model["name"])}
    run_id = r_col.selectbox(
        "Fine-tuned run", [None, *runs], key="play.run",
        format_func=lambda i: "none: base model only" if i is None else run_label(runs[i], False),
        help="Completed runs of this model whose adapter is on disk.")
    run = runs.get(run_id)
    if run is None and not runs:
        st.caption("No finished run of this model yet: train one on the **Training** page to see "
                   "the difference it makes.")
    if run:
        with st.expander(f"Take run #{run['id']} home", icon=":material/download:"):
            export_panel(wb, run, model["family"], "play.export")
    return model, run


def choose_task(model: dict, run: dict | None) -> str:
    """The run's task, or (base model alone) one of the model's tasks."""
    if run:
        return run["task"]
    return st.selectbox("Task", model["tasks"], format_func=TASK_NAMES.get, key="play.task")


# ---------------------------------------------------------------------- input
# The chosen input lives in session state under "play.input" (it outlives reruns):
# {"kind": "item" | "audio", "modality": "audio" | "text", "source": shown name,
#  "reference": the item's label or transcript or None, and either "folder" + "item"
#  (Workbench.predict) or "bytes" + "name" (Workbench.predict_audio)}.
def choose_input(wb, task: str, datasets: list[dict], run: dict | None) -> dict | None:
    """A sentence box for a text model, else tabs of demo items, upload and recording; returns
    the input chosen for this kind of model (None: none yet)."""
    if task == "text-classification":
        sentence = st.text_input("A sentence", key="play.text", placeholder="Type something to classify")
        if sentence.strip():
            st.session_state["play.input"] = {"kind": "item", "modality": "text", "folder": None,
                                              "item": {"text": sentence}, "reference": None,
                                              "source": "typed"}
    else:
        demo_tab, upload_tab, record_tab = st.tabs(["Demo items", "Upload a file", "Record"])
        with demo_tab:
            choose_demo_item(wb, task, datasets, run)
        with upload_tab:
            upload_or_record("upload")
        with record_tab:
            upload_or_record("record")
    chosen = st.session_state.get("play.input")
    if chosen and chosen["modality"] != ("text" if task == "text-classification" else "audio"):
        return None  # an input for another kind of model
    return chosen


def choose_demo_item(wb, task: str, datasets: list[dict], run: dict | None) -> None:
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
        # The whole transcript, wrapped (a button in a column truncates by default): it was cut
        # at 28 characters, so clips that begin alike could not be told apart.
        caption = item["label"] or item["text"] or f"item {item['position']}"
        if grid[index % 4].button(md_text(caption), key=f"play.item.{dataset['id']}.{item['id']}",
                                  icon=":material/play_arrow:", width="stretch", wrap=True):
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
                                          "name": audio.name, "reference": None, "source": audio.name}


def show_input(chosen: dict) -> None:
    """A player for audio, then where the input came from and its reference answer."""
    if chosen["kind"] == "audio":
        st.audio(chosen["bytes"])
    elif chosen.get("folder"):
        st.audio(f"{chosen['folder']}/{chosen['item']['file']}")
    st.markdown(f"**Input:** {md_text(chosen['source'])}"
                + (f" · **reference:** {md_text(chosen['reference'])}" if chosen["reference"] else ""))


# ---------------------------------------------------------------------- answers
def answers(wb, cache: ModelCache, model: str, task: str, datasets: list[dict], chosen: dict,
            run: dict | None) -> None:
    """The base model's answer, and beside it the run's; then what the cache holds."""
    if run:
        labels = wb.playground_labels(run["id"])
    else:  # the base gets the labels of a dataset of its task, with an untrained head
        labels = datasets[0]["labels"] if task != "asr" and datasets else []
    targets = [(None, "Base model")] + ([(run["id"], f"Fine-tuned: run #{run['id']} ({run['method']})")]
                                       if run else [])
    for column, (target, title) in zip(st.columns(len(targets)), targets):
        with column:
            st.subheader(title)
            options = dict(model=model, task=task, run_id=target, labels=labels, cache=cache)
            try:
                with st.spinner("Loading the model (once; then it stays loaded)…"):
                    if chosen["kind"] == "audio":
                        result = wb.predict_audio(chosen["bytes"], chosen["name"], **options)
                    else:
                        result = wb.predict(chosen["item"], chosen["folder"], **options)
                show_answer(result, key=f"play.answer.{target}")
            except WorkbenchError as error:
                st.error(str(error))
            if target is None and task != "asr":
                st.caption("The base model's classifier head is untrained: its answer is a coin toss.")
    st.caption(f"Models loaded: {len(cache.keys())} · {cache.used_bytes() / 2**20:.1f} MiB of a "
               f"{cache.budget_bytes / 2**20:.0f} MiB budget (least recently used go first).")
