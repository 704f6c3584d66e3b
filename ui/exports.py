"""Take a finished run home: the export buttons the Playground and the Training page share.

Every format has a Prepare button that builds the zip (with progress), then a download button
that holds its bytes; a prepared zip is kept for its run only. Never a callable for the
download: Streamlit keeps a deferred callable only until the next rerun, so a click soon after
another one found nothing ("Deferred file … not found"). Nor is the adapter zipped on every
page view: a full fine-tune's "adapter" is the whole model (hundreds of MB).
"""

from __future__ import annotations

import streamlit as st

from engine.errors import WorkbenchError


def export_panel(wb, run: dict, family: str | None, key_prefix: str) -> None:
    """Every export format of ``run`` (CTranslate2 for Whisper speech recognition only)."""
    ct2 = run["task"] == "asr" and family == "whisper"  # faster-whisper holds Whisper ASR only
    st.caption("The adapter as a PEFT folder with a model card; the adapter merged into the "
               "base as a plain transformers model; or that model as ONNX graphs checked with "
               "onnxruntime" + ("; or as a CTranslate2 folder for faster-whisper (float16), "
                                "its transcripts checked against the merged model" if ct2 else "")
               + ". `python -m engine runs export` does the same headless.")
    formats = ([("adapter", "adapter"), ("merged", "merged model"), ("onnx", "ONNX")]
               + ([("ct2", "CTranslate2 model")] if ct2 else []))
    for column, (fmt, title) in zip(st.columns(len(formats)), formats):
        with column:
            prepare_export(wb, run["id"], fmt, title, key_prefix)


def prepare_export(wb, run_id: int, fmt: str, title: str, key_prefix: str) -> None:
    key = f"{key_prefix}.{fmt}"
    if st.button(f"Prepare {title}", key=key, icon=":material/build:"):
        with st.status(f"Exporting the {title}…", expanded=True) as status:
            try:
                st.session_state[f"{key}.zip"] = (run_id, wb.export_zip(run_id, fmt, status.write))
                status.update(label=f"The {title} is ready", state="complete", expanded=False)
            except WorkbenchError as error:
                status.update(label=f"Export failed: {error}", state="error")
    ready_for, data = st.session_state.get(f"{key}.zip", (None, None))
    if ready_for == run_id:
        st.download_button(f"Download the {title} (zip)", data, file_name=f"run-{run_id}-{fmt}.zip",
                           mime="application/zip", icon=":material/download:", key=f"{key}.download",
                           on_click="ignore")
