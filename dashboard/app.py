"""poisonlens dashboard: `streamlit run dashboard/app.py` (runs folder: POISONLENS_RUNS or `-- --runs-dir DIR`).

This file only routes; each page is one file in dashboard/views/ that declares its ``PAGE``
(title, icon, place), found by :func:`poisonlens.dashboard.pages.discover_pages`.
"""

import importlib.util

import streamlit as st

st.set_page_config(page_title="poisonlens", page_icon=":material/biotech:", layout="wide")
if importlib.util.find_spec("poisonlens") is None:  # a checkout that was never installed
    st.error("poisonlens is not installed: run `make run`, or `pip install -e .` in the checkout.")
    st.stop()

from poisonlens.dashboard.pages import discover_pages  # noqa: E402 - after the install check

pages = discover_pages()
st.navigation([st.Page(p.file, title=p.title, icon=p.icon, default=i == 0) for i, p in enumerate(pages)]).run()
