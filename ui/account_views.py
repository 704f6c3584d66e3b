"""The Account page's parts: what you share with everybody, your password, and (admins) the
users. The log-in gate itself is ui/auth.py."""

from __future__ import annotations

import streamlit as st

from engine.errors import WorkbenchError
from ui.auth import client_address, current_session, password_rules_text

PLURALS = {"study": "studies"}
LABELS = {"run": lambda r: f"#{r['id']} {r['method']} · {r['model_name']} on {r['dataset_name']}",
          "study": lambda r: f"#{r['id']} {r['name']}"}


def sharing_form(wb) -> None:
    """One box per kind of item with your items in it; saving shares and unshares what changed."""
    if "account.flash" in st.session_state:
        st.success(st.session_state.pop("account.flash"))
    kinds = {"dataset": wb.list_datasets(), "model": wb.list_models(), "run": wb.list_runs(),
             "study": wb.list_studies()}
    with st.form("account.sharing"):
        chosen = {}
        for kind, records in kinds.items():
            mine = [r for r in records if r["owner_id"] == wb.owner_id]
            label, plural = LABELS.get(kind, lambda r: r["name"]), PLURALS.get(kind, f"{kind}s")
            names = {r["id"]: label(r) for r in mine}
            chosen[kind] = (mine, st.multiselect(
                f"Your {plural} shared", list(names), default=[r["id"] for r in mine if r["shared"]],
                format_func=names.get, key=f"account.share.{kind}",
                placeholder=f"none of your {len(mine)} {plural}" if mine else f"you have no {plural} yet"))
        if st.form_submit_button("Save sharing"):
            try:
                # Studies last: a study's runs follow it, whatever the run list said.
                for kind, (mine, shared_ids) in chosen.items():
                    for record in mine:
                        if bool(record["shared"]) != (record["id"] in shared_ids):
                            wb.share(kind, record["id"], record["id"] in shared_ids)
            except WorkbenchError as error:
                st.error(str(error))
            else:
                # Read the lists again: sharing a study changed its runs' boxes.
                for kind in kinds:
                    st.session_state.pop(f"account.share.{kind}", None)
                st.session_state["account.flash"] = "Sharing saved."
                st.rerun()


def add_user_form(wb) -> None:
    """An admin makes an account for someone (the only way in when sign-up is ``admin``)."""
    if added := st.session_state.pop("account.users.added", None):
        st.success(added)
    with st.expander("Add a user"):
        with st.form("account.users.add", clear_on_submit=True):
            name = st.text_input("Username", key="account.users.add.name",
                                 help="2 to 32 letters, digits, dots, dashes or underscores")
            password = st.text_input("First password", type="password", key="account.users.add.password",
                                     help="Tell it to them in person; they can change it on this page. "
                                          + password_rules_text())
            admin = st.checkbox("Admin", key="account.users.add.admin")
            if st.form_submit_button("Add user"):
                try:
                    user = wb.add_user(name, password, is_admin=admin)
                except WorkbenchError as error:
                    st.error(str(error))
                else:  # the table above lists them after the rerun
                    st.session_state["account.users.added"] = (
                        f"Added {user['name']}" + (" (admin)" if user["is_admin"] else "") +
                        ": tell them their username and first password in person.")
                    st.rerun()


def password_form(wb, user: dict) -> None:
    with st.form("account.password", clear_on_submit=True):
        old = st.text_input("Current password", type="password")
        new = st.text_input("New password", type="password", help=password_rules_text())
        again = st.text_input("New password again", type="password")
        if st.form_submit_button("Change password"):
            try:
                if new != again:
                    st.error("The two new passwords differ.")
                else:
                    wb.log_in(user["name"], old, client=client_address())  # slowed down like a log-in
                    wb.reset_password(user["name"], new, keep_session=current_session())  # other tabs end
                    st.success("Password changed.")
            except WorkbenchError as error:
                st.error(str(error))


def users_admin(wb) -> None:
    """Every user with a password; add one, disable, enable or reset another's."""
    users = [u for u in wb.list_users() if u["has_password"]]
    st.dataframe(users, hide_index=True, column_order=["id", "name", "is_admin", "disabled",
                                                        "created_at", "last_login_at"])
    add_user_form(wb)
    others = {u["name"]: u for u in users if u["id"] != wb.owner_id}
    if not others:
        st.caption("Nobody else has signed up yet.")
        return
    name = st.selectbox("User", list(others), key="account.users.name")
    target = others[name]
    left, right = st.columns(2)
    toggle = "Enable" if target["disabled"] else "Disable"
    if left.button(f"{toggle} {name}", key="account.users.toggle"):
        wb.set_user_disabled(name, not target["disabled"])
        st.rerun()
    with right.form("account.users.reset", clear_on_submit=True):
        password = st.text_input(f"New password for {name}", type="password", help=password_rules_text())
        if st.form_submit_button("Reset password"):
            try:
                wb.reset_password(name, password)
                st.success(f"{name}'s password was reset; tell them in person.")
            except WorkbenchError as error:
                st.error(str(error))
