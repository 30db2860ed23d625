"""What ``--model`` may name, checked without importing torch; and which specs may import code.

A model is one of

- a built-in network: ``smallcnn`` or ``resnet18``;
- ``torchvision:NAME``: a torchvision classifier (``resnet50``, ``vit_b_16``, ...), random
  initialisation, its head made for the data set's classes;
- ``timm:NAME``: a timm model, the same way (when timm is installed);
- ``module.path:factory``: a callable in an importable module that returns an ``nn.Module``.

Importing ``module.path`` runs its code. That is the user's own choice when they type the spec
on the command line, but a spec read from a file (a run.json, a ``--config`` file, a launch
request) may come from someone else, so such a spec is built only when this process was told
it on its command line (:func:`trust`, called by the CLI's parser). ``--resume`` of such a run
and ``--config`` with such a spec therefore need ``--model`` again (docs/security.md).
"""

from __future__ import annotations

import re

from poisonlens.errors import InputError

BUILT_IN = ("smallcnn", "resnet18")
LIBRARIES = ("torchvision", "timm")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,31}")
_TRUSTED: set[str] = set()


def parse(spec: str) -> tuple[str, str]:
    """Split a model spec into its kind and name, checking its form only (nothing is imported).

    Parameters
    ----------
    spec : str
        Text as ``--model`` takes it, e.g. ``smallcnn`` or ``torchvision:resnet50``.

    Returns
    -------
    (kind, name) : (str, str)
        ('builtin', 'smallcnn'), ('torchvision', 'resnet50'), ('timm', 'vit_tiny_patch16_224')
        or ('module', 'pkg.mod:factory'); a module spec keeps its whole text as the name.

    Raises
    ------
    InputError
        naming ``--model``, for text that is none of these (checked by its form only: nothing
        is imported).
    """
    if not isinstance(spec, str):
        raise InputError("--model", f"must be text, got {type(spec).__name__}")
    if spec in BUILT_IN:
        return "builtin", spec
    prefix, colon, name = spec.partition(":")
    if not colon:
        raise InputError("--model", f"unknown model {spec!r}; choose {', '.join(BUILT_IN)}, "
                         "torchvision:NAME, timm:NAME or module.path:factory")  # fmt: skip
    if prefix in LIBRARIES:
        if not _NAME.fullmatch(name):
            raise InputError("--model", f"{spec!r}: {name!r} is not a model name")
        return prefix, name
    if not _DOTTED.fullmatch(prefix) or not _DOTTED.fullmatch(name) or "." in name:
        raise InputError("--model", f"{spec!r} is not module.path:factory (Python names only)")
    return "module", spec


def imports_code(spec: str) -> bool:
    """Whether building ``spec`` imports a module the spec names (``module.path:factory``).

    Parameters
    ----------
    spec : str
        A model spec, checked by :func:`parse`.

    Returns
    -------
    bool
        False for built-in, torchvision and timm specs.

    Raises
    ------
    InputError
        As :func:`parse`, for text that is not a model spec.
    """
    return parse(spec)[0] == "module"


def trust(spec: str) -> str:
    """Let this process build ``spec``, typed by the user on its command line.

    The CLI's ``--model`` option type calls this, so a spec read later from a file is built
    only when it is one of these.

    Parameters
    ----------
    spec : str
        The spec as the user typed it after ``--model``.

    Returns
    -------
    str
        ``spec`` unchanged (usable as an argparse type).

    Raises
    ------
    InputError
        As :func:`parse`, for text that is not a model spec.
    """
    parse(spec)
    _TRUSTED.add(spec)
    return spec


def check_trusted(spec: str) -> None:
    """Refuse to build a ``module.path:factory`` spec this process was not told on its command line.

    Parameters
    ----------
    spec : str
        The spec about to be built, e.g. from a run.json.
        Built-in, torchvision and timm specs always pass.

    Raises
    ------
    InputError
        naming ``--model``: the spec came from a file (run.json, --config, a launch request).
    """
    if imports_code(spec) and spec not in _TRUSTED:
        raise InputError(
            "--model",
            f"{spec} imports and runs Python code; it is built only when given on the command "
            f"line: pass --model {spec} again (docs/security.md)",
        )
