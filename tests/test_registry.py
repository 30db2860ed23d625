"""The registries users extend: data formats, defenses (specs, labels, options, colour columns),
the one option-metadata system, and the import graph they keep free of loops."""

from __future__ import annotations

import ast
import inspect
from dataclasses import fields
from pathlib import Path

import pytest

from poisonlens import data_formats
from poisonlens.commands import _options
from poisonlens.config import TrainConfig, check_dataset_spec
from poisonlens.data import load_dataset
from poisonlens.defense import (
    colour_columns,
    defense_names,
    defense_options,
    parse_spec,
    spec_forms,
    spec_label,
)
from poisonlens.defense.epic_config import EpicConfig, subset_size_field
from poisonlens.errors import InputError
from poisonlens.options import Range, check_values, fill_names, option

ROOT = Path(__file__).resolve().parents[1]


# --- data formats --------------------------------------------------------------------------


def test_each_builtin_format_is_one_module_with_its_prefix_and_a_doc_line():
    modules = {p.stem for p in (ROOT / "core" / "data_formats").glob("*.py")} - {"__init__"}
    found = {f.prefix: f for f in data_formats.data_formats()}
    assert set(found) == modules == {"digits", "imagefolder", "cifar10", "npz"}
    assert data_formats.format_specs() == ["digits", "cifar10:<dir>", "imagefolder:<dir>", "npz:<file>"]
    assert all(len(f.doc) > 20 and "\n" not in f.doc for f in found.values())


@pytest.mark.parametrize("spec", ["digts", "digits:x", "npz", "npz:", "imagefolder", "mnist:/data"])
def test_a_spec_no_format_reads_is_refused_with_every_format_named(spec):
    with pytest.raises(InputError) as caught:
        check_dataset_spec(spec)
    assert str(caught.value) == (
        f"{spec}: unknown data set; use digits, cifar10:<dir>, imagefolder:<dir> or npz:<file>"
    )


def test_the_dataset_help_lists_the_registered_formats():
    help_text = fill_names(TrainConfig.__dataclass_fields__["dataset"].metadata["help"])
    for spec in data_formats.format_specs():
        assert spec in help_text


def test_load_dataset_reads_through_the_registry_and_checks_the_contract(monkeypatch):
    monkeypatch.setattr(data_formats, "_REGISTRY", dict(data_formats._REGISTRY))
    data_formats.register("broken", doc="returns a data set with a label out of range")(
        lambda arg, *, name: _with_bad_label(load_dataset("digits"), name)
    )
    with pytest.raises(InputError, match="field 'y_train' has label 10, outside"):
        load_dataset("broken")


def _with_bad_label(dataset, name):
    from dataclasses import replace

    y = dataset.y_train.copy()
    y[0] = 10
    return replace(dataset, y_train=y, name=name)


# --- defenses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, parsed",
    [
        ("epic-0.2", ("epic", {"subset_size": 0.2})),
        ("random-0.1", ("random", {"match_subset": 0.1})),
        ("deepknn", ("deepknn", {})),
        ("activation-clustering", ("activation-clustering", {})),
    ],
)
def test_a_spec_is_read_by_the_defense_that_declares_it_and_labelled_back(spec, parsed):
    assert parse_spec(spec) == parsed
    assert spec_label(*parsed) == spec


@pytest.mark.parametrize("spec", ["magic", "epic-x", "deepknn-0.1"])
def test_a_spec_no_defense_reads_is_one_error_naming_the_option(spec):
    with pytest.raises(InputError, match="^--defenses: "):
        parse_spec(spec)


def test_evaluate_names_its_clean_control_among_the_specs():
    from poisonlens.evaluate import parse_defense

    with pytest.raises(InputError, match="use clean, activation-clustering, deepknn, epic-<subset_size>"):
        parse_defense("magic")


def test_spec_forms_come_from_the_declarations():
    forms = spec_forms()
    assert "epic-<subset_size>" in forms and "random-<match_subset>" in forms
    assert len(forms) == len(defense_names())


def test_a_label_hook_names_a_copied_drop_schedule():
    assert spec_label("random", {"counts": {"4": 10}}) == "random (matched drops)"
    assert spec_label("random", {"fraction": 0.05}) == "random(fraction=0.05)"


def test_colour_columns_are_declared_by_the_defense_that_writes_them():
    assert list(colour_columns("none")) == ["score"]
    epic = colour_columns("epic")
    assert epic["cluster_size"].log and "cluster_size" in colour_columns()


def test_the_map_colours_by_what_the_defenses_declare():
    from poisonlens.dashboard.figures import map_style

    for column, colour in colour_columns().items():
        assert map_style.COLOR_FIELDS[column] == (
            colour.title + (" (log10)" if colour.log else ""), "value"
        )
        assert (column in map_style.LOG_FIELDS) == colour.log


def test_epic_declares_its_options_with_the_shared_metadata():
    assert defense_options("epic") == fields(EpicConfig)
    assert defense_options("none") == ()


# --- one option-metadata system, one subset size ---------------------------------------------


def test_the_option_helper_has_at_most_six_parameters():
    assert len(inspect.signature(option).parameters) <= 6


def test_train_and_epic_options_carry_the_same_metadata_keys():
    keys = {frozenset(f.metadata) for f in (*fields(TrainConfig), *fields(EpicConfig))}
    assert len(keys) == 1


def test_check_values_refuses_what_the_metadata_refuses():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Options:
        share: float = option(0.5, "a share", within=Range(0, 1, open_low=True))

        def __post_init__(self) -> None:
            check_values(self)

    assert Options(1.0).share == 1.0
    with pytest.raises(ValueError, match=r"^share must be in \(0, 1\], got 0$"):
        Options(0)


def test_the_subset_size_range_and_default_have_one_source():
    field = subset_size_field()
    assert field.metadata["range"] == Range(0, 1, open_low=True) and field.default == 0.1
    assert _options.SUBSET_SIZE is field.metadata["range"]
    new_run = (ROOT / "dashboard" / "views" / "new_run.py").read_text(encoding="utf-8")
    assert "subset_size_field()" in new_run and "0.01" not in new_run


def test_subset_size_left_out_keeps_epics_default(tmp_path):
    from poisonlens.cli import build_parser

    args = build_parser().parse_args(["train", "--defense", "epic"])
    config = _options.config_from_args(args)
    assert "subset_size" not in config.defense_params
    args = build_parser().parse_args(["train", "--defense", "epic", "--subset-size", "0.3"])
    assert _options.config_from_args(args).defense_params == {"subset_size": 0.3}


# --- no import loops -------------------------------------------------------------------------

MINE = (
    "poisonlens.config",
    "poisonlens.options",
    "poisonlens.run_names",
    "poisonlens.launch",
    "poisonlens.commands._options",
    "poisonlens.data.",
    "poisonlens.data_formats",
)


def import_graph() -> dict[str, set[str]]:
    """Module -> the poisonlens modules it imports, at the top or inside a function."""
    paths = {}
    for folder, package in (("core", "poisonlens"), ("dashboard", "poisonlens.dashboard")):
        for path in (ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            paths[".".join([package, *parts])] = path
    graph = {}
    for name, path in paths.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in paths
                          else node.module for a in node.names}  # fmt: skip
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m in paths and m != name}
    return graph


def reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo += graph[node]
    return False


def test_no_module_of_the_registries_and_their_readers_is_in_an_import_loop():
    graph = import_graph()
    for module in graph:
        if module.startswith(MINE):
            loops = [m for m in graph[module] if reaches(graph, m, module)]
            assert not loops, f"{module} and {loops[0]} import each other"


def test_the_launcher_calls_no_command_module():
    graph = import_graph()
    assert not [m for m in graph["poisonlens.launch"] if m.startswith("poisonlens.commands")]
    assert "poisonlens.launch" not in graph["poisonlens.commands._options"]


# --- help texts read the registries without importing them ------------------------------------


def test_help_names_read_from_source_are_the_registered_ones():
    from poisonlens.attacks import attack_names
    from poisonlens.options import registry_names

    assert registry_names("defenses") == defense_names()
    assert registry_names("defense_specs") == spec_forms()
    assert registry_names("attacks") == attack_names()
    assert registry_names("formats") == data_formats.format_specs()


def test_train_and_evaluate_help_list_the_registries_without_loading_them():
    import json
    import os
    import subprocess
    import sys

    code = (
        "import contextlib, io, json, sys\n"
        "from poisonlens.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    for argv in (['train', '--help'], ['evaluate', '--help']):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "heavy = [m for m in ('torch', 'sklearn', 'numba') if m in sys.modules]\n"
        # the registries as a fresh process has them (this one holds the test defenses too)
        "from poisonlens.defense import defense_names\n"
        "from poisonlens import data_formats\n"
        "names = [*defense_names(), *data_formats.format_specs()]\n"
        "print(json.dumps({'help': out.getvalue(), 'heavy': heavy, 'names': names}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    text = " ".join(result["help"].split())
    assert "epic" in result["names"] and "digits" in result["names"]
    for name in [*result["names"], "epic-<subset_size>"]:
        assert name in text, name
