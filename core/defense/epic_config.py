"""EPIC's options, defined once: the fields of :class:`EpicConfig`.

Each field is made by :func:`poisonlens.options.option`, the option metadata ``TrainConfig``
uses too: its help, its choices or its :class:`~poisonlens.options.Range`, and its command-line
spelling (:class:`~poisonlens.options.Cli`).
:func:`check_option` (used by ``EpicConfig.__post_init__``, so by ``select()`` and the
``epic`` defense) and the ``poisonlens select`` options (``core/commands/select.py``) are
generated from them, so a new option is one field here. This module imports neither numpy nor
numba nor torch: the command line can read it at once.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import Field, dataclass, fields

from poisonlens.options import (
    Cli,
    Range,
    flag_of,  # noqa: F401  (poisonlens select names options with it)
    option,
)

METRICS = ("euclidean", "cosine")
GREEDY = ("lazy", "stochastic")
METHODS = ("auto", "exact", "greedi")
POOLS = ("active", "all")


@dataclass(frozen=True)
class EpicConfig:
    """EPIC's options; the trainer's ``drop_after`` / ``stop_after`` window is not among them."""

    subset_size: float = option(
        0.1,
        "medoids per snapshot, as a fraction of the active examples",
        within=Range(0, 1, open_low=True),
        cli=Cli(metavar="FRACTION", required=True),
    )
    pool: str = option(
        "active",
        "the examples a snapshot's selection clusters: active = those still in training, the "
        "budget a fraction of them; all = every example, dropped ones included, the budget a "
        "fraction of all (the authors' script); either way only active ones are dropped",
        choices=POOLS,
    )
    metric: str = option(
        "euclidean",
        "gradient similarity: exp(-distance / n_classes) or cosine",
        choices=METRICS,
    )
    greedy: str = option(
        "lazy",
        "lazy = exact greedy; stochastic = stochastic greedy, which changes what is isolated",
        choices=GREEDY,
    )
    cluster_thresh: float = option(
        1.0,
        "a medoid is isolated when its cluster has at most this many examples",
        within=Range(0),
        cli=Cli(flag="--thresh", metavar="N"),
    )
    epsilon: float = option(
        0.01,
        "stochastic greedy: scores (n_c / K_c) log(1 / epsilon) candidates per step",
        within=Range(0, 1, open_low=True, open_high=True),
    )
    random_state: int = option(
        0,
        "seed of the budget rounding, stochastic greedy and GreeDi's partitions",
        within=Range(0),
        cli=Cli(flag="--seed", metavar="SEED"),
    )
    method: str = option(
        "auto",
        "exact greedy per class, GreeDi (greedy on partitions, then on the union of their "
        "picks), or auto: exact for classes of at most --max-dense examples, GreeDi above",
        choices=METHODS,
    )
    partition_size: int = option(
        2_500,
        "GreeDi: largest partition of a class (its dense kernel is partition_size^2 float32)",
        within=Range(1),
        cli=Cli(metavar="N"),
    )
    max_dense: int = option(
        20_000,
        "exact: classes up to this size hold their n_c^2 float32 kernel, larger ones compute "
        "rows on demand (same decisions, slower); auto: GreeDi above it",
        within=Range(0),
        cli=Cli(metavar="N"),
    )
    merge_sample: int = option(
        5_000,
        "GreeDi: the merge evaluates facility location on at most this many examples of a "
        "class (a seeded uniform sample); every example is still assigned to its medoid",
        within=Range(1),
        cli=Cli(metavar="N"),
    )
    n_jobs: int = option(
        1,
        "threads for GreeDi's partitions and merges (-1: every core)",
        within=Range(-1),
        cli=Cli(metavar="N"),
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


def describe_range(f: Field) -> str:
    """The field's allowed values in words, e.g. ``in (0, 1]``, ``>= 0``, ``one of a, b``.

    Parameters
    ----------
    f : a field of :class:`EpicConfig`

    Returns
    -------
    words : str
    """
    if f.metadata["choices"]:
        return "one of " + ", ".join(f.metadata["choices"])
    rng = f.metadata["range"]
    if rng is None or rng.low is None:
        return "any value"
    if rng.high is not None:
        left, right = "(" if rng.open_low else "[", ")" if rng.open_high else "]"
        return f"in {left}{rng.low:g}, {rng.high:g}{right}"
    return f"{'>' if rng.open_low else '>='} {rng.low:g}"


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
    kind, rng = f.metadata["kind"], f.metadata["range"]
    problem = f"must be {'an int ' if kind is int else ''}{describe_range(f)}, got {value!r}"
    if kind is int and (not isinstance(value, numbers.Integral) or isinstance(value, bool)):
        return problem
    if kind is float and (
        not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value)
    ):
        return problem
    if f.metadata["choices"] and value not in f.metadata["choices"]:
        return problem
    if rng is not None and float(value) not in rng:
        return problem
    return None


def subset_size_field() -> Field:
    """EPIC's ``subset_size`` field: the one source of its range (0, 1] and its default (0.1),
    read by ``--subset-size`` (train, evaluate, select) and the New run form."""
    return next(f for f in fields(EpicConfig) if f.name == "subset_size")
