"""Logging set-up: one line per request, text or JSON, and masking as a last line of defence.

Code never logs a card number or secret on purpose; the masking formatter catches what
slips through anyway (a driver error that quotes a document, a traceback's locals).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tornado.web import RequestHandler

_SECRETS = (
    (re.compile(r"(?<!\d)(\d{8,15})(\d{4})(?!\d)"), lambda m: "*" * len(m.group(1)) + m.group(2)),
    (re.compile(r"\b(ck_(?:test|live)_)[A-Za-z0-9_-]+"), lambda m: m.group(1) + "***"),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]+"), lambda m: "whsec_***"),
)


def mask(text: str) -> str:
    """Hide runs of 12-19 digits but their last four, API keys and webhook secrets."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class MaskingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors; masked like the text format."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("method", "route", "status", "duration_ms"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return mask(json.dumps(entry, ensure_ascii=False))


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The driver's own debug chatter may quote documents; keep it out unless asked for.
    logging.getLogger("pymongo").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("tornado.access").setLevel(logging.WARNING)


access_log = logging.getLogger("cashout.access")


def log_request(handler: RequestHandler) -> None:
    """The route pattern, not the URL: a claim URL is a bearer secret."""
    status = handler.get_status()
    level = logging.INFO if status < 500 else logging.ERROR
    route = getattr(handler, "route", "?")
    method = handler.request.method or "?"
    duration = 1000.0 * handler.request.request_time()
    access_log.log(
        level,
        "%s %s %d %.1fms",
        method,
        route,
        status,
        duration,
        extra={
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(duration, 1),
        },
    )
    from server import metrics  # imported late: the multiprocess switch is set at start-up

    metrics.observe_request(method, route, status, duration / 1000.0)
