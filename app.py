"""LessIsMore Workbench: the Streamlit entry point (a router over pages/, behind the log-in).

    streamlit run app.py        # or: make run  (make run-https: over TLS)

The engine is a process-wide singleton (ui.state.get_workbench); its worker thread keeps
training when browser tabs close. With ``LIM_AUTH=on`` nobody reaches a page before logging
in (ui/auth.py), and every page sees only its user's items and shared ones.
"""


import streamlit as st

from ui.auth import account_sidebar, auth_on, log_in_page, session_user
from ui.state import shared_workbench

st.set_page_config(page_title="LessIsMore Workbench", page_icon=":material/eco:", layout="wide")

workbench = shared_workbench()
user = session_user(workbench)
if user is None:  # auth on, nobody logged in: the log-in page is the only page there is
    st.navigation([st.Page(lambda: log_in_page(workbench), title="Log in", icon=":material/login:",
                           default=True)]).run()  # default: the same address as Home
    st.stop()
if auth_on():
    account_sidebar(user)
elif st.get_option("server.address") not in ("localhost", "127.0.0.1", "::1"):
    st.sidebar.warning("Served beyond this machine without log-in (LIM_AUTH=off): anyone who can "
                       "reach it can use, stop or delete everything. Set LIM_AUTH=on.")

pages = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/datasets.py", title="Datasets", icon=":material/graphic_eq:"),
    st.Page("pages/models.py", title="Models", icon=":material/neurology:"),
    st.Page("pages/methods.py", title="Methods", icon=":material/tune:"),
    st.Page("pages/training.py", title="Training", icon=":material/model_training:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/monitoring:"),
    st.Page("pages/studies.py", title="Studies", icon=":material/science:"),
    st.Page("pages/playground.py", title="Playground", icon=":material/mic:"),
    st.Page("pages/account.py", title="Account", icon=":material/manage_accounts:"),
]
st.navigation(pages).run()
