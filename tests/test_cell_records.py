"""A finished cell's record: the tables and a random twin's counts outlive the run folders, and a
forged or damaged record is one line naming it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from poisonlens import cell_records
from poisonlens.cli import main
from poisonlens.errors import InputError
from poisonlens.evaluate import cell_config, cell_record, cell_state, plan_grid, run_grid
from poisonlens.store import open_run
from tests.conftest import REPO, tiny_config

TINY = ["--epochs", "2", "--width", "4", "--snapshot-every", "1", "--drop-after", "0",
        "--stop-after", "2", "--seeds", "0", "--quiet"]
TABLES = ("runs.csv", "detection.csv", "summary.csv", "paired.csv", "summary.md")
pytestmark = pytest.mark.timeout(1200)


def test_the_tables_are_the_same_after_the_run_folders_are_deleted(one_set, tmp_path):
    out = tmp_path / "out"
    grid = ["evaluate", "--poisons", str(one_set), "--defenses", "clean,none,epic-0.3,random-0.3",
            *TINY, "--out", str(out)]
    assert main(grid) == 0
    tables = {name: (out / name).read_bytes() for name in TABLES}
    root = out / "runs" / "scratch"
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    assert len(folders) == 4
    for folder in folders:
        assert cell_records.has_record(folder)
    assert cell_records.model_path(root / "clean__seed0").is_file()  # the control's weights
    assert not cell_records.model_path(root / "a__none__seed0").exists()
    for folder in folders:
        shutil.rmtree(folder)

    assert main([*grid, "--finished-only"]) == 0
    assert {name: (out / name).read_bytes() for name in TABLES} == tables
    assert main(grid) == 0  # nothing is trained again: every cell is finished by its record
    assert not any(p.is_dir() for p in root.iterdir())
    assert {name: (out / name).read_bytes() for name in TABLES} == tables


def test_a_random_drop_copies_the_counts_of_a_twin_known_only_by_its_record(one_set, tmp_path):
    epic, rand = plan_grid([one_set / "a.npz"], ["epic-0.3", "random-0.3"], [0], tmp_path / "out")
    base = tiny_config(epochs=3, snapshot_every=1)
    run_grid(base, [epic], show_progress=False)
    counts = {int(e): int(n) for e, n in zip(open_run(epic.run_dir).metrics()["epoch"],
                                             open_run(epic.run_dir).metrics()["n_new_drops"],
                                             strict=True) if n > 0}
    assert counts and cell_records.has_record(epic.run_dir)
    shutil.rmtree(epic.run_dir)
    assert cell_state(epic.run_dir) == "finished"

    config = cell_config(base, rand)
    assert config.defense_params == {"counts": counts}
    assert config.tags["twin"] == epic.run_dir.name
    run_grid(base, [epic, rand], show_progress=False)  # the EPIC cell is not trained again
    assert not epic.run_dir.exists()
    dropped = open_run(rand.run_dir).metrics()
    assert {int(e): int(n) for e, n in zip(dropped["epoch"], dropped["n_new_drops"], strict=True)
            if n > 0} == counts


def test_a_cell_trained_again_from_scratch_replaces_its_old_record(one_set, tmp_path):
    (cell,) = plan_grid([one_set / "a.npz"], ["none"], [0], tmp_path / "out")
    cell.run_dir.parent.mkdir(parents=True)
    forged = _valid_record(cell.run_dir, epochs=99)
    cell.run_dir.mkdir()  # an earlier attempt that died before writing anything
    assert cell_state(cell.run_dir) == "fresh"
    assert json.loads(forged.read_text())["config"]["epochs"] == 99
    run_grid(tiny_config(epochs=1), [cell], show_progress=False)
    assert cell_record(cell)["config"]["epochs"] == 1


def _valid_record(run_dir, *, epochs=2, **identity):
    ident = {"scenario": "scratch", "poison_set": "a", "defense": "none", "seed": 0, **identity}
    cell_records.write_record(
        run_dir, identity=ident, config={"epochs": epochs},
        summary={**{k: 0.5 for k in cell_records.SUMMARY_KEYS}, "attack_success": 0.0, "n_dropped": 3},
        detection=[{"epoch": 1, "n_suspect": 0, "precision": float("nan"), "recall": 0.0,
                    "roc_auc": None}],
        drops={1: 3},
    )
    return cell_records.record_path(run_dir)


def _edit(path, change):
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


DAMAGE = {
    "another cell": (lambda r: r["identity"].update(defense="epic-0.2"), "records another cell"),
    "another version": (lambda r: r.update(version=2), "version 1"),
    "a word for a number": (lambda r: r["summary"].update(test_acc="high"), "summary.test_acc"),
    "a bool for a number": (lambda r: r["detection"][0].update(recall=True), "detection.recall"),
    "a negative drop": (lambda r: r.update(drops=[[1, -5]]), "'drops'"),
    "a float epoch": (lambda r: r.update(drops=[[1.5, 3]]), "'drops'"),
    "no config": (lambda r: r.pop("config"), "'config'"),
    "a path for the model": (lambda r: r.update(model="/etc/passwd"), "'model'"),
    # found by an attacker's review: numbers of the right type but out of range went into the
    # tables (or crashed with exit 1 in the Wilson interval); each failed before the fix
    "a success of 7": (lambda r: r["summary"].update(attack_success=7), "summary.attack_success"),
    "a success of 0.9": (lambda r: r["summary"].update(attack_success=0.9), "summary.attack_success"),
    "a recall of 42": (lambda r: r["summary"].update(recall=42), "summary.recall"),
    "an accuracy of 1e308": (lambda r: r["summary"].update(test_acc=1e308), "summary.test_acc"),
    "a negative count": (lambda r: r["summary"].update(n_dropped=-5), "summary.n_dropped"),
    "a null epoch": (lambda r: r["detection"][0].update(epoch=None), "detection.epoch"),
    "a null n_suspect": (lambda r: r["detection"][0].update(n_suspect=None), "detection.n_suspect"),
    "a negative fractional epoch": (lambda r: r["detection"][0].update(epoch=-7.5), "detection.epoch"),
    "drops that do not add up": (lambda r: r.update(drops=[[1, 4]]), "add up to 4"),
    "an epoch dropped twice": (lambda r: r.update(drops=[[1, 1], [1, 2]]), "twice"),
    "another run's name": (lambda r: r.update(run="b__none__seed0"), "records the run"),
    "a bool for the seed": (lambda r: r["identity"].update(seed=False), "records another cell"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_record_is_refused_naming_it(tmp_path, damage):
    change, words = DAMAGE[damage]
    path = _valid_record(tmp_path / "a__none__seed0")
    _edit(path, change)
    with pytest.raises(InputError, match=words) as err:
        cell_records.read_record(tmp_path / "a__none__seed0",
                                 {"scenario": "scratch", "poison_set": "a", "defense": "none",
                                  "seed": 0})
    assert str(path) in str(err.value)


def test_a_valid_record_reads_back_with_nan_for_missing_numbers(tmp_path):
    _valid_record(tmp_path / "a__none__seed0")
    rec = cell_records.read_record(tmp_path / "a__none__seed0", {
        "scenario": "scratch", "poison_set": "a", "defense": "none", "seed": 0})
    assert rec["drops"] == {1: 3} and rec["model"] is None and rec["summary"]["test_acc"] == 0.5
    assert pd.isna(rec["detection"][0]["precision"]) and pd.isna(rec["detection"][0]["roc_auc"])


def test_a_record_that_is_a_link_or_too_large_is_refused(tmp_path):
    real = _valid_record(tmp_path / "elsewhere")
    link_dir = tmp_path / "runs"
    link_dir.mkdir()
    os.symlink(real, cell_records.record_path(link_dir / "a__none__seed0"))
    with pytest.raises(InputError, match="link"):
        cell_records.has_record(link_dir / "a__none__seed0")
    big = _valid_record(tmp_path / "big")
    big.write_text(" " * (cell_records.MAX_RECORD_BYTES + 1) + big.read_text())
    with pytest.raises(InputError, match="larger|bytes"):
        cell_records.read_record(tmp_path / "big", {"scenario": "scratch", "poison_set": "a",
                                                     "defense": "none", "seed": 0})


def test_evaluate_with_a_forged_record_exits_2_with_one_line(one_set, tmp_path):
    out = tmp_path / "out"
    run_dir = out / "runs" / "scratch" / "a__none__seed0"
    run_dir.parent.mkdir(parents=True)
    _edit(_valid_record(run_dir), lambda r: r["summary"].update(seconds=[1, 2]))
    proc = subprocess.run(
        [sys.executable, "-m", "poisonlens.cli", "evaluate", "--poisons", str(one_set),
         "--defenses", "none", *TINY, "--finished-only", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "a__none__seed0.cell.json" in lines[0] and "seconds" in lines[0]
    assert "Traceback" not in proc.stderr


# --- an attacker's review of the records a grid reads (each test failed before its fix) -------


@pytest.fixture(scope="module")
def finished_grid(tmp_path_factory):
    """A tiny finished grid (clean, none, epic-0.3 and its twin) whose run folders are deleted:
    every cell lives on in its record."""
    from tests.test_evaluate import label_flip_set

    root = tmp_path_factory.mktemp("grid")
    (root / "sets").mkdir()
    label_flip_set(root / "sets" / "a.npz", 20, 0)
    out = root / "out"
    assert main(["evaluate", "--poisons", str(root / "sets"), "--defenses", "clean,none,epic-0.3,random-0.3",
                 *TINY, "--out", str(out)]) == 0
    for folder in [p for p in (out / "runs" / "scratch").iterdir() if p.is_dir()]:
        shutil.rmtree(folder)
    return root


def _evaluate(grid_copy, *extra, finished_only=True):
    return subprocess.run(
        [sys.executable, "-m", "poisonlens.cli", "evaluate", "--poisons", str(grid_copy / "sets"),
         "--defenses", "clean,none,epic-0.3,random-0.3", *TINY, "--jobs", "1",
         *(["--finished-only"] if finished_only else []), "--out", str(grid_copy / "out"), *extra],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )


def _one_line(proc, *words):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-1500:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    for w in words:
        assert w in lines[0], lines[0]


def test_a_control_record_does_not_choose_the_data_set_that_is_loaded(finished_grid, tmp_path):
    # it opened the path the record named; now a record of another data set is another grid's
    # cell, refused before anything is read (the same data set at another machine's path is
    # this grid's: test_evaluate's test_options_that_do_not_change_a_cell_are_not_a_different_grid)
    copy = tmp_path / "g"
    shutil.copytree(finished_grid, copy)
    _edit(copy / "out" / "runs" / "scratch" / "clean__seed0.cell.json",
          lambda r: r["config"].update(dataset="imagefolder:/nonexistent/victim/photos"))
    _one_line(_evaluate(copy), "clean__seed0.cell.json", "trained with dataset 'imagefolder:photos', this grid 'digits'")


@pytest.mark.parametrize("field, value, says", [
    ("model", "torchvision:vit_l_16", "model"),  # it built a 300M-parameter model
    ("width", 2300, "width"),  # 2.8 GB of memory
])
def test_a_control_record_does_not_choose_what_is_loaded_or_built(finished_grid, tmp_path, field, value, says):
    copy = tmp_path / "g"
    shutil.copytree(finished_grid, copy)
    _edit(copy / "out" / "runs" / "scratch" / "clean__seed0.cell.json", lambda r: r["config"].update({field: value}))
    _one_line(_evaluate(copy), "clean__seed0.cell.json", says)


def test_a_forged_record_under_another_name_does_not_steer_the_random_twin(finished_grid, tmp_path):
    copy = tmp_path / "g"
    shutil.copytree(finished_grid, copy)
    scratch = copy / "out" / "runs" / "scratch"
    real = json.loads((scratch / "a__epic-0.3__seed0.cell.json").read_text())
    (scratch / "a__random-0.3__seed0.cell.json").unlink()  # the twin is trained again
    forged = dict(real, drops=[[0, 3]], run="0forged")
    (scratch / "0forged.cell.json").write_text(json.dumps(forged))
    done = _evaluate(copy, finished_only=False)
    assert done.returncode == 0, done.stderr[-1500:]
    counts = open_run(scratch / "a__random-0.3__seed0").config["defense_params"]["counts"]
    assert {int(e): n for e, n in counts.items()} == {e: n for e, n in real["drops"]}


def test_a_damaged_twin_record_stops_the_grid_before_the_twin_trains_unmatched(finished_grid, tmp_path):
    copy = tmp_path / "g"
    shutil.copytree(finished_grid, copy)
    scratch = copy / "out" / "runs" / "scratch"
    (scratch / "a__random-0.3__seed0.cell.json").unlink()
    _edit(scratch / "a__epic-0.3__seed0.cell.json", lambda r: r["summary"].update(test_acc="x"))
    _one_line(_evaluate(copy, finished_only=False), "a__epic-0.3__seed0.cell.json")
    assert not (scratch / "a__random-0.3__seed0").exists()
    assert not (scratch / "a__random-0.3__seed0.cell.json").exists()


@pytest.mark.parametrize("payload", ["list", "shape"])
def test_control_weights_that_do_not_fit_are_one_line_naming_them(finished_grid, tmp_path, payload):
    import torch

    copy = tmp_path / "g"
    shutil.copytree(finished_grid, copy)
    weights = [torch.zeros(3)] if payload == "list" else {"x": torch.zeros(3)}
    torch.save(weights, copy / "out" / "runs" / "scratch" / "clean__seed0.model.pt")
    _one_line(_evaluate(copy), "clean__seed0.model.pt")


def test_a_link_at_the_runs_folder_is_refused(finished_grid, tmp_path):
    copy = tmp_path / "g"
    shutil.copytree(finished_grid, copy)
    (copy / "out" / "runs").rename(copy / "elsewhere")
    os.symlink(copy / "elsewhere", copy / "out" / "runs")
    _one_line(_evaluate(copy), "runs", "link")


def test_a_torch_zip_listing_too_many_entries_is_refused_before_they_are_listed(tmp_path):
    # the entry sizes were bounded, not their number: a file at the size limit made of tiny
    # entries had zipfile build millions of entries in memory before any check
    import zipfile

    from poisonlens.checkpoint import MAX_ZIP_DIRECTORY, torch_load

    many = tmp_path / "many.pt"
    with zipfile.ZipFile(many, "w") as z:  # 70,000 entries: zipfile writes zip64 end records
        for i in range(70_000):
            z.writestr(f"archive/data/{i}", b"")
    assert many.stat().st_size < 3 * MAX_ZIP_DIRECTORY
    with pytest.raises(InputError, match="zip directory is over"):
        torch_load(many)


def _torch_zip_variants():
    """Zips an attacker's review got past the torch zip checks with (each a file torch.load
    opens as a zip, since it starts as one)."""
    import io
    import struct
    import zipfile

    import torch

    def end(size, offset, disk=0, disk_start=0):
        return struct.pack("<4s4H2LH", b"PK\x05\x06", disk, disk_start, 0, 0, size, offset, 0)

    entry = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, *[0] * 7, 1, *[0] * 6) + b"x"
    head = b"PK\x03\x04" + bytes(26)
    listing = entry * (5 * 2**20 // len(entry))  # a 5 MiB directory of 47-byte entries
    plain = io.BytesIO()
    torch.save({"w": torch.zeros(1 << 20, dtype=torch.uint8)}, plain)
    deflated = io.BytesIO()
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    locator = plain.getvalue()[-42:-22]
    two_disks = locator[:16] + struct.pack("<L", 2)
    return {
        # an end signature in the end record's disk fields hid it from the search; zipfile
        # used it anyway, listing 110,000 entries
        "signature in its disk fields": (head + listing + end(len(listing), 30, 0x4B50, 0x0605), "zip directory is over"),
        # four trailing bytes made zipfile say "not a zip": no check ran, and torch inflated it
        "a stray end signature after a deflated zip": (deflated.getvalue() + b"PK\x05\x06", "does not end with its end record"),
        # zipfile raised BadZipFile: exit 1 and no file named
        "a zip64 locator spanning two disks": (plain.getvalue()[:-42] + two_disks + plain.getvalue()[-22:], "damaged zip"),
    }


@pytest.mark.parametrize("case", list(_torch_zip_variants()))
def test_a_torch_zip_that_readers_disagree_about_is_refused_in_one_line(tmp_path, case):
    from poisonlens.checkpoint import torch_load

    data, says = _torch_zip_variants()[case]
    path = tmp_path / "model.pt"
    path.write_bytes(data)
    with pytest.raises(InputError, match=says):
        torch_load(path, max_bytes=10**8)


def test_a_compressed_torch_file_is_refused_before_it_inflates(tmp_path):
    import io
    import zipfile

    import torch

    from poisonlens.checkpoint import torch_load

    plain = io.BytesIO()
    torch.save({"w": torch.zeros(1 << 20, dtype=torch.uint8)}, plain)
    plain.seek(0)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert bomb.stat().st_size < 100_000  # a megabyte of zeros in a few kilobytes
    with pytest.raises(InputError, match="compressed"):
        torch_load(bomb)
    (tmp_path / "plain.pt").write_bytes(plain.getvalue())
    assert torch_load(tmp_path / "plain.pt")["w"].numel() == 1 << 20
    with pytest.raises(InputError, match="more than 1,000 bytes|larger"):
        torch_load(tmp_path / "plain.pt", max_bytes=1000)
