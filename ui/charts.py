"""Plotly figures of run metrics and comparisons (pure functions of plain data: easy to test)."""

from __future__ import annotations

import plotly.graph_objects as go

from engine.names import (AUDIO_HOURS_PER_HOUR, EVAL_PREFIX, GRAD_NORM, LEARNING_RATE, LOSS, MEMORY_MB, MFU_PERCENT,
                          SAMPLES_PER_S, TFLOPS)

METRIC_TITLES = {
    LOSS: "training loss", LEARNING_RATE: "learning rate",
    GRAD_NORM: "gradient norm", MEMORY_MB: "memory in use (MiB)",
    f"{EVAL_PREFIX}wer": "validation WER", f"{EVAL_PREFIX}cer": "validation CER",
    f"{EVAL_PREFIX}accuracy": "validation accuracy", f"{EVAL_PREFIX}macro_f1": "validation macro-F1",
    f"{EVAL_PREFIX}roc_auc": "validation ROC-AUC", f"{EVAL_PREFIX}loss": "validation loss",
}


# WER, CER and accuracy are shown in percent everywhere (tables, metrics, chart axes): one
# format, so "1.2 %" at the top of a page and "0.012" below it never disagree by their look.
PERCENT_METRICS = {"wer", "cer", "accuracy"}


def metric_label(name: str) -> str:
    return name.upper() if len(name) <= 3 else name.replace("_", " ")


def metric_text(name: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1%}" if name in PERCENT_METRICS else f"{value:.3f}"


def in_percent(names) -> bool:
    """Whether every metric in ``names`` (bare or ``eval/wer``-style) is shown in percent."""
    bare = [name.rsplit("/", 1)[-1] for name in names if name]
    return bool(bare) and all(name in PERCENT_METRICS for name in bare)


# ---------------------------------------------------------------------- comparison figures
BAR_CHARTS = {  # column of engine.compare rows -> (title, axis label)
    "peak_memory_mb": ("Peak memory", "MiB"),
    "trainable_params": ("Trainable parameters", "parameters"),
    "adapter_bytes": ("Adapter size on disk", "bytes"),
    "final_metric": ("Final validation metric", ""),
    "samples_per_second": ("Throughput (mean)", "training samples / s"),
    "achieved_tflops": ("Model TFLOP/s (mean)", "TFLOP/s achieved"),
    "mfu_percent": ("Utilisation (mean)", "MFU, % of peak bf16"),
}
COST_BARS = ["peak_memory_mb", "trainable_params", "adapter_bytes", "final_metric"]
THROUGHPUT_BARS = ["samples_per_second", "achieved_tflops", "mfu_percent"]
# Per-step throughput metrics the Compare page can plot -> chart title
RATE_SERIES = {
    SAMPLES_PER_S: "training samples / s", AUDIO_HOURS_PER_HOUR: "audio-hours per hour",
    TFLOPS: "achieved model TFLOP/s", MFU_PERCENT: "model-FLOPs utilisation (%)",
}


def series_figure(series_by_run: dict[str, dict], title: str, x: str = "wall_time",
                  height: int = 340, percent: bool = False) -> go.Figure:
    """One line per run from ``{"step": [...], "wall_time": [...], "value": [...]}`` columns
    (already downsampled by the caller); ``percent``: the values are fractions shown in percent."""
    figure = go.Figure()
    for label, columns in series_by_run.items():
        if columns["value"]:
            figure.add_trace(go.Scatter(
                x=columns[x], y=columns["value"], name=label,
                mode="lines+markers" if len(columns["value"]) < 30 else "lines"))
    figure.update_layout(
        title=title, height=height, margin=dict(l=10, r=10, t=40, b=10),
        xaxis_title="wall time (s)" if x == "wall_time" else "step",
        legend=dict(orientation="h", yanchor="bottom", y=-0.35))
    if percent:
        figure.update_yaxes(tickformat=".0%")
    return figure


def bar_figure(rows: list[dict], column: str, labels: dict[int, str], height: int = 300) -> go.Figure:
    """One bar per run of ``column`` (runs without a value are left out, not drawn as 0)."""
    title, unit = BAR_CHARTS[column]
    present = [row for row in rows if row.get(column) is not None]
    percent = False
    if column == "final_metric":  # the run's final score: on its test split (validation without one)
        names = sorted({row["metric"] for row in present if row.get("metric")})
        title = f"Final {' / '.join(metric_label(n) for n in names)} (test split; validation without one)"
        unit = "lower is better" if names and all(n in ("wer", "cer") for n in names) else ""
        percent = in_percent(names)
    figure = go.Figure(go.Bar(x=[labels[row["run"]] for row in present],
                              y=[row[column] for row in present],
                              marker_color=[method_colour(row["method"]) for row in present],
                              text=[f"{row[column]:.1%}" if percent else compact_number(row[column])
                                    for row in present],
                              textposition="auto"))
    figure.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10),
                         yaxis_title=unit, showlegend=False)
    if percent:
        figure.update_yaxes(tickformat=".0%")
    return figure


def quality_memory_figure(rows: list[dict], labels: dict[int, str], height: int = 420) -> go.Figure:
    """The "less is more" chart: final metric against peak memory, one point per run."""
    figure = go.Figure()
    present = [row for row in rows if row.get("final_metric") is not None and row.get("peak_memory_mb")]
    for method in sorted({row["method"] for row in present}):
        mine = [row for row in present if row["method"] == method]
        figure.add_trace(go.Scatter(
            x=[row["peak_memory_mb"] for row in mine], y=[row["final_metric"] for row in mine],
            mode="markers+text", name=method, text=[labels[row["run"]] for row in mine],
            textposition="top center", marker=dict(size=14, color=method_colour(method))))
    metrics = sorted({row["metric"] for row in present if row.get("metric")})
    lower_better = bool(metrics) and all(m in ("wer", "cer") for m in metrics)
    # Both axes from zero: runs 1590 and 1596 MiB apart by 0.4 % must not look far apart.
    figure.update_layout(
        title="Less is more: quality against peak memory" + spread_note(present), height=height,
        margin=dict(l=10, r=10, t=40, b=10), xaxis=dict(title="peak memory (MiB)", rangemode="tozero"),
        yaxis=dict(title=f"{' / '.join(metrics) or 'metric'} ({'lower' if lower_better else 'higher'} is better)",
                   rangemode="tozero", tickformat=".0%" if in_percent(metrics) else None))
    return figure


def spread_note(rows: list[dict]) -> str:
    """`` (memory within 0.4 %)`` when the runs' peaks are that close, else empty."""
    peaks = [row["peak_memory_mb"] for row in rows]
    if len(peaks) < 2 or not min(peaks):
        return ""
    spread = 100 * (max(peaks) - min(peaks)) / min(peaks)
    return f" (peak memory within {spread:.1f} % of each other)" if spread < 5 else ""


METHOD_COLOURS = {"qlora": "#2ca02c", "lora": "#1f77b4", "full": "#d62728"}
_PALETTE = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#ff7f0e"]


def method_colour(method: str) -> str:
    """A stable colour per method, so the same method looks the same on every chart."""
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    return _PALETTE[sum(map(ord, method)) % len(_PALETTE)]


def compact_number(value: float) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def run_series_figure(series: dict[str, dict[str, list]], names: dict[str, str], title: str,
                      x: str = "step", height: int = 280, right_axis: set[str] = frozenset()) -> go.Figure:
    """Several metrics of one run (``series``: metric -> ``{"step", "wall_time", "value"}``
    columns, already downsampled; ``names``: metric -> legend label) against step; those in
    ``right_axis`` on a second y axis (a percentage beside a rate)."""
    empty = {"step": [], "wall_time": [], "value": []}
    lines = [(name, label, series.get(name, empty)[x], series.get(name, empty)["value"])
             for name, label in names.items()]
    figure = go.Figure([go.Scatter(x=xs, y=ys, name=label, yaxis="y2" if name in right_axis else "y",
                                   mode="lines+markers" if len(xs) < 30 else "lines")
                        for name, label, xs, ys in lines if xs])
    figure.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10),
                         xaxis_title=x.replace("_", " "), showlegend=len(names) > 1,
                         legend=dict(orientation="h", yanchor="bottom", y=-0.4))
    if in_percent(names) and not right_axis & set(names):
        figure.update_yaxes(tickformat=".0%")
    right = [label for name, label, xs, _ in lines if name in right_axis and xs]
    if right:  # both axes from zero, so the two lines compare by eye
        figure.update_layout(yaxis={"rangemode": "tozero"},
                             yaxis2={"overlaying": "y", "side": "right", "rangemode": "tozero",
                                     "showgrid": False, "title": " / ".join(right)})
    return figure


def confusion_figure(labels: list[str], matrix: list[list[int]], height: int = 420) -> go.Figure:
    """A confusion-matrix heatmap: true label down, predicted label across."""
    figure = go.Figure(go.Heatmap(z=matrix, x=labels, y=labels, colorscale="Blues",
                                  text=matrix, texttemplate="%{text}", showscale=False,
                                  hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>"))
    figure.update_layout(title="confusion matrix", height=height, margin=dict(l=10, r=10, t=40, b=10),
                         xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed")
    return figure


PART_COLOURS = {"audio encoder": "#1f77b4", "cross-attention": "#2ca02c", "text decoder": "#ff7f0e",
                "text encoder": "#9467bd"}


def rank_allocation_figure(layers: list[dict], height: int = 360) -> go.Figure:
    """cmra's allocation: one bar per adapted layer (in model order), its rank, coloured by
    the part of the model it belongs to."""
    figure = go.Figure()
    for part, colour in PART_COLOURS.items():
        rows = [layer for layer in layers if layer["group"] == part]
        if rows:
            figure.add_bar(x=[layer["name"] for layer in rows], y=[layer["rank"] for layer in rows],
                           name=part, marker_color=colour,
                           customdata=[[layer["params"]] for layer in rows],
                           hovertemplate="%{x}<br>rank %{y}, %{customdata[0]:,} parameters<extra></extra>")
    figure.update_layout(height=height, barmode="group", xaxis_title="layer", yaxis_title="rank",
                         xaxis={"categoryorder": "array", "categoryarray": [l_["name"] for l_ in layers],
                                "showticklabels": False},
                         legend={"orientation": "h"}, margin={"t": 30, "b": 30})
    return figure


# ---------------------------------------------------------------------- studies
STUDY_COSTS = {"trainable_params": "trainable parameters", "peak_memory_mb": "peak memory (MiB)",
               "wall_time_s": "training time (s)"}


def pareto_figure(table: list[dict], cost: str, height: int = 420) -> go.Figure:
    """A study's quality against a cost (``cost``: a key of ``STUDY_COSTS``): one point per
    cell at its mean over seeds, error bars of one standard deviation, and the Pareto front
    (cells no other cell beats on both) as a dashed line."""
    from engine.metrics import METRIC_DIRECTION
    from engine.studies import pareto_front

    present = [row for row in table
               if row["final_metric_mean"] is not None and row[f"{cost}_mean"] is not None]
    metrics = sorted({row["metric"] for row in present if row["metric"]})
    higher = all(METRIC_DIRECTION.get(m, True) for m in metrics)
    front = sorted((present[i] for i in pareto_front(
        [(row[f"{cost}_mean"], row["final_metric_mean"]) for row in present], higher)),
        key=lambda row: row[f"{cost}_mean"])
    # Labels overprinted where cells sit close: only the front's cells are labelled, above and
    # below in turn along it; every cell names itself on hover.
    place = {row["cell"]: ("top center", "bottom center")[i % 2] for i, row in enumerate(front)}
    figure = go.Figure()
    for method in dict.fromkeys(row["method"] for row in present):
        mine = [row for row in present if row["method"] == method]
        figure.add_trace(go.Scatter(
            x=[row[f"{cost}_mean"] for row in mine], y=[row["final_metric_mean"] for row in mine],
            error_y=dict(type="data", array=[row["final_metric_std"] or 0 for row in mine], visible=True),
            error_x=dict(type="data", array=[row[f"{cost}_std"] or 0 for row in mine], visible=True),
            mode="markers+text", name=method, text=[row["cell"] if row["cell"] in place else "" for row in mine],
            textposition=[place.get(row["cell"], "top center") for row in mine],
            hovertext=[row["cell"] for row in mine], marker=dict(size=13, color=method_colour(method)),
            customdata=[[row["completed"]] for row in mine],
            hovertemplate="%{hovertext}<br>%{x:,.4g} · %{y:" + (".1%" if in_percent(metrics) else ".4g")
                          + "} (mean of %{customdata[0]} seeds)<extra></extra>"))
    if len(front) > 1:
        figure.add_trace(go.Scatter(x=[row[f"{cost}_mean"] for row in front],
                                    y=[row["final_metric_mean"] for row in front], mode="lines",
                                    name="Pareto front", line=dict(dash="dash", color="#555")))
    figure.update_layout(
        title=f"Quality against {STUDY_COSTS[cost]}", height=height, margin=dict(l=10, r=10, t=40, b=10),
        xaxis=dict(title=f"{STUDY_COSTS[cost]}, mean over seeds", rangemode="tozero"),
        yaxis=dict(title=f"{' / '.join(metrics) or 'final metric'} ({'higher' if higher else 'lower'} "
                         "is better)", rangemode="tozero", tickformat=".0%" if in_percent(metrics) else None))
    return figure


def comparison_figure(comparisons: list[dict], reference: str, height: int | None = None) -> go.Figure:
    """Each method's difference to the reference (``engine.comparisons.read_study``) as a point
    with its 95 % interval as error bars, and a line at 0: an interval that crosses the line is
    not shown to differ."""
    shown = [c for c in comparisons if c["difference"] is not None]
    metric = next((c["metric"] for c in shown if c["metric"]), "") or "metric"
    lows = [c["difference"] - c["ci95"][0] if c["ci95"] else 0 for c in shown]
    highs = [c["ci95"][1] - c["difference"] if c["ci95"] else 0 for c in shown]
    figure = go.Figure(go.Scatter(
        x=[c["difference"] for c in shown], y=[c["method"] for c in shown], mode="markers",
        error_x=dict(type="data", symmetric=False, array=highs, arrayminus=lows, visible=True),
        marker=dict(size=12, color=[method_colour(c["method"].split(" · ")[0]) for c in shown]),
        customdata=[[c["p_holm"] if c["p_holm"] is not None else float("nan")] for c in shown],
        hovertemplate="%{y}: %{x:+" + (".2%" if in_percent([metric]) else ".4g")
                      + "} (Holm p %{customdata[0]:.3g})<extra></extra>"))
    figure.add_vline(x=0, line=dict(dash="dash", color="#555"))
    figure.update_layout(
        title=f"Difference to {reference} with 95 % intervals", height=height or 120 + 50 * len(shown),
        margin=dict(l=10, r=10, t=40, b=10), showlegend=False,
        xaxis=dict(title=f"{metric_label(metric)}: method − reference",
                   tickformat=".1%" if in_percent([metric]) else None),
        yaxis=dict(autorange="reversed"))
    return figure
