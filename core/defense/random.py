"""The ``random`` defense: drops active examples at random, the control for EPIC.

Either a fixed ``fraction`` of the active examples; ``counts``: exactly as many at each snapshot
epoch as another run dropped (``poisonlens evaluate`` passes an EPIC run's schedule, so the two
runs drop the same number of examples); or ``match_subset``: as many as EPIC at that subset size
would drop on this run's own snapshot (which keeps finding isolated points that a random drop
leaves in, so it drops more over a run than EPIC itself does). Each active example gets a uniform
random score; the suspects are the highest-scored ones, so "higher = more suspicious" holds
here too. Draws depend only on (``random_state``, the snapshot's epoch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from poisonlens.defense.base import DefenseResult, Snapshot, register
from poisonlens.defense.epic import select
from poisonlens.options import Range, check_values, option


@dataclass(frozen=True)
class RandomOptions:
    """The ``random`` defense's options: exactly one of ``fraction``, ``match_subset``, ``counts``."""

    fraction: float | None = option(
        None, "share of the active examples dropped at each snapshot", within=Range(0, 1)
    )
    match_subset: float | None = option(
        None,
        "drop as many as EPIC at this subset size would on this run's snapshot",
        within=Range(0, 1, open_low=True),
    )
    counts: dict | None = option(
        None, "{epoch: drops}: another run's schedule (poisonlens evaluate passes EPIC's)"
    )
    random_state: int = option(0, "seed of the random scores", within=Range(0))

    def __post_init__(self) -> None:
        given = (self.fraction, self.match_subset, self.counts)
        if sum(x is not None for x in given) != 1:
            raise ValueError("give exactly one of fraction, match_subset or counts")
        if self.counts is not None and any(int(n) < 0 for n in self.counts.values()):
            raise ValueError("counts must be non-negative")
        check_values(self)


@register("random")
class RandomDrop:
    """Drop ``fraction`` of the active examples, or as many as EPIC at ``match_subset`` would.

    Parameters
    ----------
    **params
        The fields of :class:`RandomOptions`: ``fraction`` (in [0, 1], share of the active
        examples dropped at each snapshot), ``match_subset`` (in (0, 1], EPIC's subset size
        whose drop count to match), ``counts`` ({epoch: number of drops}, e.g. an EPIC run's
        ``n_new_drops`` per snapshot), ``random_state`` (a non-negative int).
    """

    name = "random"
    output_columns = {
        "score": "uniform random draw, higher = more suspicious (the highest are dropped)",
        "suspect": "bool, among the n_drop highest random scores",
    }
    options = RandomOptions
    spec_param = "match_subset"  # `random-0.2` in a grid spec: as many drops as EPIC at 0.2

    @staticmethod
    def label(params: dict) -> str | None:
        """``random (matched drops)`` for a run that copied another run's drop counts.

        Parameters
        ----------
        params : dict
            The defense's parameters (run.json's ``defense_params``).
        """
        if "counts" in params and "match_subset" not in params:
            return "random (matched drops)"
        return None

    def __init__(self, **params) -> None:
        options = RandomOptions(**params)
        self.fraction = options.fraction
        self.match_subset = options.match_subset
        # JSON (run.json) turns integer keys into strings
        counts = options.counts
        self.counts = None if counts is None else {int(e): int(n) for e, n in counts.items()}
        self.random_state = options.random_state

    def n_drop(self, snapshot: Snapshot, active: np.ndarray) -> int:
        """How many active examples to drop at this snapshot.

        Parameters
        ----------
        snapshot : Snapshot (``epoch``; ``grads`` and ``labels`` for ``match_subset``)
        active : bool ndarray of shape (n_samples,)

        Returns
        -------
        n_drop : int, 0 <= n_drop <= active.sum()
        """
        if self.fraction is not None:
            return round(self.fraction * int(active.sum()))
        if self.counts is not None:
            return min(self.counts.get(snapshot.epoch, 0), int(active.sum()))
        epic = select(
            snapshot.grads,
            snapshot.labels,
            active=active,
            subset_size=self.match_subset,
            random_state=self.random_state,
        )
        return int(epic.drop.sum())

    def __call__(self, snapshot: Snapshot, active: np.ndarray) -> DefenseResult:
        """Draw a random score per active example and suspect the n_drop highest.

        Parameters
        ----------
        snapshot : Snapshot, its ``epoch`` seeds the draw
        active : bool ndarray of shape (n_samples,), the examples still in training

        Returns
        -------
        DefenseResult
            ``score`` and ``suspect`` of shape (n_samples,); ``info['n_drop']``.
        """
        active = np.asarray(active, dtype=bool)
        rng = np.random.default_rng([self.random_state, snapshot.epoch])
        members = np.flatnonzero(active)
        score = np.full(snapshot.n_samples, np.nan)
        score[members] = rng.random(len(members))
        n_drop = self.n_drop(snapshot, active)
        suspect = np.zeros(snapshot.n_samples, dtype=bool)
        # Stable sort on -score: the n_drop highest scores, ties (never in practice) by index.
        suspect[members[np.argsort(-score[members], kind="stable")[:n_drop]]] = True
        return DefenseResult(score=score, suspect=suspect, info={"n_drop": n_drop})
