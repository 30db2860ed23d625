"""The run's options: one frozen dataclass, the single source for the CLI, the form and the launcher.

Every field carries its help text (and, where the values are a closed set, its choices) in
``dataclasses.field(metadata=...)``: ``poisonlens train``/``evaluate`` options, the dashboard's
New run form and the background launcher are all generated from :func:`option_fields`, so a
field cannot be dropped on the way. This module imports neither torch nor numpy, so commands
that only need the options start at once.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, Field, asdict, dataclass, field, fields

from poisonlens.device import parse_device
from poisonlens.errors import InputError

MODEL_NAMES = ("smallcnn", "resnet18")
SCENARIOS = ("scratch", "transfer", "finetune")
AUGMENTS = ("auto", "none", "crop", "crop-flip")
AMP_MODES = ("off", "bf16", "fp16")
DATASET_KINDS = ("digits", "imagefolder", "cifar10", "npz")  # what poisonlens.data.load_dataset reads
DATASET_RULE = "unknown data set; use digits, imagefolder:<dir>, cifar10:<dir> or npz:<file>"


def _opt(
    default,
    help: str,
    *,
    choices: tuple | None = None,
    cli: bool = True,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
    **kw,
) -> Field:
    """A config field with its CLI help, choices and range.

    ``cli=False``: not a command-line option. ``low``/``high`` bound a number (or every number
    of a tuple), inclusive unless ``open_low``/``open_high``; the CLI's types, the form's
    widgets and :meth:`TrainConfig.validate` all read this one range.
    """
    rng = None if low is None and high is None else Range(low, high, open_low, open_high)
    meta = {"help": help, "choices": choices, "cli": cli, "range": rng}
    if kw.pop("open_choices", False):
        meta["open_choices"] = True
    if isinstance(default, dict | list):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def check_dataset_spec(spec: str) -> None:
    """Raise :class:`InputError` naming ``spec`` unless it has the form of a data set spec.

    Only the form ({'digits', 'imagefolder:<dir>', 'cifar10:<dir>', 'npz:<file>'}) is checked,
    nothing is read: a misspelt ``digts`` is refused before torch or a data set loads.
    """
    kind, sep, arg = spec.partition(":")
    if kind not in DATASET_KINDS or (kind == "digits") == bool(sep and arg):
        raise InputError(spec, DATASET_RULE)


@dataclass(frozen=True)
class Range:
    """An interval of allowed numbers; ``None`` ends are unbounded, open ends are excluded."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, x: object) -> bool:
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
            return False
        if self.low is not None and (x <= self.low if self.open_low else x < self.low):
            return False
        return self.high is None or (x < self.high if self.open_high else x <= self.high)

    def describe(self) -> str:
        """The rule in words, e.g. 'must be at least 1' or 'must be in (0, 1]'."""
        low, high = _num(self.low), _num(self.high)
        if self.low is not None and self.high is not None:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"must be in {left}{low}, {high}{right}"
        if self.low is not None:
            return f"must be {'greater than' if self.open_low else 'at least'} {low}"
        return f"must be {'less than' if self.open_high else 'at most'} {high}"

    def problem(self, x: object) -> str | None:
        """Why ``x`` is refused (one phrase), or None when it is allowed."""
        if x in self:
            return None
        if isinstance(x, float) and not math.isfinite(x):
            return f"must be a finite number, got {x}"
        return f"{self.describe()}, got {x!r}"


def _num(x: float | None) -> str:
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; saved in run.json. Optimiser defaults are EPIC's (ICML 2022)."""

    dataset: str = _opt(
        "digits", "data set: digits, imagefolder:<dir>, cifar10:<dir> or npz:<file>"
    )
    poisons: str | None = _opt(
        None, "poison set: a poisonlens .npz or a benchmark pickle folder (none: clean run)"
    )
    clean_control: bool = _opt(
        False, "clean control: keep the poison set's target but train on the base images"
    )
    exclude: str | None = _opt(
        None,
        "CSV with an 'index' column: train without those examples (a suspects export, or a "
        "review export, of which only the rows marked poison count)",
    )
    model: str = _opt(
        "smallcnn",
        "network: smallcnn, resnet18, torchvision:NAME, timm:NAME or module.path:factory "
        "(a callable returning an nn.Module; see docs/api.md)",
        choices=MODEL_NAMES,
        open_choices=True,  # the choices are what the New run form offers; the CLI takes any spec
    )
    width: int = _opt(32, "channels of the small CNN's first block", low=1, high=1024)
    scenario: str = _opt(
        "scratch",
        "scratch, transfer (frozen pretrained body, new head) or finetune (whole network)",
        choices=SCENARIOS,
    )
    pretrained: str | None = _opt(None, "model.pt of another run, for transfer / finetune")
    epochs: int = _opt(40, "training epochs", low=1, high=100_000)
    batch_size: int = _opt(
        128, "global batch size (all processes together under torchrun)", low=2, high=1_000_000
    )
    lr: float | None = _opt(
        None, "learning rate (default: 0.1 scratch/transfer, 0.01 finetune)", low=0, open_low=True
    )
    momentum: float = _opt(0.9, "SGD momentum", low=0, high=1, open_high=True)
    nesterov: bool = _opt(True, "Nesterov momentum")
    weight_decay: float = _opt(5e-4, "L2 weight decay", low=0)
    lr_milestones: tuple[float, ...] = _opt(
        (0.375, 0.625, 0.875),
        "fractions of --epochs where the lr is multiplied by --lr-gamma",
        low=0,
        high=1,
    )
    lr_gamma: float = _opt(0.1, "lr multiplier at each milestone", low=0, open_low=True)
    augment: str = _opt(
        "auto", "augmentation ('auto': crop-flip for colour, crop for grey)", choices=AUGMENTS
    )
    snapshot_every: int = _opt(
        2, "epochs between gradient snapshots (EPIC's T)", low=1, high=100_000
    )
    defense: str = _opt("none", "a registered defense (see `poisonlens select --help` for EPIC)")
    defense_params: dict = _opt({}, "defense parameters, as KEY=VALUE (VALUE read as JSON)")
    drop_after: int = _opt(4, "first epoch whose snapshot may drop examples", low=0, high=1_000_000)
    stop_after: int = _opt(
        30, "snapshots at this epoch or later drop nothing", low=0, high=1_000_000
    )
    seed: int = _opt(0, "random seed (model init, shuffling, augmentation)", low=0, high=2**32 - 1)
    embedding_dims: int = _opt(
        64,
        "penultimate features stored per snapshot (wider models: random projection)",
        low=1,
        high=4096,
    )
    snapshot_batch_size: int = _opt(
        128,
        "batch size of the snapshot pass (moderate batches stay in a CPU's cache)",
        low=1,
        high=1_000_000,
    )
    device: str = _opt("auto", "auto (CUDA when present, else CPU), cpu, cuda, cuda:N or mps")
    amp: str = _opt("off", "mixed precision on CUDA (snapshots stay float32)", choices=AMP_MODES)
    tags: dict = _opt(
        {}, "the run's identity as data (poison set, scenario, defense, seed, twin)", cli=False
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
        """Rebuild a config from :meth:`to_json`'s output; unknown or mistyped keys are refused."""
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
        """Parse a JSON config (e.g. a ``--config`` file); any problem is an :class:`InputError`."""
        return cls.from_json(parse_json_text(text))


def parse_json_text(text: str) -> object:
    """JSON with bounded integers (20 digits) and nesting (Python's recursion limit, caught).

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
    """The config fields in declaration order, each with ``metadata['help']`` and ``['choices']``."""
    return [f for f in fields(TrainConfig) if f.metadata.get("cli", True) or not cli_only]


MAX_PARAM_TEXT = 1000  # characters of one --defense-param


def option_name(field_name: str) -> str:
    """The command-line option of a config field: ``batch_size`` -> ``--batch-size``."""
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
    given, sets ``subset_size`` (the CLI's ``--subset-size`` and the form's EPIC field)."""
    params = dict(parse_defense_param(pair) for pair in pairs)
    if subset_size is not None:
        params["subset_size"] = subset_size
    return params


class _NotFinite(ValueError):
    pass


def _no_constant(name: str) -> float:
    raise _NotFinite(name)
