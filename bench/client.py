"""HTTP clients of the benchmark: a small asyncio HTTP/1.1 client (keep-alive) that drives
the end-to-end phases, checked against ``GET /hello`` like wrk, and a blocking JSON helper
for set-up calls."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any


class Conn:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: bytes = b""
    ) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        head = (
            (
                f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Content-Length: {len(body)}\r\n"
            ).encode()
            + headers
            + b"\r\n"
        )
        try:
            self.writer.write(head + body)
            raw = await self.reader.readuntil(b"\r\n\r\n")
            status = int(raw[9:12])
            length, close = 0, False
            for line in raw.split(b"\r\n")[1:]:
                key, _, value = line.partition(b":")
                key = key.strip().lower()
                if key == b"content-length":
                    length = int(value)
                elif key == b"connection" and value.strip().lower() == b"close":
                    close = True
            data = await self.reader.readexactly(length) if length else b""
        except BaseException:
            self.close()
            raise
        if close:
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


JSON_HEADERS = b"Content-Type: application/json\r\n"


def auth_headers(api_key: str) -> bytes:
    return f"Authorization: Bearer {api_key}\r\n".encode() + JSON_HEADERS


async def closed_loop(
    port: int,
    concurrency: int,
    count: int | None,
    seconds: float | None,
    make: Callable[[int], tuple[str, str, bytes, bytes]],
    on_answer: Callable[[int, int, bytes, float], None] | None = None,
) -> dict[str, Any]:
    """``concurrency`` workers send requests ``make(i)`` back to back, until ``count`` are
    sent or ``seconds`` have passed; returns the rate and the status counts."""
    counter = iter(range(count if count is not None else 10**12))
    deadline = time.monotonic() + seconds if seconds else None
    statuses: dict[int, int] = {}
    errors = 0

    async def worker() -> None:
        nonlocal errors
        conn = Conn(port)
        try:
            for i in counter:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                method, path, headers, body = make(i)
                sent = time.time()
                try:
                    status, data = await conn.request(method, path, body, headers)
                except (OSError, asyncio.IncompleteReadError):
                    errors += 1
                    continue
                statuses[status] = statuses.get(status, 0) + 1
                if on_answer is not None:
                    on_answer(i, status, data, sent)
        finally:
            conn.close()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.monotonic() - started
    done = sum(statuses.values())
    return {
        "requests": done,
        "seconds": wall,
        "rps": done / wall if wall else 0.0,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": errors,
    }


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={
            **({"Content-Type": "application/json"} if data is not None else {}),
            **(headers or {}),
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def mean_batch(port: int, batch: str) -> float | None:
    """Mean requests per database round trip, from the server's own histogram."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    figures = {}
    for line in text.splitlines():
        for part in ("sum", "count"):
            if line.startswith(f'cashout_db_batch_size_{part}{{batch="{batch}"}}'):
                figures[part] = float(line.rsplit(" ", 1)[1])
    if not figures.get("count"):
        return None
    return figures["sum"] / figures["count"]
