"""Compare: pick runs, see what each bought (quality) and what it cost (memory, time, size)."""

import streamlit as st

from engine.errors import WorkbenchError
from ui.charts import (COST_BARS, METRIC_TITLES, RATE_SERIES, THROUGHPUT_BARS, bar_figure,
                       quality_memory_figure, series_figure)
from ui.compare_data import display_series, metric_names
from ui.compare_report import (chart_images_zip, comparison_csv, html_report, results_frame,
                               settings_styler, utilisation_note)
from ui.state import MFU_HELP, get_workbench, run_label

wb = get_workbench()
home = str(wb.home)
st.title("Compare runs")

runs = [r for r in wb.list_runs() if r["step"]]
if not runs:
    st.info("Nothing to compare yet: runs appear here once they have trained a step. "
            "Start one on the **Training** page.")
    st.stop()


# ---------------------------------------------------------------------- which runs
def choices(column: str) -> list:
    return sorted({r[column] for r in runs if r[column]})


with st.container(border=True):
    st.caption("Filter the runs to choose from (empty: all).")
    f_dataset, f_model, f_method, f_status, f_tag = st.columns(5)
    datasets = f_dataset.multiselect("Dataset", choices("dataset_name"), key="compare.f.dataset")
    models = f_model.multiselect("Model", choices("model_name"), key="compare.f.model")
    methods = f_method.multiselect("Method", choices("method"), key="compare.f.method")
    statuses = f_status.multiselect("Status", choices("status"), key="compare.f.status")
    tags = f_tag.multiselect("Tag", sorted({t for r in runs for t in r.get("tags") or []}),
                             key="compare.f.tag")

candidates = [r for r in runs
              if (not datasets or r["dataset_name"] in datasets) and (not models or r["model_name"] in models)
              and (not methods or r["method"] in methods) and (not statuses or r["status"] in statuses)
              and (not tags or set(tags) & set(r.get("tags") or []))]
if not candidates:
    st.info("No run matches these filters.")
    st.stop()
ids = [r["id"] for r in candidates]
by_id = {r["id"]: r for r in runs}
default = [r["id"] for r in candidates if r["status"] == "completed"][:3] or ids[:2]
# The selection lives in session state (no widget default): keep what the filters still
# allow, and start again from the default when they removed every chosen run.
previous = st.session_state.get("compare.runs")
selection = default if previous is None else [i for i in previous if i in ids]
st.session_state["compare.runs"] = selection if selection or not previous else default
chosen = st.multiselect("Runs", ids, key="compare.runs", format_func=lambda i: run_label(by_id[i]))

with st.expander("Tag runs", icon=":material/sell:"):
    t_run, t_tags, t_save = st.columns([2, 3, 1], vertical_alignment="bottom")
    tag_target = t_run.selectbox("Run", list(by_id), format_func=lambda i: run_label(by_id[i]),
                                 key="compare.tag.run")
    tag_text = t_tags.text_input("Tags (comma-separated)", key=f"compare.tag.text.{tag_target}",
                                 value=", ".join(by_id[tag_target].get("tags") or []),
                                 placeholder="baseline, rank sweep")
    if t_save.button("Save tags", key="compare.tag.save"):
        try:
            saved = wb.tag_run(tag_target, tag_text)
            st.toast(f"Run #{tag_target}: {', '.join(saved) or 'no tags'}")
            st.rerun()
        except WorkbenchError as error:
            st.error(str(error))

if not chosen:
    st.info("Pick at least one run.")
    st.stop()

rows = wb.compare_runs(chosen)
labels = {row["run"]: f"#{row['run']} {row['method']}" for row in rows}


def series_of(name: str) -> dict[str, dict]:
    return {labels[i]: display_series(home, i, by_id[i]["step"], name) for i in chosen}


# ---------------------------------------------------------------------- charts
figures = {}
x_axis = st.radio("x axis of the curves", ["wall_time", "step"], horizontal=True, key="compare.x",
                  format_func={"wall_time": "wall time", "step": "step"}.get)
curves, costs, speed, tradeoff, settings_tab, export = st.tabs(
    ["Curves", "Costs", "Throughput", "Less is more", "Settings", "Export"])

with curves:
    eval_names = sorted({n for i in chosen for n in metric_names(home, i, by_id[i]["step"])
                         if n.startswith("eval/")})
    left, right = st.columns(2)
    figures["training_loss"] = series_figure(series_of("train/loss"), "training loss", x_axis)
    left.plotly_chart(figures["training_loss"], key="compare.loss")
    if eval_names:
        primary = next((n for n in ("eval/wer", "eval/accuracy") if n in eval_names), eval_names[0])
        name = right.selectbox("Validation metric", eval_names, index=eval_names.index(primary),
                               key="compare.metric")
        figures["validation_metric"] = series_figure(series_of(name), METRIC_TITLES.get(name, name),
                                                     x_axis)
        right.plotly_chart(figures["validation_metric"], key="compare.eval")
    else:
        right.info("No validation metric logged yet: runs evaluate every `eval_steps` and at the end.")

with costs:
    grid = st.columns(2)
    for index, column in enumerate(COST_BARS):
        figures[column] = bar_figure(rows, column, labels)
        grid[index % 2].plotly_chart(figures[column], key=f"compare.bar.{column}")
    st.caption("Peak memory on a CPU is the resident memory of the whole process (libraries "
               "included); compare methods on a GPU for memory claims.")

with speed:
    logged = [name for name in RATE_SERIES
              if any(name in metric_names(home, i, by_id[i]["step"]) for i in chosen)]
    if logged:
        rate = st.selectbox("Plot", logged, format_func=RATE_SERIES.get, key="compare.rate")
        figures["throughput_curve"] = series_figure(series_of(rate), RATE_SERIES[rate], x_axis)
        st.plotly_chart(figures["throughput_curve"], key="compare.rate_chart")
    else:
        st.info("None of these runs logged throughput per step (runs trained before it was "
                "logged); the bars below work it out from steps, batch size and wall time.")
    for col, column in zip(st.columns(len(THROUGHPUT_BARS)), THROUGHPUT_BARS):
        if any(row[column] is not None for row in rows):
            figures[column] = bar_figure(rows, column, labels)
            col.plotly_chart(figures[column], key=f"compare.bar.{column}")
    if note := utilisation_note(rows, labels):
        st.info(note, icon=":material/speed:")
    st.caption("Means over each run's optimizer steps (samples/s: steps × batch × accumulation "
               "÷ wall time for a run that did not log it). " + MFU_HELP)

with tradeoff:
    figures["quality_vs_memory"] = quality_memory_figure(rows, labels)
    st.plotly_chart(figures["quality_vs_memory"], key="compare.scatter")
    st.caption("Each point is a run. Towards the left is cheaper; for WER lower is better, for "
               "accuracy higher. The point of QLoRA: far left, about as good.")

with settings_tab:
    only_differing = st.toggle("Only settings that differ", key="compare.only_diff")
    st.dataframe(settings_styler(rows, only_differing), width="stretch", key="compare.settings")
    st.caption("Highlighted: settings that differ between the chosen runs.")
    st.dataframe(results_frame(rows), hide_index=True, width="stretch", key="compare.results")

with export:
    st.download_button("Comparison as CSV", comparison_csv(rows), file_name="comparison.csv",
                       mime="text/csv", icon=":material/table:", key="compare.csv")
    st.download_button("Read-only report (HTML)", lambda: html_report(
                           f"Comparison of runs {', '.join(labels.values())}", figures, rows),
                       file_name="comparison.html", mime="text/html", icon=":material/article:",
                       key="compare.html", help="One self-contained page with every chart "
                       "(works offline): for a slide or a lab report.")
    if st.button("Render charts as PNG and SVG", icon=":material/image:", key="compare.images"):
        with st.spinner("Rendering the charts with a headless browser…"):
            try:
                st.session_state["compare.images.zip"] = (chosen, chart_images_zip(figures))
            except Exception as error:  # kaleido needs a Chrome; say what is missing
                st.error(f"Could not render images: {error}. kaleido needs Chrome or Chromium "
                         "(set BROWSER_PATH); each chart's camera icon still saves a PNG.")
    rendered_for, images = st.session_state.get("compare.images.zip", (None, None))
    if rendered_for == chosen:  # images of another selection would mislead
        st.download_button("Charts (PNG + SVG, zip)", images,
                           file_name="comparison-charts.zip", mime="application/zip",
                           key="compare.images.download")
