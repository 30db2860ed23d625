"""The run's options: one frozen dataclass, the single source for the CLI, the form and the launcher.

Every field is made by :func:`poisonlens.options.option`: its help text, its choices or range
(:class:`~poisonlens.options.Range`) and its command-line spelling ride in the field's metadata,
the one option-metadata system poisonlens has (EPIC's options use it too). ``poisonlens
train``/``evaluate`` options, the dashboard's New run form and the background launcher are all
generated from :func:`option_fields`, so a field cannot be dropped on the way. Help texts name
registries in braces (``{formats}``, ``{defenses}``), filled with the registered names when
shown (:func:`poisonlens.options.fill_names`). This module imports neither torch nor numpy, so
commands that only need the options start at once.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, Field, asdict, dataclass, fields

from poisonlens.data_formats import find_format
from poisonlens.device import parse_device
from poisonlens.errors import InputError
from poisonlens.options import HIDDEN, Cli, Range, option

__all__ = ["Range", "TrainConfig", "check_dataset_spec", "option_fields", "option_name"]

MODEL_NAMES = ("smallcnn", "resnet18")
SCENARIOS = ("scratch", "transfer", "finetune")
AUGMENTS = ("auto", "none", "crop", "crop-flip")
AMP_MODES = ("off", "bf16", "fp16")


def check_dataset_spec(spec: str) -> None:
    """Raise :class:`InputError` naming ``spec`` unless a registered data format reads it.

    Only the form is checked (:func:`poisonlens.data_formats.find_format`), nothing is read: a
    misspelt ``digts`` is refused before torch or a data set loads.

    Parameters
    ----------
    spec : str
        A data set spec, e.g. ``digits`` or ``imagefolder:data/pets``.
    """
    find_format(spec)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; saved in run.json. Optimiser defaults are EPIC's (ICML 2022)."""

    dataset: str = option("digits", "data set: {formats} (docs/data-formats.md)")
    poisons: str | None = option(
        None, "poison set: a poisonlens .npz or a benchmark pickle folder (none: clean run)"
    )
    clean_control: bool = option(
        False, "clean control: keep the poison set's target but train on the base images"
    )
    exclude: str | None = option(
        None,
        "CSV with an 'index' column: train without those examples (a suspects export, or a "
        "review export, of which only the rows marked poison count)",
    )
    model: str = option(
        "smallcnn",
        "network: smallcnn, resnet18, torchvision:NAME, timm:NAME or module.path:factory "
        "(a callable returning an nn.Module; see docs/api.md)",
        choices=MODEL_NAMES,
        cli=Cli(open_choices=True),  # the choices are what the form offers; the CLI takes any spec
    )
    width: int = option(32, "channels of the small CNN's first block", within=Range(1, 1024))
    scenario: str = option(
        "scratch",
        "scratch, transfer (frozen pretrained body, new head) or finetune (whole network)",
        choices=SCENARIOS,
    )
    pretrained: str | None = option(None, "model.pt of another run, for transfer / finetune")
    epochs: int = option(40, "training epochs", within=Range(1, 100_000))
    batch_size: int = option(
        128, "global batch size (all processes together under torchrun)", within=Range(2, 1_000_000)
    )
    lr: float | None = option(
        None,
        "learning rate (default: 0.1 scratch/transfer, 0.01 finetune)",
        within=Range(0, None, open_low=True),
    )
    momentum: float = option(0.9, "SGD momentum", within=Range(0, 1, open_high=True))
    nesterov: bool = option(True, "Nesterov momentum")
    weight_decay: float = option(5e-4, "L2 weight decay", within=Range(0))
    lr_milestones: tuple[float, ...] = option(
        (0.375, 0.625, 0.875),
        "fractions of --epochs where the lr is multiplied by --lr-gamma",
        within=Range(0, 1),
    )
    lr_gamma: float = option(
        0.1, "lr multiplier at each milestone", within=Range(0, None, open_low=True)
    )
    augment: str = option(
        "auto", "augmentation ('auto': crop-flip for colour, crop for grey)", choices=AUGMENTS
    )
    snapshot_every: int = option(
        2, "epochs between gradient snapshots (EPIC's T)", within=Range(1, 100_000)
    )
    defense: str = option("none", "a registered defense: {defenses}")
    defense_params: dict = option({}, "defense parameters, as KEY=VALUE (VALUE read as JSON)")
    drop_after: int = option(
        4, "first epoch whose snapshot may drop examples", within=Range(0, 1_000_000)
    )
    stop_after: int = option(
        30, "snapshots at this epoch or later drop nothing", within=Range(0, 1_000_000)
    )
    seed: int = option(
        0, "random seed (model init, shuffling, augmentation)", within=Range(0, 2**32 - 1)
    )
    embedding_dims: int = option(
        64,
        "penultimate features stored per snapshot (wider models: random projection)",
        within=Range(1, 4096),
    )
    snapshot_batch_size: int = option(
        128,
        "batch size of the snapshot pass (moderate batches stay in a CPU's cache)",
        within=Range(1, 1_000_000),
    )
    device: str = option("auto", "auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps")
    amp: str = option("off", "mixed precision on CUDA (snapshots stay float32)", choices=AMP_MODES)
    tags: dict = option(
        {}, "the run's identity as data (poison set, scenario, defense, seed, twin)", cli=HIDDEN
    )

    @property
    def resolved_lr(self) -> float:
        """The learning rate before decay: ``lr``, or the scenario's default."""
        if self.lr is not None:
            return self.lr
        return 0.01 if self.scenario == "finetune" else 0.1

    def snapshot_epochs(self) -> list[int]:
        """Epochs at which a snapshot is taken: 0, every ``snapshot_every``, and the last."""
        return sorted(
            {0, self.epochs, *range(self.snapshot_every, self.epochs + 1, self.snapshot_every)}
        )

    def validate(self) -> None:
        """Raise :class:`InputError` naming the option (``--kebab-case``) for a bad value.

        Checks each field's type, choices and range (the same metadata the CLI's types read),
        then the rules between fields. Nothing is loaded: data sets, poison sets and the
        defense's parameters are checked where they are read (see :meth:`check_defense`).
        """
        for f in fields(self):
            value, option = getattr(self, f.name), option_name(f.name)
            if not _type_ok(value, f):
                raise InputError(option, f"has the wrong type ({type(value).__name__})")
            choices, rng = f.metadata.get("choices"), f.metadata.get("range")
            if f.name == "model":
                from poisonlens.model_spec import parse

                parse(value)  # its form only: nothing is imported here
            elif choices and value not in choices:
                raise InputError(option, f"must be one of {', '.join(choices)}, got {value!r}")
            values = value if isinstance(value, tuple) else () if value is None else (value,)
            for v in values if rng is not None else ():
                if (problem := rng.problem(v)) is not None:
                    raise InputError(option, problem)
        check_dataset_spec(self.dataset)
        parse_device(self.device)  # the one rule for --device (poisonlens.device)
        checks = [
            (
                self.drop_after <= self.stop_after,
                "drop-after",
                f"must be at most --stop-after ({self.stop_after}), got {self.drop_after}",
            ),
            (
                self.scenario == "scratch" or bool(self.pretrained),
                "scenario",
                f"{self.scenario} needs --pretrained",
            ),
            (
                not self.clean_control or bool(self.poisons),
                "clean-control",
                "needs a poison set (for its target)",
            ),
        ]
        for ok, option, message in checks:
            if not ok:
                raise InputError(f"--{option}", message)
        for key in self.defense_params:
            if not isinstance(key, str) or not key.isidentifier():
                raise InputError("--defense-param", f"{key!r} is not a parameter name")

    def check_defense(self) -> None:
        """Raise :class:`InputError` when ``defense`` is not registered or refuses its params.

        Imports the defense registry (numpy and scikit-learn, no torch), so it is called where
        a run is about to start, not at import time.
        """
        from poisonlens.defense import build_defense, defense_names

        names = defense_names()
        if self.defense not in names:
            raise InputError(
                "--defense", f"unknown defense {self.defense!r}; choose from {', '.join(names)}"
            )
        try:
            build_defense(self.defense, **self.defense_params)
        except TypeError as err:  # an unknown keyword
            raise InputError("--defense-param", f"{self.defense}: {err}") from None
        except ValueError as err:  # InputError is a ValueError
            raise InputError("--defense-param", f"{self.defense}: {err}") from None

    def to_json(self) -> dict:
        """The config as plain JSON types (what run.json and the launcher carry)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        """Rebuild a config from :meth:`to_json`'s output; unknown or mistyped keys are refused.

        Parameters
        ----------
        data : dict
            What :meth:`to_json` wrote (run.json's or launch.json's ``config``).
        """
        if not isinstance(data, dict):
            raise InputError("config", "must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError("config", f"unknown option {unknown[0]!r}")
        data = dict(data)
        if "lr_milestones" in data:
            if not isinstance(data["lr_milestones"], list | tuple):
                raise InputError("config", "lr_milestones must be a list of numbers")
            data["lr_milestones"] = tuple(data["lr_milestones"])
        for f in fields(cls):
            if f.name in data and not _type_ok(data[f.name], f):
                raise InputError(
                    "config", f"{f.name} has the wrong type ({type(data[f.name]).__name__})"
                )
        return cls(**data)

    @classmethod
    def from_json_text(cls, text: str) -> TrainConfig:
        """Parse a JSON config (e.g. a ``--config`` file); any problem is an :class:`InputError`.

        Parameters
        ----------
        text : str
            The JSON text of a config.
        """
        return cls.from_json(parse_json_text(text))


def parse_json_text(text: str) -> object:
    """JSON with bounded integers (20 digits) and nesting (Python's recursion limit, caught).

    Parameters
    ----------
    text : str
        The JSON text (a ``--config`` file's contents).

    Raises
    ------
    InputError
        Naming ``config``, for text that is not such JSON.
    """
    try:
        return json.loads(text, parse_int=_bounded_int)
    except (ValueError, RecursionError) as err:
        raise InputError("config", f"not valid JSON ({str(err).splitlines()[0][:80]})") from None


def _bounded_int(text: str) -> int:
    if len(text) > 20:
        raise ValueError("integer too long")
    return int(text)


def _type_ok(value, f: Field) -> bool:
    default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    hint = str(f.type)
    if value is None:
        return "None" in hint
    if isinstance(default, bool) or hint.startswith("bool"):
        return isinstance(value, bool)
    if "float" in hint and "tuple" not in hint:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint.startswith("int"):
        return isinstance(value, int) and not isinstance(value, bool)
    if hint.startswith("str"):
        return isinstance(value, str)
    if hint.startswith("dict"):
        return isinstance(value, dict)
    if hint.startswith("tuple"):
        return all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    return True


def option_fields(*, cli_only: bool = True) -> list[Field]:
    """The config fields in declaration order, each with ``metadata['help']`` and ``['choices']``.

    Parameters
    ----------
    cli_only : bool
        Leave out the fields with no command-line option (``tags``); default True.
    """
    return [f for f in fields(TrainConfig) if f.metadata.get("cli", True) or not cli_only]


MAX_PARAM_TEXT = 1000  # characters of one --defense-param


def option_name(field_name: str) -> str:
    """The command-line option of a config field: ``batch_size`` -> ``--batch-size``.

    Parameters
    ----------
    field_name : str
        A TrainConfig field, e.g. ``batch_size``.
    """
    return "--" + field_name.replace("_", "-")


def parse_defense_param(text: str) -> tuple[str, object]:
    """One ``KEY=VALUE`` defense parameter; VALUE is read as JSON when it can be, else a string.

    Parameters
    ----------
    text : e.g. ``'subset_size=0.2'``, ``'metric=cosine'`` or ``'k=[1, 2]'``

    Returns
    -------
    (key, value)

    Raises
    ------
    InputError
        Naming ``--defense-param`` when there is no ``=``, the key is not a name, the text is
        longer than ``MAX_PARAM_TEXT`` or the value is not finite (``NaN``, ``Infinity``).
    """
    if len(text) > MAX_PARAM_TEXT:
        raise InputError("--defense-param", f"longer than {MAX_PARAM_TEXT} characters")
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InputError("--defense-param", f"expected KEY=VALUE, got {text!r}")
    if not key.isidentifier():
        raise InputError("--defense-param", f"{key!r} is not a parameter name")
    try:
        parsed = json.loads(value, parse_int=_bounded_int, parse_constant=_no_constant)
    except _NotFinite:
        raise InputError(
            "--defense-param", f"{key}: must be a finite number, got {value}"
        ) from None
    except (ValueError, RecursionError):
        parsed = value.strip()
    return key, parsed


def parse_defense_params(pairs: list[str], subset_size: float | None = None) -> dict:
    """``KEY=VALUE`` texts as a dict (see :func:`parse_defense_param`); ``subset_size``, when
    given, sets ``subset_size`` (the CLI's ``--subset-size`` and the form's EPIC field).

    Parameters
    ----------
    pairs : list of str
        ``KEY=VALUE`` texts, one parameter each.
    subset_size : float, optional
        EPIC's subset size, set as the ``subset_size`` parameter when given.
    """
    params = dict(parse_defense_param(pair) for pair in pairs)
    if subset_size is not None:
        params["subset_size"] = subset_size
    return params


class _NotFinite(ValueError):
    pass


def _no_constant(name: str) -> float:
    raise _NotFinite(name)


def config_to_argv(config: TrainConfig) -> list[str]:
    """Command-line options that rebuild ``config`` (``poisonlens train`` reads them back).

    Only fields that differ from the defaults are written; ``tags`` (not an option) and any
    other ``cli=False`` field is refused rather than dropped. The launcher shows a run's config
    as a command with it (it passes the config itself as JSON).

    Parameters
    ----------
    config : TrainConfig
        The options to write.

    Returns
    -------
    list of str, e.g. ``['--epochs=12', '--defense=epic', '--defense-param', 'subset_size=0.2']``
    """
    default = TrainConfig()
    argv: list[str] = []
    for f in option_fields(cli_only=False):
        value = getattr(config, f.name)
        if value == getattr(default, f.name):
            continue
        if not f.metadata.get("cli", True):
            raise InputError(option_name(f.name), "has no command-line option; use --config")
        if f.name == "defense_params":
            for key, v in value.items():
                argv += ["--defense-param", f"{key}={json.dumps(v)}"]
        elif isinstance(value, bool):
            argv.append(option_name(f.name) if value else "--no-" + option_name(f.name)[2:])
        elif isinstance(value, tuple):
            argv.append(f"{option_name(f.name)}={','.join(repr(float(v)) for v in value)}")
        elif value is not None:
            argv.append(f"{option_name(f.name)}={value}")
    return argv
