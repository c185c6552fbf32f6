"""What every HTML page shares (the customer's claim page now, a provider dashboard later):
the language, human formats for money, times and cards, titles, friendly error pages.

Formats are the page's, not the API's: the API keeps RFC 3339 UTC times and plain integers.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import tornado.locale

from handlers.base import BaseHandler

LANGS = (("en", "English"), ("ar", "العربية"))
# Customers are in Sudan: pages show Khartoum's clock (the API stays in UTC).
LOCAL_ZONE = ZoneInfo("Africa/Khartoum")
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
# Left-to-right isolate: digits and card numbers keep their order inside right-to-left text.
LRI, FSI, PDI = "\u2066", "\u2068", "\u2069"
NBSP = "\u00a0"
_EMAIL = re.compile(r"[^\s@<>()]+@[^\s@<>()]+\.[^\s@<>()]+")
_PHONE = re.compile(r"\+?[0-9\u0660-\u0669\u06f0-\u06f9][0-9\u0660-\u0669\u06f0-\u06f9 ().-]{5,}")
_WHATSAPP = re.compile(r"whats\s*app|واتس", re.I)
_WESTERN = str.maketrans({chr(b + i): str(i) for b in (0x0660, 0x06F0) for i in range(10)})


def grouped(digits: str) -> str:
    """A card number in groups of four, as printed on cards and easy to compare."""
    return " ".join(digits[i : i + 4] for i in range(0, len(digits), 4))


def masked(last4: str | None) -> str:
    """The masked card, isolated left to right so the stars stay before the digits."""
    return f"{LRI}****{last4 or ''}{PDI}"


def ltr(text: str) -> str:
    """Digits in groups (a card number) kept left to right inside any sentence."""
    return f"{LRI}{text}{PDI}"


def isolated(text: str) -> str:
    """Text from outside (a provider's name, in any script) that must not reorder the
    sentence around it."""
    return f"{FSI}{text}{PDI}"


def text_dir(text: str) -> str:
    """The direction of a provider's text by its first letter; ``ltr`` when it has none (a
    phone number keeps its groups in order inside a right-to-left page)."""
    for ch in text:
        kind = unicodedata.bidirectional(ch)
        if kind in ("R", "AL"):
            return "rtl"
        if kind == "L":
            return "ltr"
    return "ltr"


def contact_href(support: str | None) -> str | None:
    """A link that reaches the support contact: mailto for an email address, WhatsApp or
    tel for a phone number; None when the text is neither."""
    if not support:
        return None
    email = _EMAIL.search(support)
    if email:
        return "mailto:" + email.group(0)
    phone = _PHONE.search(support)
    if phone is None:
        return None
    number = re.sub(r"\D", "", phone.group(0).translate(_WESTERN))
    if not 7 <= len(number) <= 15:
        return None
    if _WHATSAPP.search(support):
        return "https://wa.me/" + number
    return "tel:" + ("+" if phone.group(0).startswith("+") else "") + number


class PageHandler(BaseHandler):
    """HTML pages: localized, XSRF-protected forms, human formats, friendly error pages,
    kept out of search engines (a claim link is a bearer secret)."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("X-Robots-Tag", "noindex, nofollow")

    def get_user_locale(self) -> tornado.locale.Locale | None:
        codes = [code for code, _ in LANGS]
        lang = self.get_query_argument("lang", None)
        if lang in codes:
            self.set_cookie(
                "lang",
                lang,
                httponly=True,
                samesite="Lax",
                secure=self.services.settings.production,
            )
        else:
            lang = self.get_cookie("lang")
        return tornado.locale.get(lang) if lang in codes else None

    def get_template_namespace(self) -> dict[str, Any]:
        namespace = super().get_template_namespace()
        namespace.update(
            money=self.money,
            when=self.when,
            grouped=grouped,
            masked=masked,
            isolated=isolated,
            ltr=ltr,
            contact_href=contact_href,
            text_dir=text_dir,
            lang_links=self._lang_links(),
            title="",
            error=None,
        )
        return namespace

    def page(self, template: str, title: str, status: int = 200, **kwargs: Any) -> None:
        """Render ``template``; ``title`` (an English text to translate) names the state,
        and an ``error`` makes it start with "Error:" (GOV.UK)."""
        self.set_status(status)
        self.render(template, title=self.locale.translate(title), **kwargs)

    def money(self, amount: int) -> str:
        """``100,000 SDG``: grouped digits, the currency glued to its number."""
        currency = self.locale.translate("SDG").replace(" ", NBSP)
        return f"{amount:,}{NBSP}{currency}"

    def when(self, moment: datetime) -> str:
        """``4 December 2025, 8:45 pm`` on Khartoum's clock (the clock never split)."""
        local = moment.astimezone(LOCAL_ZONE)
        _ = self.locale.translate
        hour = local.hour % 12 or 12
        clock = _("%(hour)s:%(minute)s am") if local.hour < 12 else _("%(hour)s:%(minute)s pm")
        date = _("%(day)s %(month)s %(year)s") % {
            "day": local.day,
            "month": _(MONTHS[local.month - 1]),
            "year": local.year,
        }
        time = clock % {"hour": hour, "minute": f"{local.minute:02d}"}
        return _("%(date)s, %(time)s") % {"date": date, "time": time.replace(" ", NBSP)}

    def _lang_links(self) -> list[tuple[str, str, bool]]:
        current = self.locale.code.split("_")[0]
        return [(code, label, code == current) for code, label in LANGS]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        code = self.error_body(status_code, exc)["code"]
        if code == "unavailable":
            title = "Briefly unavailable"
        elif code == "forbidden":  # the XSRF check: the form was open too long, or cookies off
            title = "Form expired"
        else:
            title = "Something went wrong"
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.render("error.html", title=self.locale.translate(title), status=status_code, code=code)
