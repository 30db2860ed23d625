"""Defenses: each looks at a gradient snapshot and names the examples to drop.

A defense is one module that registers a factory with :func:`register`; the trainer
calls it at every snapshot through :func:`build_defense`. Each defense declares the
per-example columns it writes (:func:`output_columns`); 'score' is always the suspicion
score, higher = more suspicious. The names below are those of :mod:`poisonlens.defense.base`,
loaded when first used.
"""

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


def __getattr__(name: str):
    # The registry (numpy) loads on first use, so that reading a defense's options
    # (poisonlens.defense.epic_config, for `--help`) imports nothing heavy.
    if name in __all__:
        from poisonlens.defense import base

        return getattr(base, name)
    raise AttributeError(f"module 'poisonlens.defense' has no attribute {name!r}")
