"""Home: what is in the workbench, what the machine has, and the latest runs."""

import pandas as pd
import streamlit as st

from ui.state import format_duration, get_workbench

wb = get_workbench()
st.title("LessIsMore Workbench")
st.caption("Fine-tune Whisper and BERT-family models with parameter-efficient methods "
           "(QLoRA first) on modest hardware. Less memory, fewer trainable parameters.")

datasets, models, runs = wb.list_datasets(), wb.list_models(), wb.list_runs()
c1, c2, c3, c4 = st.columns(4)
c1.metric("Datasets", len(datasets))
c2.metric("Models", len(models))
c3.metric("Runs", len(runs))
c4.metric("Training now", sum(r["status"] == "running" for r in runs))

st.subheader("This machine")
info = wb.system_info()
s1, s2, s3 = st.columns(3)
s1.metric("CPU", f"{info['cpu_percent']:.0f} %", help=f"{info['cpu_count']} logical cores")
s2.metric("RAM", f"{info['ram_used_gb']:.1f} / {info['ram_total_gb']:.1f} GiB")
if info["gpu"]:
    s3.metric("GPU", f"{info['gpu']['memory_used_gb']:.1f} / {info['gpu']['memory_total_gb']:.1f} GiB",
              help=info["gpu"]["name"])
else:
    s3.metric("GPU", "none", help="No CUDA device: training runs on the CPU (QLoRA works there too).")
st.caption(f"Data home: `{info['data_home']}` · torch {info['torch']} · Python {info['python']}")

left, right = st.columns(2)
with left:
    st.subheader("Datasets")
    if datasets:
        st.dataframe(pd.DataFrame([{"name": d["name"], "task": d["task"], "items": d["num_items"],
                                    "demo": "yes" if d["is_demo"] else ""} for d in datasets]),
                     hide_index=True, width="stretch")
    else:
        st.info("No datasets yet. Run `python -m engine demo` (or `make run`) to add the demo sets.")
    st.page_link("pages/datasets.py", label="Open datasets", icon=":material/graphic_eq:")
with right:
    st.subheader("Models")
    if models:
        st.dataframe(pd.DataFrame([{"name": m["name"], "family": m["family"],
                                    "parameters": m["num_parameters"],
                                    "kind": "untrained preset" if m["is_preset"] else "registered"}
                                   for m in models]), hide_index=True, width="stretch")
    else:
        st.info("No models yet. The demo adds an untrained `tiny-whisper` preset.")
    st.page_link("pages/models.py", label="Open models", icon=":material/neurology:")

st.subheader("Recent runs")
if runs:
    st.dataframe(pd.DataFrame([{
        "run": r["id"], "status": r["status"],
        "method": r["method"], "model": r["model_name"], "dataset": r["dataset_name"],
        "progress": f"{r['step']}/{r['total_steps'] or '?'}", "wall time": format_duration(r["wall_time_s"]),
    } for r in runs[:10]]), hide_index=True, width="stretch")
else:
    st.info("No runs yet: start one on the Training page.")
st.page_link("pages/training.py", label="Start a run", icon=":material/model_training:")
