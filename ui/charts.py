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


def run_series_figure(rows: list[dict], names: dict[str, str], title: str, x: str = "step",
                      height: int = 280) -> go.Figure:
    """Several metrics of one run (``names``: metric -> legend label) against step."""
    lines = [(label, *series(rows, name, x)) for name, label in names.items()]
    figure = go.Figure([go.Scatter(x=xs, y=ys, name=label,
                                   mode="lines+markers" if len(xs) < 30 else "lines")
                        for label, xs, ys in lines if xs])
    figure.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10),
                         xaxis_title=x.replace("_", " "), showlegend=len(names) > 1,
                         legend=dict(orientation="h", yanchor="bottom", y=-0.4))
    return figure


def confusion_figure(labels: list[str], matrix: list[list[int]], height: int = 420) -> go.Figure:
    """A confusion-matrix heatmap: true label down, predicted label across."""
    figure = go.Figure(go.Heatmap(z=matrix, x=labels, y=labels, colorscale="Blues",
                                  text=matrix, texttemplate="%{text}", showscale=False,
                                  hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>"))
    figure.update_layout(title="confusion matrix", height=height, margin=dict(l=10, r=10, t=40, b=10),
                         xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed")
    return figure
