"""Every public function, method and class in core/ and dashboard/ has a docstring (issue 10)."""

import ast
from pathlib import Path

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
