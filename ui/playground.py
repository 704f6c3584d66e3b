"""Playground helpers: the shared model cache and how one model's answer is drawn.

``st.cache_resource`` holds only the ``ModelCache`` object (one per process); what it keeps
loaded, and when it evicts, is the engine's business (engine/inference.py).
"""

from __future__ import annotations

import os

import plotly.graph_objects as go
import streamlit as st

from engine.inference import ModelCache
from ui.state import md_text


@st.cache_resource(show_spinner=False)
def get_model_cache() -> ModelCache:
    """One cache for every browser session; budget from ``LIM_PLAYGROUND_CACHE_MB`` (2048)."""
    budget_mb = int(os.environ.get("LIM_PLAYGROUND_CACHE_MB", "2048"))
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
