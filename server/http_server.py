"""The HTTP server: Tornado's, with request bodies bounded by ``CASHOUT_MAX_BODY_BYTES``.

Tornado's own ``max_body_size`` answers a bare ``400`` and drops the connection. Here every
request passes through ``BodyLimit`` first, which answers a body over the limit with the
API's JSON ``413 payload_too_large`` and reads no more of it:

- a ``Content-Length`` over the limit (true or not) is refused as soon as the headers are
  in, before a byte of the body is read (nor is ``100 Continue`` sent);
- a chunked body is counted as it arrives and refused the moment it passes the limit.

The handler never runs for a refused request (its buffered chunks are dropped), and the
connection is closed once the answer is written, since the rest of the body cannot be told
apart from a next request. The other connections are not affected.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable
from typing import Any

from tornado import httputil
from tornado.httpserver import HTTPServer

from server import metrics
from server.logs import access_log

log = logging.getLogger("cashout.http")

# Tornado's own limit, set out of reach so that BodyLimit always answers first.
UNBOUNDED = 2**62
REFUSED_ROUTE = "(body too large)"


class BodyLimit(httputil.HTTPMessageDelegate):
    """Wraps the application's delegate for one request; answers 413 for a body over
    ``limit`` bytes instead of handing it on."""

    def __init__(
        self, inner: httputil.HTTPMessageDelegate, conn: httputil.HTTPConnection, limit: int
    ) -> None:
        self.inner = inner
        self.conn = conn
        self.limit = limit
        self.received = 0
        self.refused = False
        self.method = "?"
        self.started = time.monotonic()

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        if isinstance(start_line, httputil.RequestStartLine):
            self.method = start_line.method
        declared = _declared_length(headers)
        if declared is not None and declared > self.limit:
            self._refuse()
            return None
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.refused:
            return None
        self.received += len(chunk)
        if self.received > self.limit:
            self.inner.on_connection_close()  # drop what the application buffered
            self._refuse()
            return None
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        if not self.refused:
            self.inner.finish()

    def on_connection_close(self) -> None:
        if not self.refused:
            self.inner.on_connection_close()

    def _refuse(self) -> None:
        self.refused = True
        body = json.dumps(
            {
                "message": f"The body is larger than {self.limit} bytes.",
                "code": "payload_too_large",
            },
            separators=(",", ":"),
        ).encode()
        headers = httputil.HTTPHeaders(
            {
                "Content-Type": "application/json; charset=UTF-8",
                "Content-Length": str(len(body)),
                "Connection": "close",
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
            }
        )
        self.conn.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", 413, "Payload Too Large"), headers, body
        )
        # The unread rest of the body cannot be told from a next request: the connection
        # closes once this answer is written (Tornado does so for an unfinished read).
        self.conn.finish()
        seconds = time.monotonic() - self.started
        access_log.info(
            "%s %s 413 %.1fms",
            self.method,
            REFUSED_ROUTE,
            seconds * 1000,
            extra={
                "method": self.method,
                "route": REFUSED_ROUTE,
                "status": 413,
                "duration_ms": round(seconds * 1000, 1),
            },
        )
        metrics.observe_request(self.method, REFUSED_ROUTE, 413, seconds)


def _declared_length(headers: httputil.HTTPHeaders) -> int | None:
    """The ``Content-Length`` a client announced, or None (none, or not a number: Tornado
    refuses those itself)."""
    value = headers.get("Content-Length")
    if value is None:
        return None
    first = value.split(",", 1)[0].strip()
    return int(first) if first.isascii() and first.isdigit() else None


class BoundedHTTPServer(HTTPServer):
    """``HTTPServer`` whose every request goes through ``BodyLimit`` (make it with
    ``bounded_server``)."""

    body_limit: int

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        inner = super().start_request(server_conn, request_conn)
        return BodyLimit(inner, request_conn, self.body_limit)


def bounded_server(app: Any, body_limit: int, **options: Any) -> BoundedHTTPServer:
    """An HTTP server for ``app`` answering bodies over ``body_limit`` bytes with 413."""
    server = BoundedHTTPServer(app, max_body_size=UNBOUNDED, **options)
    server.body_limit = body_limit
    return server
