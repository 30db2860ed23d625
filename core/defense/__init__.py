"""Defenses: each looks at a gradient snapshot and names the examples to drop.

A defense is one module that registers a factory with :func:`register`; the trainer
calls it at every snapshot through :func:`build_defense`.
"""

from core.defense.base import DefenseResult, Snapshot, build_defense, defense_names, register

__all__ = ["DefenseResult", "Snapshot", "build_defense", "defense_names", "register"]
