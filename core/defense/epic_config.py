"""EPIC's options, defined once: the fields of :class:`EpicConfig`.

Each field carries its help, its choices or its range in ``dataclasses.field(metadata=...)``.
:func:`check_option` (used by ``EpicConfig.__post_init__``, so by ``select()`` and the
``epic`` defense) and the ``poisonlens select`` options (``core/commands/select.py``) are
generated from them, so a new option is one field here. This module imports neither numpy nor
numba nor torch: the command line can read it at once.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import Field, dataclass, field, fields

METRICS = ("euclidean", "cosine")
GREEDY = ("lazy", "stochastic")
METHODS = ("auto", "exact", "greedi")


def _opt(
    default,
    help: str,
    *,
    kind: type = str,
    choices: tuple[str, ...] | None = None,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
    flag: str | None = None,
    metavar: str | None = None,
    required: bool = False,
) -> Field:
    """An EpicConfig field and its metadata (``flag``: the CLI name when not ``--field-name``)."""
    meta = {
        "help": help,
        "kind": kind,
        "choices": choices,
        "low": low,
        "high": high,
        "open_low": open_low,
        "open_high": open_high,
        "flag": flag,
        "metavar": metavar,
        "required": required,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class EpicConfig:
    """EPIC's options; the trainer's ``drop_after`` / ``stop_after`` window is not among them."""

    subset_size: float = _opt(
        0.1,
        "medoids per snapshot, as a fraction of the active examples",
        kind=float,
        low=0,
        high=1,
        open_low=True,
        metavar="FRACTION",
        required=True,
    )
    metric: str = _opt(
        "euclidean",
        "gradient similarity: exp(-distance / n_classes) or cosine",
        choices=METRICS,
    )
    greedy: str = _opt(
        "lazy",
        "lazy = exact greedy; stochastic = stochastic greedy, which changes what is isolated",
        choices=GREEDY,
    )
    cluster_thresh: float = _opt(
        1,
        "a medoid is isolated when its cluster has at most this many examples",
        kind=float,
        low=0,
        flag="--thresh",
        metavar="N",
    )
    epsilon: float = _opt(
        0.01,
        "stochastic greedy: scores (n_c / K_c) log(1 / epsilon) candidates per step",
        kind=float,
        low=0,
        high=1,
        open_low=True,
        open_high=True,
    )
    random_state: int = _opt(
        0,
        "seed of the budget rounding, stochastic greedy and GreeDi's partitions",
        kind=int,
        low=0,
        flag="--seed",
        metavar="SEED",
    )
    method: str = _opt(
        "auto",
        "exact greedy per class, GreeDi (greedy on partitions, then on the union of their "
        "picks), or auto: exact for classes of at most --max-dense examples, GreeDi above",
        choices=METHODS,
    )
    partition_size: int = _opt(
        2_500,
        "GreeDi: largest partition of a class (its dense kernel is partition_size^2 float32)",
        kind=int,
        low=1,
        metavar="N",
    )
    max_dense: int = _opt(
        20_000,
        "exact: classes up to this size hold their n_c^2 float32 kernel, larger ones compute "
        "rows on demand (same decisions, slower); auto: GreeDi above it",
        kind=int,
        low=0,
        metavar="N",
    )
    merge_sample: int = _opt(
        5_000,
        "GreeDi: the merge evaluates facility location on at most this many examples of a "
        "class (a seeded uniform sample); every example is still assigned to its medoid",
        kind=int,
        low=1,
        metavar="N",
    )
    n_jobs: int = _opt(
        1,
        "threads for GreeDi's partitions and merges (-1: every core)",
        kind=int,
        low=-1,
        metavar="N",
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            problem = check_option(f, getattr(self, f.name))
            if problem:
                raise ValueError(f"{f.name} {problem}")
        if self.method == "greedi" and self.greedy != "lazy":
            raise ValueError("method 'greedi' runs exact (lazy) greedy; use greedy='lazy'")


def option_fields() -> tuple[Field, ...]:
    """The fields of :class:`EpicConfig`, in order, each with its ``metadata`` (help, range...).

    Returns
    -------
    fields : tuple of dataclasses.Field
    """
    return fields(EpicConfig)


def flag_of(f: Field) -> str:
    """The field's command-line option, e.g. ``--subset-size`` (``--thresh`` for cluster_thresh).

    Parameters
    ----------
    f : a field of :class:`EpicConfig`

    Returns
    -------
    flag : str
    """
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def describe_range(f: Field) -> str:
    """The field's allowed values in words, e.g. ``in (0, 1]``, ``>= 0``, ``one of a, b``.

    Parameters
    ----------
    f : a field of :class:`EpicConfig`

    Returns
    -------
    words : str
    """
    m = f.metadata
    if m["choices"]:
        return "one of " + ", ".join(m["choices"])
    low, high = m["low"], m["high"]
    if low is not None and high is not None:
        return (
            f"in {'(' if m['open_low'] else '['}{low:g}, {high:g}{')' if m['open_high'] else ']'}"
        )
    if low is not None:
        return f"{'>' if m['open_low'] else '>='} {low:g}"
    return "any value"


def check_option(f: Field, value) -> str | None:
    """What is wrong with ``value`` for field ``f``, in a few words, or None when it is fine.

    Parameters
    ----------
    f : a field of :class:`EpicConfig`
    value : the value given

    Returns
    -------
    problem : e.g. ``"must be in (0, 1], got 1.5"``, or None
    """
    m = f.metadata
    kind = m["kind"]
    problem = f"must be {'an int ' if kind is int else ''}{describe_range(f)}, got {value!r}"
    if kind is int and (not isinstance(value, numbers.Integral) or isinstance(value, bool)):
        return problem
    if kind is float and (
        not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value)
    ):
        return problem
    if m["choices"] and value not in m["choices"]:
        return problem
    low, high = m["low"], m["high"]
    if low is not None and (value <= low if m["open_low"] else value < low):
        return problem
    if high is not None and (value >= high if m["open_high"] else value > high):
        return problem
    return None
