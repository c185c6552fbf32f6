"""Logging set-up: one line per request, and masking as a last line of defence.

Code never logs a card number or secret on purpose; the masking formatter catches what
slips through anyway (a driver error that quotes a document, a traceback's locals).
"""

from __future__ import annotations

import logging
import re
import sys
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


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(MaskingFormatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The driver's own debug chatter may quote documents; keep it out unless asked for.
    logging.getLogger("pymongo").setLevel(max(logging.WARNING, root.level))


access_log = logging.getLogger("cashout.access")


def log_request(handler: RequestHandler) -> None:
    """The route pattern, not the URL: a claim URL is a bearer secret."""
    status = handler.get_status()
    level = logging.INFO if status < 500 else logging.ERROR
    route = getattr(handler, "route", "?")
    access_log.log(level, "%s %s %d %.1fms", handler.request.method, route, status,
                   1000.0 * handler.request.request_time())
