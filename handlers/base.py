"""Shared request handling: security headers, JSON errors, body parsing, authentication."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from tornado.web import HTTPError, RequestHandler, StaticFileHandler

from server.audit import api_caller
from server.errors import ApiError, RateLimited, Unavailable
from server.ratelimit import Limiter, bucket_key
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
    # Per-client-address limits this route takes a token from (names of RateLimits
    # attributes: "register", "claim", ...), checked before anything else is done.
    address_limits: tuple[str, ...] = ()

    def initialize(self, route: str = "?") -> None:
        self.route = route
        self._counted = False
        self._retry_after: int | None = None
        self._client: str | None = None

    def prepare(self) -> None:
        self.services.inflight.enter()
        self._counted = True
        for name in self.address_limits:
            self.limit_address(name)

    @property
    def client_address(self) -> str:
        """Who sent this request: the TCP peer, or, behind a proxy listed in
        ``CASHOUT_TRUSTED_PROXIES``, the client that proxy names in X-Forwarded-For."""
        if self._client is None:
            self._client = self.services.limits.client(
                self.request.remote_ip or "", self.request.headers.get_list("X-Forwarded-For")
            )
        return self._client

    def limit_address(self, name: str) -> None:
        """Take a token from this client address's bucket of limit ``name``, or 429."""
        limits = self.services.limits
        limiter: Limiter = getattr(limits, name)
        limits.check(limiter, bucket_key(self.client_address))

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
        if getattr(self, "_retry_after", None) is not None:  # send_error clears headers
            self.set_header("Retry-After", str(self._retry_after))

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            status_code = exc.status
        if isinstance(exc, RateLimited):
            self._retry_after = exc.retry_after
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
        """The provider this key belongs to, within its rate limit (keyed by the provider
        once authenticated, so no one else can spend a provider's allowance)."""
        provider = await self.services.providers.authenticate(
            self.request.headers.get("Authorization"), name
        )
        limits = self.services.limits
        limits.check(limits.provider, provider.name)
        return provider

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
