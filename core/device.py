"""Where a run computes: resolve ``--device`` once, before anything starts, and seed generators there.

``auto`` means CUDA when present, else the CPU (MPS only when asked for by name: its kernels
are not all deterministic and some dtypes are missing). Asking for a device that is not there
is an :class:`~poisonlens.errors.InputError` naming ``--device``, raised before a run directory is
made.
"""

from __future__ import annotations

import re

import torch

from poisonlens.errors import InputError

DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(spec: str) -> torch.device:
    """The torch device for a ``--device`` value, checked to exist on this machine.

    Parameters
    ----------
    spec : {'auto', 'cpu', 'cuda', 'cuda:N', 'mps'}

    Returns
    -------
    torch.device

    Raises
    ------
    InputError
        ``--device: ...`` for an unknown spelling or a device this machine does not have.
    """
    spec = str(spec).strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError("--device", "mps is not available on this machine")
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d{1,3}))?", spec)
    if not match:
        raise InputError("--device", f"{spec!r} is not a device; use {DEVICE_HELP}")
    if not torch.cuda.is_available():
        raise InputError("--device", "cuda is not available on this machine")
    if match.group(1) is None:
        return torch.device("cuda")
    index, count = int(match.group(1)), torch.cuda.device_count()
    if index >= count:
        raise InputError(
            "--device", f"{spec} is not available (this machine has {count} CUDA device(s))"
        )
    return torch.device("cuda", index)


def seeded_generator(seed: int, stream: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator for one independent stream of a seeded computation, on ``device``.

    The same ``(seed, stream)`` gives the same generator, so a resumed run re-makes each epoch's
    generator exactly (the trainer uses ``stream = epoch``).

    Parameters
    ----------
    seed : the run's (or attack's) random seed, >= 0
    stream : which stream, e.g. the epoch or the restart
    device : where the generator draws (random ops on a tensor need a generator on its device)

    Returns
    -------
    torch.Generator
    """
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + stream)


def fits_on_device(n_bytes: int, device: torch.device, *, share: float = 0.5) -> bool:
    """Whether ``n_bytes`` fit in ``share`` of the free memory of a CUDA ``device``.

    The rest is left to the model, the optimiser and the activations. Always False for
    non-CUDA devices (the CPU's tensors are already where they live).
    """
    if device.type != "cuda":
        return False
    free, _total = torch.cuda.mem_get_info(device)
    return n_bytes <= share * free
