"""LessIsMore Workbench: the Streamlit entry point (a router over pages/).

    streamlit run app.py        # or: make run

The engine is a process-wide singleton (ui.state.get_workbench); its worker thread keeps
training when browser tabs close.
"""


import streamlit as st



st.set_page_config(page_title="LessIsMore Workbench", page_icon=":material/eco:", layout="wide")

pages = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/datasets.py", title="Datasets", icon=":material/graphic_eq:"),
    st.Page("pages/models.py", title="Models", icon=":material/neurology:"),
    st.Page("pages/methods.py", title="Methods", icon=":material/tune:"),
    st.Page("pages/training.py", title="Training", icon=":material/model_training:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/monitoring:"),
    st.Page("pages/studies.py", title="Studies", icon=":material/science:"),
    st.Page("pages/playground.py", title="Playground", icon=":material/mic:"),
]
st.navigation(pages).run()
