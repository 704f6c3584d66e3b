"""What a study found, on the Studies page: the table of cells, each method against a reference
(per cell or tuned per method) with 95 % intervals and Holm-corrected p-values, the power line,
the charts, the provenance of the runs and what their methods decided, and the exports (CSV,
JSON, the HTML report).

The numbers come from the engine (``Workbench.study_summary``, engine/comparisons.py), so the
page, the CSV, the JSON and the report say the same; a merged study of uploaded parts is shown
by the same functions.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable

import pandas as pd
import streamlit as st

from engine.studies import MEASURES, study_provenance
from ui.charts import PERCENT_METRICS, STUDY_COSTS, comparison_figure, metric_text, pareto_figure
from ui.compare_report import html_report

# reading(reference, tune) -> what engine.comparisons.read_study returns for them
ReadingFor = Callable[[str | None, bool], dict]
READING_KEYS = ("reading", "reference", "comparisons", "tuning", "power", "statistics", "notes")


# ---------------------------------------------------------------------- frames
def plus_minus(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None:
        return "–"
    if abs(mean) >= 10_000:
        text = f"{mean:,.0f}"
    else:
        text = f"{mean:.{digits}g}"
    return text if std is None else f"{text} ± {std:.2g}"


def table_frame(table: list[dict]) -> pd.DataFrame:
    """The cells as shown: mean ± std over the completed seeds of each measure."""
    metric = " / ".join(sorted({row["metric"] for row in table if row["metric"]})) or "final metric"
    return pd.DataFrame([{
        "cell": row["cell"], "seeds done": f"{row['completed']}/{row['seeds']}",
        metric: plus_minus(row["final_metric_mean"], row["final_metric_std"]),
        f"validation {metric}": plus_minus(row.get("validation_metric_mean"), row.get("validation_metric_std")),
        "trainable parameters": plus_minus(row["trainable_params_mean"], row["trainable_params_std"], 6),
        "peak memory (MiB)": plus_minus(row["peak_memory_mb_mean"], row["peak_memory_mb_std"]),
        "wall time (s)": plus_minus(row["wall_time_s_mean"], row["wall_time_s_std"], 3),
        "samples/s": plus_minus(row["samples_per_second_mean"], row["samples_per_second_std"], 3),
        "runs": ", ".join(f"#{i}" if isinstance(i, int) else str(i) for i in row["runs"]),  # merged: FILE#ID
    } for row in table])


def number(value: float | None, text: str = "{:.3g}") -> str:
    return "–" if value is None else text.format(value)


def difference_text(metric: str | None, value: float | None) -> str:
    """A difference of two scores: in percentage points for WER, CER and accuracy (shown in
    percent everywhere, ui/charts.py), else as it is."""
    if value is None:
        return "–"
    return f"{value * 100:+.2f} points" if metric in PERCENT_METRICS else f"{value:+.4g}"


def interval(comparison: dict) -> str:
    if not comparison["ci95"]:
        return "–"
    low, high = (difference_text(comparison["metric"], v) for v in comparison["ci95"])
    return f"[{low.removesuffix(' points')}, {high}]"


COMPARISON_COLUMNS = ["method", "cell", "difference", "95 % interval", "p", "p (Holm)", "p (seeds)",
                      "seeds", "verdict"]


def comparisons_frame(comparisons: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{
        "method": c["method"], "cell": c["cell"], "difference": difference_text(c["metric"], c["difference"]),
        "95 % interval": interval(c), "p": number(c["p"]), "p (Holm)": number(c["p_holm"]),
        "p (seeds)": number(c["p_seeds"]), "seeds": ", ".join(map(str, c["seeds"])),
        "verdict": c["verdict"]} for c in comparisons], columns=COMPARISON_COLUMNS)


def tuning_frame(tuning: list[dict]) -> pd.DataFrame:
    def candidates(entry: dict) -> str:
        return "; ".join(f"{axes_text(c['axes']) or c['cell']}: {metric_text(entry.get('metric') or '', c['validation_mean'])}"
                         for c in entry["candidates"])

    return pd.DataFrame([{"method": t["method"], "chosen settings": axes_text(t["chosen"]) or "–",
                          "chosen by": t["chosen_by"], "validation mean per candidate": candidates(t)}
                         for t in tuning])


def power_text(power: dict) -> str:
    return power["text"] + (f" ({power['how']}.)" if power["how"] else "")


def axes_text(axes: dict | None) -> str:
    return ", ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in (axes or {}).items())


# ---------------------------------------------------------------------- provenance
def provenance_text(provenance: dict | None) -> dict[str, str]:
    """Provenance as short texts: ``code`` (commit, or package version), ``device``,
    ``packages`` and ``data``; values that differ between runs are joined with " | "."""
    provenance = provenance or {}

    def each(key: str, show: Callable) -> str:
        value = provenance.get(key)
        if value is None:
            return ""
        values = value if key in provenance.get("differs", []) else [value]
        return " | ".join(show(v) for v in values)

    dirty = " (with uncommitted changes)" if provenance.get("dirty") is True else ""
    code = each("commit", lambda v: f"{v[:12]}{dirty}") or each("version", lambda v: f"version {v}")
    return {
        "code": code,
        "device": each("device", lambda d: " · ".join(str(d[k]) for k in ("name", "capability", "cuda")
                                                      if d.get(k)) + (f" × {d['processes']}" if d.get(
                                                          "processes", 1) > 1 else "")),
        "packages": each("packages", lambda p: ", ".join(f"{name} {version}" for name, version in p.items())),
        "data": each("data_fingerprint", lambda d: f"{d['dataset']} version {d['version']} ("
                     + ", ".join(f"{n} {split}" for split, n in (d.get("items") or {}).items() if n) + ")"),
    }


def provenance_view(provenance: dict | None, key: str) -> None:
    """Where the study's numbers came from: code, device, libraries and data, as every run
    recorded them when it started."""
    with st.expander("Provenance: code, device, libraries, data", icon=":material/fingerprint:"):
        if not provenance or not provenance.get("recorded"):
            st.caption("No run of this study recorded its provenance (runs record it when they start).")
            return
        texts = provenance_text(provenance)
        st.dataframe(pd.DataFrame([{"what": k, "recorded": v} for k, v in texts.items()]),
                     hide_index=True, width="stretch", key=f"{key}.provenance")
        st.caption(f"{provenance['recorded']} of {provenance['runs']} runs recorded it"
                   + (f"; differs between runs: {', '.join(provenance['differs'])}" if provenance["differs"]
                      else "; every run agrees") + ".")


def decisions_view(summary: dict, key: str) -> None:
    """What each method decided in its runs (its method report and the metrics it logged at
    every step), per completed run."""
    shown = [run for run in summary["runs"] if (run.get("decisions") or {}).get("method_report")
             or (run.get("decisions") or {}).get("step_metrics")]
    with st.expander("What each method decided", icon=":material/psychology:"):
        if not shown:
            st.caption("No method of this study recorded a decision (cmra, qass, mma, ta-qlora do).")
            return
        labels = {f"run {run['id']} · {run.get('cell') or run['study_cell']['method']} · seed "
                  f"{run['study_cell'].get('seed')}": run for run in shown}
        chosen = st.selectbox("Run", list(labels), key=f"{key}.decisions.run")
        st.json(labels[chosen]["decisions"], expanded=1)


# ---------------------------------------------------------------------- exports
def study_csv(table: list[dict], runs: list[dict]) -> bytes:
    """One line per cell: every measure's mean and standard deviation as numbers, the seeds'
    final metrics, the run ids, and the provenance its runs recorded."""
    provenance_columns = ["code", "device", "packages", "data"]
    columns = ["cell", "method", "size_setting", "size", "targets", "axes", "seeds", "completed", "metric",
               *(f"{m}_{s}" for m in MEASURES for s in ("mean", "std")), "values", "runs", *provenance_columns]
    by_id = {run["id"]: run for run in runs}
    frame = pd.DataFrame([{**row, "axes": axes_text(row.get("axes")),
                           "values": " ".join(f"{v:g}" for v in row["values"]),
                           "runs": " ".join(map(str, row["runs"])),
                           **provenance_text(study_provenance([by_id[i] for i in row["runs"] if i in by_id]))}
                          for row in table], columns=columns)
    return frame.to_csv(index=False).encode()


def comparisons_csv(reading: dict) -> bytes:
    """One line per comparison, numbers as numbers: the contract's fields (``study show
    --json``'s ``comparisons``) with the interval as two columns."""
    columns = ["method", "reference", "cell", "reference_cell", "metric", "difference", "ci95_low", "ci95_high",
               "p", "p_holm", "p_seeds", "test", "seeds", "items", "detectable", "verdict"]
    rows = [{**c, "ci95_low": (c["ci95"] or [None])[0], "ci95_high": (c["ci95"] or [None, None])[1],
             "seeds": " ".join(map(str, c["seeds"]))} for c in reading["comparisons"]]
    return pd.DataFrame(rows, columns=columns).to_csv(index=False).encode()


def figures(table: list[dict], reading: dict) -> dict:
    charts = {f"quality_vs_{cost}": pareto_figure(table, cost) for cost in STUDY_COSTS}
    if reading["comparisons"]:
        charts = {"differences": comparison_figure(reading["comparisons"], reading["reference"]), **charts}
    return charts


def report(wb, summary: dict) -> str:
    """The Compare page's self-contained HTML report of the study's runs, with the study's
    table, its comparisons and how they were decided, and its provenance at the top."""
    rows = wb.compare_runs([run["id"] for run in summary["runs"] if run["step"]])
    provenance = provenance_text(summary.get("provenance"))
    power = summary.get("power")
    sections = {
        f"Study: {summary['name']}": (
            f"<p>{html.escape(summary['model'])} on {html.escape(summary['dataset'])}; "
            f"{summary['runs_ended']}/{summary['runs_total']} runs ended. Mean ± sample standard "
            "deviation over each cell's completed seeds.</p>"
            + table_frame(summary["table"]).to_html(index=False)),
        f"Against {summary['reference']} ({'tuned per method' if summary['reading'] == 'tuned' else 'per cell'})": (
            f"<p>{html.escape(summary['statistics'])}</p>"
            + (f"<p>{html.escape(power_text(power))}</p>" if power else "")
            + comparisons_frame(summary["comparisons"]).to_html(index=False)
            + (tuning_frame(summary["tuning"]).to_html(index=False) if summary["tuning"] else "")),
        "Provenance": pd.DataFrame([{"what": k, "recorded": v} for k, v in provenance.items()]).to_html(index=False),
    }
    return html_report(f"Study {summary['id']}: {summary['name']}", figures(summary["table"], summary), rows,
                       sections)


def exports(wb, summary: dict, key: str = "studies") -> None:
    """A stored study's downloads, each saying what the page shows (its reading and reference)."""
    study_id = summary["id"]
    a, b, c, d = st.columns(4)
    a.download_button("Table as CSV", study_csv(summary["table"], summary["runs"]),
                      file_name=f"study-{study_id}.csv", mime="text/csv", icon=":material/table:", key=f"{key}.csv",
                      on_click="ignore")
    b.download_button("Comparisons as CSV", comparisons_csv(summary), file_name=f"study-{study_id}-comparisons.csv",
                      mime="text/csv", icon=":material/compare_arrows:", key=f"{key}.comparisons.csv",
                      on_click="ignore")
    c.download_button("Study (JSON)", json.dumps(summary, indent=2, default=str), file_name=f"study-{study_id}.json",
                      mime="application/json", icon=":material/download:", key=f"{key}.json", on_click="ignore",
                      help="What `python -m engine study show ID --json` prints, with this reading.")
    # Bytes built now, not a callable: a deferred one expires at the next rerun (ui/compare_views.export).
    d.download_button("Read-only report (HTML)", report(wb, summary).encode(), file_name=f"study-{study_id}.html",
                      mime="text/html", icon=":material/article:", key=f"{key}.html", on_click="ignore",
                      help="The Compare page's self-contained report of the study's runs, with this "
                           "table, its comparisons and provenance on top.")


# ---------------------------------------------------------------------- the view
def cells_view(summary: dict, reading_for: ReadingFor, key: str = "studies") -> dict | None:
    """The cells' table; each method against a reference the user picks, per cell or tuned
    per method (``reading_for(reference, tune)`` when not the summary's own), with intervals,
    Holm's correction, the test named and the power line; the charts; provenance and
    decisions. A note instead while no run has completed. Returns the summary as shown (its
    reading replaced by the one on screen), for the exports."""
    table = summary["table"]
    if not any(row["completed"] for row in table):
        st.info("No run of this study has completed yet: the table, the charts and the "
                "comparisons appear here as runs finish.")
        return None
    st.markdown("#### Every cell (mean ± standard deviation over its seeds)")
    st.dataframe(table_frame(table), hide_index=True, width="stretch", key=f"{key}.table")

    st.markdown("#### Each method against a reference")
    left, right = st.columns(2)
    tuned = left.toggle("Tune per method", value=summary["reading"] == "tuned", key=f"{key}.tuned.{summary['id']}",
                        help="Each method's best cell over the grid axes (learning rate, ...), chosen "
                             "on the validation split's mean over seeds, then compared on the test split. "
                             "Off: every cell against a reference cell.")
    reading = {k: summary.get(k) for k in READING_KEYS}
    if tuned != (summary["reading"] == "tuned"):
        reading = reading_for(None, tuned)
    labels = [reading["reference"], *(c["method"] for c in reading["comparisons"])]
    reference = right.selectbox("Compare against", [label for label in labels if label],
                                key=f"{key}.reference.{summary['id']}" + (".tuned" if tuned else ""))
    if reference != reading["reference"]:
        reading = reading_for(reference, tuned)
    for note in reading.get("notes") or []:
        st.warning(note, icon=":material/warning:")
    if reading["tuning"]:
        st.caption("Chosen per method on the validation split (mean over seeds):")
        st.dataframe(tuning_frame(reading["tuning"]), hide_index=True, width="stretch", key=f"{key}.tuning")
    st.dataframe(comparisons_frame(reading["comparisons"]), hide_index=True, width="stretch",
                 key=f"{key}.comparisons")
    tests = sorted({c["test"] for c in reading["comparisons"] if c["test"]})
    if tests:
        st.caption("Test: " + "; ".join(tests) + ".")
    if reading["power"]:
        st.info(power_text(reading["power"]), icon=":material/straighten:")
    st.caption(reading["statistics"])
    charts = figures(table, reading)
    if "differences" in charts:
        st.plotly_chart(charts.pop("differences"), key=f"{key}.differences.chart")
    st.markdown("#### Quality against cost")
    for tab, (name, figure) in zip(st.tabs([f"vs {name.split(' (')[0]}" for name in STUDY_COSTS.values()]), charts.items()):
        tab.plotly_chart(figure, key=f"{key}.{name}")
    st.caption("One point per cell at its mean, bars of one standard deviation; the dashed line "
               "joins the cells no other cell beats on both quality and cost (those are labelled; "
               "point at any other for its name). Peak memory on a CPU "
               "is the whole process's resident memory: compare memory on a GPU. Training time is "
               "each run's wall clock, scoring included; runs that shared a device ran slower.")
    provenance_view(summary.get("provenance"), key)
    decisions_view(summary, key)
    return {**summary, **reading}
