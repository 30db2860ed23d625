"""The poisonlens dashboard (Streamlit): ``poisonlens ui``, or ``streamlit run dashboard/app.py`` in a checkout."""
