"""Real processes for tests: the server (`python -m server`) on a free port, the database,
and a register of every secret the run created so logs can be checked for leaks."""

from __future__ import annotations

import itertools
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import httpx

from gateways.mock import LEDGER_FILE as MOCK_LEDGER
from server.embedded_db import embedded_uri
from simulator.ebs.state import LEDGER_FILE
from tests.ledger import Ledger

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# Every card number, IPIN, key and secret a test created; logs and outputs must hold none.
SECRETS: set[str] = set()
SHORT_SECRETS: set[str] = set()  # IPINs and expiries: matched as whole numbers only


def remember(*values: str) -> None:
    for value in values:
        if value and len(value) >= 8:
            SECRETS.add(value)
        elif value:
            SHORT_SECRETS.add(value)


def leaks_in(text: str) -> list[str]:
    """Which remembered secrets appear in ``text`` (described, never quoted whole)."""
    found = [f"secret ending {s[-4:]}" for s in SECRETS if s in text]
    for short in SHORT_SECRETS:
        if re.search(rf"(?<![\w.:*-]){re.escape(short)}(?![\w.:-])", text):
            found.append(f"short secret {short[:1]}***")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    condition: Callable[[], Any],
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# Tests send far more requests from one address (and one provider) than any real client
# would: the rate limits are off unless a test sets them (tests/test_limits.py does, and
# shows them at their defaults).
NO_RATE_LIMITS = {
    "CASHOUT_RATE_LIMIT_PROVIDER": "off",
    "CASHOUT_RATE_LIMIT_REGISTER": "off",
    "CASHOUT_RATE_LIMIT_CARD_CHECK": "off",
    "CASHOUT_RATE_LIMIT_CLAIM": "off",
    "CASHOUT_RATE_LIMIT_WEBHOOK_SENDS": "off",
}
DEFAULT = "(default)"  # as a value in a test server's env: leave that setting at its default


class ServerProcess:
    """``python -m server`` as a child process with its output captured to a file."""

    def __init__(
        self, log_dir: Path, env: dict[str, str], name: str = "server", args: Iterable[str] = ()
    ):
        self.port = int(env.get("CASHOUT_PORT") or free_port())
        self.env = {
            **os.environ,
            **NO_RATE_LIMITS,
            "CASHOUT_PORT": str(self.port),
            "CASHOUT_PUBLIC_URL": f"http://127.0.0.1:{self.port}",
            **env,
        }
        self.env["CASHOUT_PORT"] = str(self.port)
        self.env = {k: v for k, v in self.env.items() if v != DEFAULT}
        self.args = list(args)
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        # With CASHOUT_OPS_PORT set, /healthz, /readyz and /metrics answer there only.
        ops_port = self.env.get("CASHOUT_OPS_PORT")
        self.ops_url = f"http://127.0.0.1:{ops_port}" if ops_port else self.url

    def start(self, wait: bool = True, timeout: float = 30.0) -> ServerProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "server", *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.proc.returncode}:\n" + self.log()[-2000:]
                )
            try:
                return httpx.get(self.ops_url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, what="the server to answer /healthz")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


class Database:
    """A SecantusDB server for the whole test session (the same program the service embeds)."""

    def __init__(self, data_dir: Path):
        self.port = free_port()
        self.dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.uri = embedded_uri("127.0.0.1", self.port)  # as the service embeds it

    def start(self) -> Database:
        self.dir.mkdir(parents=True, exist_ok=True)
        exe = str(Path(PYTHON).parent / "secantusd-py")
        log = open(self.dir / "db.log", "ab")
        self.proc = subprocess.Popen(
            [
                exe,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--storage-path",
                str(self.dir / "data"),
                "--log-level",
                "WARNING",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                return False

        wait_until(up, 30, what="the test database")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Simulator:
    """``python -m simulator.ebs`` as a child process, ready when it says so."""

    def __init__(self, data_dir: Path, log_path: Path, *extra: str) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self._log: IO[str] | None = None

    def start(self, timeout: float = 30.0) -> Simulator:
        self._log = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "simulator.ebs",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--data-dir",
                str(self.data_dir),
                *self.extra,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], deadline - time.monotonic())
            if ready:
                line = self.proc.stdout.readline()
                break
        if not line.startswith("simulator listening on "):
            self.proc.kill()
            raise AssertionError(
                f"simulator did not start: {line!r}\n{self.log_path.read_text()[-3000:]}"
            )
        self.url = line.split(" on ", 1)[1].strip()
        return self

    @property
    def origin(self) -> str:
        return self.url.split("/consumer/")[0]

    def get(self, path: str, **params: str) -> Any:
        response = httpx.get(self.origin + path, params=params, timeout=10)
        return response.json()

    def post(self, path: str, **params: str) -> Any:
        return httpx.post(self.origin + path, params=params, timeout=30).json()

    def requests(self) -> list[dict[str, Any]]:
        return self.get("/_sim/requests")["requests"]

    def requests_for(self, request_uuid: str) -> list[dict[str, Any]]:
        return [r for r in self.requests() if r.get("uuid") == request_uuid]

    def ledger(self) -> Ledger:
        return Ledger(self.data_dir / LEDGER_FILE)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            if self._log is not None:
                self._log.close()
        return code


def provider_body(
    name: str,
    pan: str,
    ipin: str = "7391",
    exp: str = "3012",
    endpoint: str = "http://127.0.0.1:9/hook",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "name": name,
        "pan": pan,
        "expDate": exp,
        "ipin": ipin,
        "consent": True,
        "endpoint": endpoint,
        **extra,
    }


def register(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """Register a provider and remember its secrets; returns the response body."""
    remember(body["pan"], body["ipin"])
    response = client.post("/cashout/register", json=body)
    assert response.status_code == 200, response.json().get("code")
    data = response.json()
    remember(data["api_key"], data["webhook_secret"])
    return data


def auth(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


def signal_name(sig: int) -> str:
    return signal.Signals(sig).name


# Settings that make reconciliation settle within a second or two in tests.
FAST_RECONCILE = {
    "CASHOUT_RECONCILE_INTERVAL": "0.3",
    "CASHOUT_SETTLE_GRACE": "0.5",
    "CASHOUT_ATTEMPT_LEASE": "3",
}


def claim_status(
    client: httpx.Client, name: str, uuid: str, headers: dict[str, str]
) -> dict[str, Any]:
    response = client.get(f"/cashout/claims/{name}/{uuid}", headers=headers)
    assert response.status_code == 200, response.status_code
    return response.json()


def wait_for_status(
    client: httpx.Client,
    name: str,
    uuid: str,
    headers: dict[str, str],
    statuses: Iterable[str],
    timeout: float = 30.0,
) -> dict[str, Any]:
    wanted = set(statuses)
    last: dict[str, Any] = {}

    def reached() -> dict[str, Any] | None:
        nonlocal last
        last = claim_status(client, name, uuid, headers)
        return last if last["status"] in wanted else None

    try:
        return wait_until(reached, timeout, interval=0.1, what=f"claim to be {wanted}")
    except AssertionError:
        raise AssertionError(f"claim stayed {last.get('status')} (wanted {wanted})") from None


_refs = itertools.count(1)


@dataclass
class Provider:
    server: ServerProcess
    client: httpx.Client
    name: str
    pan: str
    headers: dict[str, str]
    webhook_secret: str = ""

    def generate(self, amount: int, ref: str | None = None, **extra: Any) -> str:
        ref = ref or f"ref-{next(_refs)}"
        response = self.client.post(
            f"/cashout/generate/{self.name}",
            headers=self.headers,
            json={"amount": amount, "id": ref, **extra},
        )
        assert response.status_code == 201
        return response.json()["uuid"]

    def claim(self, uuid: str, pan: str) -> httpx.Response:
        remember(pan)
        return self.client.post(f"/cashout/claim/{self.name}", json={"id": uuid, "pan": pan})

    def status(self, uuid: str) -> dict[str, Any]:
        return claim_status(self.client, self.name, uuid, self.headers)

    def wait(self, uuid: str, *statuses: str) -> dict[str, Any]:
        return wait_for_status(self.client, self.name, uuid, self.headers, statuses)

    @classmethod
    def register(cls, server: ServerProcess, endpoint: str = "http://127.0.0.1:9/hook") -> Provider:
        from tests.conftest import random_pan, unique_name

        client = server.client()
        name, pan = unique_name(), random_pan()
        creds = register(client, provider_body(name, pan, endpoint=endpoint))
        return cls(server, client, name, pan, auth(creds["api_key"]), creds["webhook_secret"])

    @property
    def ledger(self) -> Ledger:
        return Ledger(Path(self.server.env["CASHOUT_DATA_DIR"]) / MOCK_LEDGER)


def make_overdue(db: Any, uuid: str) -> None:
    """Move a pending claim's expiry into the past, as time would: its ``next_at`` (what the
    expiry sweep looks at) is its expiry while it is pending."""
    past = datetime.now(UTC) - timedelta(minutes=1)
    db.claims.update_one({"_id": uuid}, {"$set": {"expires_at": past, "next_at": past}})
