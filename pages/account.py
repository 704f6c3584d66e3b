"""Account: your password, what you share with everybody, and (admins) the users. The parts are
in ui/account_views.py."""

import streamlit as st

from ui import account_views as views
from ui.auth import auth_on
from ui.state import get_workbench

wb = get_workbench()
st.title("Account")
if not auth_on():
    st.info("Single-user mode (LIM_AUTH=off): everything belongs to this machine's one local owner, "
            "and nobody logs in. Set LIM_AUTH=on to give each person an account (README: Accounts).")
    st.stop()

user = wb.user
st.caption(f"Logged in as **{user['name']}**" + (" · admin: you see every user's items" if user["is_admin"] else ""))

st.subheader("Shared with everybody")
st.caption("Shared items are read-only to everybody else: they can see, use, export and clone them, "
           "never change or delete them. Sharing a study shares its runs (stopping shares none of them).")
views.sharing_form(wb)

st.subheader("Change your password")
views.password_form(wb, user)

if user["is_admin"]:
    st.subheader("Users")
    views.users_admin(wb)
