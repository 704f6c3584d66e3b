"""The sign-up form states the password rules before anyone submits (issue 27): "must not
contain the username" was only said after sign-up failed. The rules shown are the ones
checked (engine/workbench/accounts.py PASSWORD_RULES)."""

from __future__ import annotations

from test_accounts_pages import app_py_runs_every_time, session  # noqa: F401  (a fixture)


def test_sign_up_states_every_password_rule_before_it_is_submitted(demo_home, monkeypatch):
    from engine.workbench.accounts import password_problem, password_rules
    from ui.state import shutdown_workbenches

    monkeypatch.setenv("LIM_AUTH", "on")
    app = session()
    app.run()
    assert not app.exception, app.exception
    said = " ".join(c.value for c in app.caption)
    assert "at least 10 characters" in said and "not containing the username" in said
    assert all(rule in said for rule in password_rules())
    assert not app.error  # nothing submitted yet
    shutdown_workbenches()
    # each rule stated is a rule checked
    assert password_problem("ada-likes-long-walks", "ada") == "the password must not contain the username"
    assert password_problem("qwertyuiop") and password_problem("short") and not password_problem("plum orchard winter")
