"""The embedded database: a SecantusDB (MongoDB wire protocol, WiredTiger) child process.

It lets a newcomer run the service with nothing installed. The child dies with us even on
kill -9 (PR_SET_PDEATHSIG), and its data stays in the data directory for the next start.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("cashout.embedded_db")
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent dies (even by kill -9)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def executable() -> str:
    found = shutil.which("secantusd-py") or str(Path(sys.executable).parent / "secantusd-py")
    if not os.path.exists(found):
        raise RuntimeError(
            "secantusd-py not found: install the SecantusDB package "
            "(pip install -r requirements.txt)"
        )
    return found


# One node on loopback: a retryable write buys nothing (there is no failover to retry
# across), and SecantusDB pays for each one (a record per write, sorted once it holds 10,000:
# 4-12 ms more per write). An external MongoDB keeps whatever its URI says (retryable writes
# are the driver's default there, as a replica set needs).
OPTIONS = "directConnection=true&retryWrites=false"


def embedded_uri(host: str, port: int) -> str:
    return f"mongodb://{host}:{port}/?{OPTIONS}"


class EmbeddedDatabase:
    def __init__(self, data_dir: str, port: int = 0, host: str = "127.0.0.1"):
        self.dir = Path(data_dir).resolve()
        self.host = host
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return embedded_uri(self.host, self.port)

    @property
    def port_file(self) -> Path:
        return self.dir / "db.port"

    def running_uri(self) -> str | None:
        """The URI of an embedded database another process already runs on this data dir."""
        try:
            port = int(self.port_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            socket.create_connection((self.host, port), timeout=1).close()
        except OSError:
            return None
        return embedded_uri(self.host, port)

    def start(self, timeout: float = 30.0) -> str:
        """Start the child and wait until it answers; retried while a previous instance
        (say, one whose parent was just killed) still holds the files."""
        self.dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        last_error = "did not start"
        while time.monotonic() < deadline:
            port = self.port or _free_port(self.host)
            logfile = open(self.dir / "db.log", "ab")
            self.process = subprocess.Popen(
                [
                    executable(),
                    "--host",
                    self.host,
                    "--port",
                    str(port),
                    "--storage-path",
                    str(self.dir / "db"),
                    "--log-level",
                    "WARNING",
                ],
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=logfile,
                preexec_fn=die_with_parent,
                start_new_session=True,
            )
            logfile.close()
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    socket.create_connection((self.host, port), timeout=0.5).close()
                except OSError:
                    time.sleep(0.05)
                    continue
                self.port = port
                self.port_file.write_text(f"{port}\n")
                log.info("embedded database up on port %d (data in %s)", port, self.dir / "db")
                return self.uri
            code = self.process.poll()
            last_error = f"exited with status {code}" if code is not None else "timed out"
            self.stop()
            time.sleep(0.5)
        raise RuntimeError(f"embedded database {last_error}; see {self.dir / 'db.log'}")

    def stop(self, timeout: float = 20.0) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded database did not stop in %.0fs; killing it", timeout)
                proc.kill()
                proc.wait()
        try:
            if self.port_file.read_text().strip() == str(self.port):
                self.port_file.unlink()
        except OSError:
            pass
