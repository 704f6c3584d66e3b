"""Pieces of the Training page: live charts, the final evaluation, the queue table.

Each function only reads what it is given and draws it; the page decides what to call.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.metrics import METRIC_DIRECTION
from engine.progress import COMPILING, busy_with, eta_seconds
from engine import names as m
from engine.training.settings import planned_steps
from ui.charts import (PERCENT_METRICS, confusion_figure, metric_label, metric_text,
                       rank_allocation_figure, run_series_figure)
from ui.state import MFU_HELP, format_duration, mfu_text

LIVE_CHARTS = {
    "Loss": ({m.LOSS: "training loss"}, "training loss"),
    "Learning rate": ({m.LEARNING_RATE: "learning rate"}, "learning rate"),
    "Gradient norm": ({m.GRAD_NORM: "gradient norm (before clipping)"}, "gradient norm"),
    # Audio-hours per hour and audio-seconds per second are one ratio; runs logged before the
    # former existed have only the latter, so either draws the line.
    "Throughput": ({m.SAMPLES_PER_S: "samples / s", m.AUDIO_HOURS_PER_HOUR: "audio-hours per hour",
                    m.AUDIO_SECONDS_PER_S: "audio-hours per hour"}, "throughput"),
    "Utilisation": ({m.TFLOPS: "achieved TFLOP/s", m.MFU_PERCENT: "MFU %"},
                    "model-FLOPs utilisation"),
    "Machine": ({m.CPU_PERCENT: "CPU %", m.RAM_USED_MB: "RAM used (MiB)",
                 m.MEMORY_MB: "this process (MiB)", m.GPU_MEMORY_MB: "GPU memory (MiB)"},
                "CPU, RAM and GPU memory"),
}


FINISHED = ("completed", "stopped", "failed", "interrupted", "cancelled")


def default_run(runs: list[dict]) -> int:
    """The run a fresh tab watches: the one training, else the newest queued, else the newest
    that ended (``runs`` newest first, as ``Workbench.list_runs`` gives them)."""
    for statuses in (("running",), ("queued",), FINISHED[:-1]):
        for run in runs:
            if run["status"] in statuses:
                return run["id"]
    return runs[0]["id"]


def eta_text(clock: dict | None) -> str:
    """" · ETA 4m 10s", " · ETA at least 2m 00s" when parts are not timed yet, or ""."""
    if not clock or clock["eta_s"] is None:
        return ""
    return f" · ETA {'at least ' if clock['unknown'] else ''}{format_duration(clock['eta_s'])}"


def clock_caption(clock: dict | None) -> None:
    """What the ETA is made of (short and whole-window steps, evaluations) and what it is
    based on, so a presenter can see why the last steps take longer."""
    if not clock or (not clock["parts"] and not clock["unknown"]):
        return
    parts = " + ".join(f"{name} {format_duration(seconds)}" for name, seconds in clock["parts"].items())
    st.caption("ETA: " + (parts or "–") + (f", timed on {clock['basis']}" if clock["basis"] else "")
               + (f"; not timed yet, so not counted: {', '.join(clock['unknown'])}" if clock["unknown"] else "")
               + ".")


def machine_load_line(load: dict | None) -> None:
    """A line when other processes load the machine, so a slow run is not blamed on the run."""
    if not load or not load["busy"]:
        return
    others = load["others_percent"]
    st.warning("This machine is busy with other work: "
               + (f"other processes use {others:.0f} % of its {load['cores']} cores, " if others is not None else "")
               + f"load average {load['load_average']:.1f} on {load['cores']} cores. This run trains "
               "slower than it would alone, and the ETA follows what it measures.",
               icon=":material/speed:")


def progress(run: dict, clock: dict | None = None) -> None:
    """Training steps with elapsed time (moving, ``Workbench.run_clock``) and the ETA from the
    run's own steps and evaluations, and while the run evaluates, that phase with its own
    examples done / total; while it compiles for a new batch shape, that, and why it takes a while."""
    step, total = run["step"] or 0, run["total_steps"]
    phase, busy = (run.get("phase") if run["status"] == "running" else None), busy_with(run)
    if clock is None:  # no clock given: the mean time per step, hidden while busy
        eta = None if phase else eta_seconds(run)
        clock = {"elapsed_s": run["wall_time_s"] or 0, "eta_s": eta, "unknown": [], "parts": {}, "basis": None}
    st.progress(min(1.0, step / total) if total else 0.0,
                text=f"step {step} / {total or '?'} · elapsed {format_duration(clock['elapsed_s'] or 0)}"
                     + eta_text(clock) + (f" · {busy}" if busy else ""))
    if phase and run.get("phase_total"):
        done, of = run.get("phase_done") or 0, run.get("phase_total") or 0
        st.progress(min(1.0, done / of) if of else 0.0,
                    text=f"{phase[0].upper() + phase[1:]}: {done} / {of} examples")
    elif phase == COMPILING:
        st.caption("Compiling: the first batch of each new shape compiles the model's layers "
                   "(torch.compile), which takes a while; later runs reuse what was compiled "
                   "(it is kept in the data home).")


def tracking_commands(places: dict[str, dict]) -> None:
    """How to open the run's experiment tracking (its ``tracking`` setting): TensorBoard's and
    MLflow's exact commands (``Workbench.run_tracking``)."""
    if not places:
        return
    with st.expander("Experiment tracking: open in " + " and ".join(
            {"tensorboard": "TensorBoard", "mlflow": "MLflow"}[name] for name in places),
            icon=":material/monitoring:"):
        if "tensorboard" in places:
            st.caption("TensorBoard: event files in the run's folder"
                       + ("" if places["tensorboard"]["exists"] else " (none written yet)") + ".")
            st.code(places["tensorboard"]["command"], language="bash")
        if "mlflow" in places:
            st.caption("MLflow: this data home's tracking store (experiment `lessismore`, the "
                       "adapter as an artifact). `mlflow ui` comes with the full mlflow package: "
                       f"`{places['mlflow']['install']}`.")
            st.code(places["mlflow"]["command"], language="bash")


def event_log(events: list[dict]) -> None:
    """The run's log, newest last; long lines wrap instead of running off the right edge."""
    st.code("\n".join(f"{e['time'][11:19]} {e['level']:>7}  {e['message'].splitlines()[0]}"
                      for e in events if e["level"] != "debug") or "(no log yet)",
            language=None, wrap_lines=True)


def runs_table(runs: list[dict]) -> None:
    """Every run; the page draws it in a fragment that refreshes, so it agrees with the monitor."""
    st.dataframe(pd.DataFrame([{
        "run": r["id"], "status": r["status"] + (f" ({busy_with(r)})" if busy_with(r) else ""),
        "method": r["method"], "model": r["model_name"], "dataset": r["dataset_name"],
        "step": f"{r['step'] or 0}/{planned_steps(r) or '?'}", "created": r["created_at"],
    } for r in runs]), hide_index=True, width="stretch", key="train.all_runs")


def trained_on(names) -> str | None:
    """"GPU" or "CPU" from the machine metrics a run logs (None before its first step)."""
    return "GPU" if m.GPU_MEMORY_MB in names else "CPU" if m.CPU_PERCENT in names else None


def throughput_metrics(latest: dict[str, float], means: dict[str, float] | None = None) -> None:
    """The run's mean samples/s, audio-hours per hour and utilisation over its steps (the
    last step's when no means are given), and its last loss."""
    figures = {**latest, **(means or {})}
    speed, tflops, mfu = (figures.get(name) for name in (m.SAMPLES_PER_S, m.TFLOPS, m.MFU_PERCENT))
    audio = figures.get(m.AUDIO_HOURS_PER_HOUR) or figures.get(m.AUDIO_SECONDS_PER_S)
    loss = latest.get(m.LOSS)
    last = latest.get(m.SAMPLES_PER_S)
    speed_col, audio_col, loss_col = st.columns(3)
    speed_col.metric("samples / s", "–" if speed is None else f"{speed:.1f}",
                     help="The run's mean over its steps (the last step: "
                          + ("–" if last is None else f"{last:.1f}") + "); a step after an "
                          "evaluation or a whole-window batch is slower than the rest.")
    audio_col.metric("audio-hours per hour", "–" if audio is None else f"{audio:.1f}",
                     help="Hours of audio trained on per hour of wall time, the run's mean: "
                          "above 1 trains faster than real time.")
    loss_col.metric("last loss", "–" if loss is None else f"{loss:.4f}")
    mfu_col, tflops_col, _ = st.columns(3)
    device = trained_on(latest) if tflops is not None else None
    mfu_col.metric("MFU", mfu_text(mfu, device), help=MFU_HELP)
    tflops_col.metric("achieved TFLOP/s", "n/a on CPU" if device == "CPU" else "–" if tflops is None
                      else f"{tflops:.3g}",
                      help="Model FLOPs per second of training (recomputation and adapters not "
                           "counted).")


def live_charts(run_id: int, live: dict) -> None:
    """Throughput figures, then loss, learning rate, gradient norm, validation metric,
    throughput, utilisation and machine charts, from ``Workbench.live_metrics`` (downsampled
    series and latest values)."""
    series, latest = live["series"], live["latest"]
    throughput_metrics(latest, live.get("means"))
    charts = dict(LIVE_CHARTS)
    evals = sorted(name for name in series if name.startswith(m.EVAL_PREFIX))
    if evals:
        charts["Validation"] = ({name: name.split("/", 1)[1] for name in evals}, "validation metrics")
    tabs = st.tabs(list(charts))
    for tab, (label, (names, title)) in zip(tabs, charts.items()):
        with tab:
            present = {name: legend for name, legend in names.items() if name in series}
            if m.AUDIO_HOURS_PER_HOUR in present:
                present.pop(m.AUDIO_SECONDS_PER_S, None)  # the same line twice
            if present:
                st.plotly_chart(run_series_figure(series, present, title, right_axis={m.MFU_PERCENT, f"{m.EVAL_PREFIX}loss"}),
                                key=f"train.chart.{run_id}.{label}")
            else:
                st.caption("Nothing logged yet for this chart.")
            if label == "Utilisation" and m.TFLOPS in present and m.MFU_PERCENT not in present:
                st.caption(f"MFU: {mfu_text(None, trained_on(series))} (no known peak FLOP/s to "
                           "divide by; set LIM_PEAK_TFLOPS to compare against one).")


def evaluation(run_id: int, result: dict | None) -> None:
    """Before and after on the final score's split, the per-example table (worst first), the
    confusion matrix."""
    if result is None:
        return
    before = result.get(f"{result['split']}_before")
    if before:
        before_after(before)
    elif result.get("validation_before"):  # a run from before the test split was scored at step 0
        before_after(result["validation_before"])
        st.caption(f"The untouched model was scored on the validation split only, so the final "
                   f"{result['split']}-split score has no before.")
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
        shown = rows[["reference", "prediction", "wer", "cer", "file"]].assign(
            wer=lambda f: f["wer"].map(lambda v: metric_text("wer", v)),
            cer=lambda f: f["cer"].map(lambda v: metric_text("cer", v)))
    else:
        st.caption("Mistakes first, the most confident mistakes at the top.")
        shown = rows[["reference", "prediction", "confidence", "correct", "file"]]
    st.dataframe(shown, hide_index=True, width="stretch", key=f"train.examples.{run_id}")
    if result.get("confusion"):
        st.plotly_chart(confusion_figure(result["labels"], result["confusion"]),
                        key=f"train.confusion.{run_id}")


def before_after(scores: dict | None) -> None:
    """The presenter's line: each score of the untouched model (``eval_on_start``) beside the
    trained one's on the same split, with the change coloured by which way is better."""
    if not scores:
        return
    split = scores.get("split", "validation")  # runs before the test split was scored had validation only
    st.markdown(f"#### Before and after {scores['steps']} steps ({split} split)")
    if scores.get("before_window") != scores.get("after_window"):
        st.caption("Before: the model as it ships, on Whisper's standard 30 s window (pretrained "
                   "Whisper knows no other). After: on this run's own windows (`audio_padding="
                   f"{scores['after_window']}`), as its Playground and final score use them.")
    shown = [name for name in scores["after"] if name in scores["before"]]
    for column, name in zip(st.columns(max(len(shown), 1)), shown):
        before, after = scores["before"][name], scores["after"][name]
        change = after - before
        column.metric(f"{metric_label(name)}: {metric_text(name, before)} before training",
                      metric_text(name, after),
                      delta=f"{change * 100:+.1f} points" if name in PERCENT_METRICS else f"{change:+.3f}",
                      delta_color="normal" if METRIC_DIRECTION.get(name, True) else "inverse")


def method_report(run_id: int, report: dict | None) -> None:
    """What the run's method decided before training (cmra, qass, mma; docs/methods.md)."""
    if not report:
        return
    method = report.get("method")
    if method == "cmra":
        st.markdown("#### Rank allocation")
        parts = ", ".join(f"{part} {p['params']:,}" for part, p in report["parts"].items())
        st.caption(f"Strategy {report['used_strategy']}: {report['used']:,} of {report['budget']:,} "
                   f"adapter parameters. Per part: {parts}." + (f" {report['note']}." if report.get("note") else ""))
        st.plotly_chart(rank_allocation_figure(report["layers"]), key=f"train.ranks.{run_id}")
    elif method == "qass":
        st.markdown("#### Layers kept out of 4 bits")
        st.caption(f"{len(report['keep_16bit'])} of {len(report['layers'])} layers kept in "
                   f"{report['kept_dtype']} (budget {report['budget']}): +{report['extra_mib']:.2f} MiB "
                   f"over {report['all_4bit_mib']:.2f} MiB all-4-bit. Relative 4-bit output error, "
                   "largest first; signal: " + ", ".join(f"{k} {v}" for k, v in report["signal"].items()))
        st.dataframe(pd.DataFrame(report["layers"])[["name", "group", "error", "kept", "extra_mib"]],
                     hide_index=True, width="stretch", key=f"train.qass.{run_id}")
    elif method == "mma":
        st.caption(f"Routed adapters: {report['adapters']} per layer in {len(report['layers'])} "
                   f"layers; modalities: {', '.join(report['modalities'])} (router weights: the "
                   "router/* metrics on Compare).")


def provenance(run_id: int, recorded: dict | None, decisions: dict | None) -> None:
    """Where the run's numbers came from (code, libraries, device, data: recorded when it
    started) and what its method decided (its report and the metrics it logged each step)."""
    with st.expander("Provenance and decisions", icon=":material/fingerprint:"):
        if recorded is None:
            st.caption("This run recorded no provenance (runs record it when they start).")
        else:
            code = (f"commit {recorded['commit'][:12]}" + (" with uncommitted changes" if recorded.get("dirty") else "")
                    if recorded.get("commit") else f"version {recorded.get('version')}")
            device = recorded.get("device") or {}
            data = recorded.get("data_fingerprint") or {}
            st.caption(f"Code: {code} · device: {device.get('name')}"
                       + (f" (compute capability {device['capability']}, CUDA {device.get('cuda')})"
                          if device.get("capability") else "")
                       + f" · data: {data.get('dataset')} version {data.get('version')} · "
                       + ", ".join(f"{name} {version}" for name, version in (recorded.get("packages") or {}).items()))
            if recorded.get("resumed"):
                st.caption(f"Resumed {len(recorded['resumed'])} time(s) with other code, libraries or device.")
        if decisions and (decisions.get("method_report") or decisions.get("step_metrics")):
            st.json(decisions, expanded=1)
        else:
            st.caption("Its method recorded no decisions.")


def queue_table(queue: list[dict]) -> None:
    st.dataframe(pd.DataFrame([{
        "position": row["position"], "run": row["id"], "method": row["method"], "model": row["model"],
        "dataset": row["dataset"],
        "estimated duration": format_duration(row["estimated_duration_s"]),
        "starts in about": format_duration(row["estimated_start_in_s"]),
    } for row in queue]), hide_index=True, width="stretch")


PROFILE_LABELS = {"memory_budget_gb": "memory budget (GiB)", "per_device_train_batch_size": "batch",
                  "per_device_eval_batch_size": "evaluation batch", "audio_padding": "audio padding",
                  "dataloader_num_workers": "dataloader workers"}


def device_profile(profile: dict | None) -> None:
    """The active device profile (``LIM_PROFILE``): the machine it stands for, the memory a run
    may use there, the defaults it chose for new runs and the GPU cap it sets on this machine."""
    if profile is None:
        st.caption("Device profile: none (the settings' own defaults, no memory cap). Set "
                   "`LIM_PROFILE` (e.g. jetson-orin-nano-8gb, or auto on a Jetson) to plan runs "
                   "for a device; `python -m engine profiles list` lists them.")
        return
    memory = (f"{profile['training_gib']:g} GiB for training ({profile['memory_gib']:g} GiB, less "
              f"{profile['os_gib']:g} for the OS and {profile['app_gib']:g} for the app)"
              if profile["training_gib"] else "no memory limit")
    gpu = profile["gpu"]
    if gpu is None:
        cap = "no CUDA GPU here: the budget guides the memory planner only"
    elif gpu["capped_gib"] is None:
        cap = f"{gpu['name']}: not capped ({gpu['total_gib']:.1f} GiB)"
    else:
        cap = (f"{gpu['name']}: each run capped at {gpu['capped_gib']:.1f} of "
               f"{gpu['total_gib']:.1f} GiB, as on the device")
    chosen = ", ".join(f"{PROFILE_LABELS.get(name, name)} {value:g}" if isinstance(value, float)
                       else f"{PROFILE_LABELS.get(name, name)} {value}"
                       for name, value in profile["defaults"].items())
    st.info(f"**Device profile: {profile['name']}** · {profile['description']} · {memory}.  \n"
            f"New runs start from: {chosen}.  \n{cap}.", icon=":material/memory:")
