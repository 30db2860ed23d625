"""Run names: a run's folder name is a plain file name, so a run stays inside its runs folder.

The one definition, used by ``poisonlens train --name`` (:mod:`poisonlens.commands._options`)
and the dashboard's New run page (:mod:`poisonlens.launch`). A name is only a label: a run's
identity is in its run.json.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from poisonlens.errors import InputError

if TYPE_CHECKING:
    from poisonlens.config import TrainConfig

# Never '.', '..', a path or absolute; strict with .match too.
NAME_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
NAME_RULE = "use letters, digits, '.', '_' and '-' (at most 100), starting with a letter or digit"


def check_run_name(name: str) -> str:
    """Return ``name`` when it is a plain file name (``NAME_PATTERN``), else raise InputError.

    Parameters
    ----------
    name : str
        The run name asked for.

    Raises
    ------
    InputError
        Naming ``--name``, with the rule.
    """
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InputError("--name", f"{name!r} is not a plain run name: {NAME_RULE}")
    return name


def default_name(config: TrainConfig) -> str:
    """``<data format>-<defense>-<time>``, e.g. ``digits-epic-20260101-120000``.

    Parameters
    ----------
    config : TrainConfig
        The run's options; its data set's format prefix and its defense are used.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{config.dataset.split(':')[0]}-{config.defense}-{stamp}"
