"""``poisonlens ui``: start the dashboard from the installed package, as ``tensorboard --logdir`` does.

A thin launcher: the process becomes ``python -m streamlit run <installed dashboard/app.py>``
(``os.execv``, so a signal to it reaches the server and no child is left behind). The server
listens on 127.0.0.1 unless ``--host`` says otherwise: the dashboard has no login, and its
New run page starts training jobs (docs/security.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import os
import sys
from pathlib import Path

from poisonlens.commands import add_command
from poisonlens.errors import InputError

LOOPBACK = "127.0.0.1"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``ui`` subcommand and its options to ``sub``.

    Parameters
    ----------
    sub : argparse._SubParsersAction
        Subcommands of the top-level parser. ``ui`` takes ``--runs-dir`` (default
        ``$POISONLENS_RUNS``, else ``runs``), ``--port`` and ``--host``.
    """
    p = add_command(sub, "ui", run)
    p.add_argument(
        "--runs-dir",
        default=os.environ.get("POISONLENS_RUNS") or "runs",
        help="folder that holds run directories (default: POISONLENS_RUNS, else runs)",
    )
    p.add_argument("--port", type=port_number, default=8501, help="port to listen on")
    p.add_argument(
        "--host",
        default=LOOPBACK,
        help="address to listen on; anything but loopback needs an authenticating proxy in front "
        "(docs/security.md)",
    )


def port_number(text: str) -> int:
    """A TCP port from the command line (1-65535); argparse turns the error into one line.

    Parameters
    ----------
    text : str
        The option's value as typed.

    Returns
    -------
    int in [1, 65535]

    Raises
    ------
    argparse.ArgumentTypeError
        For text that is not a whole number in range.
    """
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be in [1, 65535], got {port}")
    return port


def app_path() -> Path:
    """The dashboard's entry file in the installed package (the checkout's in an editable install)."""
    spec = importlib.util.find_spec("poisonlens.dashboard")  # found without importing streamlit
    if spec is None or not spec.submodule_search_locations:
        raise InputError("poisonlens.dashboard", "not installed with this poisonlens")
    path = Path(next(iter(spec.submodule_search_locations))) / "app.py"
    if not path.is_file():
        raise InputError(path, "missing: reinstall poisonlens")
    return path


def streamlit_command(app: Path, *, runs_dir: str, port: int, host: str) -> list[str]:
    """The argv that serves ``app`` on ``host:port`` over ``runs_dir``, headless, no telemetry,
    and no "Deploy" button (it offers to publish the app on a cloud service).

    Parameters
    ----------
    app : Path
        The dashboard's entry file (:func:`app_path`).
    runs_dir : str
        Absolute folders of runs joined by ``os.pathsep``, handed to the app as ``--runs-dir``.
    port : int
        The TCP port to listen on.
    host : str
        The address to listen on, checked by :func:`check_host`.

    Returns
    -------
    list of str, starting with this interpreter: ``python -m streamlit run APP ...``
    """
    return [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
        "--", "--runs-dir", runs_dir,
    ]  # fmt: skip


def check_host(host: str) -> str:
    """``host`` unless it is empty or has characters no address or host name has.

    Parameters
    ----------
    host : str
        ``--host`` as typed: an IPv4 or IPv6 address (brackets allowed) or a host name, at
        most 253 characters of letters, digits and ``.-:[]``.

    Returns
    -------
    str, ``host`` unchanged

    Raises
    ------
    InputError
        Naming ``--host``, for anything else (a space, a slash, a shell character).
    """
    if not host or len(host) > 253 or not all(c.isalnum() or c in ".-:[]" for c in host):
        raise InputError("--host", f"not an address or host name: {host!r}")
    return host


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1 or localhost).

    Parameters
    ----------
    host : str
        An address (an IPv6 one may be in brackets) or a host name; a name other than
        ``localhost`` counts as not loopback, as it may resolve anywhere.

    Returns
    -------
    bool
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    """Replace this process with the Streamlit server; returns only on a bad option.

    Parameters
    ----------
    args : argparse.Namespace
        ``runs_dir`` (folders joined by ``os.pathsep``), ``port`` and ``host``; a host other
        than loopback is served with a warning on standard error.

    Raises
    ------
    InputError
        When streamlit is missing, a runs folder is a file, or the host is not an address.
    """
    if importlib.util.find_spec("streamlit") is None:
        raise InputError("streamlit", "not installed; `pip install poisonlens` installs it")
    # absolute, so the server reads the folder the user meant whatever its working directory
    folders = [Path(p).expanduser().absolute() for p in args.runs_dir.split(os.pathsep) if p]
    for folder in folders:
        if folder.exists() and not folder.is_dir():
            raise InputError(folder, "not a folder (--runs-dir)")
    if not folders:
        raise InputError("--runs-dir", "empty")
    runs_dir = os.pathsep.join(str(f) for f in folders)
    host = check_host(args.host)
    cmd = streamlit_command(app_path(), runs_dir=runs_dir, port=args.port, host=host)
    print(f"poisonlens ui: {runs_dir} at http://{host}:{args.port}", file=sys.stderr)
    if not is_loopback(host):
        print(
            f"poisonlens ui: listening on {host}: anyone who reaches it can read these runs and "
            "start training; put an authenticating proxy in front (docs/security.md)",
            file=sys.stderr,
        )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)
    return 0  # not reached
