"""Tampered copies of a real run folder, for tests/test_tampered_runs.py.

The companion of :mod:`tests.bad_inputs.make_corpus` (hostile data and poison files) for the
other way files reach poisonlens: a run folder copied from someone else. Each case is a
function ``case_<name>(run_dir, outside) -> RunCase`` that damages ``run_dir`` (a fresh copy of
a small real run, checkpoints included) in one way; ``outside`` is a sentinel folder next to
the run, the place a link would lead reads, writes and deletions to. Tests check it byte for
byte afterwards, and that :data:`SECRET` (the content of its files) is shown nowhere.

Usage: ``python -m tests.bad_inputs.make_run_corpus SOURCE_RUN OUT_DIR`` writes every case
into ``OUT_DIR/runs/<name>/`` (with the sentinel in ``OUT_DIR/outside``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SECRET = "POISONLENS-RUN-SECRET-51c2e8"
# run.json strings an attacker controls: terminal escapes, forged lines, Markdown and HTML
HOSTILE_TEXT = "\x1b]0;pwned\x07\x1b[31mred\n[click](http://evil.example/x) ![px](http://evil.example/p.png) <img src=x>"


@dataclass(frozen=True)
class RunCase:
    """What a tampered run must produce.

    Attributes
    ----------
    damaged : True when every reader must see the run as damaged (``runs`` marks it, resume
        and project refuse it with exit 2); False for a run that is only odd (hostile text)
    files : the run files the tampering touched (what a refusal names, any of them)
    """

    damaged: bool = True
    files: tuple[str, ...] = ()


# --------------------------------------------------------------------- the sentinel folder


def make_outside(folder: Path, source_run: Path) -> Path:
    """The sentinel: secret files, and copies of run files a link might stand for."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "secret.txt").write_text(SECRET + "\n" * 20)
    (folder / "bashrc").write_text(f"# {SECRET}\nexport PATH=/usr/bin\n")
    (folder / ".notes.tmp").write_text(SECRET)
    (folder / "model.pt").write_text(SECRET)
    (folder / "umap.parquet").write_text(SECRET)
    (folder / "umap.log").write_text(SECRET)
    for name in ("run.json", "metrics.parquet", "examples.parquet", "images.npy"):
        shutil.copy(source_run / name, folder / name)
    for sub in ("snapshots", "projections", "checkpoints"):
        if (source_run / sub).is_dir() and not (folder / sub).exists():
            shutil.copytree(source_run / sub, folder / sub)
            (folder / sub / ".notes.tmp").write_text(SECRET)
    return folder


def fingerprint(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (not following links) with its type and content hash."""
    out = {}
    for base, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            path = Path(base) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = "special"
    return out


# --------------------------------------------------------------------- helpers


def first_snapshot(run_dir: Path) -> Path:
    return sorted((run_dir / "snapshots").glob("epoch_*.parquet"))[1]


def relink(path: Path, target: Path | str) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
    path.symlink_to(target)


def fifo(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
    os.mkfifo(path)


def edit_run_json(run_dir: Path, edit: Callable[[dict], None]) -> None:
    meta = json.loads((run_dir / "run.json").read_text())
    edit(meta)
    (run_dir / "run.json").write_text(json.dumps(meta))


def replace_in_run_json(run_dir: Path, old: str, new: str) -> None:
    text = (run_dir / "run.json").read_text()
    assert old in text, old
    (run_dir / "run.json").write_text(text.replace(old, new, 1))


def edit_table(path: Path, edit: Callable[[pa.Table], pa.Table]) -> None:
    table = pq.read_table(path)
    pq.write_table(edit(table), path)


def set_column(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values))


# --------------------------------------------------------------------- links at every level


def case_link_run_json(run_dir: Path, outside: Path) -> RunCase:
    relink(run_dir / "run.json", outside / "run.json")
    return RunCase(files=("run.json",))


def case_link_metrics(run_dir: Path, outside: Path) -> RunCase:
    relink(run_dir / "metrics.parquet", outside / "metrics.parquet")
    return RunCase(files=("metrics.parquet",))


def case_link_examples(run_dir: Path, outside: Path) -> RunCase:
    relink(run_dir / "examples.parquet", outside / "examples.parquet")
    return RunCase(files=("examples.parquet",))


def case_link_images_to_dev_zero(run_dir: Path, outside: Path) -> RunCase:
    relink(run_dir / "images.npy", "/dev/zero")
    return RunCase(files=("images.npy",))


def case_link_progress_to_secret(run_dir: Path, outside: Path) -> RunCase:
    relink(run_dir / "progress.json", outside / "secret.txt")
    return RunCase(files=("progress.json",))


def case_link_one_snapshot(run_dir: Path, outside: Path) -> RunCase:
    snap = first_snapshot(run_dir)
    relink(snap, outside / "snapshots" / snap.name)
    return RunCase(files=(snap.name,))


def case_link_snapshots_folder(run_dir: Path, outside: Path) -> RunCase:
    relink(run_dir / "snapshots", outside / "snapshots")
    return RunCase(files=("snapshots",))


def case_link_checkpoints_folder(run_dir: Path, outside: Path) -> RunCase:
    relink(run_dir / "checkpoints", outside / "checkpoints")
    return RunCase(files=("checkpoints",))


def case_link_last_pt(run_dir: Path, outside: Path) -> RunCase:
    relink(run_dir / "checkpoints" / "last.pt", outside / "checkpoints" / "last.pt")
    return RunCase(files=("last.pt",))


def case_link_projections_folder(run_dir: Path, outside: Path) -> RunCase:
    relink(run_dir / "projections", outside / "projections")
    return RunCase(files=("projections",))


def case_link_umap_log_to_bashrc(run_dir: Path, outside: Path) -> RunCase:
    (run_dir / "projections").mkdir(exist_ok=True)
    relink(run_dir / "projections" / "umap.log", outside / "bashrc")
    return RunCase(files=("umap.log",))


def case_link_writer_lock_to_dev_zero(run_dir: Path, outside: Path) -> RunCase:
    relink(run_dir / "writer.lock", "/dev/zero")
    return RunCase(files=("writer.lock",))


def case_link_launch_and_train_log(run_dir: Path, outside: Path) -> RunCase:
    (run_dir / "launch.json").write_text(json.dumps({"pid": 1, "command": "x", "started": 1.0}))
    relink(run_dir / "train.log", outside / "secret.txt")
    return RunCase(files=("train.log",))


def case_link_run_folder_itself(run_dir: Path, outside: Path) -> RunCase:
    copy = outside.parent / f"{run_dir.name}-real"
    shutil.move(run_dir, copy)
    run_dir.symlink_to(copy)
    return RunCase(files=(run_dir.name,))


# --------------------------------------------------------------------- FIFOs


def case_fifo_run_json(run_dir: Path, outside: Path) -> RunCase:
    fifo(run_dir / "run.json")
    return RunCase(files=("run.json",))


def case_fifo_metrics(run_dir: Path, outside: Path) -> RunCase:
    fifo(run_dir / "metrics.parquet")
    return RunCase(files=("metrics.parquet",))


def case_fifo_snapshot(run_dir: Path, outside: Path) -> RunCase:
    snap = first_snapshot(run_dir)
    fifo(snap)
    return RunCase(files=(snap.name,))


def case_fifo_train_log(run_dir: Path, outside: Path) -> RunCase:
    (run_dir / "launch.json").write_text(json.dumps({"pid": 1, "command": "x", "started": 1.0}))
    fifo(run_dir / "train.log")
    return RunCase(files=("train.log",))


def case_fifo_writer_lock(run_dir: Path, outside: Path) -> RunCase:
    fifo(run_dir / "writer.lock")
    return RunCase(files=("writer.lock",))


def case_fifo_progress(run_dir: Path, outside: Path) -> RunCase:
    fifo(run_dir / "progress.json")
    return RunCase(files=("progress.json",))


# --------------------------------------------------------------------- numbers


def case_epochs_1e999(run_dir: Path, outside: Path) -> RunCase:
    meta = json.loads((run_dir / "run.json").read_text())
    replace_in_run_json(run_dir, f'"epochs": {meta["config"]["epochs"]}', '"epochs": 1e999')
    return RunCase(files=("run.json",))


def case_epochs_nan(run_dir: Path, outside: Path) -> RunCase:
    meta = json.loads((run_dir / "run.json").read_text())
    replace_in_run_json(run_dir, f'"epochs": {meta["config"]["epochs"]}', '"epochs": NaN')
    return RunCase(files=("run.json",))


def case_epochs_huge_int(run_dir: Path, outside: Path) -> RunCase:
    edit_run_json(run_dir, lambda m: m["config"].update(epochs=10**60))
    return RunCase(files=("run.json",))


def case_created_is_text(run_dir: Path, outside: Path) -> RunCase:
    edit_run_json(run_dir, lambda m: m.update(created="yesterday"))
    return RunCase(files=("run.json",))


def case_n_dropped_inf(run_dir: Path, outside: Path) -> RunCase:
    path = run_dir / "metrics.parquet"
    edit_table(path, lambda t: set_column(t, "n_dropped", np.full(t.num_rows, np.inf)))
    return RunCase(files=("metrics.parquet",))


def case_test_acc_inf(run_dir: Path, outside: Path) -> RunCase:
    path = run_dir / "metrics.parquet"
    edit_table(path, lambda t: set_column(t, "test_acc", np.full(t.num_rows, -np.inf)))
    return RunCase(files=("metrics.parquet",))


def case_progress_epoch_1e999(run_dir: Path, outside: Path) -> RunCase:
    (run_dir / "progress.json").write_text('{"epoch": 1e999, "epochs": 4, "phase": "train"}')
    return RunCase(files=("progress.json",))


# --------------------------------------------------------------------- types and schemas


def case_name_is_a_list(run_dir: Path, outside: Path) -> RunCase:
    edit_run_json(run_dir, lambda m: m.update(name=["x"]))
    return RunCase(files=("run.json",))


def case_metrics_epoch_as_text(run_dir: Path, outside: Path) -> RunCase:
    path = run_dir / "metrics.parquet"
    edit_table(path, lambda t: set_column(t, "epoch", [f"e{i}" for i in range(t.num_rows)]))
    return RunCase(files=("metrics.parquet",))


def case_examples_without_labels(run_dir: Path, outside: Path) -> RunCase:
    path = run_dir / "examples.parquet"
    edit_table(path, lambda t: t.drop(["label"]))
    return RunCase(files=("examples.parquet",))


def case_snapshot_of_text(run_dir: Path, outside: Path) -> RunCase:
    snap = first_snapshot(run_dir)
    edit_table(snap, lambda t: set_column(t, "label", [str(i) for i in range(t.num_rows)]))
    return RunCase(files=(snap.name,))


def case_images_of_floats(run_dir: Path, outside: Path) -> RunCase:
    np.save(run_dir / "images.npy", np.zeros((3, 2, 2, 1), np.float64))
    return RunCase(files=("images.npy",))


# --------------------------------------------------------------------- decoded-size bombs


def case_examples_40m_constant_rows(run_dir: Path, outside: Path) -> RunCase:
    """A few hundred KB on disk: 40M rows of one repeated value (RLE), which decode to GBs."""
    n = 40_000_000
    schema = pa.schema([("index", pa.int64()), ("label", pa.int64()), ("is_poison", pa.bool_()),
                        ("base_index", pa.int64())])
    with pq.ParquetWriter(run_dir / "examples.parquet", schema, compression="zstd") as out:
        chunk = 4_000_000
        part = pa.table({"index": pa.array(np.zeros(chunk, np.int64)), "label": pa.array(np.zeros(chunk, np.int64)),
                         "is_poison": pa.array(np.zeros(chunk, bool)),
                         "base_index": pa.array(np.full(chunk, -1, np.int64))}, schema=schema)
        for _ in range(n // chunk):
            out.write_table(part)
    return RunCase(files=("examples.parquet",))


def case_snapshot_40m_rows(run_dir: Path, outside: Path) -> RunCase:
    snap = first_snapshot(run_dir)
    n = 20_000_000
    pq.write_table(pa.table({"label": pa.array(np.zeros(n, np.int64))}), snap, compression="zstd")
    return RunCase(files=(snap.name,))


# --------------------------------------------------------------------- labels


def case_label_of_a_billion(run_dir: Path, outside: Path) -> RunCase:
    path = run_dir / "examples.parquet"
    edit_table(path, lambda t: set_column(t, "label", np.r_[10**9, t["label"].to_numpy()[1:]]))
    return RunCase(files=("examples.parquet",))


def case_negative_label(run_dir: Path, outside: Path) -> RunCase:
    path = run_dir / "examples.parquet"
    edit_table(path, lambda t: set_column(t, "label", np.r_[-3, t["label"].to_numpy()[1:]]))
    return RunCase(files=("examples.parquet",))


def case_snapshot_label_of_a_billion(run_dir: Path, outside: Path) -> RunCase:
    snap = first_snapshot(run_dir)
    edit_table(snap, lambda t: set_column(t, "label", np.r_[10**9, t["label"].to_numpy()[1:]]))
    return RunCase(files=(snap.name,))


# --------------------------------------------------------------------- hostile text


def case_hostile_text_everywhere(run_dir: Path, outside: Path) -> RunCase:
    def edit(meta: dict) -> None:
        meta["name"] = HOSTILE_TEXT
        meta["error"] = HOSTILE_TEXT
        meta["config"]["defense"] = HOSTILE_TEXT
        meta["config"]["tags"] = {HOSTILE_TEXT: HOSTILE_TEXT}
        meta["class_names"] = [HOSTILE_TEXT + str(i) for i in range(len(meta["class_names"]))]
        if meta.get("target"):
            meta["target"]["attack"] = HOSTILE_TEXT

    edit_run_json(run_dir, edit)
    return RunCase(damaged=False, files=("run.json",))


CASES: dict[str, Callable[[Path, Path], RunCase]] = {
    name[len("case_"):]: func for name, func in sorted(globals().items()) if name.startswith("case_")
}


def make_case(name: str, source_run: Path, runs: Path, outside: Path) -> tuple[Path, RunCase]:
    """Copy ``source_run`` to ``runs/<name>`` and tamper it with case ``name``."""
    run_dir = runs / name
    shutil.copytree(source_run, run_dir, symlinks=True)
    return run_dir, CASES[name](run_dir, outside)


def main(argv: list[str]) -> int:
    source, out = Path(argv[0]), Path(argv[1])
    outside = make_outside(out / "outside", source)
    for name in CASES:
        make_case(name, source, out / "runs", outside)
        print(out / "runs" / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
