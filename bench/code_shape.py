"""The shape figures of issue 19, measured on core/ and dashboard/ (numba kernels aside).

    python -m bench.code_shape            # the figures
    python -m bench.code_shape --list     # and the functions behind them

Counts: functions longer than 60 lines; functions with more than 6 parameters (``self``/``cls``
not counted); public functions and methods with parameters, and how many of them have a numpydoc
``Parameters`` section. A function decorated with a numba ``njit``/``jit`` (or an alias of one,
such as ``jit_exact``) is a compiled kernel and is left out, as the issue asks.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "dashboard")
LONG = 60
MANY = 6
KERNEL_DECORATORS = {"njit", "jit", "jit_exact", "jit_fast", "_jit", "_jit_exact"}


def _is_kernel(node: ast.FunctionDef) -> bool:
    for d in node.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name in KERNEL_DECORATORS:
            return True
    return False


def _params(node: ast.FunctionDef) -> list[str]:
    a = node.args
    names = [p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs]]
    names += [p.arg for p in (a.vararg, a.kwarg) if p is not None]
    return [n for n in names if n not in ("self", "cls")]


def functions(root: Path = ROOT):
    """Yield ``(path, qualified name, node, public)`` for every function of the packages."""
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            stack = [(tree, "", True)]
            while stack:
                parent, prefix, public = stack.pop()
                for node in ast.iter_child_nodes(parent):
                    if isinstance(node, ast.ClassDef):
                        stack.append((node, f"{prefix}{node.name}.", public and not node.name.startswith("_")))
                    elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                        is_public = public and not node.name.startswith("_") and not prefix.count(".") > 1
                        yield path.relative_to(root), prefix + node.name, node, is_public


def figures(root: Path = ROOT) -> dict:
    """The figures, and the functions behind each."""
    long, many, documented, undocumented = [], [], [], []
    for path, name, node, public in functions(root):
        if _is_kernel(node):
            continue
        where = f"{path}:{node.lineno} {name}"
        if node.end_lineno - node.lineno + 1 > LONG:
            long.append(f"{where} ({node.end_lineno - node.lineno + 1} lines)")
        params = _params(node)
        if len(params) > MANY:
            many.append(f"{where} ({len(params)} parameters)")
        if public and params:
            doc = ast.get_docstring(node) or ""
            (documented if "Parameters\n" in doc and "----" in doc else undocumented).append(where)
    total = len(documented) + len(undocumented)
    return {"long": long, "many": many, "documented": documented, "undocumented": undocumented,
            "share": len(documented) / total if total else 1.0}


def main() -> None:
    """Print the figures (with ``--list``, the functions behind them)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="list the functions behind each figure")
    args = p.parse_args()
    f = figures()
    print(f"functions over {LONG} lines: {len(f['long'])} (goal: at most 6)")
    print(f"functions with more than {MANY} parameters: {len(f['many'])} (goal: at most 4)")
    n = len(f["documented"]) + len(f["undocumented"])
    print(f"public functions with parameters that have a numpydoc Parameters section: "
          f"{len(f['documented'])} of {n} = {f['share']:.0%} (goal: at least 80%)")
    if args.list:
        for key in ("long", "many", "undocumented"):
            print(f"\n{key}:")
            print("\n".join(f"  {w}" for w in f[key]))


if __name__ == "__main__":
    main()
