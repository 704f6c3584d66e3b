"""Memory estimates and the figure that shows them (shared by Models and Methods).

The engine caches the dry runs (engine/memory/estimator.py), so this asks it on every rerun
and caches nothing itself: the number includes what the process holds now, as the New run
form's does for the same configuration (a page cache would keep an old "process" part)."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from engine.errors import WorkbenchError
from engine.names import WHOLE_WINDOW
from ui.state import get_workbench

PARTS = [("process_mb", "process (Python, torch, the app)"), ("weights_mb", "base weights"),
         ("trainable_mb", "trainable weights"), ("gradients_mb", "gradients"),
         ("optimizer_mb", "optimizer state"), ("activations_mb", "activations")]
WHAT_IT_INCLUDES = ("The peak a run will measure: a dry run of one training step on fake tensors "
                    "(weights, gradients, AdamW state, activations; nothing is allocated) plus what "
                    "this process holds now (on a CPU its resident memory: Python, torch, the app; "
                    "on a GPU the CUDA allocations already made). The New run form shows the same "
                    "number; the dry run is checked against measured steps in the test suite.")


def estimates_for(model: str, methods: tuple[str, ...], task: str, batch_size: int, seconds: float,
                  sequence_length: int, precision: str, audio_padding: str = WHOLE_WINDOW) -> dict[str, dict | str]:
    """method -> estimate, or the reason there is none."""
    try:
        with st.spinner("Dry-running one training step per method…"):
            return get_workbench().estimate_memory(model, list(methods), task=task, batch_size=batch_size,
                                                   seconds=seconds, sequence_length=sequence_length,
                                                   precision=precision, audio_padding=audio_padding)
    except WorkbenchError as error:
        return {method: f"no estimate: {error}" for method in methods}


def memory_figure(results: dict[str, dict | str]) -> go.Figure:
    """Stacked bars: where each method's memory goes."""
    methods = [m for m, r in results.items() if isinstance(r, dict)]
    figure = go.Figure()
    for key, label in PARTS:
        figure.add_trace(go.Bar(name=label, x=methods, y=[results[m][key] for m in methods]))
    figure.update_layout(barmode="stack", height=360, yaxis_title="MiB",
                         title="Estimated peak memory of a run (one training step)",
                         margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.2))
    return figure
