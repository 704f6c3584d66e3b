"""Streamlit helpers shared by the pages: the engine singleton, settings forms, charts.

Pages stay thin: they read state from the workbench, draw it, and call the workbench.
"""
