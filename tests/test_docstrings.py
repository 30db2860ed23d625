"""Every public function, method and class in core/ and dashboard/ has a docstring (issue 10), and
most public functions with parameters have a numpydoc Parameters section (issue 19)."""

import ast
from pathlib import Path

from bench import code_shape

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "dashboard")
DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def missing_docstrings() -> list[str]:
    """``path:line name`` of each public module-level definition, or method of a module-level
    class, without a docstring."""
    missing = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in tree.body:
                items = [node]
                if isinstance(node, ast.ClassDef):
                    items += [n for n in node.body if isinstance(n, DEFS[:2])]
                for n in items:
                    if isinstance(n, DEFS) and not n.name.startswith("_") and not ast.get_docstring(n):
                        missing.append(f"{path.relative_to(ROOT)}:{n.lineno} {n.name}")
    return missing


def test_every_public_definition_has_a_docstring():
    missing = missing_docstrings()
    assert not missing, f"{len(missing)} public definitions lack a docstring:\n" + "\n".join(missing)


# The least share of public functions and methods with parameters, in core/ and dashboard/, whose
# docstring has a numpydoc ``Parameters`` section (issue 19 asks for 0.80). It is what the tree
# reached when the test was written, rounded down, so it only ever rises: raise it as sections
# are added.
MIN_PARAMETERS_SHARE = 0.80  # issue 19's goal (the tree reached 96% when it was set)


def test_most_public_functions_document_their_parameters():
    figures = code_shape.figures(ROOT)
    share = figures["share"]
    n = len(figures["documented"]) + len(figures["undocumented"])
    assert n > 100, f"bench.code_shape found only {n} public functions with parameters"
    assert share >= MIN_PARAMETERS_SHARE, (
        f"{len(figures['documented'])} of {n} public functions with parameters ({share:.0%}) have a "
        f"numpydoc Parameters section; at least {MIN_PARAMETERS_SHARE:.0%} must. Lacking one:\n"
        + "\n".join(figures["undocumented"])
    )
