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

from core.errors import InputError

MODEL_NAMES = ("smallcnn", "resnet18")
SCENARIOS = ("scratch", "transfer", "finetune")
AUGMENTS = ("auto", "none", "crop", "crop-flip")
AMP_MODES = ("off", "bf16", "fp16")


def _opt(default, help: str, *, choices: tuple | None = None, cli: bool = True, **kw) -> Field:
    """A config field with its CLI help and choices (``cli=False``: not a command-line option)."""
    meta = {"help": help, "choices": choices, "cli": cli}
    if isinstance(default, dict | list):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; saved in run.json. Optimiser defaults are EPIC's (ICML 2022)."""

    dataset: str = _opt("digits", "data set: digits, imagefolder:<dir>, cifar10:<dir> or npz:<file>")
    poisons: str | None = _opt(
        None, "poison set: a poisonlens .npz or a benchmark pickle folder (none: clean run)"
    )
    clean_control: bool = _opt(
        False, "clean control: keep the poison set's target but train on the base images"
    )
    model: str = _opt("smallcnn", "network", choices=MODEL_NAMES)
    width: int = _opt(32, "channels of the small CNN's first block")
    scenario: str = _opt(
        "scratch",
        "scratch, transfer (frozen pretrained body, new head) or finetune (whole network)",
        choices=SCENARIOS,
    )
    pretrained: str | None = _opt(None, "model.pt of another run, for transfer / finetune")
    epochs: int = _opt(40, "training epochs")
    batch_size: int = _opt(128, "global batch size (all processes together under torchrun)")
    lr: float | None = _opt(None, "learning rate (default: 0.1 scratch/transfer, 0.01 finetune)")
    momentum: float = _opt(0.9, "SGD momentum")
    nesterov: bool = _opt(True, "Nesterov momentum")
    weight_decay: float = _opt(5e-4, "L2 weight decay")
    lr_milestones: tuple[float, ...] = _opt(
        (0.375, 0.625, 0.875), "fractions of --epochs where the lr is multiplied by --lr-gamma"
    )
    lr_gamma: float = _opt(0.1, "lr multiplier at each milestone")
    augment: str = _opt(
        "auto", "augmentation ('auto': crop-flip for colour, crop for grey)", choices=AUGMENTS
    )
    snapshot_every: int = _opt(2, "epochs between gradient snapshots (EPIC's T)")
    defense: str = _opt("none", "a registered defense (see `poisonlens select --help` for EPIC)")
    defense_params: dict = _opt({}, "defense parameters, as KEY=VALUE (VALUE read as JSON)")
    drop_after: int = _opt(4, "first epoch whose snapshot may drop examples")
    stop_after: int = _opt(30, "snapshots at this epoch or later drop nothing")
    seed: int = _opt(0, "random seed (model init, shuffling, augmentation)")
    embedding_dims: int = _opt(
        64, "penultimate features stored per snapshot (wider models: random projection)"
    )
    snapshot_batch_size: int = _opt(
        128, "batch size of the snapshot pass (moderate batches stay in a CPU's cache)"
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
        """Raise :class:`InputError` for a bad parameter, before anything starts."""

        def finite(x) -> bool:
            return isinstance(x, int | float) and math.isfinite(x)

        checks = [
            (self.model in MODEL_NAMES, "model", f"must be one of {', '.join(MODEL_NAMES)}"),
            (self.scenario in SCENARIOS, "scenario", f"must be one of {', '.join(SCENARIOS)}"),
            (self.augment in AUGMENTS, "augment", f"must be one of {', '.join(AUGMENTS)}"),
            (self.amp in AMP_MODES, "amp", f"must be one of {', '.join(AMP_MODES)}"),
            (self.epochs >= 1, "epochs", "must be at least 1"),
            (self.width >= 1, "width", "must be at least 1"),
            (self.batch_size >= 2, "batch-size", "must be at least 2"),
            (self.snapshot_batch_size >= 1, "snapshot-batch-size", "must be at least 1"),
            (self.embedding_dims >= 1, "embedding-dims", "must be at least 1"),
            (self.snapshot_every >= 1, "snapshot-every", "must be at least 1"),
            (self.seed >= 0, "seed", "must be 0 or more"),
            (finite(self.resolved_lr) and self.resolved_lr > 0, "lr", "must be a positive number"),
            (finite(self.momentum) and 0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
            (
                finite(self.weight_decay) and self.weight_decay >= 0,
                "weight-decay",
                "must be a number >= 0",
            ),
            (finite(self.lr_gamma) and self.lr_gamma > 0, "lr-gamma", "must be a positive number"),
            (
                all(finite(m) and 0 <= m <= 1 for m in self.lr_milestones),
                "lr-milestones",
                "must be fractions in [0, 1]",
            ),
            (0 <= self.drop_after <= self.stop_after, "drop-after", "need 0 <= drop-after <= stop-after"),
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
                raise InputError("config", f"{f.name} has the wrong type ({type(data[f.name]).__name__})")
        return cls(**data)

    @classmethod
    def from_json_text(cls, text: str) -> TrainConfig:
        """Parse a JSON config (e.g. a ``--config`` file); any problem is an :class:`InputError`."""
        try:
            data = json.loads(text, parse_int=_bounded_int)
        except (ValueError, RecursionError) as err:
            raise InputError("config", f"not valid JSON ({str(err).splitlines()[0][:80]})") from None
        return cls.from_json(data)


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
