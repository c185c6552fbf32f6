"""Every state of the customer's claim page (docs/DESIGN.md section 5), in English and Arabic,
in a real browser on a 360 px phone: the form, each card error, the check before paying, the
retry notice, processing (early and after a minute), the receipt, each kind of failure,
expired, cancelled, not found (and a near miss) and an expired form.

On each: its own title (prefixed "Error:" for errors), axe-core with no violation of serious
or critical impact, 4.5:1 text contrast, a visible focus indicator on every control, no
sideways scrolling, and the support contact wherever a customer may need help. Screenshots of
each state at 360 px and 1280 px go to ``test-artifacts/screenshots/states/`` and axe's
findings to ``test-artifacts/axe/``. Then the pages at 150% and 200% text size.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Playwright, Route, expect, sync_playwright

from tests.axe import check_accessibility
from tests.browsing import (
    ARABIC_INDIC,
    PageProvider,
    amounts_on_one_line,
    enter_card,
    focus_is_visible,
    grouped,
    launch,
    needs_axe,
    needs_chromium,
    new_context,
    no_horizontal_scroll,
    press,
    readable,
    screenshot,
    text_size,
)
from tests.cards import bad_luhn, luhn_card
from tests.conftest import random_pan
from tests.harness import FAST_RECONCILE, ROOT, ServerProcess, remember, wait_until

pytestmark = [needs_chromium, needs_axe]

WIDTHS = (360, 1280)


def _arabic() -> dict[str, str]:
    with open(ROOT / "templates" / "locale" / "ar.csv", encoding="utf-8") as fh:
        return {row[0]: row[1] for row in csv.reader(fh) if len(row) >= 2}


AR = _arabic()


def tr(lang: str, text: str) -> str:
    return AR[text] if lang == "ar" else text


def expected_title(lang: str, title: str, error: bool = False) -> str:
    prefix = tr(lang, "Error:") + " " if error else ""
    return f"{prefix}{tr(lang, title)} \u2013 {tr(lang, 'Cashout')}"


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = launch(playwright)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def provider(server: ServerProcess) -> Iterator[PageProvider]:
    made = PageProvider(server, display_name="صيدلية الشفاء", support="+249 91 234 5678")
    yield made
    made.close()


@pytest.fixture(scope="module")
def shots(artifacts: Path) -> Path:
    path = artifacts / "screenshots" / "states"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _wait_status(provider: PageProvider, uuid: str, *statuses: str) -> dict[str, Any]:
    return wait_until(
        lambda: (c := provider.claim(uuid))["status"] in statuses and c,
        30,
        what=f"claim to be {statuses}",
    )


@pytest.fixture(scope="module")
def finished(
    provider: PageProvider, server_factory: Any, mongo: Any, server: ServerProcess
) -> dict[str, str]:
    """Claims in every state reached without the form (the JSON route, the provider API,
    the database's clock moved), by state name -> claim URL."""
    urls: dict[str, str] = {}
    for last4, state in (("0051", "failed-51"), ("0053", "failed-53"), ("1234", "receipt")):
        made = provider.generate(2500)
        pan = luhn_card(last4) if last4 != "1234" else random_pan()
        assert provider.submit(made["uuid"], pan).status_code == 202
        _wait_status(provider, made["uuid"], "failed", "succeeded")
        urls[state] = made["url"]
    # The customer's card refused three times (code 52): the card's side.
    made = provider.generate(700)
    for attempt in range(3):
        assert provider.submit(made["uuid"], luhn_card("0052")).status_code == 202
        _wait_status(provider, made["uuid"], "pending" if attempt < 2 else "failed")
    urls["failed-52"] = made["url"]
    # Lost three times (the switch never saw it): no code, nobody's side known.
    fast = PageProvider(server_factory(FAST_RECONCILE), display_name=None, support=None)
    made = fast.generate(900)
    assert fast.submit(made["uuid"], luhn_card("0092")).status_code == 202
    _wait_status(fast, made["uuid"], "failed")
    urls["failed-unknown"] = made["url"]
    # Expired: its time moved into the past; the page expires it when opened.
    made = provider.generate(300, expires_in=60)
    mongo[server.env["CASHOUT_DB_NAME"]].claims.update_one(
        {"_id": made["uuid"]}, {"$set": {"expires_at": datetime.now(UTC) - timedelta(seconds=1)}}
    )
    urls["expired"] = made["url"]
    made = provider.generate(400)
    provider.cancel(made["uuid"])
    urls["cancelled"] = made["url"]
    return urls


# -- the checks of every state --------------------------------------------------------------


class Tour:
    """One language's walk through the states, checking and photographing each."""

    def __init__(self, page: Page, lang: str, shots: Path, axe_out: Path, provider: Any):
        self.page, self.lang, self.shots, self.axe_out = page, lang, shots, axe_out
        self.provider = provider
        self.count = 0
        self.seen: list[str] = []

    def check(self, key: str, title: str, *, error: bool = False, support: bool = False) -> None:
        page, lang = self.page, self.lang
        self.count += 1
        label = f"{lang}-{self.count:02d}-{key}"
        expect(page).to_have_title(expected_title(lang, title, error))
        expect(page.locator("html")).to_have_attribute("lang", lang)
        expect(page.locator("html")).to_have_attribute("dir", "rtl" if lang == "ar" else "ltr")
        expect(page.locator("h1")).to_have_count(1)
        no_horizontal_scroll(page, 360)
        amounts_on_one_line(page)
        for width in WIDTHS:  # before anything takes the focus
            screenshot(page, self.shots / f"{label}-{width}.png", width)
        help_box = page.locator(".support")
        if support:
            expect(help_box).to_contain_text(tr(lang, "Need help?"))
            if self.provider.support:
                link = help_box.get_by_role("link", name=self.provider.support)
                expect(link).to_have_attribute("href", "tel:+249912345678")
            expect(help_box).to_contain_text(self.provider.display_name)
        check_accessibility(page, label, self.axe_out)
        readable(page)
        focus_is_visible(page)
        if error:
            expect(page.locator(".error-summary")).to_be_visible()
        self.seen.append(key)


def _hold_still(route: Route) -> None:
    """The processing page without its Refresh header, so it stays put while checked (the
    refresh itself is tested in test_browser.py)."""
    response = route.fetch()
    headers = {k: v for k, v in response.headers.items() if k.lower() != "refresh"}
    route.fulfill(response=response, headers=headers)


@pytest.mark.parametrize("lang", ["en", "ar"])
def test_every_state_in_both_languages(
    lang: str,
    browser: Browser,
    provider: PageProvider,
    finished: dict[str, str],
    mongo: Any,
    server: ServerProcess,
    shots: Path,
    artifacts: Path,
) -> None:
    context = new_context(browser, locale="ar" if lang == "ar" else "en-US")
    page = context.new_page()
    tour = Tour(page, lang, shots, artifacts / "axe", provider)
    try:
        made = provider.generate(100_000)
        page.goto(made["url"])
        tour.check("form", "Receive your cashout", support=True)

        enter_card(page, "")
        assert page.evaluate("document.activeElement.classList.contains('error-summary')")
        tour.check("error-empty", "Receive your cashout", error=True, support=True)
        enter_card(page, random_pan()[:15])
        tour.check("error-length", "Receive your cashout", error=True, support=True)
        typo = bad_luhn(random_pan())
        remember(typo)
        enter_card(page, grouped(typo).translate(ARABIC_INDIC) if lang == "ar" else typo)
        expect(page.locator("#pan")).to_have_value(grouped(typo))
        tour.check("error-check-digit", "Receive your cashout", error=True, support=True)
        enter_card(page, "4111 11x1 1111 1111")
        tour.check("error-not-digits", "Receive your cashout", error=True, support=True)

        pan = random_pan()
        enter_card(page, grouped(pan))
        expect(page.locator("h1 .card-number")).to_have_text(grouped(pan))
        tour.check("confirm", "Check the card number")
        page.locator("input[name=card]").evaluate("(e) => { e.value = 'x.y'; }")
        press(page, "confirm")
        expect(page.locator("#pan-error")).to_be_visible()
        tour.check("error-confirm-expired", "Receive your cashout", error=True, support=True)

        enter_card(page, grouped(pan))
        press(page, "confirm")
        expect(page.locator("h1")).to_have_text(tr(lang, "Money sent"))
        tour.check("receipt", "Money sent")

        made = provider.generate(450)
        page.goto(made["url"])
        enter_card(page, luhn_card("0052"))
        press(page, "confirm")
        expect(page.locator(".notice")).to_be_visible()  # the page refreshed by itself
        tour.check("retry", "Receive your cashout", support=True)

        made = provider.generate(600)
        page.route(made["url"], _hold_still)
        page.goto(made["url"])
        enter_card(page, luhn_card("0092"))  # times out: the claim stays processing
        press(page, "confirm")
        expect(page.locator("h1")).to_have_text(tr(lang, "Sending your money"))
        tour.check("processing", "Sending your money")
        mongo[server.env["CASHOUT_DB_NAME"]].claims.update_one(
            {"_id": made["uuid"]},
            {"$set": {"attempts.0.started_at": datetime.now(UTC) - timedelta(minutes=2)}},
        )
        page.unroute(made["url"])
        page.goto(made["url"])
        expect(page.locator(".notice")).to_contain_text(
            tr(lang, "You can close this page and open the same link later to see the result.")
        )
        tour.check("processing-later", "Sending your money")

        for state in ("failed-51", "failed-53", "failed-52", "failed-unknown"):
            page.goto(finished[state])
            tour.check(state, "Money not sent", support=state != "failed-unknown")
        page.goto(finished["expired"])
        tour.check("expired", "Link expired", support=True)
        page.goto(finished["cancelled"])
        tour.check("cancelled", "Cashout cancelled", support=True)
        unknown = made["url"].rsplit("/", 1)[0] + "/00000000-0000-4000-8000-000000000000"
        assert page.goto(unknown).status == 404  # type: ignore[union-attr]
        tour.check("not-found", "Link not found")
        assert page.goto(made["url"] + "/").status == 404  # type: ignore[union-attr]
        tour.check("near-miss", "Link not found")

        made = provider.generate(800)
        page.goto(made["url"])
        context.clear_cookies()  # the XSRF cookie is gone: the form has expired
        enter_card(page, random_pan())
        tour.check("form-expired", "Form expired")
        expect(page.get_by_role("link", name=tr(lang, "Start again"))).to_be_visible()
    finally:
        context.close()
    assert len(tour.seen) == 20, tour.seen


def test_failure_pages_say_whose_side_the_problem_is_on(
    browser: Browser, finished: dict[str, str], provider: PageProvider
) -> None:
    context = new_context(browser)
    page = context.new_page()
    try:
        for state, side, amount in (
            ("failed-51", "The problem is on the sender's side, not with your card.", "2,500"),
            ("failed-53", "The problem is on the sender's side, not with your card.", "2,500"),
            ("failed-52", "The problem is with the card you entered, not with the sender.", "700"),
            ("failed-unknown", "No money was sent.", "900"),
        ):
            page.goto(finished[state])
            expect(page.locator("main")).to_contain_text(side)
            summary = page.locator("dl.summary")
            expect(summary.locator("dd").first).to_have_text(re.compile(rf"^{amount}\sSDG$"))
            uuid = finished[state].rsplit("/", 1)[1]
            expect(summary).to_contain_text(uuid)  # a reference to quote
    finally:
        context.close()


# -- text size ------------------------------------------------------------------------------


@pytest.mark.parametrize("percent", [150, 200])
@pytest.mark.parametrize("lang", ["en", "ar"])
def test_pages_at_large_text_sizes(
    lang: str,
    percent: int,
    browser: Browser,
    provider: PageProvider,
    finished: dict[str, str],
    shots: Path,
) -> None:
    """WCAG 1.4.4: the browser's text size at 150% and 200% on a 360 px phone. Nothing
    scrolls sideways, and every value of a summary keeps most of the width (it moves under
    its label rather than shrinking beside it)."""
    context = new_context(browser, locale="ar" if lang == "ar" else "en-US")
    page = context.new_page()
    try:
        made = provider.generate(100_000)
        page.goto(made["url"])
        text_size(page, percent)
        base = float(
            page.evaluate("parseFloat(getComputedStyle(document.documentElement).fontSize)")
        )
        assert base == pytest.approx(18 * percent / 100), "the text size setting took effect"
        no_horizontal_scroll(page, 360)
        amounts_on_one_line(page)
        field = page.locator("#pan").bounding_box()
        assert field and field["x"] >= 0 and field["x"] + field["width"] <= 360
        pan = random_pan(length=19)
        enter_card(page, grouped(pan))
        text_size(page, percent)  # a form's answer is a new document: set again
        assert page.evaluate("parseFloat(getComputedStyle(document.body).fontSize)") == base
        no_horizontal_scroll(page, 360)
        amounts_on_one_line(page)
        screenshot(page, shots / f"text{percent}-{lang}-confirm.png")
        for state in ("receipt", "failed-51", "expired"):
            page.goto(finished[state])
            text_size(page, percent)
            no_horizontal_scroll(page, 360)
            amounts_on_one_line(page)
            widths = page.locator("dl.summary").evaluate("""(dl) => {
                const list = dl.getBoundingClientRect().width;
                return [list, ...[...dl.querySelectorAll('dd')].map(
                    (dd) => dd.getBoundingClientRect().width)]; }""")
            list_width, values = widths[0], widths[1:]
            assert values and min(values) >= 0.8 * list_width - 40, (state, widths)
            assert min(values) >= 200, (state, widths)
            screenshot(page, shots / f"text{percent}-{lang}-{state}.png")
    finally:
        context.close()
