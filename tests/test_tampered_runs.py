"""Tampered run folders through every reader: the CLI commands and the dashboard pages.

The corpus (tests/bad_inputs/make_run_corpus.py) damages copies of a small real run: links
at every level (out to a sentinel folder, to /dev/zero), FIFOs, infinite and huge numbers,
wrong types and schemas, decoded-size bombs, out-of-range labels, hostile text. Each command
runs in a watched child process (tests/untrusted.py: no hang, bounded memory); each must give
a damaged-run marker or one line with exit 2, never a traceback; and the sentinel folder the
links lead to must be byte for byte unchanged afterwards, its secret shown nowhere.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.bad_inputs.make_run_corpus import CASES, SECRET, fingerprint, make_case, make_outside
from tests.dashboard_runs import POISON_RUN, runs_folder
from tests.untrusted import run_cli_forked

# the ones whose damage every command must refuse (links, FIFOs, a bad run.json)
TREE_OR_META = {name for name in CASES if name.startswith(("link_", "fifo_", "epochs_", "created_", "name_"))}
# and the table damage export must refuse (it reads examples.parquet and metrics.parquet): an
# infinite count, a label of 10^9 (10 GB allocated before) or -3 (class_names[-3] before), 40M
# constant rows in a 672 KB file (6 GB before)
EXPORT_REFUSES = TREE_OR_META | {"n_dropped_inf", "test_acc_inf", "label_of_a_billion", "negative_label",
                                 "examples_40m_constant_rows", "examples_without_labels",
                                 "metrics_epoch_as_text"}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return runs_folder(tmp_path_factory) / POISON_RUN


def corpus(source: Path, root: Path, name: str):
    runs = root / "runs"
    runs.mkdir(parents=True)
    shutil.copytree(source, runs / "good", symlinks=True)
    outside = make_outside(root / "outside", source)
    run_dir, case = make_case(name, source, runs, outside)
    return runs, run_dir, case, outside


def assert_clean(result, *, allowed=(0, 2)) -> None:
    text = result.stdout + result.stderr
    context = f"rc={result.returncode} killed={result.killed} out={result.stdout[-800:]!r} err={result.stderr[-800:]!r}"
    assert result.killed is None, context
    assert "Traceback" not in text, context
    assert SECRET not in text, context
    assert "\x1b" not in text, context
    assert result.returncode in allowed, context
    if result.returncode == 2:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, context


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_command_on_a_tampered_run(source, tmp_path, name):
    runs, run_dir, case, outside = corpus(source, tmp_path, name)
    before = fingerprint(outside)
    must_refuse = name in TREE_OR_META

    listed = run_cli_forked(["runs", "--runs-dir", str(runs)], timeout=60)
    assert_clean(listed, allowed=(0,))
    rows = [line for line in listed.stdout.splitlines()[1:] if not line.startswith(" ")]
    assert len(rows) == 2, listed.stdout  # the damaged run never hides the good one
    if case.damaged and must_refuse:
        assert "damaged, unreadable" in listed.stdout, listed.stdout

    out = tmp_path / "suspects.csv"
    exported = run_cli_forked(["export", "--run", str(run_dir), "--out", str(out)], timeout=60)
    assert_clean(exported, allowed=(2,) if name in EXPORT_REFUSES else (0, 2))
    if name in EXPORT_REFUSES:
        assert any(f in exported.stderr for f in case.files) or run_dir.name in exported.stderr, exported.stderr

    resumed = run_cli_forked(["train", "--resume", str(run_dir), "--quiet"], timeout=240)
    assert_clean(resumed, allowed=(2,) if must_refuse else (0, 2))

    projected = run_cli_forked(["project", "--run", str(run_dir), "--method", "pca", "--quiet"], timeout=240)
    assert_clean(projected, allowed=(2,) if must_refuse else (0, 2))

    assert fingerprint(outside) == before  # nothing read into, written, or deleted out there
    if must_refuse and name != "link_run_folder_itself":
        from poisonlens.runfs import check_tree

        assert check_tree(run_dir) or name.startswith(("epochs_", "created_", "name_"))


def test_the_untampered_copy_passes_every_command(source, tmp_path):
    from poisonlens.runfs import check_tree

    runs = tmp_path / "runs"
    shutil.copytree(source, runs / "good", symlinks=True)
    assert check_tree(runs / "good") is None
    for args in (["runs", "--runs-dir", str(runs)],
                 ["export", "--run", str(runs / "good"), "--out", str(tmp_path / "s.csv")],
                 ["train", "--resume", str(runs / "good"), "--quiet"],
                 ["project", "--run", str(runs / "good"), "--method", "pca", "--quiet"]):
        result = run_cli_forked(args, timeout=240)
        assert_clean(result, allowed=(0,))
    assert "damaged" not in run_cli_forked(["runs", "--runs-dir", str(runs)]).stdout
    assert os.path.isfile(runs / "good" / "projections" / "pca.parquet")


# --- every dashboard page, on every tampered run ---------------------------------------------

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
PAGES = ["views/overview.py", "views/gradient_space.py", "views/drift.py", "views/suspects.py",
         "views/compare.py", "views/new_run.py", "views/about.py"]
MARKDOWN_KINDS = ("markdown", "error", "warning", "info", "success", "caption", "title", "subheader", "header")


@pytest.fixture(scope="module")
def page_corpus(source, tmp_path_factory):
    root = tmp_path_factory.mktemp("tampered")
    runs = root / "runs"
    runs.mkdir()
    shutil.copytree(source, runs / "good", symlinks=True)
    outside = make_outside(root / "outside", source)
    cases = {name: make_case(name, source, runs, outside) for name in sorted(CASES)}
    return runs, outside, cases


def page_texts(at) -> list[str]:
    out = []
    for kind in MARKDOWN_KINDS:
        out += [str(e.value) for e in getattr(at, kind)]
    return out


@pytest.mark.parametrize("page", PAGES)
def test_every_page_on_every_tampered_run(page_corpus, monkeypatch, page):
    from streamlit.testing.v1 import AppTest

    runs, outside, cases = page_corpus
    before = fingerprint(outside)
    monkeypatch.setenv("POISONLENS_RUNS", str(runs))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page(page)
    for name, (run_dir, case) in cases.items():
        at.query_params["run"] = run_dir.name
        at.run()
        assert not at.exception, (name, [e.value for e in at.exception])
        texts = page_texts(at)
        joined = "\n".join(texts)
        assert SECRET not in joined, name
        for text in texts:  # Markdown from the run is shown escaped, never rendered
            assert "](http://evil" not in text and "<img" not in text and "\x1b" not in text, (name, text)
        if page == "views/gradient_space.py" and name.startswith(("link_", "fifo_")):
            # the map is never offered for recomputing through a link (it was, before)
            assert not [b for b in at.button if b.key == "gs_compute"], name
        if name in TREE_OR_META and page not in ("views/about.py", "views/new_run.py", "views/compare.py"):
            said = "\n".join(str(e.value) for kind in ("error", "warning", "info") for e in getattr(at, kind))
            said = said.replace("\\", "")  # shown with Markdown escapes
            assert "damaged" in said or any(f in said for f in case.files), (name, said)
    assert fingerprint(outside) == before


# --- random tamperings of a real run ---------------------------------------------------------

TARGETS = ["run.json", "progress.json", "metrics.parquet", "examples.parquet", "targets.parquet",
           "images.npy", "target.npy", "snapshots/epoch_0002.parquet", "snapshots", "checkpoints",
           "checkpoints/last.pt", "projections", "projections/umap.parquet", "writer.lock"]
TAMPERINGS = ["link_out", "link_dev_zero", "fifo", "truncate", "garbage", "empty", "inf_number"]


def tamper(run_dir: Path, outside: Path, target: str, how: str) -> None:
    import json as json_

    from tests.bad_inputs.make_run_corpus import fifo, relink

    path = run_dir / target
    parent = path.parent
    if parent.is_symlink() or not parent.is_dir():
        return  # an earlier tampering already replaced the folder this one would reach into
    if how == "link_out":
        relink(path, outside / ("snapshots" if path.name == "snapshots" else "secret.txt"))
    elif how == "link_dev_zero":
        relink(path, "/dev/zero")
    elif how == "fifo":
        fifo(path)
    elif path.is_dir() and not path.is_symlink():
        return  # the byte-level tamperings are for files
    elif how == "inf_number" and path.suffix == ".json" and path.is_file() and not path.is_symlink():
        try:
            obj = json_.loads(path.read_text())
        except (ValueError, OSError):
            return
        if isinstance(obj, dict):
            text = json_.dumps(obj).replace(": 4", ": 1e999", 1).replace(": 0", ": -1e999", 1)
            path.write_text(text)
    elif path.is_file() and not path.is_symlink():
        data = path.read_bytes()
        if how == "truncate":
            path.write_bytes(data[: len(data) // 2])
        elif how == "garbage":
            path.write_bytes(os.urandom(max(16, len(data) // 4)))
        elif how == "empty":
            path.write_bytes(b"")


def read_everything(run_dir: Path) -> None:
    """Every reader of the store on ``run_dir``; only DamagedFile / InputError may escape."""
    from poisonlens.errors import InputError
    from poisonlens.store import list_runs, open_run

    infos = list_runs(run_dir.parent)
    assert len(infos) == 2
    try:
        run = open_run(run_dir)
    except InputError:
        return
    for read in (run.progress, run.metrics, run.examples, run.targets, run.images, run.target_image,
                 run.damaged_snapshots, run.projection, run.info, run.damage):
        try:
            read()
        except InputError:
            pass
    for epoch in run.snapshot_epochs():
        try:
            run.snapshot(epoch)
            run.gradients(epoch)
        except InputError:
            pass


@pytest.fixture(scope="module")
def hypothesis_root(tmp_path_factory):
    return tmp_path_factory.mktemp("hypothesis")


def test_random_tamperings_of_a_real_run(source, hypothesis_root):
    import signal

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    counter = [0]

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.sampled_from(TARGETS), st.sampled_from(TAMPERINGS)), min_size=1, max_size=4))
    def check(tamperings):
        counter[0] += 1
        root = hypothesis_root / f"case{counter[0]}"
        runs = root / "runs"
        runs.mkdir(parents=True)
        shutil.copytree(source, runs / "good", symlinks=True)
        outside = make_outside(root / "outside", source)
        run_dir = runs / "tampered"
        shutil.copytree(source, run_dir, symlinks=True)
        for target, how in tamperings:
            tamper(run_dir, outside, target, how)
        before = fingerprint(outside)

        def hang(*_):
            raise TimeoutError("a reader blocked")

        old = signal.signal(signal.SIGALRM, hang)
        signal.alarm(60)
        try:
            read_everything(run_dir)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        listed = run_cli_forked(["runs", "--runs-dir", str(runs)], timeout=60)
        assert_clean(listed, allowed=(0,))
        exported = run_cli_forked(["export", "--run", str(run_dir), "--out", str(root / "s.csv")], timeout=60)
        assert_clean(exported)
        assert fingerprint(outside) == before
        shutil.rmtree(root)

    check()


@pytest.mark.parametrize("name", ["link_projections_folder", "link_umap_log_to_bashrc"])
def test_the_map_job_never_writes_through_a_link(source, tmp_path, name):
    """What "(Re)compute the map" calls: before, it overwrote umap.parquet outside the run or
    appended its progress to whatever umap.log linked to (a ~/.bashrc)."""
    from poisonlens.errors import InputError
    from poisonlens.projection import launch_projection

    runs, run_dir, case, outside = corpus(source, tmp_path, name)
    before = fingerprint(outside)
    with pytest.raises(InputError, match="symbolic link"):
        launch_projection(run_dir, method="umap")
    assert fingerprint(outside) == before
