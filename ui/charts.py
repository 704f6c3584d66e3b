"""Plotly figures of run metrics (pure functions of metric rows: easy to test)."""

from __future__ import annotations

from collections import defaultdict

import plotly.graph_objects as go

METRIC_TITLES = {
    "train/loss": "training loss", "train/learning_rate": "learning rate",
    "train/grad_norm": "gradient norm", "system/memory_mb": "memory in use (MiB)",
    "eval/wer": "validation WER", "eval/cer": "validation CER",
    "eval/accuracy": "validation accuracy", "eval/macro_f1": "validation macro-F1",
    "eval/roc_auc": "validation ROC-AUC",
}


def series(rows: list[dict], name: str, x: str = "wall_time") -> tuple[list[float], list[float]]:
    points = sorted((row[x], row["value"]) for row in rows if row["name"] == name)
    return [p[0] for p in points], [p[1] for p in points]


def metric_figure(runs: dict[str, list[dict]], name: str, x: str = "wall_time",
                  height: int = 320) -> go.Figure:
    """One line per run of metric ``name`` against wall time (s) or step."""
    figure = go.Figure()
    for label, rows in runs.items():
        xs, ys = series(rows, name, x)
        if xs:
            figure.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers" if len(xs) < 30 else "lines",
                                        name=label))
    figure.update_layout(
        title=METRIC_TITLES.get(name, name), height=height, margin=dict(l=10, r=10, t=40, b=10),
        xaxis_title="wall time (s)" if x == "wall_time" else "step", yaxis_title=None,
        legend=dict(orientation="h", yanchor="bottom", y=-0.35),
    )
    return figure


def available_metrics(rows: list[dict], prefix: str) -> list[str]:
    seen = defaultdict(int)
    for row in rows:
        if row["name"].startswith(prefix):
            seen[row["name"]] += 1
    return sorted(seen)
