"""Damaged and hostile run folders: one clear error type, runs listed as unreadable, pages that
skip what they cannot read, and readers that refuse links out of the run and oversized files.

Each test damages its own copy of a small real run (tests/dashboard_runs.py), so cached readers
never see a file change under a path they already read.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from poisonlens.cli import main
from poisonlens.store import METRICS, RUN_JSON, DamagedFile, list_runs, open_run, snapshot_path
from tests.dashboard_runs import CLEAN_RUN, POISON_RUN, runs_folder

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
MY_PAGES = ["views/overview.py", "views/drift.py", "views/suspects.py", "views/about.py"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return runs_folder(tmp_path_factory) / POISON_RUN


def copy_run(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("checkpoints"))
    return dest


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def middle_snapshot(run_dir: Path) -> tuple[int, Path]:
    epochs = open_run(run_dir).snapshot_epochs()
    epoch = epochs[len(epochs) // 2]
    return epoch, snapshot_path(run_dir, epoch)


# --- the store: one error type naming the file ---------------------------------------------


def test_a_truncated_snapshot_raises_damaged_file_naming_it(source, tmp_path):
    run_dir = copy_run(source, tmp_path / "r")
    epoch, path = middle_snapshot(run_dir)
    truncate(path)
    run = open_run(run_dir)
    with pytest.raises(DamagedFile, match=path.name) as err:
        run.snapshot(epoch)
    assert len(str(err.value).splitlines()) == 1
    assert set(run.damaged_snapshots()) == {epoch}
    others = [e for e in run.snapshot_epochs() if e != epoch]
    assert all(len(run.snapshot(e)) == len(run.examples()) for e in others)


@pytest.mark.parametrize(
    "name", ["examples.parquet", "metrics.parquet", "targets.parquet", "images.npy", "target.npy"]
)
def test_every_truncated_file_kind_raises_damaged_file(source, tmp_path, name):
    run_dir = copy_run(source, tmp_path / "r")
    truncate(run_dir / name)
    run = open_run(run_dir)
    read = {
        "examples.parquet": run.examples,
        "metrics.parquet": run.metrics,
        "targets.parquet": run.targets,
        "images.npy": run.images,
        "target.npy": run.target_image,
    }[name]
    with pytest.raises(DamagedFile, match=name):
        read()


def test_export_on_a_truncated_snapshot_is_one_line_and_exit_2(source, tmp_path, capsys):
    run_dir = copy_run(source, tmp_path / "r")
    epoch = open_run(run_dir).snapshot_epochs()[-1]
    truncate(snapshot_path(run_dir, epoch))
    out = tmp_path / "s.csv"
    code = main(["export", "--run", str(run_dir), "--epoch", str(epoch), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"epoch_{epoch:04d}.parquet" in err and "Traceback" not in err
    assert not out.exists()


# --- broken runs are listed, not dropped ---------------------------------------------------


def test_a_run_with_corrupt_run_json_is_listed_as_unreadable(source, tmp_path, capsys):
    copy_run(source, tmp_path / "runs" / "good")
    bad = copy_run(source, tmp_path / "runs" / "bad-json")
    (bad / RUN_JSON).write_text('{"format_version": 1, "name": ')
    infos = {i.path.name: i for i in list_runs(tmp_path / "runs")}
    assert set(infos) == {"good", "bad-json"}
    assert infos["good"].unreadable is None
    assert infos["bad-json"].status == "unreadable" and RUN_JSON in infos["bad-json"].unreadable
    assert main(["runs", "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert (
        "bad-json" in out and "unreadable" in out and POISON_RUN in out
    )  # the good run's own name


def test_a_run_with_truncated_metrics_is_listed_with_the_reason(source, tmp_path, capsys):
    run_dir = copy_run(source, tmp_path / "runs" / "bad-metrics")
    truncate(run_dir / METRICS)
    (info,) = list_runs(tmp_path / "runs")
    assert info.name == POISON_RUN and METRICS in info.unreadable
    assert main(["runs", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert METRICS in capsys.readouterr().out


def test_runs_reads_the_attack_as_the_target_flipping_not_a_failed_run(source, tmp_path, capsys):
    copy_run(source, tmp_path / "runs" / "r")
    assert main(["runs", "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "failed" not in out
    assert "flipped" in out


# --- readers refuse what an attacker could steer -------------------------------------------


def test_a_snapshot_that_links_out_of_the_run_is_refused(source, tmp_path):
    run_dir = copy_run(source, tmp_path / "r")
    epoch, path = middle_snapshot(run_dir)
    outside = tmp_path / "elsewhere.parquet"
    shutil.copy(path, outside)
    path.unlink()
    path.symlink_to(outside)
    run = open_run(run_dir)
    with pytest.raises(DamagedFile, match="symbolic link"):
        run.snapshot(epoch)
    path.unlink()
    path.symlink_to("/etc/passwd")
    with pytest.raises(DamagedFile, match="symbolic link"):
        run.snapshot_columns(epoch)


def test_a_run_json_link_out_of_the_run_is_listed_unreadable(source, tmp_path):
    run_dir = copy_run(source, tmp_path / "runs" / "r")
    outside = tmp_path / "run.json"
    shutil.copy(run_dir / RUN_JSON, outside)
    (run_dir / RUN_JSON).unlink()
    (run_dir / RUN_JSON).symlink_to(outside)
    with pytest.raises(DamagedFile, match="symbolic link"):
        open_run(run_dir)
    (info,) = list_runs(tmp_path / "runs")
    assert info.status == "unreadable"


@pytest.mark.parametrize(
    "text, problem",
    [
        ("[" * 100_000 + "]" * 100_000, "nested"),
        ('{"format_version": 1, "n": ' + "9" * 5000 + "}", "digits"),
        ('{"format_version": 1, "pad": "' + "x" * (2 << 20) + '"}', "larger than"),
        ('["not", "an", "object"]', "object"),
        ('{"format_version": 1, "name": "x", "config": [], "status": "finished"}', "config"),
        (
            '{"format_version": 1, "name": "x", "config": {}, "status": "finished", "class_names": ["a"], '
            '"target": {"target_label": 0, "adv_label": 7}}',
            "adv_label",
        ),
    ],
)
def test_hostile_run_json_is_refused_with_a_reason(source, tmp_path, text, problem):
    run_dir = copy_run(source, tmp_path / "r")
    (run_dir / RUN_JSON).write_text(text)
    with pytest.raises(DamagedFile, match=problem):
        open_run(run_dir)


def test_a_parquet_file_declaring_a_huge_table_is_refused_before_reading(
    source, tmp_path, monkeypatch
):
    import poisonlens.store

    run_dir = copy_run(source, tmp_path / "r")
    monkeypatch.setattr(poisonlens.store, "MAX_TABLE_BYTES", 1000)
    with pytest.raises(DamagedFile, match="larger than"):
        open_run(run_dir).examples()


def test_an_images_file_of_the_wrong_type_is_refused(source, tmp_path):
    run_dir = copy_run(source, tmp_path / "r")
    np.save(run_dir / "images.npy", np.zeros((3, 2), np.float64))
    with pytest.raises(DamagedFile, match="images.npy"):
        open_run(run_dir).images()


# --- the pages skip what they cannot read --------------------------------------------------


def app(runs: Path, page: str, run: str | None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    if run:
        at.query_params["run"] = run
    at.switch_page(page)
    return at.run()


def messages(at: AppTest) -> str:
    # as the page reads: run-controlled text is shown with its Markdown escaped (a backslash
    # before '.', '_', '-' ...), which the browser does not display
    return "\n".join(m.value for kind in (at.error, at.warning, at.info) for m in kind).replace("\\", "")


DAMAGES = [
    "run.json",
    "metrics.parquet",
    "examples.parquet",
    "snapshot",
    "targets.parquet",
    "images.npy",
    "target.npy",
    "progress.json",
]
# which damaged files each page must name (it reads them); the others it may never open
NAMED = {
    "views/overview.py": {
        "run.json",
        "metrics.parquet",
        "examples.parquet",
        "snapshot",
        "target.npy",
    },
    "views/drift.py": {"run.json", "examples.parquet", "snapshot", "targets.parquet", "images.npy"},
    "views/suspects.py": {"run.json", "examples.parquet", "snapshot", "images.npy"},
    "views/about.py": {"run.json"},
}


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("page", MY_PAGES)
def test_every_page_survives_a_damaged_file_and_names_it(
    source, tmp_path, monkeypatch, page, damage
):
    runs = tmp_path / "runs"
    run_dir = copy_run(source, runs / f"damaged-{damage.replace('.', '-')}")
    if damage == "snapshot":
        _, path = middle_snapshot(run_dir)
    else:
        path = run_dir / damage
        if not path.exists():  # a finished run may have no progress.json
            path.write_text('{"epoch": 1}')
    truncate(path)
    monkeypatch.setenv("POISONLENS_RUNS", str(runs))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    at = app(runs, page, run_dir.name)
    assert not at.exception, at.exception
    if damage in NAMED[page]:
        assert path.name in messages(at), messages(at)
    if damage == "snapshot" and page != "views/about.py":
        assert at.title[0].value  # the page drew itself; the other snapshots stay usable


def test_a_link_to_an_unreadable_run_says_so_and_opens_no_other(source, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    copy_run(source, runs / "fine")
    bad = copy_run(source, runs / "broken")
    (bad / RUN_JSON).write_text("{")
    monkeypatch.setenv("POISONLENS_RUNS", str(runs))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    at = app(runs, "views/overview.py", "broken")
    assert not at.exception
    assert "broken" in messages(at) and RUN_JSON in messages(at)
    assert not at.subheader  # the overview of "fine" is not shown in its place
    labels = at.selectbox(key="run_picker").options
    assert any("broken" in label and "unreadable" in label for label in labels)


def test_a_link_to_a_run_that_does_not_exist_says_so(source, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    copy_run(source, runs / "fine")
    monkeypatch.setenv("POISONLENS_RUNS", str(runs))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    at = app(runs, "views/overview.py", "no-such-run")
    assert not at.exception
    assert "no-such-run" in messages(at)
    assert not at.subheader


def test_an_empty_runs_folder_says_the_sample_is_shown(tmp_path, monkeypatch, source):
    samples = tmp_path / "samples"
    copy_run(source, samples / "sample-run")
    monkeypatch.setenv("POISONLENS_RUNS", str(tmp_path / "empty"))
    monkeypatch.setenv("POISONLENS_SAMPLES", str(samples))
    at = app(tmp_path, "views/overview.py", None)
    assert not at.exception
    text = messages(at) + "\n".join(c.value for c in at.caption)
    assert "sample" in text and "POISONLENS_RUNS" in text and str(tmp_path / "empty") in text


def test_a_finished_run_without_snapshots_does_not_promise_one(source, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    run_dir = copy_run(source, runs / "no-snapshots")
    shutil.rmtree(run_dir / "snapshots")
    monkeypatch.setenv("POISONLENS_RUNS", str(runs))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    for page in ("views/drift.py", "views/suspects.py"):
        at = app(runs, page, run_dir.name)
        assert not at.exception
        text = messages(at)
        assert "snapshot" in text and "before training starts" not in text and "yet" not in text


def test_the_about_page_explains_compare(tmp_path, monkeypatch):
    monkeypatch.setenv("POISONLENS_RUNS", str(tmp_path))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    at = app(tmp_path, "views/about.py", None)
    assert "**Compare**" in "\n".join(m.value for m in at.markdown)


def test_clean_run_is_listed_once(tmp_path_factory):
    # the fixture's clean run stays readable and listed (guards list_runs' new error path)
    runs = runs_folder(tmp_path_factory)
    names = [i.name for i in list_runs(runs)]
    assert names.count(CLEAN_RUN) == 1 and all(i.unreadable is None for i in list_runs(runs))
    assert os.path.isdir(runs / CLEAN_RUN) and json.loads((runs / CLEAN_RUN / RUN_JSON).read_text())


def test_runs_on_an_empty_folder_points_at_the_sample(tmp_path, capsys):
    assert main(["runs", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"no runs in {tmp_path}" in out and "sample_data/runs" in out


def test_a_target_image_whose_header_claims_58_tib_is_one_damaged_file_error(tmp_path):
    """The .npy header is checked against the file's size before any allocation."""
    import numpy as np

    from poisonlens.store import DamagedFile, _read_npy

    path = tmp_path / "target.npy"
    header = {"descr": "|u1", "fortran_order": False, "shape": (4_000_000, 4_000_000, 4)}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 64)
    with pytest.raises(DamagedFile, match="target.npy"):
        _read_npy(path, ndim=3, mmap=False)
