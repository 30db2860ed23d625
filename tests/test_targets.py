"""Choosing targets to attack: the three rules on planted probabilities, and the command."""

from __future__ import annotations

import numpy as np
import pytest

from poisonlens.cli import main
from poisonlens.errors import InputError
from poisonlens.targets import pick_targets
from tests.conftest import tiny_config


def planted(n=200, k=5, seed=0):
    """Random probabilities; the first 30 images are misclassified on purpose."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(k, size=n)
    probs = rng.dirichlet(np.ones(k), size=n)
    top = probs.argmax(1)
    probs[np.arange(n), top], probs[np.arange(n), labels] = probs[np.arange(n), labels], probs[np.arange(n), top]
    wrong = np.arange(30)
    probs[wrong] = np.roll(probs[wrong], 1, axis=1)  # the label's mass moves to another class
    assert (probs[wrong].argmax(1) != labels[wrong]).all()
    return probs, labels


@pytest.mark.parametrize("rule", ["benchmark", "random", "low-margin"])
def test_every_rule_picks_distinct_correctly_classified_targets_with_another_class(rule):
    probs, labels = planted()
    chosen = pick_targets(probs, labels, 12, rule=rule, random_state=3)
    assert len({t.index for t in chosen}) == 12
    for t in chosen:
        assert probs[t.index].argmax() == labels[t.index] == t.label
        assert t.adv_class != t.label and 0 <= t.adv_class < probs.shape[1]


def test_low_margin_takes_the_smallest_top_two_gaps_and_the_runner_up():
    probs, labels = planted()
    chosen = pick_targets(probs, labels, 5, rule="low-margin")
    s = np.sort(probs, axis=1)
    gap = s[:, -1] - s[:, -2]
    correct = np.flatnonzero(probs.argmax(1) == labels)
    assert [t.index for t in chosen] == list(correct[np.argsort(gap[correct], kind="stable")[:5]])
    assert all(t.adv_class == np.argsort(-probs[t.index])[1] for t in chosen)


def test_benchmark_draws_both_classes_at_random_not_the_runner_up():
    probs, labels = planted(n=2000)
    chosen = pick_targets(probs, labels, 200, rule="benchmark", random_state=0)
    runner_up = [t.adv_class == np.argsort(-probs[t.index])[1] for t in chosen]
    assert 0.1 < np.mean(runner_up) < 0.5  # a uniform draw over 4 other classes hits it ~1/4
    assert len({t.label for t in chosen}) == probs.shape[1]


def test_the_same_seed_gives_the_same_targets_and_another_seed_others():
    probs, labels = planted()
    a = pick_targets(probs, labels, 6, random_state=1)
    assert a == pick_targets(probs, labels, 6, random_state=1)
    assert a != pick_targets(probs, labels, 6, random_state=2)


def test_bad_requests_are_one_input_error():
    probs, labels = planted()
    with pytest.raises(InputError, match="rule"):
        pick_targets(probs, labels, 2, rule="best")
    with pytest.raises(InputError, match="only 170"):
        pick_targets(probs, labels, 171)
    with pytest.raises(InputError):
        pick_targets(probs, labels[:-1], 2)


def test_the_targets_command_prints_pairs_the_surrogate_classifies_correctly(tmp_path, capsys):
    from poisonlens.train import train

    run_dir = train(tiny_config(epochs=3, width=8), tmp_path / "clean", show_progress=False)
    assert main(["targets", "--surrogate", str(run_dir / "checkpoints" / "model.pt"), "--width", "8",
                 "--n", "3", "--seed", "1", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.split("\n")[:-1]
    pairs = [tuple(int(v) for v in line.split()) for line in lines]
    assert len(pairs) == 3 and len({t for t, _ in pairs}) == 3
    from poisonlens.data import load_dataset

    y = load_dataset("digits").y_test
    assert all(adv != y[t] for t, adv in pairs)


def test_the_targets_command_refuses_a_surrogate_of_another_shape(tmp_path, capsys):
    from poisonlens.train import train

    run_dir = train(tiny_config(epochs=1, width=8), tmp_path / "clean", show_progress=False)
    assert main(["targets", "--surrogate", str(run_dir / "checkpoints" / "model.pt"), "--width", "16",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.pt" in err


@pytest.mark.parametrize("kind", ["fifo", "link", "foreign"])
def test_a_hostile_surrogate_file_is_one_line_and_never_hangs(tmp_path, kind):
    import os
    import subprocess
    import sys

    path = tmp_path / "model.pt"
    if kind == "fifo":
        os.mkfifo(path)  # torch.load on it blocked forever before
    elif kind == "link":
        (tmp_path / "elsewhere.txt").write_text("root:x:0:0\n")
        path.symlink_to(tmp_path / "elsewhere.txt")
    else:
        path.write_text("root:x:0:0\n")  # an IndexError and exit 1 before
    done = subprocess.run([sys.executable, "-m", "poisonlens.cli", "targets", "--surrogate", str(path),
                           "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "model.pt" in done.stderr
