"""Defenses: each looks at a gradient snapshot and names the examples to drop.

A defense is one module that registers a factory with :func:`register`; the trainer
calls it at every snapshot through :func:`build_defense`. Each defense declares the
per-example columns it writes (:func:`output_columns`); 'score' is always the suspicion
score, higher = more suspicious.
"""

from poisonlens.defense.base import (
    BASE_COLUMNS,
    SCORE_COLUMN,
    ColourBy,
    DefenseResult,
    Snapshot,
    build_defense,
    colour_columns,
    defense_names,
    defense_options,
    extra_columns,
    output_columns,
    parse_spec,
    register,
    spec_forms,
    spec_label,
)

__all__ = [
    "BASE_COLUMNS",
    "SCORE_COLUMN",
    "ColourBy",
    "DefenseResult",
    "Snapshot",
    "build_defense",
    "colour_columns",
    "defense_names",
    "defense_options",
    "extra_columns",
    "output_columns",
    "parse_spec",
    "register",
    "spec_forms",
    "spec_label",
]
