"""The log-in gate and per-user pages (issue 17) through AppTest: two browser sessions are two
AppTest instances on one data home and one engine."""

from __future__ import annotations

import time
from pathlib import Path

import markdown_it
import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")
PASSWORDS = {"ada": "correct horse battery", "bob": "staple gun sunrise", "carol": "plum orchard winter"}


@pytest.fixture(autouse=True)
def app_py_runs_every_time(monkeypatch):
    """Run app.py (the gate) on every AppTest run, as the server does. AppTest resets Streamlit's
    "pages/ folder" flag before each run, so with a pages/ folder it runs the page alone after
    the first run; the server clears that flag for good at the first ``st.navigation`` call."""
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.testing.v1 import app_test

    class NavigationPagesManager(PagesManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            PagesManager.uses_pages_directory = False

    monkeypatch.setattr(app_test, "PagesManager", NavigationPagesManager)
    yield
    PagesManager.uses_pages_directory = None


@pytest.fixture
def auth_home(demo_home, monkeypatch):
    """A demo home with LIM_AUTH=on, ada (the admin), bob and carol; bob has a cancelled run."""
    from engine import Workbench
    from ui.state import shutdown_workbenches

    monkeypatch.setenv("LIM_AUTH", "on")
    workbench = Workbench(demo_home)
    users = {name: workbench.sign_up(name, password) for name, password in PASSWORDS.items()}
    bob = workbench.for_user(users["bob"])
    run_id = bob.submit_run("demo-text", "tiny-bert", "lora", {}, {"max_steps": 2})
    bob.cancel_run(run_id)  # kept, never trained: the app's worker has nothing to take
    yield {"users": users, "bob_run": run_id}
    shutdown_workbenches()


def session() -> AppTest:
    return AppTest.from_file(APP, default_timeout=60)


def click(app: AppTest, label: str) -> AppTest:
    [button] = [b for b in app.button if b.label == label]
    button.click().run()
    assert not app.exception, app.exception
    return app


def log_in(app: AppTest, name: str, password: str | None = None) -> AppTest:
    app.run()
    app.text_input(key="auth.log_in.name").input(name)
    app.text_input(key="auth.log_in.password").input(password or PASSWORDS[name])
    return click(app, "Log in")


def idle(home, seconds: float) -> None:
    """Every log-in session of the data home was last seen ``seconds`` earlier."""
    from storage import Storage

    storage = Storage(home)
    with storage.atomic() as db:
        db.execute("update login_sessions set last_seen_at = last_seen_at - ?", [seconds])
    storage.close()


def on_log_in_page(app: AppTest) -> bool:
    return any(t.key == "auth.log_in.name" for t in app.text_input)


def test_sign_up_log_in_log_out(demo_home, monkeypatch):
    from ui.state import shutdown_workbenches

    monkeypatch.setenv("LIM_AUTH", "on")
    app = session()
    app.run()
    assert on_log_in_page(app) and "first account becomes the admin" in app.caption[0].value
    app.text_input(key="auth.sign_up.name").input("ada")
    app.text_input(key="auth.sign_up.password").input("short")
    app.text_input(key="auth.sign_up.again").input("short")
    click(app, "Sign up")
    assert "at least 10 characters" in app.error[0].value and on_log_in_page(app)
    app.text_input(key="auth.sign_up.password").input(PASSWORDS["ada"])
    app.text_input(key="auth.sign_up.again").input(PASSWORDS["ada"])
    click(app, "Sign up")
    assert not on_log_in_page(app)
    assert any("Logged in as **ada** (admin)" in c.value for c in app.sidebar.caption)
    click(app, "Log out")
    assert on_log_in_page(app) and app.info[0].value == "You logged out."

    log_in(app, "ada", "not the password at all")
    assert app.error[0].value == "wrong username or password" and on_log_in_page(app)
    app.text_input(key="auth.log_in.password").input(PASSWORDS["ada"])
    click(app, "Log in")
    assert not on_log_in_page(app)
    shutdown_workbenches()


def test_pages_show_each_session_only_its_own_runs(auth_home):
    run_id = auth_home["bob_run"]
    carol = log_in(session(), "carol")
    carol.switch_page("pages/training.py").run()
    assert not carol.exception
    assert any(i.value.startswith("No runs yet") for i in carol.info)
    carol.switch_page("pages/compare.py").run()
    assert not carol.exception and f"#{run_id}" not in str(carol)

    bob = log_in(session(), "bob")
    bob.switch_page("pages/training.py").run()
    assert not bob.exception
    assert bob.selectbox(key="train.watch_select").value == run_id
    # A guessed id in carol's session is not shown either: the page picks among her runs only.
    carol.session_state["train.watch_select"] = run_id
    carol.switch_page("pages/training.py").run()
    assert not carol.exception and not [s for s in carol.selectbox if s.key == "train.watch_select"]


def test_an_idle_session_is_logged_out(auth_home, demo_home):
    app = log_in(session(), "bob")
    assert not on_log_in_page(app)
    idle(demo_home, 61 * 60)  # default timeout: 60 minutes
    app.run()
    assert on_log_in_page(app)
    assert "logged out after 60 minutes without activity" in app.info[0].value


def test_admin_disables_an_account_and_its_open_session_ends(auth_home):
    bob = log_in(session(), "bob")
    ada = log_in(session(), "ada")
    ada.switch_page("pages/account.py").run()
    assert not ada.exception
    ada.selectbox(key="account.users.name").select("bob").run()
    click(ada, "Disable bob")
    bob.run()
    assert on_log_in_page(bob) and "disabled" in bob.info[0].value
    log_in(bob, "bob")
    assert "disabled" in bob.error[0].value


def test_with_signup_admin_the_admin_adds_a_user_on_the_account_page(auth_home, monkeypatch):
    monkeypatch.setenv("LIM_SIGNUP", "admin")
    visitor = session()
    visitor.run()
    assert on_log_in_page(visitor) and not any(t.key == "auth.sign_up.name" for t in visitor.text_input)
    assert any("made by an admin" in i.value for i in visitor.info)
    ada = log_in(session(), "ada")
    ada.switch_page("pages/account.py").run()
    assert not ada.exception
    ada.text_input(key="account.users.add.name").input("dora")
    ada.text_input(key="account.users.add.password").input("short")
    click(ada, "Add user")
    assert "at least 10 characters" in ada.error[0].value
    ada.text_input(key="account.users.add.name").input("dora")
    ada.text_input(key="account.users.add.password").input("violet canal music")
    click(ada, "Add user")
    assert any("Added dora" in m.value for m in ada.success)
    assert "dora" in ada.dataframe[0].value["name"].tolist()
    dora = log_in(session(), "dora", "violet canal music")
    assert not on_log_in_page(dora)
    bob = log_in(session(), "bob")
    bob.switch_page("pages/account.py").run()
    assert not any(t.key == "account.users.add.name" for t in bob.text_input)  # admins only


def test_the_account_page_shares_an_item_read_only(auth_home):
    bob = log_in(session(), "bob")
    bob.switch_page("pages/account.py").run()
    assert not bob.exception
    bob.multiselect(key="account.share.run").select(auth_home["bob_run"])
    click(bob, "Save sharing")
    assert bob.success[0].value == "Sharing saved."
    carol = log_in(session(), "carol")
    carol.switch_page("pages/training.py").run()
    assert not carol.exception
    assert carol.selectbox(key="train.watch_select").value == auth_home["bob_run"]


def test_dataset_text_is_shown_escaped():
    from ui.state import md_text

    hostile = "<img src=x onerror=alert(1)> [win](javascript:alert(1)) ![t](http://x/t.png) :red[x] **b**"
    html = markdown_it.MarkdownIt().render(f"**{md_text(hostile)}**")
    assert "<img" not in html and "<a " not in html and "<em>" not in html
    assert "&lt;img src=x onerror=alert(1)&gt; [win](javascript:alert(1))" in html


def test_the_account_page_shares_a_study_with_its_runs(auth_home, demo_home):
    from engine import Workbench
    from engine.studies import Grid

    bobs = Workbench(demo_home).for_user(auth_home["users"]["bob"])
    study_id = bobs.submit_study("demo-text", "tiny-bert", Grid(["lora"], seeds=[1, 2]), {"max_steps": 2},
                                 name="bob's grid")
    bobs.stop_study(study_id)  # cancelled, never trained: the app's worker has nothing to take
    study_runs = [r["id"] for r in bobs.study_runs(study_id)]

    carol = log_in(session(), "carol")
    carol.switch_page("pages/studies.py").run()
    assert not carol.exception and any(i.value.startswith("No studies yet") for i in carol.info)

    bob = log_in(session(), "bob")
    bob.switch_page("pages/account.py").run()
    assert not bob.exception
    bob.multiselect(key="account.share.study").select(study_id)
    click(bob, "Save sharing")
    assert bob.success[0].value == "Sharing saved."
    # The study's runs were shared with it, and the run list says so (read again, not kept).
    assert bob.multiselect(key="account.share.study").value == [study_id]
    assert set(bob.multiselect(key="account.share.run").value) == set(study_runs)

    carol.switch_page("pages/studies.py").run()
    assert not carol.exception
    assert carol.selectbox(key="studies.chosen").value == study_id
    assert any(c.value == "Shared by **bob**: read-only here." for c in carol.caption)
    assert not [b for b in carol.button if b.label.startswith("Delete study")]
    bob.switch_page("pages/studies.py").run()
    assert not bob.exception and [b for b in bob.button if b.label == "Delete study…"]


def test_the_server_path_import_is_offered_only_to_an_admin_with_import_roots(auth_home, monkeypatch, tmp_path):
    monkeypatch.setenv("LIM_IMPORT_ROOTS", str(tmp_path))
    choices = {}
    for name in ("bob", "ada"):
        app = log_in(session(), name)
        app.switch_page("pages/datasets.py").run()
        [source] = [r for r in app.radio if r.key == "datasets.import.from"]
        choices[name] = list(source.options)
    assert choices["bob"] == ["Upload a file"]
    assert choices["ada"] == ["Upload a file", "A folder or file on this machine"]
