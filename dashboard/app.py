"""poisonlens dashboard: `streamlit run dashboard/app.py` (runs folder: POISONLENS_RUNS or `-- --runs-dir DIR`).

This file only routes; each page is one file in dashboard/views/.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also works without `pip install -e .`

import streamlit as st  # noqa: E402

st.set_page_config(page_title="poisonlens", page_icon=":material/biotech:", layout="wide")
st.navigation([
    st.Page("views/overview.py", title="Overview", icon=":material/monitoring:", default=True),
    st.Page("views/gradient_space.py", title="Gradient space", icon=":material/scatter_plot:"),
    st.Page("views/drift.py", title="Drift", icon=":material/timeline:"),
    st.Page("views/suspects.py", title="Suspects", icon=":material/flag:"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("views/new_run.py", title="New run", icon=":material/play_arrow:"),
    st.Page("views/about.py", title="How to read this", icon=":material/help:"),
]).run()
