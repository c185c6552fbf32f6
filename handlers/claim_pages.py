"""The customer's side: the claim page (HTML form, one look before paying, status pages) and
the JSON claim route.

The claim URL is a bearer secret, so these routes need no login; they show the sender, the
amount and the last four digits of the card. The one page that shows a whole card number is
the answer to the customer's own POST (the check before paying, or a refused number shown
back), never a page reached by its URL.

    GET  link                -> the page for the claim's state
    POST link  pan=...       -> refused: the form again, the number shown back, 400
                                valid:   "Send <amount> to card <digits>?" (Confirm / Change)
    POST link  action=change -> the form with the number kept
    POST link  action=confirm-> claim it (one compare-and-set), 303 back to the link
"""

from __future__ import annotations

from dataclasses import dataclass

from handlers.base import ApiHandler, Route
from handlers.pages import PageHandler, grouped
from server import validation
from server.customer import PATIENCE_SECONDS, ClaimPage, refresh_after, waited
from server.errors import ApiError
from server.models import ClaimStatus
from server.views import claim_attempts_left, customer_view


@dataclass(frozen=True)
class Refusal:
    """A friendly page for an ApiError code a claim link can meet (texts are translated)."""

    status: int
    title: str
    heading: str
    text: str


# Pages for refusals, by ApiError code, on GET and on Confirm (texts are translated in
# templates/locale/ar.csv).
REFUSALS: dict[str, Refusal] = {
    "provider_suspended": Refusal(
        403,
        "Temporarily unavailable",
        "This cashout is temporarily unavailable",
        "Payouts from this sender are paused for now. Your link stays valid: please come back "
        "to it later.",
    ),
    "not_found": Refusal(
        404,
        "Link not found",
        "We can't find this cashout link",
        "Check that you opened the whole link you were sent.",
    ),
}


@dataclass(frozen=True)
class Reason:
    """Why a transfer failed, in plain words, and whose side the problem is on."""

    text: str
    side: str  # "sender": the provider's account or card; "card": the customer's; "unknown"


REASONS = {
    51: Reason("The sender's account could not cover this payment.", "sender"),
    53: Reason("The sender's card details were not accepted.", "sender"),
    52: Reason("The card number was not accepted by the bank.", "card"),
    72: Reason("The card's bank could not be reached.", "card"),
}
UNKNOWN_REASON = Reason("The transfer could not be completed.", "unknown")

# What a refused card number is told, by the problem the service names.
CARD_PROBLEMS = {
    "empty": "Enter the card number",
    "not_digits": "The card number must contain only digits",
    "length": "The card number must be 16 or 19 digits; you entered %(count)s",
    "check_digit": "The card number is not valid: check each digit against your card",
    "confirmation_expired": "Enter the card number again: the check before sending has expired",
}

# A card refused by a daily limit (docs/DESIGN.md section 12): the claim stays open.
LIMIT_MESSAGES = {
    "card_limit_reached": "This card has reached its daily limit: use another card, or try "
    "again tomorrow",
    "sender_limit_reached": "The sender's daily limit is reached: please try again tomorrow on "
    "this same link",
}

TITLES = {
    ClaimStatus.PENDING: "Receive your cashout",
    ClaimStatus.PROCESSING: "Sending your money",
    ClaimStatus.SUCCEEDED: "Money sent",
    ClaimStatus.FAILED: "Money not sent",
    ClaimStatus.EXPIRED: "Link expired",
    ClaimStatus.CANCELLED: "Cashout cancelled",
}


class ClaimPageHandler(PageHandler):
    address_limits = ("claim",)

    async def get(self, name: str, uuid: str) -> None:
        page = await self._load(name, uuid)
        if page is not None:
            self._show(page)

    async def post(self, name: str, uuid: str) -> None:
        page = await self._load(name, uuid)
        if page is None:
            return
        if page.claim.status is not ClaimStatus.PENDING:
            # Someone submitted first, or it expired: the status page tells the truth.
            self.redirect(self.request.path, status=303)
            return
        customers = self.services.customers
        action = self.get_body_argument("action", None)
        sealed = self.get_body_argument("card", "")
        if action == "change":
            try:
                digits = customers.opened(uuid, sealed)
            except ApiError as exc:
                self._form(page, refused=exc, status=400)
                return
            self._form(page, value=grouped(digits))
            return
        if action == "confirm":
            try:
                await customers.confirm(name, uuid, sealed)
            except ApiError as exc:
                if exc.status >= 500:  # an outage: the error page says so, nothing was claimed
                    raise
                if exc.code in REFUSALS:
                    self._refusal(exc.code)
                    return
                if _about_the_card(exc):  # e.g. a limit on this card: the form, number kept
                    self._form(page, refused=exc, value=self._kept(uuid, sealed), status=exc.status)
                    return
            # Winner or not (a second tap gets 409), the status page tells the truth.
            self.redirect(self.request.path, status=303)
            return
        typed = self.get_body_argument("pan", "")
        try:
            card = customers.check_card(page.claim, typed)
        except ApiError as exc:
            self._form(page, refused=exc, value=_shown_back(typed), status=400)
            return
        self.page(
            "claim_confirm.html",
            "Check the card number",
            claim=page.claim,
            sender=page.sender,
            card=card,
        )

    # -- rendering -------------------------------------------------------------------------

    async def _load(self, name: str, uuid: str) -> ClaimPage | None:
        """The claim and its sender, or None once a refusal page has been rendered."""
        try:
            page = await self.services.customers.page(name, uuid)
        except ApiError as exc:
            if exc.code not in REFUSALS:
                raise
            self._refusal(exc.code)
            return None
        if page is None:
            self._refusal("not_found")
        return page

    def _refusal(self, code: str) -> None:
        refusal = REFUSALS[code]
        self.page(
            "notice.html",
            refusal.title,
            status=refusal.status,
            heading=refusal.heading,
            text=refusal.text,
        )

    def _show(self, page: ClaimPage) -> None:
        claim = page.claim
        if claim.status is ClaimStatus.PENDING:
            self._form(page)
            return
        refresh = None
        if claim.status is ClaimStatus.PROCESSING:
            refresh = refresh_after(waited(claim))
            if refresh is not None:
                # The HTTP form of a declarative refresh (see README, "The customer's claim
                # page"): it backs off and stops after about a minute.
                self.set_header("Refresh", str(refresh))
        reason = REASONS.get(claim.response_code or -1, UNKNOWN_REASON)
        self.page(
            "claim_status.html",
            TITLES[claim.status],
            claim=claim,
            sender=page.sender,
            reason=reason,
            refresh=refresh,
            patience=PATIENCE_SECONDS,
        )

    def _form(
        self,
        page: ClaimPage,
        refused: ApiError | None = None,
        value: str = "",
        status: int = 200,
    ) -> None:
        claim = page.claim
        retry = None
        if claim.attempts:  # the bank declined the last card, and the customer may try again
            last = claim.attempts[-1]
            retry = {
                "card": last.card_last4,
                "reason": REASONS.get(last.code or -1, UNKNOWN_REASON).text,
                "left": claim_attempts_left(claim),
            }
        self.page(
            "claim_form.html",
            TITLES[ClaimStatus.PENDING],
            status=status,
            claim=claim,
            sender=page.sender,
            retry=retry,
            error=self._card_message(refused) if refused else None,
            value=value,
        )

    def _card_message(self, refused: ApiError) -> str:
        if refused.code in LIMIT_MESSAGES:
            return self.locale.translate(LIMIT_MESSAGES[refused.code])
        detail = refused.details[0] if refused.details else {}
        text = CARD_PROBLEMS.get(detail.get("problem", ""))
        if text is None:
            return self.locale.translate(refused.message)
        return self.locale.translate(text) % {"count": detail.get("count", "0")}

    def _kept(self, uuid: str, sealed: str) -> str:
        try:
            return grouped(self.services.customers.opened(uuid, sealed))
        except ApiError:
            return ""


def _about_the_card(exc: ApiError) -> bool:
    return any(d.get("field") == "pan" for d in exc.details)


def _shown_back(typed: str) -> str:
    """A refused number as the customer can check it: digits (any script) as 0-9 in groups
    of four; anything else as typed."""
    digits = validation.card_digits(typed)
    if digits.isascii() and digits.isdigit():
        return grouped(digits)
    return typed.strip()[:40]


class NearMissHandler(PageHandler):
    """A claim link with something after it (a trailing slash, a pasted word): the HTML
    not-found page, as for any unknown link, never a JSON error."""

    def get(self, *args: str, **kwargs: str) -> None:
        refusal = REFUSALS["not_found"]
        self.page(
            "notice.html",
            refusal.title,
            status=refusal.status,
            heading=refusal.heading,
            text=refusal.text,
        )


class ClaimApiHandler(ApiHandler):
    """``POST /cashout/claim/{name}`` for apps that draw their own form (noebs-compatible)."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("X-Robots-Tag", "noindex, nofollow")

    address_limits = ("claim",)

    async def post(self, name: str) -> None:
        body = validation.check("claim", self.json_body())
        claim = await self.services.payouts.submit(name, body["id"], body["pan"])
        self.write_json(customer_view(claim), status=202)


default_handlers: list[Route] = [
    ("/cashout/claim/{name}/{uuid}", ClaimPageHandler),
    ("/cashout/claim/{name}/{uuid}/.*", NearMissHandler),
    ("/cashout/claim/{name}/", NearMissHandler),
    ("/cashout/claim/{name}", ClaimApiHandler),
]
