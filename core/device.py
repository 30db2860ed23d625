"""Where a process runs: its device, and its place among the processes of a run.

This module is the one place that decides both:

- **the device**: :func:`parse_device` is the one rule for a ``--device`` value (``auto``,
  ``cpu``, ``cuda``, ``cuda:N`` with N of 1 to 3 digits, ``mps``; spelt exactly so, no case
  folding or blanks), used by the config's check, the CLI's argument types and
  :func:`resolve_device`, which finds the device on this machine (under ``torchrun``,
  ``cuda:<local rank>``). ``auto`` means CUDA when present, else the CPU (MPS only when asked
  for by name: its kernels are not all deterministic and some dtypes are missing). A device
  that is not there is an :class:`~poisonlens.errors.InputError` naming ``--device``, raised
  before a run directory is made.
- **the process's place**: a :class:`DistContext` (rank, local rank, world size, device,
  backend), read from ``torchrun``'s environment (:func:`torchrun_place`) or from a running
  process group (:func:`this_process`). "Is this the process that writes the run?" is spelt
  one way: ``ctx.is_main``.

Parsing imports nothing heavy (the CLI and the dashboard's form call it without torch); torch
is imported by the functions that need a device.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from poisonlens.errors import InputError

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"
_DEVICE = re.compile(r"(auto|cpu|mps|cuda)(?::([0-9]{1,3}))?")
_TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


# --- the device ----------------------------------------------------------------------------


def parse_device(spec: str) -> tuple[str, int | None]:
    """The kind and index a ``--device`` value names, by its spelling alone (nothing is imported).

    Parameters
    ----------
    spec : str
        One of ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (N of 1 to 3 digits) or ``mps``, spelt
        exactly so.

    Returns
    -------
    kind : {'auto', 'cpu', 'cuda', 'mps'}
    index : int or None
        N of ``cuda:N``; None for every other spelling.

    Raises
    ------
    InputError
        ``--device: '<spec>' is not a device; use auto, cpu, cuda, cuda:N or mps``.
    """
    match = _DEVICE.fullmatch(spec) if isinstance(spec, str) else None
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise InputError("--device", f"{str(spec)[:40]!r} is not a device; use {DEVICE_HELP}")
    return match.group(1), None if match.group(2) is None else int(match.group(2))


def resolve_device(spec: str, *, local_rank: int | None = None) -> torch.device:
    """The torch device for a ``--device`` value, checked to exist on this machine.

    Parameters
    ----------
    spec : {'auto', 'cpu', 'cuda', 'cuda:N', 'mps'}
        Read by :func:`parse_device`.
    local_rank : int or None
        This process's index on its machine when ``torchrun`` started it (see
        :func:`torchrun_place`); None for a single process. Under torchrun ``auto`` and
        ``cuda`` mean ``cuda:<local_rank>`` (one GPU per process), and ``cuda:N`` and ``mps``
        are refused (every process on one GPU; no distributed backend for MPS).

    Returns
    -------
    torch.device

    Raises
    ------
    InputError
        ``--device: ...`` for an unknown spelling or a device this machine does not have.
    """
    import torch

    kind, index = parse_device(spec)
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if local_rank is not None:
            raise InputError("--device", "mps has no distributed backend; use --device cpu")
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError("--device", "mps is not available on this machine")
        return torch.device("mps")
    if local_rank is not None and index is not None:
        raise InputError("--device", f"{spec} under torchrun would put every process on one GPU; "
                         "use --device cuda (each process takes cuda:<local rank>)")  # fmt: skip
    if not torch.cuda.is_available():
        raise InputError("--device", "cuda is not available on this machine")
    index = local_rank if index is None else index
    if index is None:
        return torch.device("cuda")
    count = torch.cuda.device_count()
    if index >= count:
        raise InputError("--device", f"cuda:{index} is not available (this machine has {count} CUDA device(s))")
    return torch.device("cuda", index)


def seeded_generator(seed: int, stream: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator for one independent stream of a seeded computation, on ``device``.

    The same ``(seed, stream)`` gives the same generator, so a resumed run re-makes each epoch's
    generator exactly (the trainer uses ``stream = epoch``).

    Parameters
    ----------
    seed : int
        The run's (or attack's) random seed, >= 0.
    stream : int
        Which stream, e.g. the epoch or the restart.
    device : torch.device or str
        Where the generator draws (random ops on a tensor need a generator on its device).

    Returns
    -------
    torch.Generator
    """
    import torch

    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + stream)


def fits_on_device(n_bytes: int, device: torch.device, *, share: float = 0.5) -> bool:
    """Whether ``n_bytes`` fit in ``share`` of the free memory of a CUDA ``device``.

    The rest is left to the model, the optimiser and the activations.

    Parameters
    ----------
    n_bytes : int
        Size of what would be placed there, in bytes.
    device : torch.device
        The candidate device; always False for a non-CUDA device (the CPU's tensors are
        already where they live).
    share : float
        Fraction of the currently free memory that may be used, in (0, 1].

    Returns
    -------
    bool
    """
    import torch

    if device.type != "cuda":
        return False
    free, _total = torch.cuda.mem_get_info(device)
    return n_bytes <= share * free


# --- the process's place ---------------------------------------------------------------------


@dataclass(frozen=True)
class DistContext:
    """This process's place among the processes of one run.

    Attributes
    ----------
    rank : int
        Global index of this process, 0 .. world_size - 1; rank 0 writes the run store.
    local_rank : int
        Index on this machine; picks the GPU (``cuda:<local_rank>``).
    world_size : int
        Number of processes of the run (1 without torchrun).
    device : torch.device or None
        Where this process trains under torchrun; None for a single process, which resolves
        ``--device`` itself (:func:`resolve_device`), or when only the ranks are known.
    backend : str or None
        ``'nccl'`` (CUDA) or ``'gloo'`` (CPU); None when no process group was started.
    """

    rank: int
    local_rank: int
    world_size: int
    device: torch.device | None
    backend: str | None

    @property
    def is_main(self) -> bool:
        """True on the one process that writes the run store, checkpoints and progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group is running (under torchrun, even with one process)."""
        return self.backend is not None


#: The place of a process that is alone: rank 0 of 1, no process group.
ALONE = DistContext(rank=0, local_rank=0, world_size=1, device=None, backend=None)


def _env_int(env, key: str) -> int:
    try:
        value = int(env[key])
    except ValueError as err:
        raise InputError(key, f"environment variable is {env[key]!r}, expected an integer") from err
    if value < 0:
        raise InputError(key, f"environment variable is {value}, expected >= 0")
    return value


def torchrun_place(environ=None) -> DistContext | None:
    """The ranks ``torchrun`` gave this process (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``), or
    None when no launcher speaking its protocol started it.

    Parameters
    ----------
    environ : mapping or None
        The environment to read (None: ``os.environ``).

    Returns
    -------
    DistContext or None
        With ``device`` and ``backend`` None: nothing is resolved or started here.

    Raises
    ------
    InputError
        Naming the variable, when one is not an integer >= 0.
    """
    env = os.environ if environ is None else environ
    if not all(k in env for k in _TORCHRUN_ENV):
        return None
    rank, local_rank, world_size = (_env_int(env, k) for k in _TORCHRUN_ENV)
    return DistContext(rank, local_rank, world_size, None, None)


def this_process() -> DistContext:
    """This process's place now: from the running process group (``torch.distributed``, however
    it was started), else from torchrun's environment, else :data:`ALONE`.

    Returns
    -------
    DistContext
        ``device`` is None; ``backend`` is the process group's, or None without one.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        place = torchrun_place()
        local = place.local_rank if place is not None else 0
        return DistContext(dist.get_rank(), local, dist.get_world_size(), None, dist.get_backend())
    return torchrun_place() or ALONE


def process_device(spec: str) -> torch.device:
    """The device this process trains on for ``--device``: ``cuda:<local rank>`` (or the CPU)
    under torchrun, the named device for a single process.

    Parameters
    ----------
    spec : {'auto', 'cpu', 'cuda', 'cuda:N', 'mps'}

    Returns
    -------
    torch.device
        Where this process computes; a one-line ``--device: ...`` InputError (see
        :func:`resolve_device`) for a spelling or device that cannot be used.
    """
    place = torchrun_place()
    return resolve_device(spec, local_rank=None if place is None else place.local_rank)


def device_spec(config, run_dir: Path, *, resume: bool, device: str | None) -> str:
    """The ``--device`` a run will use: ``device``, else (resuming) run.json's, else the config's.

    Read before the process group starts, since the device picks the backend; an unreadable
    run.json gives ``'auto'`` here and its proper error later, from the resume itself.

    Parameters
    ----------
    config : TrainConfig
        The run's options (used for a new run).
    run_dir : Path
        The run directory (its run.json is read when resuming).
    resume : bool
        Whether the run continues from run.json.
    device : str or None
        A ``--device`` given for this start, which wins; None to use the run's own.

    Returns
    -------
    str
        A ``--device`` value.
    """
    if device is not None:
        return device
    if not resume:
        return config.device
    from poisonlens.store import read_json  # bounded: a run folder may come from someone else

    try:
        return str(read_json(Path(run_dir) / "run.json", root=Path(run_dir))["config"]["device"])
    except (OSError, ValueError, KeyError, TypeError):  # InputError is a ValueError
        return "auto"
