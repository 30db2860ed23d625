"""The defense hook: the snapshot a defense sees, what it returns, and the registry.

Scores point one way everywhere in poisonlens: **higher = more suspicious**.

A defense is a factory registered with :func:`register`. Besides building the defense, the
factory declares, as class attributes, everything the rest of poisonlens needs to know of it,
so nothing outside its module names its parameters or columns:

- ``output_columns``: the per-example columns it writes, each described (:func:`output_columns`);
- ``colour_columns``: those a page may colour the examples by (:func:`colour_columns`);
- ``options``: a dataclass of its options made with :func:`poisonlens.options.option`, the
  metadata ``TrainConfig`` uses too (:func:`defense_options`);
- ``spec_param``: the parameter a short spec ``<name>-<value>`` sets, as ``epic-0.2`` sets
  ``subset_size`` (:func:`parse_spec`, :func:`spec_label`); ``label(params)`` may name a
  configuration the spec cannot write (:func:`spec_label`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import Field, dataclass, field, fields, is_dataclass
from typing import Protocol

import numpy as np

from poisonlens.errors import InputError


@dataclass(frozen=True)
class Snapshot:
    """Per-example quantities at one epoch, taken in eval mode without augmentation.

    Attributes
    ----------
    epoch : the epoch the snapshot was taken after (0 = before training)
    labels : int64 (n_samples,), the training labels
    grads : float32 (n_samples, n_classes), softmax(logits) - onehot(label)
    embeddings : float32 (n_samples, n_features), penultimate-layer features
    loss : float32 (n_samples,), cross-entropy
    confidence : float32 (n_samples,), probability of the label
    prediction : int64 (n_samples,)
    target_grad : float32 (n_classes,), the target's softmax - onehot(adv_label), or None
    """

    epoch: int
    labels: np.ndarray
    grads: np.ndarray
    embeddings: np.ndarray
    loss: np.ndarray
    confidence: np.ndarray
    prediction: np.ndarray
    target_grad: np.ndarray | None = None

    @property
    def n_samples(self) -> int:
        """Number of examples, n_samples."""
        return int(len(self.labels))

    @property
    def n_classes(self) -> int:
        """Number of classes, n_classes (columns of ``grads``)."""
        return int(self.grads.shape[1])


@dataclass(frozen=True)
class DefenseResult:
    """What a defense decided at one snapshot.

    Attributes
    ----------
    score : float64 (n_samples,), higher = more suspicious; NaN for inactive examples
    suspect : bool (n_samples,), the examples this defense would drop now (only active ones)
    columns : extra per-example arrays written to the snapshot table (e.g. EPIC's ``medoid``)
    info : small JSON-able facts (per-class k, objective, seconds, ...)
    """

    score: np.ndarray
    suspect: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def active_mask(active: np.ndarray, n_samples: int) -> np.ndarray:
    """``active`` as a bool array of shape (n_samples,); a ValueError for any other shape.

    Parameters
    ----------
    active : array-like of shape (n_samples,)
    n_samples : the expected length

    Returns
    -------
    active : bool array of shape (n_samples,)
    """
    active = np.asarray(active, dtype=bool)
    if active.shape != (n_samples,):
        raise ValueError(f"active has shape {active.shape}, expected ({n_samples},)")
    return active


class ScoringDefense:
    """Base of the baseline defenses: checks the mask and times the decision once, so a
    defense implements only ``decide(snapshot, active)`` and its ``info`` gains ``seconds``."""

    def __call__(self, snapshot: Snapshot, active: np.ndarray) -> DefenseResult:
        """Score the active examples of ``snapshot`` and decide which are suspect.

        Parameters
        ----------
        snapshot : Snapshot
            What the defense reads of it (embeddings, labels, loss) is in its docstring.
        active : bool ndarray of shape (n_samples,)
            The examples still in training; only they are scored.

        Returns
        -------
        DefenseResult
            ``score`` and ``suspect`` of shape (n_samples,), the declared extra columns, and
            ``info`` with the decision's wall time in ``seconds``.
        """
        start = time.perf_counter()
        result = self.decide(snapshot, active_mask(active, snapshot.n_samples))
        result.info["seconds"] = round(time.perf_counter() - start, 4)
        return result

    def decide(self, snapshot: Snapshot, active: np.ndarray) -> DefenseResult:
        """The decision, given a checked bool mask of shape (n_samples,); see ``__call__``.

        Parameters
        ----------
        snapshot : Snapshot
            The per-example quantities at one epoch.
        active : bool ndarray of shape (n_samples,)
            The examples still in training, already checked.
        """
        raise NotImplementedError


def highest(rows: np.ndarray, scores: np.ndarray, share: float) -> np.ndarray:
    """The ``floor(share * len(rows))`` rows with the highest scores, ties to the lower index.

    Parameters
    ----------
    rows : int ndarray of shape (n_rows,), ascending example indices
    scores : float ndarray of shape (n_rows,), their scores
    share : the fraction taken, in [0, 1] (a tiny slack so 0.05 * 1000 counts as 50 however
        it rounds)

    Returns
    -------
    int ndarray, the chosen rows, highest score first
    """
    n = min(int(np.floor(share * len(rows) + 1e-9)), len(rows))
    return rows[np.argsort(-scores, kind="stable")[:n]]


class Defense(Protocol):
    """Called at every snapshot with the examples still active (bool mask of shape (n_samples,)).

    ``output_columns`` describes each column it writes (see :func:`output_columns`).
    """

    name: str
    output_columns: dict[str, str]

    def __call__(self, snapshot: Snapshot, active: np.ndarray) -> DefenseResult:
        """Decide at one snapshot.

        Parameters
        ----------
        snapshot : Snapshot
        active : bool ndarray of shape (n_samples,), the examples still in training

        Returns
        -------
        DefenseResult
            ``score`` and ``suspect`` of shape (n_samples,), ``columns`` as declared.
        """
        ...


_REGISTRY: dict[str, Callable[..., Defense]] = {}

# The suspicion score's column: every defense writes one, higher = more suspicious.
SCORE_COLUMN = "score"

# What every defense writes; a defense's ``output_columns`` restates these two in its own
# words (what its score measures) and adds its extra ``DefenseResult.columns``.
BASE_COLUMNS: dict[str, str] = {
    SCORE_COLUMN: "suspicion score, higher = more suspicious; NaN for inactive examples",
    "suspect": "bool, the defense would drop the example at this snapshot",
}


def register(name: str) -> Callable[[Callable[..., Defense]], Callable[..., Defense]]:
    """Class/function decorator: make a defense factory available under ``name``.

    The factory may declare ``output_columns: dict[str, str]`` (see :func:`output_columns`).

    Parameters
    ----------
    name : the defense's name, as ``--defense`` takes it

    Returns
    -------
    decorator returning the factory unchanged
    """

    def wrap(factory: Callable[..., Defense]) -> Callable[..., Defense]:
        _REGISTRY[name] = factory
        return factory

    return wrap


def _load_builtin() -> None:
    # Importing the modules runs their @register decorators.
    import importlib
    import pkgutil

    import poisonlens.defense as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name not in {"base"}:
            importlib.import_module(f"poisonlens.defense.{mod.name}")


def output_columns(name: str) -> dict[str, str]:
    """The per-example columns the defense ``name`` writes to a snapshot, each described.

    Declared by the defense as ``output_columns`` (a class attribute, as cleanlab's issue
    managers declare their issue columns), so export, plots and tables can list a defense's
    columns without knowing the defense. ``SCORE_COLUMN`` ('score') is always the suspicion
    score, higher = more suspicious, and always first.

    Parameters
    ----------
    name : a registered defense

    Returns
    -------
    columns : {column: one-line description}; 'score' and 'suspect', then the defense's
        extra ``DefenseResult.columns`` in its declared order

    Raises
    ------
    ValueError
        For an unknown defense.
    """
    declared = dict(getattr(_factory(name), "output_columns", {}))
    return {**BASE_COLUMNS, **declared}


def extra_columns(name: str) -> list[str]:
    """The names of the defense's extra columns (``output_columns`` minus score and suspect).

    Parameters
    ----------
    name : a registered defense

    Returns
    -------
    names : list of str, the keys of ``DefenseResult.columns`` it writes, in declared order
    """
    return [c for c in output_columns(name) if c not in BASE_COLUMNS]


def defense_names() -> list[str]:
    """Names of all registered defenses.

    Returns
    -------
    names : sorted list of str
    """
    _load_builtin()
    return sorted(_REGISTRY)


def build_defense(name: str, **params) -> Defense:
    """Make the defense registered as ``name`` with keyword ``params``.

    Parameters
    ----------
    name : a registered defense
    **params : its parameters

    Returns
    -------
    Defense, callable as ``defense(snapshot, active) -> DefenseResult``
    """
    return _factory(name)(**params)


@dataclass(frozen=True)
class ColourBy:
    """A per-example column a page may colour the examples by.

    Attributes
    ----------
    title : the column in words, for the legend and the page's choice
    log : drawn on a log10 scale (counts and distances spanning decades)
    """

    title: str
    log: bool = False


# Every defense writes a score: a page may always colour by it.
BASE_COLOURS: dict[str, ColourBy] = {SCORE_COLUMN: ColourBy("suspicion score")}


def _factory(name: str) -> Callable[..., Defense]:
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown defense {name!r}; choose from {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def colour_columns(name: str | None = None) -> dict[str, ColourBy]:
    """The columns a page may colour examples by: the score and the defense's declared ones.

    Parameters
    ----------
    name : str, optional
        A registered defense; None: the columns of every registered defense (for a page that
        shows whatever columns a snapshot holds).

    Returns
    -------
    dict of {column: ColourBy}, 'score' first
    """
    _load_builtin()
    names = sorted(_REGISTRY) if name is None else [name]
    out = dict(BASE_COLOURS)
    for each in names:
        out.update(getattr(_factory(each), "colour_columns", {}))
    return out


def defense_options(name: str) -> tuple[Field, ...]:
    """The defense's options, each with its help, choices and range (made with
    :func:`poisonlens.options.option`): the fields of the dataclass it declares as ``options``
    (EPIC's ``EpicConfig``), or those of the factory itself when it is such a dataclass;
    () when it has none.

    Parameters
    ----------
    name : str
        A registered defense.
    """
    factory = _factory(name)
    options = getattr(factory, "options", factory)
    if not is_dataclass(options):
        return ()
    return tuple(f for f in fields(options) if "help" in f.metadata)


def parse_spec(spec: str, *, source: str = "--defenses", also: tuple[str, ...] = ()) -> tuple[str, dict]:
    """A defense and its parameters from a short spec: a name, or ``<name>-<value>`` for a
    defense that declares ``spec_param`` (``epic-0.2`` -> ``('epic', {'subset_size': 0.2})``).

    Parameters
    ----------
    spec : str
        e.g. ``none``, ``deepknn``, ``epic-0.1``, ``random-0.2``.
    source : str
        The option named in an error message.
    also : tuple of str
        Other words the caller reads itself, listed in the error (evaluate's ``clean``).

    Returns
    -------
    (name, params)

    Raises
    ------
    InputError
        Naming ``source``, for an unknown defense or a value that is not a number.
    """
    _load_builtin()
    if spec in _REGISTRY:
        return spec, {}
    name, _, value = spec.rpartition("-")
    key = getattr(_REGISTRY.get(name), "spec_param", None)
    if key is None:
        forms = ", ".join([*also, *spec_forms()])
        raise InputError(source, f"unknown defense {spec!r}; use {forms}")
    try:
        return name, {key: float(value)}
    except ValueError:
        raise InputError(source, f"{spec!r}: expected a number, as in {name}-0.1") from None


def spec_forms() -> list[str]:
    """How each registered defense is written in a spec (``epic-<subset_size>``, ``deepknn``).

    Returns
    -------
    list of str, sorted by name
    """
    _load_builtin()
    out = []
    for name, factory in sorted(_REGISTRY.items()):
        key = getattr(factory, "spec_param", None)
        out.append(f"{name}-<{key}>" if key else name)
    return out


def spec_label(name: str, params: dict) -> str:
    """A defense and its parameters as a short label, the inverse of :func:`parse_spec`.

    ``epic-0.2`` for EPIC at subset size 0.2, the name alone without parameters, other
    parameters in brackets (``random(fraction=0.05)``); a defense's ``label(params)`` hook
    names configurations a spec cannot write (``random (matched drops)``).

    Parameters
    ----------
    name : str
        The defense's name (an unregistered one is labelled by its name and parameters).
    params : dict
        Its parameters, as run.json's ``defense_params``.
    """
    _load_builtin()
    factory = _REGISTRY.get(name)
    custom = getattr(factory, "label", None)
    if callable(custom) and (text := custom(params)) is not None:
        return text
    params = dict(params)
    key = getattr(factory, "spec_param", None)
    if key in params and isinstance(params[key], int | float):
        name = f"{name}-{params.pop(key):g}"
    if params:
        name += "(" + ", ".join(f"{k}={v}" for k, v in sorted(params.items())) + ")"
    return name
