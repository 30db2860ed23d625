"""Run the ``poisonlens`` command line on a hostile input, bounded in time and memory.

Shared by the tests of untrusted inputs (files, options, run folders)::

    from tests.untrusted import assert_refused, run_cli, run_cli_forked

    result = run_cli(["train", "--dataset", f"npz:{path}", "--epochs", "1"], cwd=tmp_path)
    assert_refused(result, path.name)

Two ways to run it, both in a separate process, so a segfault, a hang or a memory blow-up is
the child's and never the test runner's:

- :func:`run_cli`: ``python -m poisonlens.cli ...`` in a fresh interpreter, exactly what a user
  runs. It pays the interpreter start and the torch import (5-30 s on a loaded machine).
- :func:`run_cli_forked`: a ``fork()`` of the test process (torch already imported) that
  calls ``poisonlens.cli.main(args)`` and exits with its status. The same code from argument
  parsing on, at a fraction of a second a case; use it for large corpora.

Memory is watched by polling the child's anonymous resident memory (``RssAnon`` in
``/proc/<pid>/status``: what an allocation grows; the ~450 MB of torch's shared libraries
mapped from files are shared and not counted) every few milliseconds, killing the child
past ``max_rss_mb``. ``RLIMIT_AS`` is not used: torch reserves far more address space than
it touches and would not even import under a 1 GB cap. Time is watched twice: wall-clock
``timeout`` catches a hang (a blocked FIFO uses no CPU), ``cpu_timeout`` bounds the work
itself, which a busy shared machine does not inflate.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POLL_S = 0.005  # how often the child's memory is read; touching 1 GB takes well over 50 ms
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CliResult:
    """What one run of the command line did.

    Attributes
    ----------
    returncode : exit status; negative for a signal (-9 when killed for time or memory)
    stdout, stderr : its output, decoded as UTF-8 (undecodable bytes replaced)
    peak_mb : the most anonymous resident memory seen, in MiB
    seconds : wall-clock time of the run
    cpu_seconds : user + system CPU time of the child
    killed : None, ``"timeout"``, ``"cpu"`` or ``"memory"`` when the harness stopped it
    """

    returncode: int
    stdout: str
    stderr: str
    peak_mb: float
    seconds: float
    cpu_seconds: float = 0.0
    killed: str | None = None

    def __iter__(self):  # unpacks as (returncode, stdout, stderr, peak_mb, seconds)
        return iter((self.returncode, self.stdout, self.stderr, self.peak_mb, self.seconds))


def _proc_status(pid: int) -> tuple[float, float]:
    """(anonymous resident MiB, CPU seconds so far) of ``pid``; zeros when it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read().decode("ascii", "replace")
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return 0.0, 0.0
    anon = 0.0
    for line in status.splitlines():
        if line.startswith(("RssAnon:", "RssShmem:")):
            anon += int(line.split()[1]) / 1024  # kB
    fields = stat.rsplit(")", 1)[-1].split()  # after "pid (name)"; utime, stime are 14, 15
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS if len(fields) > 12 else 0.0
    return anon, cpu


def _watch(
    pid: int, start: float, *, timeout: float, cpu_timeout: float, max_rss_mb: float
) -> tuple[int, float, float, str | None]:
    """Wait for ``pid``, killing its process group past a limit.

    Returns (returncode, peak MiB, CPU seconds, why it was killed or None).
    """
    peak, killed = 0.0, None
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done == pid:
            break
        anon, cpu = _proc_status(pid)
        peak = max(peak, anon)
        if peak > max_rss_mb:
            killed = "memory"
        elif cpu > cpu_timeout:
            killed = "cpu"
        elif time.monotonic() - start > timeout:
            killed = "timeout"
        if killed:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            break
        time.sleep(POLL_S)
    return os.waitstatus_to_exitcode(status), peak, usage.ru_utime + usage.ru_stime, killed


def _result(
    out: Path, err: Path, watched: tuple[int, float, float, str | None], start: float
) -> CliResult:
    returncode, peak, cpu, killed = watched
    return CliResult(
        returncode,
        out.read_bytes().decode("utf-8", "replace"),
        err.read_bytes().decode("utf-8", "replace"),
        peak,
        time.monotonic() - start,
        cpu,
        killed,
    )


def run_python(
    argv: list[str],
    *,
    timeout: float = 30,
    cpu_timeout: float | None = None,
    max_rss_mb: float = 1024,
    cwd: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
) -> CliResult:
    """Run ``python *argv`` with this interpreter, the repository importable, and watch it.

    Parameters
    ----------
    argv : arguments of the interpreter (``["-m", "poisonlens.cli", ...]``, ``["script.py"]``)
    timeout : wall-clock seconds before the child's process group is killed
    cpu_timeout : CPU seconds before it is killed (default: ``timeout``)
    max_rss_mb : anonymous resident MiB before it is killed
    cwd : working folder of the child (default: a fresh temporary folder, so a payload
        writing relative paths lands nowhere that matters)
    env : extra environment variables (``OMP_NUM_THREADS=1`` and ``PYTHONPATH`` are set)

    Returns
    -------
    CliResult, which also unpacks as (returncode, stdout, stderr, peak_mb, seconds)
    """
    child_env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        **(env or {}),
    }
    with tempfile.TemporaryDirectory(prefix="poisonlens-untrusted-") as scratch:
        out, err = Path(scratch) / "stdout", Path(scratch) / "stderr"
        workdir = str(cwd) if cwd is not None else scratch
        with open(out, "wb") as out_f, open(err, "wb") as err_f, open(os.devnull, "rb") as null:
            start = time.monotonic()
            pid = _spawn(argv, child_env, workdir, null, out_f, err_f)
            watched = _watch(
                pid,
                start,
                timeout=timeout,
                cpu_timeout=timeout if cpu_timeout is None else cpu_timeout,
                max_rss_mb=max_rss_mb,
            )
        return _result(out, err, watched, start)


def _spawn(argv: list[str], env: dict, cwd: str, null, out_f, err_f) -> int:
    # files, not pipes: a chatty child can never block on a full pipe; its own session, so
    # the whole group is killed; reaped by wait4 (not subprocess) to read its CPU time.
    # Returns only once the child has exec'd: between fork and exec it still holds a copy
    # of this (possibly large) test process's memory, which the watcher must not count.
    ready_r, ready_w = os.pipe()  # close-on-exec: EOF on ready_r means the exec happened
    pid = os.fork()
    if pid == 0:  # the child: become its own session, wire the files, exec python
        try:
            os.close(ready_r)
            os.setsid()
            os.chdir(cwd)
            os.dup2(null.fileno(), 0)
            os.dup2(out_f.fileno(), 1)
            os.dup2(err_f.fileno(), 2)
            os.execve(sys.executable, [sys.executable, *argv], env)
        finally:
            os._exit(127)
    os.close(ready_w)
    try:
        while os.read(ready_r, 1):
            pass
    finally:
        os.close(ready_r)
    return pid


def run_cli(
    args: list[str],
    *,
    timeout: float = 30,
    cpu_timeout: float | None = None,
    max_rss_mb: float = 1024,
    cwd: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
) -> CliResult:
    """Run ``python -m poisonlens.cli *args`` (the ``poisonlens`` command) and watch it.

    Parameters
    ----------
    args : the command line after ``poisonlens`` (e.g. ``["train", "--dataset", ...]``)
    timeout, cpu_timeout, max_rss_mb, cwd, env : as in :func:`run_python`
    """
    return run_python(
        ["-m", "poisonlens.cli", *args],
        timeout=timeout,
        cpu_timeout=cpu_timeout,
        max_rss_mb=max_rss_mb,
        cwd=cwd,
        env=env,
    )


def run_cli_forked(
    args: list[str],
    *,
    timeout: float = 30,
    cpu_timeout: float | None = None,
    max_rss_mb: float = 1024,
    cwd: str | os.PathLike | None = None,
    preload: tuple[str, ...] = ("poisonlens.train",),
) -> CliResult:
    """``poisonlens.cli.main(args)`` in a ``fork()`` of this process, watched as :func:`run_cli`.

    The child starts with everything this process imported: the command's module and the
    modules in ``preload`` are imported here first (the trainer, with torch, by default),
    so a case costs its own work only. Its exit status is ``main``'s return value (or a
    ``SystemExit``'s code); an exception escaping ``main`` is printed with its traceback
    and exits 70, so a test sees it as a failure.
    """
    import importlib

    import poisonlens.cli  # imported before the fork, so each child need not

    command = poisonlens.cli.COMMANDS.get(args[0]) if args else None
    for module in (*preload, *([command[0]] if command else [])):
        importlib.import_module(module)
    _warm_registries()

    with tempfile.TemporaryDirectory(prefix="poisonlens-untrusted-") as scratch:
        out, err = Path(scratch) / "stdout", Path(scratch) / "stderr"
        workdir = str(cwd) if cwd is not None else scratch
        sys.stdout.flush()
        sys.stderr.flush()
        # The child starts with this process's anonymous pages (copy-on-write, but counted in
        # its RssAnon): the cap is on what the case adds, so a test process grown by a long
        # session does not make a cheap case look expensive.
        inherited, _ = _proc_status(os.getpid())
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _forked_main(args, workdir, out, err)  # never returns
        watched = _watch(
            pid,
            start,
            timeout=timeout,
            cpu_timeout=timeout if cpu_timeout is None else cpu_timeout,
            max_rss_mb=max_rss_mb + inherited,
        )
        watched = (watched[0], max(watched[1] - inherited, 0.0), *watched[2:])
        return _result(out, err, watched, start)


def _warm_registries() -> None:
    # the defense registry imports every built-in defense on first use (seconds of imports)
    try:
        from poisonlens.defense.base import defense_names

        defense_names()
    except (ImportError, AttributeError):  # another layout: the child imports what it needs
        pass


def _forked_main(args: list[str], workdir: str, out: Path, err: Path) -> None:
    code = 70
    try:
        os.setsid()
        os.chdir(workdir)
        null = os.open(os.devnull, os.O_RDONLY)
        out_fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        err_fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        # pytest's capture objects stand in for sys.stdout/err: write to the real fds
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        sys.argv = ["poisonlens", *args]
        from poisonlens.cli import main

        try:
            code = int(main(args) or 0)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 70
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def assert_refused(
    result: CliResult,
    *names: str,
    timeout: float = 30,
    max_rss_mb: float = 1024,
) -> str:
    """Assert the run refused its input cleanly; return the one error line.

    Clean means: exit status 2, not killed, within ``timeout`` CPU seconds and
    ``max_rss_mb``, standard error exactly one non-empty line naming each of ``names`` (a
    file name, an option, the problem), and no ``Traceback`` anywhere in the output.
    """
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    context = (
        f"exit {result.returncode}, killed={result.killed}, peak={result.peak_mb:.0f} MiB, "
        f"{result.seconds:.1f} s, stderr={result.stderr[-2000:]!r}"
    )
    assert result.killed is None, context
    assert "Traceback" not in result.stderr + result.stdout, context
    assert result.returncode == 2, context
    assert len(lines) == 1, context
    for name in names:
        assert name in lines[0], f"{name!r} not named in {lines[0]!r}"
    assert result.cpu_seconds < timeout, f"took {result.cpu_seconds:.1f} CPU s"
    assert result.peak_mb < max_rss_mb, f"peak {result.peak_mb:.0f} MiB"
    return lines[0]
