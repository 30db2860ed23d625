"""``poisonlens select``: npz in, one CSV row of decisions per example out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.cli import build_parser, main
from core.commands.select import COLUMNS
from core.defense.epic import select


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
    for default in ("(default: euclidean)", "(default: lazy)", "(default: 1)", "(default: 0)"):
        assert default in text


@pytest.mark.parametrize("subset_size", ["0", "1.5", "-0.2"])
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
    assert (
        err
        == f"poisonlens select: error: --subset-size: must be in (0, 1], got {float(subset_size)}"
    )


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
