"""The simulator's routes: the consumer API under its base path, the ``/_sim/`` control
routes, JSON 404s elsewhere, and an access log that never prints a query string."""

from __future__ import annotations

import logging
import re

import tornado.web

from simulator.ebs.control import (
    LedgerHandler,
    PublicKeyHandler,
    RequestsHandler,
    RotateKeyHandler,
    TransferHandler,
)
from simulator.ebs.handlers import ConsumerHandler, NotFoundHandler
from simulator.ebs.state import SimState

log = logging.getLogger(__name__)


def base_path(path: str) -> str:
    """``consumer`` or ``/consumer`` -> ``/consumer/``; empty -> ``/``."""
    return "/" + path.strip("/") + "/" if path.strip("/") else "/"


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """Access log without query strings: ``/_sim/ledger?pan=`` must not print a card."""
    request = handler.request
    log.info(
        "%s %s %d %.1fms",
        request.method,
        request.path,
        handler.get_status(),
        request.request_time() * 1000,
    )


def make_app(state: SimState, base: str = "/consumer/") -> tornado.web.Application:
    args = {"state": state}
    return tornado.web.Application(
        [
            (re.escape(base_path(base)) + r"([A-Za-z]+)", ConsumerHandler, args),
            (r"/_sim/requests", RequestsHandler, args),
            (r"/_sim/ledger", LedgerHandler, args),
            (r"/_sim/transfers/([^/]+)", TransferHandler, args),
            (r"/_sim/public-key", PublicKeyHandler, args),
            (r"/_sim/rotate-key", RotateKeyHandler, args),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args=args,
        log_function=_log_request,
    )
