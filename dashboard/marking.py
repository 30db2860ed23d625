"""The review on every page: a one-line summary, and the form that marks examples poison / clean / unsure.

The review itself is :mod:`poisonlens.review` (review.parquet in the run folder); this module
only caches it (keyed by the file's modification time, so a verdict saved on one page shows
on every other at its next rerun) and draws the marking form, which the Suspects page, the
sample panel and a map selection share.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from poisonlens.errors import InputError
from poisonlens.review import REVIEW, VERDICTS, default_who, mark, read_review, summary, unmark
from poisonlens.store import open_run

CLEAR = "clear"  # the form's fourth choice: remove the examples' verdicts


def review_stamp(path: str | Path) -> float:
    """The review file's modification time (0 when there is none): the key of review caches.

    Parameters
    ----------
    path : str or Path
        The run's folder.
    """
    try:
        return (Path(path) / REVIEW).stat().st_mtime
    except OSError:
        return 0.0


@st.cache_data(max_entries=32, show_spinner=False)
def load_review(path: str, stamp: float) -> pd.DataFrame:
    """The run's review (poisonlens.review.read_review); DamagedFile when it cannot be read.

    Parameters
    ----------
    path : str
        The run folder whose review.parquet is read.
    stamp : float
        :func:`review_stamp`: a saved verdict changes it, so the cache is read again.
    """
    return read_review(open_run(path))


def review_or_empty(path: str) -> tuple[pd.DataFrame, str | None]:
    """(the review, None), or (an empty review, the one-line problem) when it cannot be read.

    Parameters
    ----------
    path : str
        The run's folder.
    """
    try:
        return load_review(path, review_stamp(path)), None
    except InputError as err:
        from poisonlens.review import empty_review

        return empty_review(), str(err)


def review_caption_ui(path: str) -> None:
    """The review's one-line summary in the sidebar (every run page shows it).

    Parameters
    ----------
    path : str
        The run's folder.
    """
    review, problem = review_or_empty(path)
    if problem:
        st.sidebar.warning(f"The review cannot be read: {problem}")
        return
    st.sidebar.caption(f"Review: {summary(review)}" + ("" if review.empty else f" · `{REVIEW}`"))


def _save(path: str, indices: list[int], key: str) -> None:
    verdict = st.session_state.get(f"{key}_verdict", VERDICTS[0])
    note = st.session_state.get(f"{key}_note", "")
    who = st.session_state.get(f"{key}_who", "") or default_who()
    try:
        run = open_run(path)
        if verdict == CLEAR:
            unmark(run, indices)
            done = f"Cleared the verdict of {len(indices):,} example(s)."
        else:
            mark(run, indices, verdict, note=note, who=who)
            done = f"Marked {len(indices):,} example(s) **{verdict}**."
    except (InputError, OSError) as err:  # a read-only run folder, a damaged review
        st.session_state[f"_{key}_result"] = ("error", f"Not saved: {err}")
        return
    st.session_state[f"{key}_note"] = ""
    st.session_state[f"_{key}_result"] = ("success", done)


def mark_ui(path: str, indices: list[int], *, key: str, what: str = "") -> None:
    """The marking form for ``indices``: verdict, optional note, who (the OS user by default).

    Parameters
    ----------
    path : the run folder
    indices : the examples the button marks (the button is disabled when there are none)
    key : widget key prefix, unique on the page
    what : how the examples are named on the button, e.g. 'example 12' (default: the count)
    """
    c1, c2, c3 = st.columns([3, 3, 2], vertical_alignment="bottom")
    c1.radio("Verdict", [*VERDICTS, CLEAR], horizontal=True, key=f"{key}_verdict",
             help="poison: you judge it an attack; clean: a false alarm; unsure: look again later. "
                  "clear removes the verdict.")  # fmt: skip
    c2.text_input("Note (optional)", key=f"{key}_note", max_chars=2000)
    if f"{key}_who" not in st.session_state:
        st.session_state[f"{key}_who"] = default_who()
    c3.text_input("Who", key=f"{key}_who", max_chars=100)
    label = what or f"{len(indices):,} example(s)"
    st.button(f"Save the verdict for {label}", key=f"{key}_save", disabled=not indices,
              on_click=_save, args=(path, [int(i) for i in indices], key),
              icon=":material/rate_review:")  # fmt: skip
    result = st.session_state.pop(f"_{key}_result", None)
    if result:
        (st.success if result[0] == "success" else st.error)(result[1])
