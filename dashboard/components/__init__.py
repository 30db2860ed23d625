"""Custom Streamlit components of the dashboard (static HTML and JavaScript, no build step)."""
