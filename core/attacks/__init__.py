"""Attacks: each crafts a :class:`poisonlens.data.PoisonSet` for one target from a clean data set.

An attack is one module holding a frozen config dataclass (its paper defaults) registered with
:func:`register`; ``build_attack(name, **params)(dataset, goal)`` crafts the poisons.
"""

from poisonlens.attacks.base import (
    Attack,
    AttackGoal,
    CleanLabelAttack,
    attack_class,
    attack_names,
    build_attack,
    check_within_eps,
    choose_bases,
    clean_control,
    register,
)

__all__ = ["Attack", "AttackGoal", "CleanLabelAttack", "attack_class", "attack_names", "build_attack", "check_within_eps",
           "choose_bases", "clean_control", "register"]
