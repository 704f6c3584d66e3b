"""The app's server: Streamlit's ASGI app (``st.App``) over app.py, plus the route that sets
the log-in cookie (ui/session_cookie.py), so a reload or a second tab stays logged in.

    streamlit run server.py     # what `make run` and the Docker image do

``streamlit run app.py`` still serves the app, without that route: a log-in then lasts as
long as its tab.
"""

import streamlit as st

from ui.session_cookie import routes
from ui.state import shared_workbench

app = st.App("app.py", routes=routes(shared_workbench))
