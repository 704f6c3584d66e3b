"""LessIsMore Workbench: the Streamlit entry point (a router over pages/, behind the log-in).

    streamlit run server.py     # or: make run  (make run-https: over TLS); server.py serves
                                # this script plus the route that sets the log-in cookie

The engine is a process-wide singleton (ui.state.get_workbench); its worker thread keeps
training when browser tabs close. With ``LIM_AUTH=on`` nobody reaches a page before logging
in (ui/auth.py), and every page sees only its user's items and shared ones.
"""


import streamlit as st

from ui.auth import account_sidebar, auth_on, log_in_page, page_address, session_user
from ui.state import shared_workbench

st.set_page_config(page_title="LessIsMore Workbench", page_icon=":material/eco:", layout="wide")

workbench = shared_workbench()
user = session_user(workbench)
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
# Every page's address exists before log-in too (a link to /training?run=3 is not "Page not
# found"): the log-in page stands in for it, and the log-in lands on it, query and all.
page = st.navigation(pages, position="sidebar" if user else "hidden")
if user is None:  # auth on, nobody logged in
    log_in_page(workbench, next_path=page_address(page))
    st.stop()
if auth_on():
    account_sidebar(workbench, user)
elif st.get_option("server.address") not in ("localhost", "127.0.0.1", "::1"):
    st.sidebar.warning("Served beyond this machine without log-in (LIM_AUTH=off): anyone who can "
                       "reach it can use, stop or delete everything. Set LIM_AUTH=on.")
page.run()
