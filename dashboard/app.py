"""poisonlens dashboard: `streamlit run dashboard/app.py` (runs folder: POISONLENS_RUNS or `-- --runs-dir DIR`).

This file only routes; each page is one file in dashboard/views/.
"""

import importlib.util

import streamlit as st

st.set_page_config(page_title="poisonlens", page_icon=":material/biotech:", layout="wide")
if importlib.util.find_spec("poisonlens") is None:  # a checkout that was never installed
    st.error("poisonlens is not installed: run `make run`, or `pip install -e .` in the checkout.")
    st.stop()
st.navigation([
    st.Page("views/overview.py", title="Overview", icon=":material/monitoring:", default=True),
    st.Page("views/gradient_space.py", title="Gradient space", icon=":material/scatter_plot:"),
    st.Page("views/drift.py", title="Drift", icon=":material/timeline:"),
    st.Page("views/suspects.py", title="Suspects", icon=":material/flag:"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("views/new_run.py", title="New run", icon=":material/play_arrow:"),
    st.Page("views/about.py", title="How to read this", icon=":material/help:"),
]).run()
