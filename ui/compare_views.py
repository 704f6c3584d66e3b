"""The Compare page's parts: the filters and the run picker, tags, and one function per tab.

Which runs are offered and kept chosen is the engine's (engine/compare.py); the series come
cached from ui/compare_data.py, the exports from ui/compare_report.py. ``Comparison`` carries
what every tab needs; the tabs add their figures to it, so the Export tab (drawn last) writes
the charts the page showed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import streamlit as st

from engine.compare import filter_options, filter_runs, kept_selection
from engine.errors import WorkbenchError
from engine.names import EVAL_PREFIX, LOSS
from ui.charts import (COST_BARS, METRIC_TITLES, RATE_SERIES, THROUGHPUT_BARS, bar_figure,
                       in_percent, quality_memory_figure, series_figure)
from ui.compare_data import display_series, metric_names
from ui.compare_report import (chart_images_zip, comparison_csv, html_report, results_frame,
                               settings_styler, utilisation_note)
from ui.state import MFU_HELP, run_label

FILTER_TITLES = {"dataset": "Dataset", "model": "Model", "method": "Method", "status": "Status",
                 "tag": "Tag"}


# ---------------------------------------------------------------------- which runs
def filtered(runs: list[dict]) -> list[dict]:
    """The filter boxes (empty: all) and the runs they allow."""
    options = filter_options(runs)
    with st.container(border=True):
        st.caption("Filter the runs to choose from (empty: all).")
        filters = {name: column.multiselect(FILTER_TITLES[name], options[name], key=f"compare.f.{name}")
                   for name, column in zip(FILTER_TITLES, st.columns(len(FILTER_TITLES)))}
    return filter_runs(runs, filters)


def pick_runs(candidates: list[dict], by_id: dict[int, dict]) -> list[int]:
    """The runs to compare. The selection lives in session state (no widget default): what
    the filters still allow is kept (engine.compare.kept_selection)."""
    ids = [run["id"] for run in candidates]
    st.session_state["compare.runs"] = kept_selection(st.session_state.get("compare.runs"), candidates)
    return st.multiselect("Runs", ids, key="compare.runs", format_func=lambda i: run_label(by_id[i]))


def tag_editor(wb, by_id: dict[int, dict]) -> None:
    with st.expander("Tag runs", icon=":material/sell:"):
        t_run, t_tags, t_save = st.columns([2, 3, 1], vertical_alignment="bottom")
        target = t_run.selectbox("Run", list(by_id), format_func=lambda i: run_label(by_id[i]),
                                 key="compare.tag.run")
        text = t_tags.text_input("Tags (comma-separated)", key=f"compare.tag.text.{target}",
                                 value=", ".join(by_id[target].get("tags") or []),
                                 placeholder="baseline, rank sweep")
        if t_save.button("Save tags", key="compare.tag.save"):
            try:
                saved = wb.tag_run(target, text)
                st.toast(f"Run #{target}: {', '.join(saved) or 'no tags'}")
                st.rerun()
            except WorkbenchError as error:
                st.error(str(error))


# ---------------------------------------------------------------------- the tabs
@dataclass
class Comparison:
    home: str  # the data home: part of the series cache's key
    chosen: list[int]
    by_id: dict[int, dict]  # every comparable run by id
    rows: list[dict]  # Workbench.compare_runs(chosen)
    x_axis: str  # "wall_time" or "step"
    figures: dict = field(default_factory=dict)  # name -> plotly figure, for the exports

    @property
    def labels(self) -> dict[int, str]:
        return {row["run"]: f"#{row['run']} {row['method']}" for row in self.rows}

    def series(self, name: str) -> dict[str, dict]:
        labels = self.labels
        return {labels[i]: display_series(self.home, i, self.by_id[i]["step"], name) for i in self.chosen}

    def names(self, run_id: int) -> list[str]:
        return metric_names(self.home, run_id, self.by_id[run_id]["step"])


def curves(c: Comparison) -> None:
    eval_names = sorted({n for i in c.chosen for n in c.names(i) if n.startswith(EVAL_PREFIX)})
    left, right = st.columns(2)
    c.figures["training_loss"] = series_figure(c.series(LOSS), "training loss", c.x_axis)
    left.plotly_chart(c.figures["training_loss"], key="compare.loss")
    if eval_names:
        primary = next((n for n in (f"{EVAL_PREFIX}wer", f"{EVAL_PREFIX}accuracy") if n in eval_names), eval_names[0])
        name = right.selectbox("Validation metric", eval_names, index=eval_names.index(primary),
                               key="compare.metric")
        c.figures["validation_metric"] = series_figure(c.series(name), METRIC_TITLES.get(name, name),
                                                       c.x_axis, percent=in_percent([name]))
        right.plotly_chart(c.figures["validation_metric"], key="compare.eval")
    else:
        right.info("No validation metric logged yet: runs evaluate every `eval_steps` and at the end.")


def costs(c: Comparison) -> None:
    grid = st.columns(2)
    for index, column in enumerate(COST_BARS):
        c.figures[column] = bar_figure(c.rows, column, c.labels)
        grid[index % 2].plotly_chart(c.figures[column], key=f"compare.bar.{column}")
    st.caption("Peak memory on a CPU is the resident memory of the whole process (libraries "
               "included); compare methods on a GPU for memory claims.")


def throughput(c: Comparison) -> None:
    logged = [name for name in RATE_SERIES if any(name in c.names(i) for i in c.chosen)]
    if logged:
        rate = st.selectbox("Plot", logged, format_func=RATE_SERIES.get, key="compare.rate")
        c.figures["throughput_curve"] = series_figure(c.series(rate), RATE_SERIES[rate], c.x_axis)
        st.plotly_chart(c.figures["throughput_curve"], key="compare.rate_chart")
    else:
        st.info("None of these runs logged throughput per step (runs trained before it was "
                "logged); the bars below work it out from steps, batch size and wall time.")
    for col, column in zip(st.columns(len(THROUGHPUT_BARS)), THROUGHPUT_BARS):
        if any(row[column] is not None for row in c.rows):
            c.figures[column] = bar_figure(c.rows, column, c.labels)
            col.plotly_chart(c.figures[column], key=f"compare.bar.{column}")
    if note := utilisation_note(c.rows, c.labels):
        st.info(note, icon=":material/speed:")
    st.caption("Means over each run's optimizer steps (samples/s: steps × batch × accumulation "
               "÷ wall time for a run that did not log it). " + MFU_HELP)


def tradeoff(c: Comparison) -> None:
    c.figures["quality_vs_memory"] = quality_memory_figure(c.rows, c.labels)
    st.plotly_chart(c.figures["quality_vs_memory"], key="compare.scatter")
    st.caption("Each point is a run. Towards the left is cheaper; for WER lower is better, for "
               "accuracy higher. The point of QLoRA: far left, about as good.")


def settings(c: Comparison) -> None:
    only_differing = st.toggle("Only settings that differ", key="compare.only_diff")
    st.dataframe(settings_styler(c.rows, only_differing), width="stretch", key="compare.settings")
    st.caption("Highlighted: settings that differ between the chosen runs.")
    st.dataframe(results_frame(c.rows), hide_index=True, width="stretch", key="compare.results",
                 column_config=percent_columns(c.rows))


def percent_columns(rows: list[dict]) -> dict:
    """The results' WER, CER and accuracy columns shown in percent (the CSV keeps fractions)."""
    percent = st.column_config.NumberColumn(format="percent")
    columns = {f"final_{name}" for row in rows for name in ("wer", "cer", "accuracy") if f"final_{name}" in row}
    if in_percent({row["metric"] for row in rows if row.get("metric")}):
        columns.add("final_metric")
    return {column: percent for column in columns}


def export(c: Comparison) -> None:
    """CSV, the HTML report and the chart images of what the other tabs drew.

    Each file is built before its button is drawn and handed over as bytes, never as a
    callable: Streamlit keeps a deferred callable only until the next rerun, so a click
    soon after another download found it gone ("Deferred file … not found") and nothing
    came. ``on_click="ignore"``: a download does not rerun the page either."""
    st.download_button("Comparison as CSV", comparison_csv(c.rows), file_name="comparison.csv",
                       mime="text/csv", icon=":material/table:", key="compare.csv", on_click="ignore")
    title = f"Comparison of runs {', '.join(c.labels.values())}"
    st.download_button("Read-only report (HTML)", html_report(title, c.figures, c.rows).encode(),
                       file_name="comparison.html", mime="text/html", icon=":material/article:",
                       key="compare.html", on_click="ignore", help="One self-contained page with "
                       "every chart (works offline): for a slide or a lab report.")
    if st.button("Render charts as PNG and SVG", icon=":material/image:", key="compare.images"):
        with st.spinner("Rendering the charts with a headless browser…"):
            try:
                st.session_state["compare.images.zip"] = (c.chosen, chart_images_zip(c.figures))
            except Exception as error:  # kaleido needs a Chrome; say what is missing
                st.error(f"Could not render images: {error}. kaleido needs Chrome or Chromium "
                         "(set BROWSER_PATH); each chart's camera icon still saves a PNG.")
    rendered_for, images = st.session_state.get("compare.images.zip", (None, None))
    if rendered_for == c.chosen:  # images of another selection would mislead
        st.download_button("Charts (PNG + SVG, zip)", images,
                           file_name="comparison-charts.zip", mime="application/zip",
                           key="compare.images.download", on_click="ignore")


TABS = {"Curves": curves, "Costs": costs, "Throughput": throughput, "Less is more": tradeoff,
        "Settings": settings, "Export": export}  # Export last: it writes the others' figures
