"""Shared request handling: security headers, JSON errors, body parsing, authentication."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from tornado.web import HTTPError, RequestHandler, StaticFileHandler

from server.audit import api_caller
from server.errors import ApiError, Unavailable
from server.validation import parse_json_object

if TYPE_CHECKING:
    from server.models import Caller, Provider
    from server.services import Services

# (path template, handler class); each handler module exports its own ``default_handlers``.
Route = tuple[str, type[RequestHandler]]

log = logging.getLogger("cashout.http")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "unavailable",
}


def security_headers(handler: RequestHandler, cache: bool = False) -> None:
    """The headers of docs/DESIGN.md section 5, on every response of every handler."""
    handler.set_header(
        "Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; form-action 'self'"
    )
    handler.set_header("X-Content-Type-Options", "nosniff")
    handler.set_header("Referrer-Policy", "no-referrer")
    handler.set_header("X-Frame-Options", "DENY")
    handler.set_header("Cache-Control", "public, max-age=3600" if cache else "no-store")
    if handler.application.settings.get("production"):
        handler.set_header("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
    handler.clear_header("Server")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class BaseHandler(RequestHandler):
    """Every handler: security headers, and no stack trace ever reaches a client."""

    route = "?"

    def initialize(self, route: str = "?") -> None:
        self.route = route
        self._counted = False

    def prepare(self) -> None:
        self.services.inflight.enter()
        self._counted = True

    def on_finish(self) -> None:
        if self._counted:
            self.services.inflight.leave()
            self._counted = False

    @property
    def services(self) -> Services:
        services: Services = self.application.settings["services"]
        return services

    def set_default_headers(self) -> None:
        security_headers(self)

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            status_code = exc.status
        super().send_error(status_code, **kwargs)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, Unavailable):
            log.warning(
                "%s %s: database unavailable: %s", self.request.method, self.route, value.cause
            )
            return
        if isinstance(value, ApiError):
            return  # an answer, not a failure; the access log line records it
        if isinstance(value, HTTPError):
            if value.log_message:
                log.warning("%s %s: %s", self.request.method, self.route, value.log_message)
            return
        log.error("%s %s failed", self.request.method, self.route, exc_info=(typ, value, tb))

    def error_body(self, status_code: int, exc: BaseException | None) -> dict[str, Any]:
        if isinstance(exc, ApiError):
            return exc.body()
        if status_code >= 500:
            return {
                "message": "Something went wrong on our side; it has been logged.",
                "code": "internal_error",
            }
        reason = _phrase(status_code)
        return {"message": reason + ".", "code": _HTTP_CODES.get(status_code, "error")}

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        exc = kwargs.get("exc_info", (None, None, None))[1]
        self.write_json(self.error_body(status_code, exc))

    def allowed_methods(self) -> list[str]:
        """The methods this handler implements (for the ``Allow`` header of a 405)."""
        return [
            m
            for m in self.SUPPORTED_METHODS
            if getattr(type(self), m.lower()) is not getattr(RequestHandler, m.lower())
        ]

    def write_json(self, body: Any, status: int | None = None) -> None:
        if status is not None:
            self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(body, separators=(",", ":")))


class ApiHandler(BaseHandler):
    """A JSON route: JSON in, JSON out; provider routes authenticate by API key.

    Every handler checks the XSRF token on unsafe methods (Tornado's default, kept in
    ``BaseHandler``) except these: their bodies must be ``application/json`` and their
    callers present a bearer key, neither of which a cross-site form can send.
    """

    def check_xsrf_cookie(self) -> None:
        pass

    def json_body(self, optional: bool = False) -> dict[str, Any]:
        raw = self.request.body
        if optional and not raw.strip():
            return {}
        if len(raw) > self.services.settings.max_body_bytes:
            raise ApiError(
                413,
                "payload_too_large",
                f"The body is larger than {self.services.settings.max_body_bytes} bytes.",
            )
        ctype = self.request.headers.get("Content-Type", "")
        if ctype.split(";", 1)[0].strip().lower() != "application/json":
            raise ApiError(
                415,
                "unsupported_media_type",
                "Send the body as JSON with 'Content-Type: application/json'.",
            )
        return parse_json_object(raw)

    async def provider(self, name: str) -> Provider:
        return await self.services.providers.authenticate(
            self.request.headers.get("Authorization"), name
        )

    def caller(self, provider: Provider | None = None) -> Caller:
        """Who asks, for the audit log and card-check counts: the API key's id (never the
        key) and the client address."""
        return api_caller(provider, self.request.remote_ip)


class NotFoundHandler(ApiHandler):
    """Unknown routes answer JSON too."""

    def prepare(self) -> None:
        raise ApiError(404, "not_found", "No such route.")


class SecureStaticFileHandler(StaticFileHandler):
    """The pages' stylesheet, with the same security headers as every other response."""

    route = "/static/{file}"

    def set_default_headers(self) -> None:
        security_headers(self, cache=True)
