"""Which pages the dashboard shows: every file in ``views/`` that declares a ``PAGE``.

A page declares, at module level, a literal dict read here without running the file (its
``main()`` draws the page when Streamlit runs it)::

    PAGE = {"title": "Drift", "icon": ":material/timeline:", "order": 30}

``order`` places it in the navigation (the lowest opens first). Adding a page is adding such a
file (docs/extending.md, "A page"); ``app.py`` lists nothing by hand.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

VIEWS = Path(__file__).resolve().parent / "views"
KEYS = {"title": str, "icon": str, "order": int}


@dataclass(frozen=True)
class PageSpec:
    """One page of the dashboard.

    Attributes
    ----------
    file : its path relative to the dashboard folder (``views/NAME.py``), as ``st.Page`` takes it
    title : the navigation's text
    icon : a Streamlit icon (``:material/NAME:`` or an emoji)
    order : its place in the navigation (the lowest opens first)
    """

    file: str
    title: str
    icon: str
    order: int


def page_declaration(path: Path) -> dict | None:
    """The ``PAGE = {...}`` a view file declares (None when it declares none).

    Parameters
    ----------
    path : Path
        A Python file of the dashboard's ``views/`` folder (our own code, parsed, not run).

    Raises
    ------
    ValueError
        When ``PAGE`` is not a literal dict of exactly title (str), icon (str) and order (int),
        naming the file.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "PAGE" for t in node.targets):
            try:
                spec = ast.literal_eval(node.value)
            except ValueError:
                spec = None
            if not isinstance(spec, dict) or set(spec) != set(KEYS) or not all(
                    isinstance(spec[k], kind) for k, kind in KEYS.items()):
                raise ValueError(f"{path}: PAGE must be a literal dict of title (str), icon (str) and order (int)")
            return spec
    return None


def discover_pages(views: Path = VIEWS) -> list[PageSpec]:
    """Every page declared in ``views``, in navigation order (then by file name).

    Parameters
    ----------
    views : Path
        The folder of page files (default: the dashboard's ``views/``).
    """
    pages = []
    for path in sorted(views.glob("*.py")):
        spec = page_declaration(path)
        if spec is not None:
            pages.append(PageSpec(file=f"{views.name}/{path.name}", **spec))
    return sorted(pages, key=lambda p: (p.order, p.file))
