"""Defenses: each looks at a gradient snapshot and names the examples to drop.

A defense is one module that registers a factory with :func:`register`; the trainer
calls it at every snapshot through :func:`build_defense`. Each defense declares the
per-example columns it writes (:func:`output_columns`); 'score' is always the suspicion
score, higher = more suspicious.
"""

from poisonlens.defense.base import (
    BASE_COLUMNS,
    SCORE_COLUMN,
    DefenseResult,
    Snapshot,
    build_defense,
    defense_names,
    extra_columns,
    output_columns,
    register,
)

__all__ = [
    "BASE_COLUMNS",
    "SCORE_COLUMN",
    "DefenseResult",
    "Snapshot",
    "build_defense",
    "defense_names",
    "extra_columns",
    "output_columns",
    "register",
]
