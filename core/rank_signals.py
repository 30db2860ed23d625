"""How a rank learns that the run is over elsewhere, and the one line it records about it.

When a worker dies, torchrun's elastic agent sends SIGTERM to the others; by default that kills
them on the spot and rank 0 could not write why. :func:`stop_on_sigterm` turns the signal into
:class:`RankStopped`, and :func:`failure_reason` names a broken collective as what it is.
"""

from __future__ import annotations

import signal
import sys

import torch.distributed as dist

from poisonlens.collectives import active
from poisonlens.device import DistContext, this_process


class RankStopped(RuntimeError):
    """torchrun stopped this process (SIGTERM), usually because another rank died."""


def stop_on_sigterm(ctx: DistContext) -> None:
    """Turn torchrun's SIGTERM into :class:`RankStopped`, so the run is recorded as failed.

    The signal often arrives while the process is already failing (its collective broke when
    the peer died) and writing that failure; it then changes nothing, so the first reason is
    the one recorded.

    Parameters
    ----------
    ctx : DistContext
        This process's place (alone: the default handling is kept).
    """
    if not ctx.distributed:
        return

    def handler(signum, frame):
        if sys.exc_info()[1] is not None:
            return  # already handling the failure: let it be written
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise RankStopped("stopped by torchrun (SIGTERM): another process of the run ended")

    signal.signal(signal.SIGTERM, handler)


def failure_reason(err: BaseException) -> str:
    """The one line run.json records for a failure; a broken collective (a peer process died)
    is named as such instead of gloo's or NCCL's multi-clause message.

    Parameters
    ----------
    err : BaseException
        What ended the run.

    Returns
    -------
    str
        One line.
    """
    text = f"{type(err).__name__}: {err}".splitlines()[0]
    broken = isinstance(err, getattr(dist, "DistError", ())) or any(
        word in text for word in ("gloo/transport", "Connection reset", "Connection closed", "NCCL")
    )
    if broken and active():
        return f"another process of the run ended (rank {this_process().rank}: {text[:160]})"
    return text
