"""Every page (app.py's Home and each file in pages/) through AppTest, once on an empty data home
and once on a populated one (the demo datasets and models, a run trained for real, a finished
study): no exception, and each page shows its friendly empty state or the item's name.

One data home per state serves every page (module scope): the run trains once."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import copy_home
from streamlit.testing.v1 import AppTest
from test_pages import finished_run
from test_studies_page import seed_study

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
PAGES = sorted(f"pages/{page.name}" for page in (ROOT / "pages").glob("*.py"))
RUN = "#{run} qlora · tiny-whisper on demo-speech"  # a run's label (ui.state.run_label)
# page -> (what it says on an empty home, what it shows on the populated one)
SIGNS = {
    "pages/home.py": ("No datasets yet", "demo-speech"),
    "pages/datasets.py": ("No datasets yet. Import your own below", "demo-speech"),
    "pages/models.py": ("No models yet.", "tiny-whisper"),
    "pages/methods.py": ("Register a model (or run `python -m engine demo`)", "tiny-whisper"),
    "pages/training.py": ("No runs yet. Open **New run** below", RUN),
    "pages/compare.py": ("Nothing to compare yet", RUN),
    "pages/studies.py": ("No studies yet", "{study}"),
    "pages/playground.py": ("No model yet", RUN),
    # Single-user mode has no account to show, whatever the data home holds.
    "pages/account.py": ("Single-user mode (LIM_AUTH=off)", "Single-user mode (LIM_AUTH=off)"),
}


@pytest.fixture(scope="module", params=["empty", "populated"])
def data_home(request, tmp_path_factory, demo_template):
    """``(state, {"run": id, "study": name})`` with ``LIM_HOME`` set to a data home in that state."""
    from engine import Workbench
    from ui.state import shutdown_workbenches

    path = tmp_path_factory.mktemp(request.param) / "home"
    names = {}
    if request.param == "populated":
        copy_home(demo_template, path)
        names["run"] = finished_run(path)  # qlora, tiny-whisper, demo-speech: a few real steps
        study = Workbench(path).get_study(seed_study(path))
        names["study"] = study["name"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIM_HOME", str(path))
        yield request.param, names
        shutdown_workbenches()


def page_text(app: AppTest) -> str:
    """Everything a page wrote: text elements, widget labels and choices, tables, metrics."""
    parts = []
    for kind in ("title", "subheader", "markdown", "caption", "info", "warning", "success", "error"):
        parts += [element.value for element in app.get(kind)]
    for widget in (*app.selectbox, *app.multiselect, *app.radio):
        parts += [widget.label, *map(str, widget.options)]
    parts += [frame.value.to_string() for frame in app.dataframe]
    parts += [f"{metric.label} {metric.value}" for metric in app.metric]
    return "\n".join(parts)


@pytest.mark.parametrize("page", ["app.py", *PAGES])
def test_every_page_renders_empty_and_populated(data_home, page):
    state, names = data_home
    app = AppTest.from_file(APP, default_timeout=120)
    app.run()
    if page != "app.py":  # app.py itself renders Home
        app.switch_page(page).run()
    assert not app.exception, app.exception
    empty, populated = SIGNS["pages/home.py" if page == "app.py" else page]
    text = page_text(app)
    if state == "empty":
        assert empty in text
    else:
        assert populated.format(**names) in text
        assert empty not in text or empty == populated
