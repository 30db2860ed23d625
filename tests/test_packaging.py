"""The wheel is a working install: one top-level package, ``poisonlens``, carrying every file the
dashboard serves, and it runs from a fresh virtual environment in another folder."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What setuptools maps onto the import package (pyproject.toml's package-dir).
MAPPED = {"core": "poisonlens", "dashboard": "poisonlens/dashboard"}
SKIP_PARTS = {"__pycache__", "build"}  # byte code; the map component's served copy (git-ignored)


# The map component's build inputs (they make frontend/regl-scatterplot.min.js, which is carried);
# nothing at run time reads them.
BUILD_ONLY = {"build.sh", "package.json", "package-lock.json"}


def source_files() -> dict[str, Path]:
    """Every file of the package folders, keyed by its path inside the wheel."""
    files = {}
    for folder, target in MAPPED.items():
        for path in sorted((REPO / folder).rglob("*")):
            rel = path.relative_to(REPO / folder)
            if (not path.is_file() or SKIP_PARTS & set(rel.parts) or path.suffix == ".pyc"
                    or path.name in BUILD_ONLY):
                continue
            files[f"{target}/{rel.as_posix()}"] = path
    return files


def build_wheel(out: Path) -> Path:
    """Build the wheel from a copy of the project's packaging inputs (so no stale ``build/``
    folder of the checkout leaks into it); isolated first, then with this environment's
    setuptools when no index can be reached."""
    src = out / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    for folder in MAPPED:
        shutil.copytree(REPO / folder, src / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "build", "*.pyc"))  # fmt: skip
    errors = []
    for extra in ([], ["--no-build-isolation"]):
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), *extra, str(src)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        wheels = sorted(out.glob("poisonlens-*.whl"))
        if done.returncode == 0 and wheels:
            return wheels[0]
        errors.append(done.stdout[-800:] + done.stderr[-800:])
    pytest.fail("could not build the wheel:\n" + "\n---\n".join(errors))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_installs_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"poisonlens"}
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["poisonlens"]


def test_the_wheel_carries_the_license(wheel):
    with zipfile.ZipFile(wheel) as zf:
        license_files = [n for n in zf.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert license_files, "no LICENSE in the wheel"
        assert zf.read(license_files[0]) == (REPO / "LICENSE").read_bytes()
        metadata = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA")))
    assert b"License-Expression: MIT" in metadata


def test_the_wheel_carries_every_file_of_the_package_folders(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = source_files()
    # the files the dashboard serves and runs, named so a regression names them
    for must in ("poisonlens/dashboard/app.py", "poisonlens/dashboard/views/overview.py",
                 "poisonlens/dashboard/components/gradient_map/frontend/index.html"):  # fmt: skip
        assert must in expected, must
    frontend = [n for n in expected if "/gradient_map/frontend/" in n]
    assert frontend and set(frontend) <= names
    missing = sorted(set(expected) - names)
    assert not missing, f"not in the wheel: {missing[:10]}"


def test_the_wheel_files_are_the_checkout_files(wheel):
    with zipfile.ZipFile(wheel) as zf:
        for name, path in source_files().items():
            assert zf.read(name) == path.read_bytes(), name


def heavy_site_packages() -> Path:
    """The folder this interpreter finds torch in (shared with the fresh venv through a .pth,
    so the test downloads nothing)."""
    spec = importlib.util.find_spec("torch")
    assert spec is not None and spec.origin
    return Path(spec.origin).resolve().parents[1]


def fresh_venv(root: Path, wheel: Path) -> Path:
    """A venv without this project's paths, the wheel installed (not editable), the heavy
    dependencies reachable through a .pth added after the install (pip never sees them)."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, timeout=300)  # fmt: skip
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    Path(site, "_heavy_deps.pth").write_text(f"{heavy_site_packages()}\n")
    return venv


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_the_wheel_runs_from_a_fresh_venv_in_another_folder(wheel, tmp_path):
    venv = fresh_venv(tmp_path, wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = (
        "import importlib.util, json, pathlib, poisonlens, poisonlens.dashboard.views.overview; "
        "print(json.dumps({'file': poisonlens.__file__, "
        "'core': importlib.util.find_spec('core') is not None, "
        "'dashboard': importlib.util.find_spec('dashboard') is not None}))"
    )
    out = subprocess.run([str(venv / "bin" / "python"), "-c", probe], cwd=elsewhere, env=clean_env(),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(found["file"]).is_relative_to(venv), found  # the installed copy, not the checkout
    assert found["core"] is False and found["dashboard"] is False
    helped = subprocess.run([str(venv / "bin" / "poisonlens"), "--help"], cwd=elsewhere, env=clean_env(),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert "train" in helped.stdout and "runs" in helped.stdout
    # the installed dashboard's entry file and the map's frontend are in the venv
    files = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import importlib.resources as r; d = r.files('poisonlens.dashboard'); "
         "print(d.joinpath('app.py').is_file(), "
         "d.joinpath('components/gradient_map/frontend/index.html').is_file())"],
        cwd=elsewhere, env=clean_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert files.stdout.split() == ["True", "True"], files.stderr[-2000:]
    # the installed dashboard serves from the installed package, started from another folder
    from tests.test_ui import free_port, listening_addresses, wait_healthy

    port, log = free_port(), tmp_path / "ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(venv / "bin" / "poisonlens"), "ui", "--runs-dir", "runs", "--port", str(port)],
                                cwd=elsewhere, env=clean_env(), stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, log)
        if Path("/proc/net/tcp").exists():  # Linux
            assert listening_addresses(port) == {"127.0.0.1"}
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
            assert any(arg.startswith(str(venv).encode()) and arg.endswith(b"/poisonlens/dashboard/app.py")
                       for arg in cmdline), cmdline  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(15)


def test_the_library_never_imports_the_command_line_layer():
    # Issue 19: core calls into core; only the CLI (cli.py and commands/) parses argv. The
    # dashboard's background process once ran training through cli.main.
    import ast

    layer = ("poisonlens.cli", "poisonlens.commands")
    offenders = []
    for path in sorted((REPO / "core").rglob("*.py")) + sorted((REPO / "dashboard").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel == "core/cli.py" or rel.startswith("core/commands/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if isinstance(node, ast.ImportFrom) and node.module == "poisonlens":
                names = [f"poisonlens.{a.name}" for a in node.names]
            offenders += [f"{rel}:{node.lineno} {n}" for n in names
                          if any(n == m or n.startswith(m + ".") for m in layer)]
    assert offenders == []
