"""Compare: runs side by side, metric and loss against wall time, and a table."""

import pandas as pd
import streamlit as st

from ui.charts import available_metrics, metric_figure
from ui.state import format_duration, get_workbench, run_label

wb = get_workbench()
st.title("Compare runs")

runs = wb.list_runs()
finished = [r for r in runs if r["step"]]
if not finished:
    st.info("Nothing to compare yet: runs appear here once they have trained a step.")
    st.stop()

ids = [r["id"] for r in finished]
labels = {r["id"]: run_label(r) for r in finished}
default = [r["id"] for r in finished if r["status"] == "completed"][:3] or ids[:2]
chosen = st.multiselect("Runs", ids, default=default, format_func=labels.get, key="compare.runs")
if not chosen:
    st.info("Pick at least one run.")
    st.stop()

metrics = {f"#{run_id} {wb.get_run(run_id)['method']}": wb.run_metrics(run_id) for run_id in chosen}
x_axis = st.radio("x axis", ["wall_time", "step"], horizontal=True, key="compare.x",
                  format_func={"wall_time": "wall time", "step": "step"}.get)
all_rows = [row for rows in metrics.values() for row in rows]
eval_names = available_metrics(all_rows, "eval/")

left, right = st.columns(2)
left.plotly_chart(metric_figure(metrics, "train/loss", x_axis), key="compare.loss")
if eval_names:
    primary = next((n for n in ("eval/wer", "eval/accuracy") if n in eval_names), eval_names[0])
    name = right.selectbox("Validation metric", eval_names, index=eval_names.index(primary),
                           key="compare.metric")
    right.plotly_chart(metric_figure(metrics, name, x_axis), key="compare.eval")
else:
    right.info("No validation metric logged yet.")

table = []
for run_id in chosen:
    run = wb.get_run(run_id)
    table.append({
        "run": run_id, "status": run["status"], "method": run["method"], "model": run["model_name"],
        "dataset": run["dataset_name"], **{k: v for k, v in (run["metrics"] or {}).items()},
        "trainable params": run["trainable_params"], "total params": run["total_params"],
        "peak memory (MiB)": round(run["peak_memory_mb"] or 0), "wall time": format_duration(run["wall_time_s"]),
        "steps": run["step"],
    })
st.dataframe(pd.DataFrame(table), hide_index=True, width="stretch")
