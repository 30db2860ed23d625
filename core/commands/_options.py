"""Command-line options generated from :class:`poisonlens.config.TrainConfig`, and argparse types with ranges.

One definition per option: every config field with ``cli=True`` becomes ``--kebab-case`` with
the field's help, choices and range (``poisonlens.config.option_fields``), so ``poisonlens train``,
``poisonlens evaluate`` and the background launcher cannot disagree on a name or a rule.

For command modules::

    from poisonlens.commands._options import add_config_arguments, config_from_args

    def add_parser(sub):
        p = sub.add_parser("mine", help="...")
        add_config_arguments(p, exclude=("defense", "defense_params", "seed"))  # set by the grid

    def run(args):
        base = config_from_args(args, dataset="digits")  # keyword overrides win

Options not given on the command line are *absent* from ``args`` (argparse's ``SUPPRESS``), so
:func:`config_from_args` knows what the user chose: a ``--config FILE.json`` gives the base,
explicit options override it, and the help still shows each default once (in the help text).

Every value is checked where it is parsed: a bad one ends as one line
``poisonlens: --option: problem`` with exit status 2 (see ``poisonlens.cli``). This module imports
neither torch nor numpy.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable
from dataclasses import Field, replace
from pathlib import Path

from poisonlens.config import (
    Range,
    TrainConfig,
    config_to_argv,
    option_fields,
    option_name,
    parse_defense_param,
    parse_json_text,
)
from poisonlens.defense.epic_config import subset_size_field
from poisonlens.device import parse_device
from poisonlens.errors import InputError, one_line
from poisonlens.options import default_of, names_formatter
from poisonlens.run_names import check_run_name

__all__ = ["add_config_arguments", "config_from_args", "config_to_argv"]

MAX_TEXT = 4096  # characters of a path or spec given on the command line
MAX_CONFIG_BYTES = 1_000_000  # a --config file is a small JSON object
SUBSET_SIZE: Range = subset_size_field().metadata["range"]  # EPIC's own (0, 1], one definition


# --- argparse types ------------------------------------------------------------------------
# Each raises argparse.ArgumentTypeError, whose text argparse shows after the option's name.


def _number(text: str, kind: type) -> float:
    text = text.strip()
    if len(text) > 40:
        raise argparse.ArgumentTypeError(f"{one_line(text, 40)!r} is too long for a number")
    try:
        value = kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {what}, got {one_line(text, 40)!r}") from None
    return value


def int_in(rng: Range) -> Callable[[str], int]:
    """An argparse type: an integer in ``rng``.

    Parameters
    ----------
    rng : Range
        The allowed integers; the parser's message says the rule it breaks.
    """

    def parse(text: str) -> int:
        value = _number(text, int)
        if (problem := rng.problem(value)) is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = "int"
    return parse


def float_in(rng: Range | None = None) -> Callable[[str], float]:
    """An argparse type: a finite number, in ``rng`` when given (NaN and infinities refused).

    Parameters
    ----------
    rng : Range, optional
        The allowed numbers (default: any finite number).
    """

    def parse(text: str) -> float:
        value = _number(text, float)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text.strip()}")
        if rng is not None and (problem := rng.problem(value)) is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = "float"
    return parse


positive_int = int_in(Range(1, None))
nonneg_int = int_in(Range(0, None))
finite_float = float_in()
nonneg_float = float_in(Range(0, None))
fraction = float_in(SUBSET_SIZE)  # (0, 1]
fraction_open = float_in(Range(0, 1, open_low=True, open_high=True))  # (0, 1)


def float_list_in(rng: Range | None = None) -> Callable[[str], tuple[float, ...]]:
    """An argparse type: comma-separated finite numbers (``''``: none), each in ``rng``.

    Parameters
    ----------
    rng : Range, optional
        The range every number of the list must be in (default: any finite number).
    """
    one = float_in(rng)

    def parse(text: str) -> tuple[float, ...]:
        if len(text) > 1000:
            raise argparse.ArgumentTypeError("too long a list")
        return tuple(one(part) for part in text.split(",") if part.strip())

    parse.__name__ = "list"
    return parse


def text(value: str) -> str:
    """An argparse type: a non-empty, bounded text without NUL (a path or a data set spec).

    Parameters
    ----------
    value : str
        The text typed after the option; at most ``MAX_TEXT`` characters.
    """
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    if len(value) > MAX_TEXT or "\0" in value:
        raise argparse.ArgumentTypeError(f"not a usable path or name: {one_line(value, 60)!r}")
    return value


def plain_name(value: str) -> str:
    """An argparse type: a run name that is a plain file name (``poisonlens.run_names``).

    Refuses ``..``, ``.``, ``a/b``, absolute paths and anything over 100 characters, so a run
    is always created inside its runs folder.

    Parameters
    ----------
    value : str
        The run name typed after ``--name``.
    """
    try:
        return check_run_name(value)
    except InputError as err:
        raise argparse.ArgumentTypeError(err.problem) from None


def folder(value: str) -> Path:
    """An argparse type: a folder, or a path where one can be created (not an existing file).

    Parameters
    ----------
    value : str
        The path typed; ``~`` is expanded.
    """
    path = Path(text(value)).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{one_line(value, 100)} is a file, not a folder")
    return path


def existing_folder(value: str) -> Path:
    """An argparse type: a folder that exists.

    Parameters
    ----------
    value : str
        The path typed; ``~`` is expanded.
    """
    path = folder(value)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {one_line(value, 100)}")
    return path


def device(value: str) -> str:
    """An argparse type: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (syntax only; whether
    the device is present is checked when training starts).

    Parameters
    ----------
    value : str
        The device typed after ``--device``, e.g. ``cuda:1``.
    """
    try:
        parse_device(value)  # the one rule for --device
    except InputError as err:
        raise argparse.ArgumentTypeError(err.problem) from None
    return value


def defense_param(value: str) -> tuple[str, object]:
    """An argparse type: one ``KEY=VALUE`` defense parameter (:func:`poisonlens.config.parse_defense_param`).

    Parameters
    ----------
    value : str
        One ``KEY=VALUE`` text, e.g. ``fraction=0.05`` (VALUE read as JSON when it can be).
    """
    try:
        return parse_defense_param(value)
    except InputError as err:
        raise argparse.ArgumentTypeError(err.problem) from None


def config_file(value: str) -> TrainConfig:
    """An argparse type: a ``TrainConfig`` JSON file (``TrainConfig.to_json``), or a run.json or
    launch.json holding one under ``config``; read with a size and depth limit, problems name
    the file.

    Parameters
    ----------
    value : str
        The path typed after ``--config``; at most ``MAX_CONFIG_BYTES`` are read.
    """
    path = Path(text(value)).expanduser()
    try:
        if not path.is_file():
            raise argparse.ArgumentTypeError(f"{one_line(value, 100)}: no such file")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise argparse.ArgumentTypeError(f"{one_line(value, 100)}: larger than 1 MB")
        raw = path.read_text(encoding="utf-8")
        data = parse_json_text(raw)
        if isinstance(data, dict) and isinstance(data.get("config"), dict):
            data = data["config"]  # a run.json or launch.json: the config it holds
        config = TrainConfig.from_json(data)
        config.validate()
    except InputError as err:  # from_json names 'config'; validate names the option
        problem = err.problem if err.source == "config" else f"{err.source} {err.problem}"
        raise argparse.ArgumentTypeError(f"{one_line(value, 100)}: {problem}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise argparse.ArgumentTypeError(f"{one_line(value, 100)}: unreadable ({err})") from None
    return config


# --- options from the config ---------------------------------------------------------------


def model_spec(text: str) -> str:
    """An argparse type: a ``--model`` spec (:mod:`poisonlens.model_spec`). Typed on the command
    line, a ``module.path:factory`` spec may then be imported by this process.

    Parameters
    ----------
    text : str
        The spec typed after ``--model``: ``smallcnn``, ``resnet18``, ``torchvision:NAME``, ``timm:NAME`` or ``module.path:factory``.
    """
    from poisonlens.model_spec import parse, trust

    try:
        parse(text)
    except InputError as err:
        raise argparse.ArgumentTypeError(err.problem) from None
    return trust(text)


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" for v in value)
    return str(value)


def _field_type(f: Field) -> Callable[[str], object]:
    hint, rng = str(f.type), f.metadata.get("range")
    if f.name == "device":
        return device
    if f.name == "model":
        return model_spec
    if hint.startswith("tuple"):
        return float_list_in(rng)
    if hint.startswith("int"):
        return int_in(rng or Range())
    if hint.startswith("float"):
        return float_in(rng)
    return text


def _add_defense_params(parser: argparse.ArgumentParser) -> None:
    """``--defense-param KEY=VALUE`` (repeatable) and ``--subset-size``, EPIC's own field."""
    parser.add_argument(
        "--defense-param",
        dest="defense_params",
        action="append",
        type=defense_param,
        metavar="KEY=VALUE",
        default=argparse.SUPPRESS,
        help="a defense parameter, repeatable (e.g. fraction=0.05); VALUE is read as "
        "JSON when it can be",
    )
    subset = subset_size_field()  # EPIC's field: its help, range and default
    parser.add_argument(
        "--subset-size",
        type=fraction,
        metavar=subset.metadata["metavar"],
        default=argparse.SUPPRESS,
        help=f"EPIC's {subset.metadata['help']}, {SUBSET_SIZE.describe()[8:]} (sets the "
        f"defense parameter subset_size; EPIC's default: {default_of(subset):g})",
    )


def add_config_arguments(
    parser: argparse.ArgumentParser,
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
) -> None:
    """Add a ``--kebab-case`` option for each ``TrainConfig`` field with ``cli=True``.

    Parameters
    ----------
    parser : the command's parser
    include : field names to add (default: every CLI field), in the config's order
    exclude : field names to leave out (e.g. those a command sets itself)

    Notes
    -----
    Booleans become ``--flag/--no-flag``; fields with choices list them; numbers are checked
    against the field's range as they are parsed. The parser's help formatter is made to fill
    registry names (``{defenses}``, ``{formats}``) into help texts when help is shown. ``defense_params`` becomes the repeatable
    ``--defense-param KEY=VALUE`` plus ``--subset-size`` (sugar for ``subset_size``; its range
    and help are EPIC's own field's, :func:`poisonlens.defense.epic_config.subset_size_field`).
    Options not given are absent from the parsed namespace; read it with
    :func:`config_from_args`.
    """
    parser.formatter_class = names_formatter(parser.formatter_class)  # fills {defenses}, ...
    wanted = None if include is None else set(include)
    skipped = set(exclude)
    for f in option_fields():
        if (wanted is not None and f.name not in wanted) or f.name in skipped:
            continue
        default, helptext = default_of(f), f.metadata["help"]
        if f.name == "defense_params":
            _add_defense_params(parser)
            continue
        if default is not None and "default" not in helptext:
            helptext += f" (default: {_shown(default)})"
        kwargs: dict = {"dest": f.name, "default": argparse.SUPPRESS, "help": helptext}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _field_type(f)
            if f.metadata.get("choices") and not f.metadata.get("open_choices"):
                kwargs["choices"] = f.metadata["choices"]
            elif str(f.type).startswith("tuple"):
                kwargs["metavar"] = "F,F,..."
        parser.add_argument(option_name(f.name), **kwargs)


def config_from_args(args: argparse.Namespace, **overrides) -> TrainConfig:
    """The ``TrainConfig`` the command line asks for, checked.

    Starts from ``args.config`` (a ``--config`` file, already parsed by :func:`config_file`) or
    the defaults, applies every option given on the command line, then ``overrides``.
    ``--defense-param`` and ``--subset-size`` are merged into the base's ``defense_params``.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed command line; options not given are absent from it.
    **overrides
        TrainConfig fields the command sets itself (they win over the command line).

    Returns
    -------
    TrainConfig, validated (:meth:`TrainConfig.validate`; the defense registry is not consulted:
    call :meth:`TrainConfig.check_defense` before training)

    Raises
    ------
    InputError
        Naming the option, for a value that breaks a rule between options.
    """
    given = vars(args)
    base = given.get("config") if isinstance(given.get("config"), TrainConfig) else TrainConfig()
    changes = {f.name: given[f.name] for f in option_fields() if f.name in given}
    if "defense_params" in changes or "subset_size" in given:
        params = dict(base.defense_params)
        params.update(dict(changes.get("defense_params", [])))
        if "subset_size" in given:
            params["subset_size"] = given["subset_size"]
        changes["defense_params"] = params
    config = replace(base, **{**changes, **overrides})
    config.validate()
    return config
