"""A real HTTP webhook receiver for tests: verifies every call with the `standardwebhooks`
package, records it, and answers as each path is told to (fail first, hang, 410...)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


@dataclass
class Behaviour:
    secrets: list[str] = field(default_factory=list)
    fail_first: int = 0  # answer `fail_status` to this many calls first
    fail_status: int = 500
    status: int = 200  # then this
    retry_after: str | None = None
    hang: bool = False  # hold the connection until released
    body_size: int = 0  # answer with a body this big (instead of "ok")
    length_known: bool = True  # announce the body's Content-Length (else: until close)


@dataclass(frozen=True)
class Call:
    path: str
    headers: dict[str, str]
    body: bytes
    verified_by: tuple[int, ...]  # indexes of the secrets that verified it
    answered: int
    at: float

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    def __init__(self) -> None:
        self.behaviours: dict[str, Behaviour] = {}
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.hanging: dict[str, int] = {}  # calls held open right now, by path
        self.arrived: list[tuple[str, str | None, float]] = []  # (path, id, time) of holds
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver._handle(self, body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def behave(self, path: str, **changes: Any) -> Behaviour:
        with self.lock:
            behaviour = self.behaviours.setdefault(path, Behaviour())
            for key, value in changes.items():
                setattr(behaviour, key, value)
            return behaviour

    def calls_to(self, path: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.path == path]

    def _handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        path = handler.path
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self.lock:
            behaviour = self.behaviours.setdefault(path, Behaviour())
            earlier = len([c for c in self.calls if c.path == path])
            secrets = list(behaviour.secrets)
        if behaviour.hang:
            with self.lock:
                self.arrived.append((path, headers.get("webhook-id"), time.time()))
                self.hanging[path] = self.hanging.get(path, 0) + 1
            self.release.wait(60)
            with self.lock:
                self.hanging[path] -= 1
        verified = []
        for i, secret in enumerate(secrets):
            try:
                Webhook(secret).verify(body, headers)
                verified.append(i)
            except WebhookVerificationError:
                pass
        status = behaviour.fail_status if earlier < behaviour.fail_first else behaviour.status
        with self.lock:
            self.calls.append(Call(path, headers, body, tuple(verified), status, time.time()))
        try:
            handler.send_response(status)
            if behaviour.retry_after and status >= 300:
                handler.send_header("Retry-After", behaviour.retry_after)
            if behaviour.body_size:
                self._send_big(handler, behaviour)
                return
            handler.send_header("Content-Length", "2")
            handler.end_headers()
            handler.wfile.write(b"ok")
        except OSError:
            pass  # the sender gave up on us (timeout, or it stopped reading a big answer)

    def _send_big(self, handler: BaseHTTPRequestHandler, behaviour: Behaviour) -> None:
        """A large answer, written 1 MB at a time (the sender may hang up at any point)."""
        if behaviour.length_known:
            handler.send_header("Content-Length", str(behaviour.body_size))
        else:
            handler.send_header("Connection", "close")  # the body ends when we close
        handler.end_headers()
        chunk = b"x" * (1024 * 1024)
        left = behaviour.body_size
        while left > 0:
            handler.wfile.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
        handler.close_connection = True

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
