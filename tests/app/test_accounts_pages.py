"""The log-in gate and per-user pages (issue 17) through AppTest: two browser sessions are two
AppTest instances on one data home and one engine."""

from __future__ import annotations

import re
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


# ---------------------------------------------------------------- log-in sessions and links (issue 27)
def cookie_route(workbench):
    """The route server.py mounts, as a function of a request's query and cookies."""
    from starlette.requests import Request

    from ui.session_cookie import routes

    [route] = routes(lambda: workbench)

    def get(query: str, cookies: str = ""):
        return route.endpoint(Request({
            "type": "http", "method": "GET", "scheme": "http", "path": route.path, "root_path": "",
            "query_string": query.encode(), "headers": [(b"cookie", cookies.encode())] if cookies else [],
            "server": ("127.0.0.1", 8501)}))
    return get


def set_cookie(response) -> dict:
    """The Set-Cookie header's name=value and flags."""
    [header] = [v.decode() for k, v in response.raw_headers if k == b"set-cookie"]
    first, *flags = [part.strip() for part in header.split(";")]
    return {"value": first.split("=", 1)[1], **{f.split("=")[0].lower(): (f.split("=") + [True])[1] for f in flags}}


def xsrf_cookie(secret: bytes, mask: bytes) -> str:
    """Streamlit's XSRF cookie text: the same secret under a new mask on every page load."""
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(secret))
    return f"2|{mask.hex()}|{masked.hex()}|1800000000"


def test_the_cookie_route_sets_an_http_only_cookie_once_for_the_browser_that_logged_in(auth_home, demo_home):
    from engine import Workbench
    from ui.session_cookie import handoff_url, xsrf_binding

    workbench = Workbench(demo_home)
    get = cookie_route(workbench)
    bob = auth_home["users"]["bob"]
    secret = b"sixteen  bytes!!"
    at_log_in, at_route = xsrf_cookie(secret, b"\x01\x02\x03\x04"), xsrf_cookie(secret, b"\x09\x08\x07\x06")
    assert at_log_in != at_route and xsrf_binding(at_log_in) == xsrf_binding(at_route)

    session_id, code = workbench.start_login_session(bob["id"], binding=xsrf_binding(at_log_in))
    url = handoff_url(code, "/training?run=3")
    response = get(url.split("?", 1)[1], f"_streamlit_xsrf={at_route}")
    assert response.status_code == 303 and response.headers["location"] == "/training?run=3"
    cookie = set_cookie(response)
    assert {"httponly", "samesite", "path"} <= set(cookie) and cookie["samesite"].lower() == "strict"
    assert "max-age" not in cookie and "expires" not in cookie  # gone when the browser closes
    assert workbench.login_session_id(cookie["value"]) == session_id
    again = get(url.split("?", 1)[1], f"_streamlit_xsrf={at_route}")  # spent
    assert not [k for k, _ in again.raw_headers if k == b"set-cookie"]

    # A code carried to another browser (another XSRF secret), and a "next" off this server.
    _, code = workbench.start_login_session(bob["id"], binding=xsrf_binding(at_log_in))
    elsewhere = get(handoff_url(code, "//evil.example/x").split("?", 1)[1],
                    f"_streamlit_xsrf={xsrf_cookie(b'another browser!', b'1234')}")
    assert elsewhere.headers["location"] == "/"
    assert not [k for k, _ in elsewhere.raw_headers if k == b"set-cookie"]
    workbench.storage.close()


def test_a_link_survives_the_log_in_and_a_reload_and_a_second_tab_stay_logged_in(auth_home, demo_home, monkeypatch):
    """The whole way of a served app: a link to a run, the log-in page in its place, the cookie
    route, the run; then a reload and a second tab with the cookie; log-out ends both."""
    from engine import Workbench
    from ui import auth

    run_id = auth_home["bob_run"]
    monkeypatch.setattr(auth, "cookie_route_served", lambda: True)
    app = session()
    app.query_params["run"] = str(run_id)
    app.switch_page("pages/training.py").run()
    assert on_log_in_page(app)
    log_in(app, "bob")
    [handoff] = [e.proto.body for e in app.get("html") if "_lim/session" in e.proto.body]
    url = re.search(r'replace\("([^"]+)"\)', handoff).group(1)
    assert url.startswith("/_lim/session?code=") and f"next=%2Ftraining%3Frun%3D{run_id}" in url
    response = cookie_route(Workbench(demo_home))(url.split("?", 1)[1])
    assert response.headers["location"] == f"/training?run={run_id}"
    cookies = {"lim_session": set_cookie(response)["value"]}
    monkeypatch.setattr(auth, "browser_cookie", cookies.get)

    reload = session()  # a new browser session on the address the route sent it to
    reload.query_params["run"] = str(run_id)
    reload.switch_page("pages/training.py").run()
    assert not reload.exception and not on_log_in_page(reload)
    assert reload.selectbox(key="train.watch_select").value == run_id
    second_tab = session()
    second_tab.query_params["dataset"] = "demo-voices"
    second_tab.switch_page("pages/datasets.py").run()
    assert not second_tab.exception and not on_log_in_page(second_tab)
    assert second_tab.selectbox(key="datasets.selected").value == "demo-voices"

    click(second_tab, "Log out")
    assert on_log_in_page(second_tab)
    reload.run()
    assert on_log_in_page(reload) and reload.info[0].value == "You logged out."


def test_links_select_the_item_and_another_users_item_is_not_found(auth_home, demo_home):
    from engine import Workbench

    carols = Workbench(demo_home).for_user(auth_home["users"]["carol"])
    carols_run = carols.submit_run("demo-text", "tiny-bert", "lora", {}, {"max_steps": 2})
    carols.cancel_run(carols_run)
    carol = log_in(session(), "carol")
    carol.query_params["run"] = str(auth_home["bob_run"])  # bob's, not shared
    carol.switch_page("pages/training.py").run()
    assert not carol.exception
    assert carol.warning[0].value.startswith(f"Run {auth_home['bob_run']} was not found")
    assert carol.selectbox(key="train.watch_select").value == carols_run
    assert carol.query_params["run"] == str(carols_run)  # the address follows what is shown

    carol.query_params["model"] = "tiny-bert"
    carol.switch_page("pages/models.py").run()
    assert not carol.exception and carol.selectbox(key="models.selected").value == "tiny-bert"
    other = next(o for o in carol.selectbox(key="models.selected").options if o != "tiny-bert")
    carol.selectbox(key="models.selected").select(other).run()
    assert carol.query_params["model"] == other  # a choice in the box is written back
    carol.run()
    assert carol.selectbox(key="models.selected").value == other  # and the old link does not win
    carol.query_params["study"] = "999"
    carol.switch_page("pages/studies.py").run()
    assert not carol.exception and carol.warning[0].value.startswith("Study 999 was not found")


def test_only_an_admin_is_offered_a_ray_cluster_for_a_study(auth_home):
    """A Ray address reaches other machines: with accounts on, the Studies page offers *Run on
    a Ray cluster* to admins only (the engine refuses the others too: tests/engine/test_ray.py)."""
    for name, offered in (("bob", False), ("ada", True)):
        page = log_in(session(), name)
        page.switch_page("pages/studies.py").run()
        assert not page.exception, page.exception
        assert any(r.key == "studies.where" for r in page.radio) is offered, name
