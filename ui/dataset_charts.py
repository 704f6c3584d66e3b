"""Plotly figures of a dataset and of one clip (pure functions of engine results: easy to test)."""

from __future__ import annotations

import plotly.graph_objects as go

LAYOUT = dict(height=280, margin=dict(l=10, r=10, t=40, b=10))


def duration_histogram(stats: dict) -> go.Figure:
    buckets = stats["duration_histogram"]
    figure = go.Figure(go.Bar(x=[(b["from_s"] + b["to_s"]) / 2 for b in buckets],
                              y=[b["items"] for b in buckets],
                              width=[b["to_s"] - b["from_s"] for b in buckets],
                              hovertemplate="%{x:.2f} s: %{y} items<extra></extra>"))
    figure.update_layout(title="clip durations", xaxis_title="seconds", yaxis_title="items", **LAYOUT)
    return figure


def label_distribution(stats: dict) -> go.Figure:
    labels = sorted(stats["labels"])
    splits = sorted({split for counts in stats["labels"].values() for split in counts},
                    key=["train", "validation", "test"].index)
    figure = go.Figure([go.Bar(name=split, x=labels, y=[stats["labels"][label].get(split, 0) for label in labels])
                        for split in splits])
    figure.update_layout(title="items per label", barmode="stack", yaxis_title="items", **LAYOUT)
    return figure


def transcript_lengths(stats: dict) -> go.Figure:
    rows = stats["transcript_words"]
    figure = go.Figure(go.Bar(x=[r["words"] for r in rows], y=[r["items"] for r in rows]))
    figure.update_layout(title="text length", xaxis_title="words", yaxis_title="items", **LAYOUT)
    return figure


def waveform(view: dict) -> go.Figure:
    """The min/max envelope as a filled band: every peak shows, whatever the zoom."""
    figure = go.Figure([
        go.Scatter(x=view["time"], y=view["high"], mode="lines", line=dict(width=0.5), showlegend=False,
                   hoverinfo="skip"),
        go.Scatter(x=view["time"], y=view["low"], mode="lines", line=dict(width=0.5), fill="tonexty",
                   showlegend=False, hoverinfo="skip"),
    ])
    figure.update_layout(title="waveform", xaxis_title="seconds", yaxis=dict(range=[-1, 1]), **LAYOUT)
    return figure


def spectrogram(view: dict) -> go.Figure:
    figure = go.Figure(go.Heatmap(z=view["mel_db"], x=view["mel_time"], y=view["mel_hz"],
                                  colorscale="Viridis", colorbar=dict(title="dB"),
                                  hovertemplate="%{x:.2f} s, %{y:.0f} Hz: %{z:.0f} dB<extra></extra>"))
    figure.update_layout(title="log-mel spectrogram (what the model hears)", xaxis_title="seconds",
                         yaxis_title="frequency (Hz, mel bands)", **LAYOUT)
    return figure
