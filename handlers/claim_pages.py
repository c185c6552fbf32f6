"""The customer's side: the claim page (HTML form and status pages) and the JSON claim route.

The claim URL is a bearer secret, so these routes need no login; they show only the provider
name, the amount and the last four digits of the card.
"""

from __future__ import annotations

from typing import Any

import tornado.locale

from handlers.base import ApiHandler, BaseHandler, Route
from server import validation
from server.errors import ApiError
from server.models import Claim, ClaimStatus, rfc3339
from server.views import claim_attempts_left, customer_view

LANGS = ("en", "ar")

# Plain-language reasons by gateway response code (the strings are translation keys).
FAILURE_REASONS = {
    51: "The sender's account could not cover this payment.",
    53: "The sender's card details were not accepted.",
    52: "The card number was not accepted by the bank.",
    72: "The card's bank could not be reached.",
}
DEFAULT_FAILURE = "The transfer could not be completed."
# Refusals shown next to the card field (the claim stays pending); issue 11 added the limits.
FIELD_ERRORS = ("invalid_card", "card_limit_reached", "sender_limit_reached")


class PageHandler(BaseHandler):
    """HTML pages: localized, XSRF-protected forms, friendly error pages."""

    def get_user_locale(self) -> tornado.locale.Locale | None:
        lang = self.get_query_argument("lang", None)
        if lang in LANGS:
            self.set_cookie(
                "lang",
                lang,
                httponly=True,
                samesite="Lax",
                secure=self.services.settings.production,
            )
        else:
            lang = self.get_cookie("lang")
        return tornado.locale.get(lang) if lang in LANGS else None

    def page(self, template: str, status: int = 200, **kwargs: Any) -> None:
        self.set_status(status)
        self.render(template, lang_links=self._lang_links(), **kwargs)

    def _lang_links(self) -> list[tuple[str, str, bool]]:
        current = self.locale.code.split("_")[0]
        return [
            (code, label, code == current) for code, label in (("en", "English"), ("ar", "العربية"))
        ]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        body = self.error_body(status_code, exc)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        if body["code"] == "provider_suspended":  # issue 11
            self.render("unavailable.html", lang_links=self._lang_links())
            return
        self.render(
            "error.html", status=status_code, code=body["code"], lang_links=self._lang_links()
        )


class ClaimPageHandler(PageHandler):
    async def get(self, name: str, uuid: str) -> None:
        claim = await self.services.payouts.customer_claim(name, uuid)
        if claim is None:
            self.page("not_found.html", status=404)
            return
        self.render_claim(claim)

    def render_claim(self, claim: Claim, error: str | None = None, status: int = 200) -> None:
        if claim.status is ClaimStatus.PENDING:
            retry = claim.response_message if claim.attempts else None
            self.page(
                "claim_form.html",
                status=status,
                claim=claim,
                error=error,
                retry_reason=retry
                and FAILURE_REASONS.get(claim.response_code or -1, DEFAULT_FAILURE),
                attempts_left=claim_attempts_left(claim),
            )
            return
        reason = FAILURE_REASONS.get(claim.response_code or -1, DEFAULT_FAILURE)
        self.page(
            "claim_status.html", claim=claim, reason=reason, completed=rfc3339(claim.completed_at)
        )

    async def post(self, name: str, uuid: str) -> None:
        pan = self.get_body_argument("pan", "")
        try:
            await self.services.payouts.submit(name, uuid, pan)
        except ApiError as exc:
            if exc.status >= 500 or exc.code == "provider_suspended":
                raise  # the error page says so (an outage, or "unavailable"); nothing claimed
            if exc.code in FIELD_ERRORS:
                claim = await self.services.payouts.customer_claim(name, uuid)
                if claim is None:
                    self.page("not_found.html", status=404)
                    return
                if claim.status is ClaimStatus.PENDING:
                    self.render_claim(claim, error=exc.details[0]["problem"], status=exc.status)
                    return
            elif exc.status == 404:
                self.page("not_found.html", status=404)
                return
        # Winner or not, the status page tells the truth about this claim.
        self.redirect(self.request.path, status=303)


class ClaimApiHandler(ApiHandler):
    """``POST /cashout/claim/{name}`` for apps that draw their own form (noebs-compatible)."""

    async def post(self, name: str) -> None:
        body = validation.check("claim", self.json_body())
        claim = await self.services.payouts.submit(name, body["id"], body["pan"])
        self.write_json(customer_view(claim), status=202)


default_handlers: list[Route] = [
    ("/cashout/claim/{name}/{uuid}", ClaimPageHandler),
    ("/cashout/claim/{name}", ClaimApiHandler),
]
