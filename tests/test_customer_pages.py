"""The customer's side over plain HTTP (docs/DESIGN.md sections 4 and 5): who is paying and
whom to ask (``display_name``, ``support``), card numbers in Arabic-Indic and Persian digits
on the JSON route, the check before paying and its sealed card, the processing page's
refresh schedule at its default, near-miss links, the claim routes' headers, the favicon,
page sizes and the Arabic translation of every text."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from handlers import claim_pages, pages
from server.crypto import KeyRing, aad
from server.customer import PATIENCE_SECONDS, REFRESH_STEPS, refresh_after
from tests.browsing import ARABIC_INDIC, PERSIAN, grouped
from tests.cards import bad_luhn, luhn_card
from tests.conftest import random_pan, unique_name
from tests.harness import (
    ROOT,
    Provider,
    ServerProcess,
    auth,
    provider_body,
    register,
    remember,
)

ROBOTS = "noindex, nofollow"


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> httpx.Client:
    return server.client()


@pytest.fixture()
def provider(server: ServerProcess) -> Provider:
    return Provider.register(server)


def form_token(client: httpx.Client, path: str) -> str:
    page = client.get(path)
    token = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
    assert token, "the form carries an XSRF token"
    return token.group(1)


def sealed_card(html: str) -> str:
    found = re.search(r'name="card" value="([^"]+)"', html)
    assert found, "the check page carries the sealed card"
    return found.group(1)


# -- who is paying, and who to ask ----------------------------------------------------------


def test_display_name_and_support_at_registration_and_in_the_profile(
    client: httpx.Client,
) -> None:
    body = provider_body(
        unique_name(),
        random_pan(),
        display_name="  صيدلية الشفاء  ",
        support="WhatsApp +249 91 234 5678",
    )
    headers = auth(register(client, body)["api_key"])
    profile = client.get(f"/cashout/profile/{body['name']}", headers=headers).json()
    assert profile["display_name"] == "صيدلية الشفاء"  # trimmed
    assert profile["support"] == "WhatsApp +249 91 234 5678"

    changed = client.post(
        f"/cashout/profile/{body['name']}",
        headers=headers,
        json={"display_name": "Shifa Pharmacy", "support": "help@shifa.example"},
    )
    assert changed.status_code == 200
    assert changed.json()["display_name"] == "Shifa Pharmacy"
    assert changed.json()["support"] == "help@shifa.example"
    cleared = client.post(
        f"/cashout/profile/{body['name']}", headers=headers, json={"support": None}
    ).json()
    assert cleared["support"] is None and cleared["display_name"] == "Shifa Pharmacy"

    # Without them: null in the profile, the name on the claim page.
    plain = provider_body(unique_name(), random_pan())
    plain_headers = auth(register(client, plain)["api_key"])
    shown = client.get(f"/cashout/profile/{plain['name']}", headers=plain_headers).json()
    assert shown["display_name"] is None and shown["support"] is None
    made = client.post(
        f"/cashout/generate/{plain['name']}", headers=plain_headers, json={"amount": 5, "id": "a"}
    ).json()
    page = client.get(made["url"]).text
    assert f"\u2068{plain['name']}\u2069 is sending you this amount" in page
    assert f"Contact \u2068{plain['name']}\u2069, who sent you this link." in page


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("display_name", "x" * 81, "must be at most 80 characters"),
        ("support", "x" * 121, "must be at most 120 characters"),
        ("display_name", "   ", "must be text with at least one visible character"),
        ("display_name", "Shifa\u202eycamrahP", "no direction-control characters"),
        ("support", "\u2066+249 91\u2069", "no direction-control characters"),
        ("display_name", 7, "must be a string"),
    ],
)
def test_bad_display_names_and_contacts_are_refused(
    client: httpx.Client, field: str, value: Any, problem: str
) -> None:
    body = provider_body(unique_name(), random_pan(), **{field: value})
    remember(body["pan"], body["ipin"])
    answer = client.post("/cashout/register", json=body)
    assert answer.status_code == 400 and answer.json()["code"] == "invalid_request"
    detail = answer.json()["details"][0]
    assert detail["field"] == field and problem in detail["problem"]


def test_support_contacts_become_links() -> None:
    href = pages.contact_href
    assert href("+249 91 234 5678") == "tel:+249912345678"
    assert href("WhatsApp +249 91 234 5678") == "https://wa.me/249912345678"
    assert href("واتساب ٠٩١٢٣٤٥٦٧٨") == "https://wa.me/0912345678"
    assert href("Write to help@shifa.example any time") == "mailto:help@shifa.example"
    assert href("Ask at the counter") is None and href(None) is None
    assert pages.text_dir("+249 91 234 5678") == "ltr"
    assert pages.text_dir("اتصل بنا") == "rtl"


# -- digits as phones type them -------------------------------------------------------------


@pytest.mark.parametrize("script", [ARABIC_INDIC, PERSIAN], ids=["arabic-indic", "persian"])
def test_the_json_claim_route_reads_arabic_indic_and_persian_digits(
    provider: Provider, script: dict[int, int]
) -> None:
    uuid = provider.generate(130)
    pan = random_pan()
    remember(pan)
    # As pasted from a right-to-left message: digits in Arabic script, spaces, a direction mark.
    typed = "\u200f" + grouped(pan).translate(script)
    answer = provider.client.post(
        f"/cashout/claim/{provider.name}", json={"id": uuid, "pan": typed}
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["card"] == "****" + pan[-4:]
    assert answer.headers["x-robots-tag"] == ROBOTS
    provider.wait(uuid, "succeeded")
    assert provider.ledger.applied_total_to(pan) == 130


def test_the_json_claim_route_is_otherwise_unchanged(provider: Provider) -> None:
    """Same codes and words as before, whatever the digits; nothing typed is echoed."""
    uuid = provider.generate(10)
    fifteen = random_pan()[:15]
    slip = bad_luhn(random_pan())
    remember(fifteen, slip)
    for pan, problem in (
        (grouped(fifteen).translate(ARABIC_INDIC), "must be 16 or 19 digits"),
        (grouped(slip).translate(PERSIAN), "is not valid; check the digits"),
        (slip[:15] + "x", "must be 16 or 19 digits"),
    ):
        answer = provider.client.post(
            f"/cashout/claim/{provider.name}", json={"id": uuid, "pan": pan}
        )
        body = answer.json()
        assert answer.status_code == 400 and body["code"] == "invalid_card"
        assert body["details"] == [{"field": "pan", "problem": problem}]
        assert body["message"] == f"The card number {problem}."
        for shown in (pan, fifteen, slip, grouped(slip)):
            assert shown not in answer.text
    assert provider.status(uuid)["status"] == "pending"


# -- the check before paying ----------------------------------------------------------------


def test_the_check_claims_nothing_and_confirm_claims_once(provider: Provider) -> None:
    uuid = provider.generate(90)
    path = f"/cashout/claim/{provider.name}/{uuid}"
    client = provider.client
    token = form_token(client, path)
    pan = random_pan()
    remember(pan)
    check = client.post(path, data={"pan": grouped(pan).translate(ARABIC_INDIC), "_xsrf": token})
    assert check.status_code == 200 and grouped(pan) in check.text
    assert check.headers["cache-control"] == "no-store"
    assert provider.status(uuid)["status"] == "pending"
    sealed = sealed_card(check.text)
    assert pan not in sealed

    change = client.post(path, data={"action": "change", "card": sealed, "_xsrf": token})
    assert change.status_code == 200 and f'value="{grouped(pan)}"' in change.text

    async def twice() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=provider.server.url, cookies=dict(client.cookies), timeout=30
        ) as again:
            form = {"action": "confirm", "card": sealed, "_xsrf": token}
            return list(await asyncio.gather(*(again.post(path, data=form) for _ in range(2))))

    answers = asyncio.run(twice())
    assert [a.status_code for a in answers] == [303, 303]
    claim = provider.wait(uuid, "succeeded")
    assert len(claim["attempts"]) == 1
    assert provider.ledger.applied_count(claim["attempts"][0]["tran_uuid"]) == 1
    assert provider.ledger.applied_total_to(pan) == 90


def _keys(server: ServerProcess) -> KeyRing:
    return KeyRing.parse((Path(server.env["CASHOUT_DATA_DIR"]) / "keys").read_text())


def _seal(keys: KeyRing, uuid: str, pan: str, until: int) -> str:
    sealed = keys.seal(f"{pan}:{until}", aad("claims", uuid, "confirm.pan"))

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    return f"{b64(sealed.kid.encode())}.{b64(sealed.nonce + sealed.ct)}"


def test_a_sealed_card_works_only_for_its_claim_and_for_fifteen_minutes(
    provider: Provider,
) -> None:
    keys = _keys(provider.server)
    first, other = provider.generate(25), provider.generate(26)
    path = f"/cashout/claim/{provider.name}/{first}"
    token = form_token(provider.client, path)
    pan = random_pan()
    remember(pan)
    refused = {
        "someone else's claim": _seal(keys, other, pan, int(time.time()) + 600),
        "after fifteen minutes": _seal(keys, first, pan, int(time.time()) - 1),
        "tampered": _seal(keys, first, pan, int(time.time()) + 600)[:-4] + "AAAA",
        "not one of ours": "x.y",
        "empty": "",
    }
    for why, sealed in refused.items():
        for action in ("confirm", "change"):
            answer = provider.client.post(
                path, data={"action": action, "card": sealed, "_xsrf": token}
            )
            assert answer.status_code == 400, (why, action)
            assert "Enter the card number again" in answer.text, (why, action)
            assert pan not in answer.text and grouped(pan) not in answer.text
    assert provider.status(first)["status"] == "pending"
    fresh = _seal(keys, first, pan, int(time.time()) + 60)
    answer = provider.client.post(path, data={"action": "confirm", "card": fresh, "_xsrf": token})
    assert answer.status_code == 303
    assert provider.wait(first, "succeeded")["card"] == "****" + pan[-4:]


def test_refused_numbers_are_shown_back_and_named(provider: Provider) -> None:
    uuid = provider.generate(40)
    path = f"/cashout/claim/{provider.name}/{uuid}"
    token = form_token(provider.client, path)
    slip = random_pan()[:-1]
    remember(slip)
    cases = {
        "": ("Enter the card number", 'value=""'),
        slip.translate(ARABIC_INDIC): (
            "The card number must be 16 or 19 digits; you entered 15",
            f'value="{grouped(slip)}"',
        ),
        "4111-1111-abcd": ("The card number must contain only digits", 'value="4111-1111-abcd"'),
    }
    for typed, (message, value) in cases.items():
        answer = provider.client.post(path, data={"pan": typed, "_xsrf": token})
        assert answer.status_code == 400
        assert answer.text.count(message) == 2  # in the summary and at the field
        assert value in answer.text
        assert "<title>Error: Receive your cashout" in answer.text
    assert provider.status(uuid)["status"] == "pending"


# -- the processing page --------------------------------------------------------------------


def test_the_refresh_schedule_backs_off_and_stops_after_about_a_minute() -> None:
    delays, t = [], 0.0
    while (step := refresh_after(t)) is not None:
        delays.append(step)
        t += step
    assert delays[: len(REFRESH_STEPS)] == list(REFRESH_STEPS)
    assert delays == sorted(delays[: len(REFRESH_STEPS)]) + delays[len(REFRESH_STEPS) :]
    assert len(delays) <= 8, "a handful of reloads, not one every 2 s"
    assert PATIENCE_SECONDS <= t <= PATIENCE_SECONDS + 5
    assert refresh_after(PATIENCE_SECONDS) is None and refresh_after(3600) is None


def test_the_processing_page_refreshes_less_often_then_lets_the_customer_go(
    provider: Provider, db: Any
) -> None:
    """At the default schedule, with the attempt's start moved back in the database."""
    uuid = provider.generate(60)
    assert provider.claim(uuid, luhn_card("0092")).status_code == 202  # stays processing
    path = f"/cashout/claim/{provider.name}/{uuid}"
    seen = {}
    for ago, expected in ((0, "2"), (3, "3"), (12, "8"), (40, "21"), (57, "3"), (61, None)):
        started = datetime.now(UTC) - timedelta(seconds=ago)
        db.claims.update_one({"_id": uuid}, {"$set": {"attempts.0.started_at": started}})
        page = provider.client.get(path)
        assert page.status_code == 200 and "Sending your money" in page.text
        seen[ago] = page.headers.get("refresh")
        assert seen[ago] == expected, (ago, seen)
        assert '<meta http-equiv="refresh"' not in page.text
        closes = "You can close this page and open the same link later" in page.text
        assert closes is (expected is None)
        assert f'<a href="{path}">Check again</a>' in page.text


# -- links, headers, favicon, size, words ---------------------------------------------------


def test_near_misses_answer_the_html_not_found_page(provider: Provider) -> None:
    uuid = provider.generate(15)
    base = f"/cashout/claim/{provider.name}"
    for path in (
        f"{base}/{uuid}/",
        f"{base}/{uuid.upper()}",
        f"{base}/{uuid}/x/y",
        f"{base}/",
        f"/cashout/claim/nobody-here/{uuid}",
    ):
        answer = provider.client.get(path)
        assert answer.status_code == 404, path
        assert answer.headers["content-type"].startswith("text/html"), path
        assert "We can&#x27;t find this cashout link" in answer.text, path
        assert answer.headers["x-robots-tag"] == ROBOTS, path
        assert answer.headers["cache-control"] == "no-store", path


def test_every_claim_route_sends_noindex_and_the_security_headers(provider: Provider) -> None:
    uuid = provider.generate(15)
    path = f"/cashout/claim/{provider.name}/{uuid}"
    answers = [
        provider.client.get(path),
        provider.client.get(path, headers={"Accept-Language": "ar"}),
        provider.client.post(path, data={"pan": "1"}),  # no XSRF token: the expired form
        provider.client.post(f"/cashout/claim/{provider.name}", json={"id": uuid, "pan": "1"}),
    ]
    assert answers[2].status_code == 403 and "This form has expired" in answers[2].text
    for answer in answers:
        assert answer.headers["x-robots-tag"] == ROBOTS
        assert answer.headers["content-security-policy"].startswith("default-src 'self'")
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
    assert '<meta name="robots" content="noindex, nofollow">' in answers[0].text


def test_the_favicon_is_served(client: httpx.Client) -> None:
    for path in ("/favicon.ico", "/static/favicon.ico"):
        icon = client.get(path)
        assert icon.status_code == 200, path
        assert icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO file
        assert len(icon.content) < 1024
        assert icon.headers["x-content-type-options"] == "nosniff"


def test_pages_stay_tiny(provider: Provider) -> None:
    uuid = provider.generate(1_000)
    page = provider.client.get(f"/cashout/claim/{provider.name}/{uuid}")
    css = re.search(r'href="(/static/claim\.css\?v=[^"]+)"', page.text)
    assert css
    sheet = provider.client.get(css.group(1))
    assert len(page.content) < 4_000, len(page.content)
    assert len(sheet.content) < 8_000, len(sheet.content)
    assert "<script" not in page.text and "http" not in re.sub(
        r'(href|action)="[^"]*"', "", page.text
    )


def _texts() -> set[str]:
    """Every text the pages show: the templates' _("...") and the handlers' tables."""
    found: set[str] = set()
    for template in (ROOT / "templates").glob("*.html"):
        found.update(re.findall(r'_\("((?:[^"\\]|\\.)+)"\)', template.read_text()))
    found.update(r.title for r in claim_pages.REFUSALS.values())
    found.update(r.heading for r in claim_pages.REFUSALS.values())
    found.update(r.text for r in claim_pages.REFUSALS.values())
    found.update(r.text for r in claim_pages.REASONS.values())
    found.add(claim_pages.UNKNOWN_REASON.text)
    found.update(claim_pages.CARD_PROBLEMS.values())
    found.update(claim_pages.TITLES.values())
    found.update(pages.MONTHS)
    found.update(
        {
            "SDG",
            "%(hour)s:%(minute)s am",
            "%(hour)s:%(minute)s pm",
            "%(date)s, %(time)s",
            "Briefly unavailable",
            "Form expired",
            "Something went wrong",
            "Check the card number",
            "Temporarily unavailable",
            "This cashout is temporarily unavailable",
            "Try again later.",
        }
    )
    return found


def test_every_text_has_its_arabic(client: httpx.Client) -> None:
    import csv

    with open(ROOT / "templates" / "locale" / "ar.csv", encoding="utf-8") as fh:
        arabic = {row[0]: row[1] for row in csv.reader(fh)}
    texts = _texts()
    assert len(texts) > 60
    missing = sorted(t for t in texts if t not in arabic)
    assert not missing, missing
    for english, translated in arabic.items():
        placeholders = sorted(re.findall(r"%\(\w+\)s", english))
        assert sorted(re.findall(r"%\(\w+\)s", translated)) == placeholders, english
