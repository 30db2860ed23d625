"""``poisonlens select``: npz in, one CSV row of decisions per example out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from poisonlens.cli import build_parser, main
from poisonlens.commands.select import COLUMNS
from poisonlens.defense.epic import select
from poisonlens.defense.epic_config import flag_of, option_fields

ROOT = Path(__file__).resolve().parents[1]


def write_grads(
    path, n: int = 120, n_classes: int = 3, seed: int = 0, **extra
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    p = rng.dirichlet(np.ones(n_classes), n)
    p[np.arange(n), labels] -= 1
    grads = p.astype(np.float32)
    np.savez(path, **{"grads": grads, "labels": labels, **extra})
    return grads, labels


def test_decisions_csv_has_one_row_per_example_in_index_order(tmp_path, capsys):
    grads, labels = write_grads(tmp_path / "g.npz")
    out = tmp_path / "d.csv"
    assert (
        main(
            [
                "select",
                "--input",
                str(tmp_path / "g.npz"),
                "--subset-size",
                "0.1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    table = pd.read_csv(out)
    assert list(table.columns) == COLUMNS
    assert table["index"].tolist() == list(range(len(labels)))
    assert table["label"].tolist() == labels.tolist()
    assert "would be dropped" in capsys.readouterr().out


def test_decisions_are_those_of_select_with_the_given_options(tmp_path):
    grads, labels = write_grads(tmp_path / "g.npz", seed=1)
    out = tmp_path / "d.csv"
    argv = ["select", "--input", str(tmp_path / "g.npz"), "--subset-size", "0.3", "--out", str(out)]
    argv += ["--metric", "cosine", "--greedy", "stochastic", "--thresh", "2", "--seed", "5"]
    assert main(argv) == 0
    want = select(
        grads,
        labels,
        subset_size=0.3,
        metric="cosine",
        greedy="stochastic",
        cluster_thresh=2,
        random_state=5,
    )
    table = pd.read_csv(out)
    assert table["medoid"].tolist() == want.medoid.tolist()
    assert table["cluster_size"].tolist() == want.cluster_size.tolist()
    assert table["is_medoid"].tolist() == want.is_medoid.tolist()
    assert table["isolated"].tolist() == want.isolated.tolist()
    np.testing.assert_allclose(table["score"], want.score, rtol=1e-8)


def test_help_documents_every_option_and_its_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["select", "--help"])
    text = capsys.readouterr().out
    for option in (
        "--input",
        "--subset-size",
        "--metric",
        "--greedy",
        "--thresh",
        "--seed",
        "--out",
    ):
        assert option in text
    for default in ("(default: euclidean)", "(default: lazy)", "; default: 1)", "; default: 0)"):
        assert default in text


def test_every_epic_option_is_on_the_command_line_with_its_help(capsys):
    # The options are generated from EpicConfig: a new field cannot be left off the CLI.
    with pytest.raises(SystemExit):
        build_parser().parse_args(["select", "--help"])
    text = capsys.readouterr().out
    for f in option_fields():
        assert flag_of(f) in text, f.name
    assert "--method {auto,exact,greedi}" in text


@pytest.mark.parametrize("subset_size", ["0", "1.5", "-0.2", "-0.1", "nan", "inf"])
def test_subset_size_outside_0_1_is_a_one_line_error(tmp_path, capsys, subset_size):
    write_grads(tmp_path / "g.npz")
    argv = [
        "select",
        "--input",
        str(tmp_path / "g.npz"),
        "--subset-size",
        subset_size,
        "--out",
        str(tmp_path / "d.csv"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"poisonlens: --subset-size: must be in (0, 1], got {float(subset_size)}"


def run_bad(tmp_path, capsys, path) -> str:
    argv = [
        "select",
        "--input",
        str(path),
        "--subset-size",
        "0.1",
        "--out",
        str(tmp_path / "d.csv"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err
    assert not (tmp_path / "d.csv").exists()
    return err


def test_missing_file_is_a_one_line_error(tmp_path, capsys):
    assert run_bad(tmp_path, capsys, tmp_path / "nope.npz").endswith("no such file")


def test_a_file_that_is_not_npz_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "g.npz").write_text("grads,labels\n")
    assert "not a readable .npz archive" in run_bad(tmp_path, capsys, tmp_path / "g.npz")


def test_a_missing_array_is_named(tmp_path, capsys):
    np.savez(tmp_path / "g.npz", gradients=np.zeros((3, 2), np.float32), labels=np.zeros(3, int))
    assert "missing array 'grads' (found: gradients, labels)" in run_bad(
        tmp_path, capsys, tmp_path / "g.npz"
    )


def test_nan_in_grads_is_a_one_line_error(tmp_path, capsys):
    grads, labels = write_grads(tmp_path / "g.npz")
    grads[5, 0] = np.nan
    np.savez(tmp_path / "g.npz", grads=grads, labels=labels)
    assert "grads has NaN or inf in 1 rows (first: row 5)" in run_bad(
        tmp_path, capsys, tmp_path / "g.npz"
    )


def test_float_labels_are_a_one_line_error(tmp_path, capsys):
    grads, labels = write_grads(tmp_path / "g.npz")
    np.savez(tmp_path / "g.npz", grads=grads, labels=labels.astype(float))
    assert "labels must be ints" in run_bad(tmp_path, capsys, tmp_path / "g.npz")


def test_an_output_folder_that_does_not_exist_is_a_one_line_error(tmp_path, capsys):
    write_grads(tmp_path / "g.npz")
    out = tmp_path / "missing" / "d.csv"
    argv = ["select", "--input", str(tmp_path / "g.npz"), "--subset-size", "0.1", "--out", str(out)]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().endswith(f"{out}: its folder does not exist")


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [
        ("--subset-size", "abc", "must be a number, got 'abc'"),
        ("--thresh", "-1", "must be >= 0, got -1.0"),
        ("--epsilon", "1", "must be in (0, 1), got 1.0"),
        ("--seed", "1.5", "must be an int, got '1.5'"),
        ("--metric", "manhattan", "must be one of euclidean, cosine, got 'manhattan'"),
        ("--method", "fast", "must be one of auto, exact, greedi, got 'fast'"),
        ("--partition-size", "0", "must be an int >= 1, got 0"),
        ("--n-jobs", "-3", "must be an int >= -1, got -3"),
    ],
)
def test_a_bad_option_value_is_one_line_naming_the_option(tmp_path, capsys, option, value, problem):
    write_grads(tmp_path / "g.npz")
    argv = ["select", "--input", str(tmp_path / "g.npz"), "--subset-size", "0.1"]
    argv += ["--out", str(tmp_path / "d.csv"), option, value]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"poisonlens: {option}: {problem}"
    assert not (tmp_path / "d.csv").exists()


def test_greedi_and_stochastic_together_are_a_one_line_error(tmp_path, capsys):
    write_grads(tmp_path / "g.npz")
    argv = ["select", "--input", str(tmp_path / "g.npz"), "--subset-size", "0.1"]
    argv += ["--out", str(tmp_path / "d.csv"), "--method", "greedi", "--greedy", "stochastic"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "use greedy='lazy'" in err


def test_out_naming_a_folder_is_a_one_line_error(tmp_path, capsys):
    write_grads(tmp_path / "g.npz")
    argv = ["select", "--input", str(tmp_path / "g.npz"), "--subset-size", "0.1"]
    argv += ["--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"poisonlens: {tmp_path}: is a folder; give a file name for the CSV"


def test_a_truncated_npz_is_a_one_line_error(tmp_path, capsys):
    write_grads(tmp_path / "full.npz", n=2000)
    data = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "g.npz").write_bytes(data[: len(data) // 2])
    assert "not a readable .npz archive" in run_bad(tmp_path, capsys, tmp_path / "g.npz")


def test_a_one_dimensional_grads_array_is_a_one_line_error(tmp_path, capsys):
    np.savez(tmp_path / "g.npz", grads=np.zeros(5, np.float32), labels=np.zeros(5, int))
    assert "grads must be a real 2-D array" in run_bad(tmp_path, capsys, tmp_path / "g.npz")


def test_method_greedi_writes_the_decisions_of_select_with_greedi(tmp_path):
    grads, labels = write_grads(tmp_path / "g.npz", n=600, seed=2)
    out = tmp_path / "d.csv"
    argv = ["select", "--input", str(tmp_path / "g.npz"), "--subset-size", "0.1", "--out", str(out)]
    argv += ["--method", "greedi", "--partition-size", "60", "--n-jobs", "2", "--seed", "3"]
    assert main(argv) == 0
    want = select(
        grads, labels, subset_size=0.1, method="greedi", partition_size=60, random_state=3
    )
    exact = select(grads, labels, subset_size=0.1, method="exact", random_state=3)
    table = pd.read_csv(out)
    assert table["medoid"].tolist() == want.medoid.tolist()
    assert table["isolated"].tolist() == want.isolated.tolist()
    np.testing.assert_allclose(table["score"], want.score, rtol=1e-8)
    assert not np.array_equal(want.medoid, exact.medoid)  # the partitions really changed things


def test_select_never_imports_torch(tmp_path):
    # In a fresh interpreter, through the real entry point: `poisonlens select` (GreeDi and the
    # registry of defenses included) runs without torch.
    write_grads(tmp_path / "g.npz")
    argv = ["select", "--input", str(tmp_path / "g.npz"), "--subset-size", "0.1"]
    argv += ["--method", "greedi", "--partition-size", "20", "--out", str(tmp_path / "d.csv")]
    code = (
        "import sys\n"
        "from poisonlens.cli import main\n"
        f"assert main({argv!r}) == 0\n"
        "import poisonlens.defense\n"
        "poisonlens.defense.defense_names()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert len(pd.read_csv(tmp_path / "d.csv")) == 120


def test_the_printed_time_is_the_selection_s_wall_time_not_the_sum_over_classes(tmp_path, capsys, monkeypatch):
    # classes merged in threads overlap: their seconds summed would overstate the wait
    import re
    from dataclasses import replace

    import poisonlens.defense.epic as epic

    grads, labels = write_grads(tmp_path / "g.npz", seed=2)
    real = epic.select

    def slow_classes(*args, **kwargs):
        chosen = real(*args, **kwargs)
        return replace(chosen, seconds=np.full_like(chosen.seconds, 500.0))

    monkeypatch.setattr(epic, "select", slow_classes)
    argv = ["select", "--input", str(tmp_path / "g.npz"), "--subset-size", "0.3", "--out", str(tmp_path / "d.csv")]
    assert main(argv) == 0
    seconds = float(re.search(r"selection ([\d.]+) s", capsys.readouterr().out).group(1))
    assert seconds < 60


def test_an_npz_whose_header_claims_40_gb_is_refused_before_allocating(tmp_path, capsys):
    # 16 bytes of data behind an .npy header claiming 10^9 x 10 float32: the bounded reader
    # compares the claim with --max-array-bytes before it allocates anything
    import struct
    import zipfile

    def npy(descr: str, shape: tuple) -> bytes:
        header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
        header = header.ljust(118) + "\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(16)

    with zipfile.ZipFile(tmp_path / "g.npz", "w") as archive:
        archive.writestr("grads.npy", npy("<f4", (10**9, 10)))
        archive.writestr("labels.npy", npy("<i8", (2,)))
    err = run_bad(tmp_path, capsys, tmp_path / "g.npz")
    assert "field 'grads' size in bytes 40,000,000,000 exceeds the limit" in err
