"""Pieces of the Training page: live charts, the final evaluation, the queue table.

Each function only reads what it is given and draws it; the page decides what to call.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui.charts import confusion_figure, run_series_figure
from ui.state import format_duration

LIVE_CHARTS = {
    "Loss": ({"train/loss": "training loss"}, "training loss"),
    "Learning rate": ({"train/learning_rate": "learning rate"}, "learning rate"),
    "Gradient norm": ({"train/grad_norm": "gradient norm (before clipping)"}, "gradient norm"),
    "Throughput": ({"train/samples_per_s": "examples / s", "train/audio_seconds_per_s": "audio seconds / s"},
                   "throughput"),
    "Machine": ({"system/cpu_percent": "CPU %", "system/ram_used_mb": "RAM used (MiB)",
                 "system/memory_mb": "this process (MiB)", "system/gpu_memory_mb": "GPU memory (MiB)"},
                "CPU, RAM and GPU memory"),
}


def eta_seconds(run: dict) -> float | None:
    step, total, elapsed = run["step"] or 0, run["total_steps"], run["wall_time_s"] or 0.0
    if run["status"] != "running" or not step or not total:
        return None
    return elapsed / step * max(0, total - step)


def progress(run: dict) -> None:
    step, total = run["step"] or 0, run["total_steps"]
    eta = eta_seconds(run)
    st.progress(min(1.0, step / total) if total else 0.0,
                text=f"step {step} / {total or '?'} · elapsed {format_duration(run['wall_time_s'] or 0)}"
                     + (f" · ETA {format_duration(eta)}" if eta is not None else ""))


def latest(rows: list[dict], name: str) -> float | None:
    values = [row for row in rows if row["name"] == name]
    return max(values, key=lambda row: row["step"])["value"] if values else None


def live_charts(run_id: int, rows: list[dict]) -> None:
    """Loss, learning rate, gradient norm, validation metric, throughput and machine charts."""
    speed, audio = latest(rows, "train/samples_per_s"), latest(rows, "train/audio_seconds_per_s")
    cols = st.columns(3)
    cols[0].metric("examples / s", "–" if speed is None else f"{speed:.1f}")
    cols[1].metric("audio seconds / s", "–" if audio is None else f"{audio:.1f}",
                   help="Seconds of audio trained on per second of wall time: above 1 trains "
                        "faster than real time.")
    cols[2].metric("last loss", "–" if latest(rows, "train/loss") is None else f"{latest(rows, 'train/loss'):.4f}")
    charts = dict(LIVE_CHARTS)
    evals = sorted({row["name"] for row in rows if row["name"].startswith("eval/")})
    if evals:
        charts["Validation"] = ({name: name.split("/", 1)[1] for name in evals}, "validation metrics")
    tabs = st.tabs(list(charts))
    for tab, (label, (names, title)) in zip(tabs, charts.items()):
        with tab:
            present = {name: legend for name, legend in names.items() if any(r["name"] == name for r in rows)}
            if present:
                st.plotly_chart(run_series_figure(rows, present, title),
                                key=f"train.chart.{run_id}.{label}")
            else:
                st.caption("Nothing logged yet for this chart.")


def evaluation(run_id: int, result: dict | None) -> None:
    """The final score's split, the per-example table (worst first), the confusion matrix."""
    if result is None:
        return
    st.markdown(f"#### Evaluation on the {result['split']} split ({result['num_examples']} examples)")
    if result["fell_back_to_validation"]:
        st.info("This dataset has no test split, so the final scores are on the validation "
                "split, which also chose when to stop: treat them as optimistic.")
    rows = pd.DataFrame(result["rows"])
    if rows.empty:
        st.caption("No examples were scored.")
        return
    if result["task"] == "asr":
        st.caption("Each example's transcript against the reference, the worst first.")
        shown = rows[["reference", "prediction", "wer", "cer", "file"]]
    else:
        st.caption("Mistakes first, the most confident mistakes at the top.")
        shown = rows[["reference", "prediction", "confidence", "correct", "file"]]
    st.dataframe(shown, hide_index=True, width="stretch", key=f"train.examples.{run_id}")
    if result.get("confusion"):
        st.plotly_chart(confusion_figure(result["labels"], result["confusion"]),
                        key=f"train.confusion.{run_id}")


def queue_table(queue: list[dict]) -> None:
    st.dataframe(pd.DataFrame([{
        "position": row["position"], "run": row["id"], "method": row["method"], "model": row["model"],
        "dataset": row["dataset"],
        "estimated duration": format_duration(row["estimated_duration_s"]),
        "starts in about": format_duration(row["estimated_start_in_s"]),
    } for row in queue]), hide_index=True, width="stretch")
