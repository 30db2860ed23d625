"""Adding a page is one file: the dashboard finds its pages by their ``PAGE`` declaration
(dashboard/pages.py), and the worked example of docs/extending.md ("A page") runs as written."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from poisonlens.dashboard.pages import VIEWS, discover_pages
from poisonlens.store import open_run
from tests.dashboard_runs import POISON_RUN, runs_folder

REPO = Path(__file__).resolve().parents[1]
NAVIGATION = ["views/overview.py", "views/gradient_space.py", "views/drift.py", "views/suspects.py",
              "views/compare.py", "views/new_run.py", "views/about.py"]


def example_page() -> str:
    """The page file written out in docs/extending.md, as a reader would copy it."""
    text = (REPO / "docs" / "extending.md").read_text(encoding="utf-8")
    section = text[text.index("## A page"):]
    found = re.search(r"```python\n(# dashboard/views/classes\.py\n.*?)```", section, re.S)
    assert found, "docs/extending.md has no worked example of a page"
    return found.group(1)


def test_the_navigation_lists_every_view_file_in_its_declared_order():
    pages = discover_pages()
    assert [p.file for p in pages] == NAVIGATION
    assert pages[0].title == "Overview" and pages[-1].title == "How to read this"
    on_disk = sorted(f"views/{p.name}" for p in VIEWS.glob("*.py") if p.name != "__init__.py")
    assert sorted(p.file for p in pages) == on_disk  # no view file left out of the navigation


def test_a_page_declaration_that_is_not_a_literal_dict_is_named(tmp_path):
    (tmp_path / "bad.py").write_text('PAGE = dict(title="Bad", icon=":material/help:", order=1)\n')
    with pytest.raises(ValueError, match="bad.py"):
        discover_pages(tmp_path)
    (tmp_path / "bad.py").write_text('PAGE = {"title": "Bad", "order": "first"}\n')
    with pytest.raises(ValueError, match="title .str., icon .str. and order .int."):
        discover_pages(tmp_path)


def test_the_worked_example_is_one_file_that_takes_its_declared_place(tmp_path):
    views = tmp_path / "views"
    views.mkdir()
    for page in VIEWS.glob("*.py"):
        shutil.copy(page, views)
    (views / "classes.py").write_text(example_page(), encoding="utf-8")
    files = [p.file for p in discover_pages(views)]
    assert files == NAVIGATION[:4] + ["views/classes.py"] + NAVIGATION[4:]


def test_the_worked_example_draws_the_dropped_counts_of_a_real_run(tmp_path_factory, tmp_path, monkeypatch):
    runs = runs_folder(tmp_path_factory)
    monkeypatch.setenv("POISONLENS_RUNS", str(runs))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    page = tmp_path / "classes.py"
    page.write_text(example_page(), encoding="utf-8")
    at = AppTest.from_file(str(page), default_timeout=120)
    at.query_params["run"] = POISON_RUN
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.title[0].value == "Classes"
    run = open_run(runs / POISON_RUN)
    last = run.snapshot_epochs()[-1]  # the slider opens on the last snapshot
    snap = run.snapshot(last, columns=["label", "dropped_epoch"])
    dropped = snap["dropped_epoch"].to_numpy() >= 0
    is_poison = run.examples()["is_poison"].to_numpy(bool)
    table = at.dataframe[0].value
    assert table["class"].tolist() == run.class_names
    np.testing.assert_array_equal(table["dropped"], np.bincount(snap["label"].to_numpy()[dropped],
                                                                minlength=len(run.class_names)))
    assert table["poisons dropped"].sum() == (dropped & is_poison).sum()
    assert len(at.get("plotly_chart")) == 1
