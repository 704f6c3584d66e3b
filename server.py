"""The app's server: Streamlit's ASGI app (``st.App``) over app.py, plus the route that sets
the log-in cookie (ui/session_cookie.py), so a reload or a second tab stays logged in.

    streamlit run server.py     # what `make run` and the Docker image do

``streamlit run app.py`` still serves the app, without that route: a log-in then lasts as
long as its tab.
"""

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

from ui.session_cookie import routes
from ui.state import shared_workbench

# app.py routes with st.navigation. Until a script has called it, Streamlit takes a pages/
# folder beside the script for its older multipage mode, so a server's first visitor coming in
# on /training ran pages/training.py without app.py around it. Say so before anyone comes.
PagesManager.uses_pages_directory = False
app = st.App("app.py", routes=routes(shared_workbench))
