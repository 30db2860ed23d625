"""Option metadata, one system for every options dataclass (``TrainConfig``, ``EpicConfig``, ...).

An option is a dataclass field made by :func:`option`: its help, its choices or its range
(:class:`Range`) and how it is spelt on a command line (:class:`Cli`) ride in the field's
``metadata``, and the command line, the dashboard's New run form and each dataclass's own
validation read them there. Help texts may name a registry in braces (``{defenses}``,
``{defense_specs}``, ``{attacks}``, ``{formats}``); :func:`fill_names` puts the registered names in
when the help is shown, so no help text lists them by hand and ``--help`` imports a registry
only when its names are shown. This module imports neither numpy nor torch.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import math
import sys
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path


@dataclass(frozen=True)
class Range:
    """An interval of allowed numbers; ``None`` ends are unbounded, open ends are excluded."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, x: object) -> bool:
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
            return False
        if self.low is not None and (x <= self.low if self.open_low else x < self.low):
            return False
        return self.high is None or (x < self.high if self.open_high else x <= self.high)

    def describe(self) -> str:
        """The rule in words, e.g. 'must be at least 1' or 'must be in (0, 1]'."""
        low, high = _num(self.low), _num(self.high)
        if self.low is not None and self.high is not None:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"must be in {left}{low}, {high}{right}"
        if self.low is not None:
            return f"must be {'greater than' if self.open_low else 'at least'} {low}"
        if self.high is not None:
            return f"must be {'less than' if self.open_high else 'at most'} {high}"
        return "may be any number"

    def problem(self, x: object) -> str | None:
        """Why ``x`` is refused (one phrase), or None when it is allowed.

        Parameters
        ----------
        x : object
            The value given; a bool, a non-number and NaN or an infinity are refused.
        """
        if x in self:
            return None
        if isinstance(x, float) and not math.isfinite(x):
            return f"must be a finite number, got {x}"
        return f"{self.describe()}, got {x!r}"


def _num(x: float | None) -> str:
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Cli:
    """How an option is spelt on a command line (the defaults fit most options).

    Attributes
    ----------
    shown : False for a field that is no command-line option (set through ``--config`` only)
    flag : the option when it is not ``--field-name`` (EPIC's ``--thresh``)
    metavar : the placeholder in the usage line
    required : the option must be given (``poisonlens select --subset-size``)
    open_choices : the choices are what the New run form offers; the CLI takes any value
    """

    shown: bool = True
    flag: str | None = None
    metavar: str | None = None
    required: bool = False
    open_choices: bool = False


HIDDEN = Cli(shown=False)


def option(
    default,
    help: str,
    *,
    choices: tuple | None = None,
    within: Range | None = None,
    cli: Cli = Cli(),
) -> Field:
    """A dataclass field carrying its help, choices, range and command-line spelling.

    Parameters
    ----------
    default : object
        The field's default; a dict or list is copied for each instance.
    help : str
        One line for ``--help`` and the form's tooltip; may name registries in braces
        (see :func:`fill_names`).
    choices : tuple, optional
        The closed set of values (the form's select box; the CLI's choices unless
        ``cli.open_choices``).
    within : Range, optional
        The allowed numbers (every number of a tuple); the CLI's types, the form's widgets and
        the dataclass's validation all read this one range.
    cli : Cli
        The command-line spelling; ``HIDDEN`` for a field with no option.

    Returns
    -------
    dataclasses.Field
        With ``metadata`` keys ``help``, ``choices``, ``range``, ``cli`` (bool), ``flag``,
        ``metavar``, ``required``, ``open_choices`` and ``kind`` (the default's type).
    """
    meta = {
        "help": help,
        "choices": choices,
        "range": within,
        "cli": cli.shown,
        "flag": cli.flag,
        "metavar": cli.metavar,
        "required": cli.required,
        "open_choices": cli.open_choices,
        "kind": type(default),
    }
    if isinstance(default, dict | list):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def default_of(f: Field) -> object:
    """The default value of a dataclass field (its ``default_factory()`` when it has one).

    Parameters
    ----------
    f : dataclasses.Field
        A field made by :func:`option` (or any field with a default).
    """
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]


def check_values(obj: object) -> None:
    """Raise ValueError for the first option of dataclass ``obj`` outside its choices or range.

    Call it from ``__post_init__`` so an options dataclass (a defense's, say) refuses what its
    own metadata refuses: the message is ``'<field> <problem>'``, e.g. ``fraction must be in
    [0, 1], got 1.5``.

    Parameters
    ----------
    obj : dataclass instance
        Fields made by :func:`option` are checked; other fields are left alone.
    """
    for f in fields(obj):  # type: ignore[arg-type]
        value, choices, rng = getattr(obj, f.name), f.metadata.get("choices"), f.metadata.get("range")
        if choices and not f.metadata.get("open_choices") and value not in choices:
            raise ValueError(f"{f.name} must be one of {', '.join(map(str, choices))}, got {value!r}")
        values = value if isinstance(value, tuple) else () if value is None else (value,)
        for v in values if rng is not None else ():
            if (problem := rng.problem(v)) is not None:
                raise ValueError(f"{f.name} {problem}")


def flag_of(f: Field) -> str:
    """The field's command-line option: its ``flag``, else ``--kebab-case`` of its name.

    Parameters
    ----------
    f : dataclasses.Field
        A field made by :func:`option`.
    """
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


# --- registry names in help texts -----------------------------------------------------------


def declared(package: str) -> dict[str, str | None]:
    """The names registered by the modules of ``package``, read from their source, unimported.

    Each ``@register("name")`` decorator of a module of the package's folder counts, with the
    ``spec_param = "..."`` its class declares (or None). ``--help`` lists the defenses and
    attacks this way: importing them would load scikit-learn, numba or torch (seconds) to print
    a few names. Names registered at run time are added where the registry is already loaded.

    Parameters
    ----------
    package : str
        ``'poisonlens.defense'`` or ``'poisonlens.attacks'``.

    Returns
    -------
    dict of {name: spec_param or None}
    """
    spec = importlib.util.find_spec(package)
    found: dict[str, str | None] = {}
    for folder in spec.submodule_search_locations or () if spec else ():
        for path in sorted(Path(folder).glob("*.py")):
            found.update(_registrations(ast.parse(path.read_text(encoding="utf-8"))))
    loaded = sys.modules.get(f"{package}.base")
    for name, factory in getattr(loaded, "_REGISTRY", {}).items():
        found.setdefault(name, getattr(factory, "spec_param", None))
    return dict(sorted(found.items()))


def _registrations(tree: ast.Module) -> dict[str, str | None]:
    out = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef | ast.FunctionDef):
            continue
        for d in node.decorator_list:
            if (isinstance(d, ast.Call) and getattr(d.func, "id", None) == "register" and d.args
                    and isinstance(d.args[0], ast.Constant) and isinstance(d.args[0].value, str)):  # fmt: skip
                out[d.args[0].value] = _class_constant(node, "spec_param")
    return out


def _class_constant(node: ast.AST, name: str) -> str | None:
    for item in getattr(node, "body", []):
        target = item.target if isinstance(item, ast.AnnAssign) else (
            item.targets[0] if isinstance(item, ast.Assign) else None)  # fmt: skip
        value = getattr(item, "value", None)
        if getattr(target, "id", None) == name and isinstance(value, ast.Constant):
            return value.value
    return None


def registry_names(kind: str) -> list[str]:
    """The names registered for ``kind``, for help texts (fast: see :func:`declared`).

    Parameters
    ----------
    kind : {'defenses', 'defense_specs', 'attacks', 'formats'}
        ``defense_specs`` gives each defense as a grid spec writes it (``epic-<subset_size>``),
        ``formats`` each data format's spec (``digits``, ``npz:<file>``, ...).

    Returns
    -------
    list of str
    """
    if kind == "defenses":
        return list(declared("poisonlens.defense"))
    if kind == "defense_specs":
        specs = declared("poisonlens.defense").items()
        return [f"{name}-<{key}>" if key else name for name, key in specs]
    if kind == "attacks":
        return list(declared("poisonlens.attacks"))
    if kind == "formats":
        from poisonlens.data_formats import format_specs

        return format_specs()
    raise ValueError(f"unknown registry {kind!r}")


REGISTRIES = ("defenses", "defense_specs", "attacks", "formats")


def fill_names(text: str) -> str:
    """``text`` with each ``{defenses}``, ``{defense_specs}``, ``{attacks}`` and ``{formats}``
    replaced by the registered names, comma-separated; a registry is imported only when named.

    Parameters
    ----------
    text : str
        A help text; other braces are left as they are.
    """
    for kind in REGISTRIES:
        token = "{" + kind + "}"
        if token in text:
            text = text.replace(token, ", ".join(registry_names(kind)))
    return text


def names_formatter(base: type[argparse.HelpFormatter]) -> type[argparse.HelpFormatter]:
    """A help formatter that fills registry names (:func:`fill_names`) into each option's help.

    Parameters
    ----------
    base : type
        The parser's formatter class, whose layout is kept.
    """
    if getattr(base, "fills_names", False):
        return base

    class NamesFormatter(base):  # type: ignore[valid-type, misc]
        fills_names = True

        def _get_help_string(self, action: argparse.Action) -> str | None:
            text = super()._get_help_string(action)
            return None if text is None else fill_names(text)

    return NamesFormatter
