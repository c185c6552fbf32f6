"""The one error type the engine raises for the API to render as ``{"message", "code"}``."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_DETAILS = 10  # problems listed in one error; the rest are not worth the bytes


@dataclass
class ApiError(Exception):
    """A refusal the caller can act on. ``message`` never holds card data or secrets."""

    status: int
    code: str
    message: str
    details: list[dict[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {"message": self.message, "code": self.code}
        if self.details:
            body["details"] = self.details[:MAX_DETAILS]
        return body


def not_found(what: str = "not found") -> ApiError:
    return ApiError(404, "not_found", what)


def invalid(
    field_name: str, problem: str, code: str = "invalid_request", message: str | None = None
) -> ApiError:
    return ApiError(
        400, code, message or f"{field_name} {problem}", [{"field": field_name, "problem": problem}]
    )


class Unavailable(ApiError):
    """The database is not answering: an outage, not a bug. The store raises it for every
    driver timeout or lost connection, so nothing above the store knows the driver; the API
    answers 503 and the logs say "unavailable" without a traceback."""

    def __init__(self, cause: str = "") -> None:
        super().__init__(
            503, "unavailable", "The service is briefly unavailable; try again shortly."
        )
        self.cause = cause


def is_unavailable(exc: BaseException | None) -> bool:
    return isinstance(exc, Unavailable)


class RateLimited(ApiError):
    """Over a rate limit: 429 with ``Retry-After`` (whole seconds until a request is let in)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            429,
            "rate_limited",
            f"Too many requests; try again in {retry_after} second"
            + ("" if retry_after == 1 else "s")
            + ".",
        )
        self.retry_after = retry_after
