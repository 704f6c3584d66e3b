"""The Methods page's parts: each method's estimated cost on a chosen model (on request), the
table of methods, and one method's idea, formula and settings."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.models import TASK_NAMES
from ui.estimates import WHAT_IT_INCLUDES, estimates_for, memory_figure
from ui.forms import bounded_number


def costs(wb, methods: list[dict], models: list[dict]) -> dict[str, dict | str]:
    """Pick a model, task and batch; on the button, every method's dry-run estimate (drawn
    and returned: method -> estimate or why there is none; empty until asked)."""
    c1, c2, c3, c4 = st.columns([2, 2, 1, 2], vertical_alignment="bottom")
    model = c1.selectbox("On model", [m["name"] for m in models], key="methods.model")
    record = wb.get_model(model)
    task = c2.selectbox("Task", record["tasks"], format_func=TASK_NAMES.get, key="methods.task")
    batch = bounded_number("Batch size", 1, 512, 8, "methods.batch", c3)
    # On request, not on every first visit: the dry run (a child process that imports torch,
    # transformers and peft, then one fake training step per method) took 19 s of the page's
    # first load on a 2-core machine; the methods themselves need none of it.
    wanted = (model, tuple(m["name"] for m in methods), task, int(batch), 5.0, 64, "fp32")
    if c4.button("Estimate each method's cost", key="methods.estimate", icon=":material/memory:"):
        st.session_state["methods.estimates"] = (wanted, estimates_for(*wanted))
    saved_for, saved = st.session_state.get("methods.estimates", (None, None))
    if saved_for != wanted:
        st.caption("Trainable parameters and memory of one training step per method on this model "
                   "(a dry run on fake tensors, some seconds): press the button.")
        return {}
    st.plotly_chart(memory_figure(saved), key="methods.memory")
    st.caption(WHAT_IT_INCLUDES)
    return saved


def methods_table(methods: list[dict], results: dict[str, dict | str]) -> None:
    table = []
    for method in methods:
        cost = results.get(method["name"])
        table.append({
            "method": method["name"], "what it does": method["help"], "source": method["source"],
            "trainable params": cost["trainable_params"] if isinstance(cost, dict) else None,
            "est. peak memory (MiB)": round(cost["total_mb"]) if isinstance(cost, dict) else None,
        })
    st.dataframe(pd.DataFrame(table), hide_index=True, width="stretch")


def details(method: dict) -> None:
    """Idea, formula, advantages, limitations and settings (with defaults and help)."""
    with st.expander(f"**{method['name']}** — {method['help']}"):
        if method.get("idea"):
            st.markdown(method["idea"])
        if method.get("formula"):
            st.code(method["formula"], language=None)
        left, right = st.columns(2)
        left.markdown(f"**Advantages**  \n{method.get('advantages', '–')}")
        right.markdown(f"**Limitations**  \n{method.get('limitations', '–')}")
        settings = method["settings"]
        if settings:
            st.dataframe(pd.DataFrame([{"setting": f["name"], "default": str(f["default"]),
                                        "help": f["help"]} for f in settings]),
                         hide_index=True, width="stretch")
