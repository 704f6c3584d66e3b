"""The Compare page on seeded runs: selection, filters, tags, charts, highlighted settings, CSV."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pandas as pd
import pytest
from seeded_runs import CLIP_SECONDS, SEEDED, THROUGHPUT, seed_runs
from page_fixtures import assert_built_before_offered, downloads  # noqa: F401  (a fixture)
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture
def compare(demo_home):
    from ui.state import shutdown_workbenches

    ids = seed_runs(demo_home)
    app = AppTest.from_file(APP, default_timeout=60)
    app.run()
    app.switch_page("pages/compare.py").run()
    assert not app.exception, app.exception
    yield app, ids
    shutdown_workbenches()


def chart_spec(app: AppTest, key: str) -> dict:
    import json

    [chart] = [c for c in app.get("plotly_chart") if key in c.proto.id]
    return json.loads(chart.proto.spec)


def settings_table(app: AppTest):
    return app.dataframe[0]  # the Settings tab: settings first, then results


def results_table(app: AppTest):
    return app.dataframe[1]


def highlighted_settings(app: AppTest) -> set[str]:
    table = settings_table(app)
    css = table.proto.arrow_data.styler.styles
    rows = {int(n) for n in re.findall(r"_row(\d+)_col\d+", css.split("{")[0])}
    return {table.value.index[row] for row in rows}


def test_chosen_runs_get_every_chart(compare):
    app, ids = compare
    assert app.multiselect(key="compare.runs").value == ids[::-1][:3]
    charts = app.get("plotly_chart")
    # loss + metric curves, four cost bars, a throughput curve + three bars, the scatter
    assert len(charts) == 2 + 4 + 1 + 3 + 1
    assert app.selectbox(key="compare.metric").value == "eval/wer"
    results = results_table(app).value
    assert results["method"].tolist() == ["full", "lora", "qlora"]
    assert results["adapter_bytes"].tolist() == [90_000, 8_000, 4_000]
    # The logged samples/s (mean over steps), not steps x batch / wall time (which is 8 here).
    assert results["samples_per_second"].tolist() == [40.0, 30.0, 20.0]
    assert results["audio_hours_per_hour"].tolist() == [THROUGHPUT[m][0] * CLIP_SECONDS for m in ("full", "lora", "qlora")]
    assert results["mfu"].tolist() == ["12.5 %", "n/a on CPU", "n/a on CPU"]
    assert results["device"].tolist() == ["GPU", "CPU", "CPU"]


def test_throughput_and_utilisation_are_plotted_per_run(compare):
    app, ids = compare
    rate = app.selectbox(key="compare.rate")
    assert rate.options == ["training samples / s", "audio-hours per hour", "achieved model TFLOP/s",
                            "model-FLOPs utilisation (%)"]
    assert rate.value == "train/samples_per_s"
    curve = chart_spec(app, "compare.rate_chart")
    assert {trace["name"]: set(trace["y"]) for trace in curve["data"]} == {
        f"#{ids[2]} full": {40.0}, f"#{ids[1]} lora": {30.0}, f"#{ids[0]} qlora": {20.0}}
    assert curve["layout"]["xaxis"]["title"]["text"] == "wall time (s)"

    app.radio(key="compare.x").set_value("step").run()
    app.selectbox(key="compare.rate").select("train/mfu_percent").run()
    curve = chart_spec(app, "compare.rate_chart")
    assert curve["layout"]["xaxis"]["title"]["text"] == "step"
    assert [trace["name"] for trace in curve["data"] if trace.get("y")] == [f"#{ids[2]} full"]

    bars = chart_spec(app, "compare.bar.samples_per_second")["data"][0]
    assert list(bars["y"]) == [THROUGHPUT[m][0] for m in ("full", "lora", "qlora")]
    assert list(chart_spec(app, "compare.bar.mfu_percent")["data"][0]["y"]) == [12.5]  # GPU run only
    note = next(i.value for i in app.info if "Utilisation" in i.value)
    assert f"#{ids[0]} qlora n/a on CPU" in note and f"#{ids[1]} lora n/a on CPU" in note


def test_utilisation_says_na_on_cpu_when_no_run_has_it(compare):
    app, ids = compare
    app.multiselect(key="compare.runs").set_value(ids[:2]).run()  # the two CPU runs
    assert not app.exception
    keys = {chart.proto.id for chart in app.get("plotly_chart")}
    assert not any("mfu_percent" in key for key in keys)
    assert any("n/a on CPU" in i.value for i in app.info)
    assert results_table(app).value["mfu"].tolist() == ["n/a on CPU", "n/a on CPU"]


def test_settings_that_differ_are_highlighted(compare):
    app, _ = compare
    table = settings_table(app).value
    differing = {name for name, values in table.iterrows() if values.nunique() > 1}
    assert {"training.learning_rate", "method.r"} <= differing
    assert "training.seed" not in differing
    assert highlighted_settings(app) == differing

    app.toggle(key="compare.only_diff").set_value(True).run()
    assert set(settings_table(app).value.index) == differing


def test_filters_and_tags_narrow_the_choice(compare, demo_home):
    app, ids = compare
    app.multiselect(key="compare.f.method").select("lora").run()
    assert app.multiselect(key="compare.runs").options == [f"#{ids[1]} lora · tiny-whisper on demo-speech (completed)"]
    app.multiselect(key="compare.f.method").unselect("lora").run()

    app.multiselect(key="compare.f.tag").select("baseline").run()
    assert app.multiselect(key="compare.runs").value == [ids[2], ids[0]]

    app.selectbox(key="compare.tag.run").select(ids[1]).run()
    app.text_input(key=f"compare.tag.text.{ids[1]}").input("baseline, r16").run()
    app.button(key="compare.tag.save").click().run()
    assert not app.exception
    from engine import Workbench

    assert Workbench(demo_home).get_run(ids[1])["tags"] == ["baseline", "r16"]
    assert len(app.multiselect(key="compare.runs").options) == 3  # now it is a baseline too


def test_csv_download_holds_every_chosen_run(compare, downloads):
    app, ids = compare
    app.multiselect(key="compare.runs").unselect(ids[1]).run()
    frame = pd.read_csv(io.BytesIO(downloads["comparison.csv"]))
    assert frame["run"].tolist() == [ids[2], ids[0]]
    assert frame["final_wer"].tolist() == [SEEDED[2][3], SEEDED[0][3]]
    assert frame["peak_memory_mb"].tolist() == [SEEDED[2][4], SEEDED[0][4]]
    assert frame["training.learning_rate"].tolist() == [1e-4, 1e-3]
    assert frame["tags"].tolist() == ["baseline", "baseline"]


def test_every_download_is_built_before_it_is_offered(downloads, compare):  # the spy first
    """The HTML report came from a callable that expired at the next rerun: clicked soon after
    the CSV, nothing came (MediaFileStorageError: Deferred file … not found)."""
    app, ids = compare
    labels = [b.proto.label for b in assert_built_before_offered(app)]
    assert labels == ["Comparison as CSV", "Read-only report (HTML)"]
    report = downloads["comparison.html"].decode()
    assert report.startswith("<!doctype html>") and all(f">{run_id}<" in report for run_id in ids)


def test_wer_is_shown_in_percent_with_its_split(compare):
    """One format for WER everywhere (issue 27): the final scores in percent, named by split."""
    import json

    app, ids = compare
    bars = chart_spec(app, "compare.bar.final_metric")
    assert list(bars["data"][0]["text"]) == ["38.0%", "40.0%", "42.0%"]  # full, lora, qlora
    assert bars["layout"]["yaxis"]["tickformat"] == ".0%"
    assert bars["layout"]["title"]["text"] == "Final WER (test split; validation without one)"
    assert chart_spec(app, "compare.eval")["layout"]["yaxis"]["tickformat"] == ".0%"
    shown = json.loads(results_table(app).proto.columns)
    assert {name for name, config in shown.items() if config.get("type_config", {}).get("format") == "percent"} \
        >= {"final_metric", "final_wer", "final_cer"}


def test_html_report_is_self_contained(compare):
    from engine import Workbench
    from ui.charts import bar_figure
    from ui.compare_report import html_report

    _, ids = compare
    rows = Workbench().compare_runs(ids)
    labels = {row["run"]: f"#{row['run']}" for row in rows}
    report = html_report("three runs", {"memory": bar_figure(rows, "peak_memory_mb", labels)}, rows)
    assert "<script src=" not in report  # plotly.js is embedded: works offline
    assert "Plotly.newPlot" in report and "fff3b0" in report
    assert all(f">{run_id}<" in report for run_id in ids)


def test_compare_page_is_friendly_when_filters_match_nothing(compare):
    app, _ = compare
    app.multiselect(key="compare.f.status").select("completed").run()
    app.multiselect(key="compare.runs").set_value([]).run()
    assert any("Pick at least one run" in i.value for i in app.info)


def test_every_chart_renders_to_png_and_svg(compare, downloads):
    import zipfile

    app, ids = compare
    app.multiselect(key="compare.runs").set_value(ids[:2]).run()
    app.button(key="compare.images").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert_built_before_offered(app)
    with zipfile.ZipFile(io.BytesIO(downloads["comparison-charts.zip"])) as archive:
        names = set(archive.namelist())
        charts = {"training_loss", "validation_metric", "peak_memory_mb", "trainable_params",
                  "adapter_bytes", "final_metric", "throughput_curve", "samples_per_second",
                  "achieved_tflops", "quality_vs_memory"}  # no utilisation: both ran on a CPU
        assert names == {f"{c}.{fmt}" for c in charts for fmt in ("png", "svg")}
        assert archive.read("quality_vs_memory.png").startswith(b"\x89PNG")
        svg = archive.read("peak_memory_mb.svg").decode()
        assert svg.startswith("<svg") and f"#{ids[0]} qlora" in svg


def test_quality_against_memory_starts_both_axes_at_zero(compare):
    app, _ = compare
    layout = chart_spec(app, "compare.scatter")["layout"]
    assert layout["xaxis"]["rangemode"] == "tozero" and layout["yaxis"]["rangemode"] == "tozero"


def test_close_memory_peaks_are_labelled_as_close():
    from ui.charts import quality_memory_figure

    rows = [{"run": i, "method": m, "final_metric": 0.4, "metric": "wer", "peak_memory_mb": peak}
            for i, (m, peak) in enumerate([("lora", 1590.0), ("qlora", 1596.0)])]
    figure = quality_memory_figure(rows, {0: "#0 lora", 1: "#1 qlora"})
    assert "within 0.4 %" in figure.layout.title.text
