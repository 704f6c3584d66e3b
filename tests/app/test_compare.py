"""The Compare page on seeded runs: selection, filters, tags, charts, highlighted settings, CSV."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pandas as pd
import pytest
from seeded_runs import SEEDED, STEPS, seed_runs
from page_fixtures import downloads  # noqa: F401  (a fixture)
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
    assert len(charts) == 2 + 5 + 1  # loss + metric curves, five bars, the scatter
    assert app.selectbox(key="compare.metric").value == "eval/wer"
    results = results_table(app).value
    assert results["method"].tolist() == ["full", "lora", "qlora"]
    assert results["adapter_bytes"].tolist() == [90_000, 8_000, 4_000]
    # No samples/s metric was logged: throughput is steps x batch / wall time.
    assert results["samples_per_second"].tolist() == pytest.approx([STEPS * 4 / (STEPS * 0.5)] * 3)


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
    with zipfile.ZipFile(io.BytesIO(downloads["comparison-charts.zip"])) as archive:
        names = set(archive.namelist())
        charts = {"training_loss", "validation_metric", "peak_memory_mb", "trainable_params",
                  "adapter_bytes", "samples_per_second", "final_metric", "quality_vs_memory"}
        assert names == {f"{c}.{fmt}" for c in charts for fmt in ("png", "svg")}
        assert archive.read("quality_vs_memory.png").startswith(b"\x89PNG")
        svg = archive.read("peak_memory_mb.svg").decode()
        assert svg.startswith("<svg") and f"#{ids[0]} qlora" in svg
