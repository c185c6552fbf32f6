"""The processes the benchmark starts, and what it reads of them from /proc.

Every child runs in its own session, dies with the script (``PR_SET_PDEATHSIG``) and is stopped
by ``Processes.stop_all``, whatever happens. ``Stack`` starts the system under test: the
database, the baseline, cashout servers and the webhook receiver.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.client import http
from tests.cards import luhn_card  # Luhn-valid cards, magic-free endings

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
SECANTUSD = str(Path(PYTHON).parent / "secantusd-py")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _die_with_parent() -> None:  # runs in the child before exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Processes:
    """Every child the benchmark starts, so that all of them are stopped whatever happens."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.procs[name] = proc
        return proc

    def stop(self, name: str, timeout: float = 15.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs)[::-1]:  # servers before the database
            try:
                self.stop(name, timeout=10.0)
            except Exception as exc:  # keep going: every process must be stopped
                print(f"bench: could not stop {name}: {exc}", file=sys.stderr)

    def log_tail(self, name: str, chars: int = 2000) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0])
    return out


def wait_up(
    url: str,
    proc: subprocess.Popen[bytes],
    what: str,
    procs: Processes,
    name: str,
    timeout: float = 60.0,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{procs.log_tail(name)}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f}s")


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout:.0f}s")


class Stack:
    """The system under test: one database and the servers started against it."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs = Processes(work / "logs")
        self.db_uri = ""
        self.db_pid = 0
        self.db_port = 0

    def start_database(self, port: int | None = None) -> None:
        """Start SecantusDB (again on the same port and data folder when restarting)."""
        port = port or free_port()
        self.db_port = port
        proc = self.procs.start(
            "secantusdb",
            [
                SECANTUSD,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--storage-path",
                str(self.work / "db"),
                "--log-level",
                "WARNING",
            ],
        )
        wait_port(port, proc, "SecantusDB")
        self.db_uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
        self.db_pid = proc.pid

    def restart_database(self) -> None:
        """Same data, same port, a new process: its in-memory retryable-write records (see
        bench/README.md) start empty. Clients reconnect on their own."""
        self.procs.stop("secantusdb")
        self.start_database(self.db_port)

    def start_receiver(self) -> int:
        port = free_port()
        proc = self.procs.start(
            "receiver", [PYTHON, str(BENCH / "webhook_receiver.py"), "--port", str(port)]
        )
        wait_up(f"http://127.0.0.1:{port}/stats", proc, "webhook receiver", self.procs, "receiver")
        return port

    def start_baseline(self) -> tuple[int, int]:
        port = free_port()
        proc = self.procs.start(
            "baseline",
            [
                PYTHON,
                str(BENCH / "baseline_server.py"),
                "--port",
                str(port),
                "--mongodb-uri",
                self.db_uri,
                "--db-name",
                "bench_baseline",
            ],
        )
        wait_up(f"http://127.0.0.1:{port}/hello", proc, "baseline server", self.procs, "baseline")
        return port, proc.pid

    def start_cashout(self, name: str, extra: dict[str, str] | None = None) -> tuple[int, int]:
        port = free_port()
        data_dir = self.work / name
        data_dir.mkdir()
        env = {
            "CASHOUT_PORT": str(port),
            "CASHOUT_HOST": "127.0.0.1",
            "CASHOUT_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "CASHOUT_DATA_DIR": str(data_dir),
            "CASHOUT_MONGODB_URI": self.db_uri,
            "CASHOUT_DB_NAME": f"bench_{name.replace('-', '_')}",
            "CASHOUT_GATEWAY": "mock",
            "CASHOUT_LOG_LEVEL": "warning",
            "CASHOUT_MAX_CLAIM_AMOUNT": str(10**9),
            "CASHOUT_DAILY_LIMIT": str(10**15),
            # One provider and one address drive the whole load: measure capacity, not limits.
            "CASHOUT_RATE_LIMIT_PROVIDER": "off",
            "CASHOUT_RATE_LIMIT_CLAIM": "off",
            # The benchmark pays every claim from one card to one card: no card limits.
            "CASHOUT_PAYING_CARD_DAILY_AMOUNT": str(10**15),
            "CASHOUT_CARD_DAILY_AMOUNT": str(10**15),
            "CASHOUT_CARD_DAILY_CLAIMS": str(10**9),
            **(extra or {}),
        }
        proc = self.procs.start(name, [PYTHON, "-m", "server"], env)
        wait_up(
            f"http://127.0.0.1:{port}/healthz", proc, f"cashout server {name}", self.procs, name
        )
        return port, proc.pid

    def register(self, port: int, endpoint: str) -> tuple[str, str]:
        name = f"bench-{secrets.token_hex(3)}"
        status, body = http(
            "POST",
            f"http://127.0.0.1:{port}/cashout/register",
            {
                "name": name,
                "pan": luhn_card(f"{1000 + secrets.randbelow(9000)}"),
                "expDate": "3012",
                "ipin": "1234",
                "consent": True,
                "endpoint": endpoint,
            },
        )
        if status != 200:
            raise RuntimeError(f"register answered {status}: {body}")
        return name, body["api_key"]

    # phases --------------------------------------------------------------------------------
