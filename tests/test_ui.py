"""``poisonlens ui``: the dashboard from the installed package, listening on loopback only."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from poisonlens.cli import main

POISONLENS = Path(sys.executable).parent / "poisonlens"
LISTEN = "0A"  # the TCP state column of /proc/net/tcp for a listening socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port``, read from /proc/net/tcp{,6}:
    '127.0.0.1', '0.0.0.0', '::', '::1', ..."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] != LISTEN or int(hex_port, 16) != port:
                continue
            raw = bytes.fromhex(address)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, raw))
    return found


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read()
            return
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"poisonlens ui did not answer:\n{log.read_text()[-2000:]}")
            time.sleep(0.3)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc/net/tcp")
def test_ui_serves_the_dashboard_on_loopback_only(tmp_path):
    runs, elsewhere = tmp_path / "my runs", tmp_path / "elsewhere"
    runs.mkdir()
    elsewhere.mkdir()
    port = free_port()
    log = tmp_path / "ui.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(POISONLENS), "ui", "--runs-dir", str(runs), "--port", str(port)],
                                cwd=elsewhere, env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, log)
        assert listening_addresses(port) == {"127.0.0.1"}
        # the same process became the server (no child left behind), on the installed app.py
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"streamlit" in cmdline and str(runs).encode() in cmdline
        import poisonlens.dashboard

        app = Path(poisonlens.dashboard.__file__).parent / "app.py"
        assert str(app).encode() in cmdline
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_listening_addresses_reads_a_wildcard_socket():
    # the parser itself: a socket bound to every address is reported as such
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        assert listening_addresses(s.getsockname()[1]) == {"0.0.0.0"}


@pytest.mark.parametrize(
    ("argv", "source"),
    [
        (["ui", "--port", "0"], "--port"),
        (["ui", "--port", "http"], "--port"),
        (["ui", "--host", "a b"], "--host"),
        (["ui", "--host", ""], "--host"),
    ],
)
def test_bad_ui_options_are_one_line(argv, source, capsys):
    with pytest.raises(SystemExit) as exit_:
        code = main(argv)
        raise SystemExit(code)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"poisonlens: {source}:")


def test_a_runs_dir_that_is_a_file_is_refused(tmp_path, capsys):
    file = tmp_path / "runs"
    file.write_text("")
    assert main(["ui", "--runs-dir", str(file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a folder" in err


def test_make_run_calls_poisonlens_ui():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    recipe = makefile.split("\nrun:")[1].split("\n\n")[0]
    assert "poisonlens ui --runs-dir $(RUNS) --port $(PORT)" in recipe


def test_the_served_dashboard_offers_no_deploy_to_a_cloud_service():
    from pathlib import Path

    from poisonlens.commands.ui import streamlit_command

    argv = streamlit_command(Path("app.py"), runs_dir="runs", port=8501, host="127.0.0.1")
    assert argv[argv.index("--client.toolbarMode") + 1] == "minimal"
