"""The customer claim page (docs/DESIGN.md section 5) in a real headless browser, as a
customer would go through it on a 360 px phone, in English and Arabic.

Debian's ``chromium`` driven by Playwright against a real server process: the form, the one
look before paying (Confirm / Change), the processing page that refreshes itself, the
receipt; cards typed in Arabic-Indic and Persian digits, a refused number shown back, a
customer-fixable decline, Confirm tapped twice (the ledger checked), JavaScript off, and no
card number on any page reached by the link. Every state's accessibility and screenshots are
in ``test_claim_states.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright

from tests.browsing import (
    ARABIC_INDIC,
    NBSP,
    PERSIAN,
    WAIT_MS,
    PageProvider,
    enter_card,
    grouped,
    launch,
    needs_chromium,
    new_context,
    no_horizontal_scroll,
    press,
    readable,
    screenshot,
    text_of,
)
from tests.cards import bad_luhn, luhn_card
from tests.conftest import random_pan
from tests.harness import ServerProcess, remember, wait_until

pytestmark = needs_chromium

SLOW_MS = "1500"  # mock gateway latency that keeps the processing page on screen
KHARTOUM = ZoneInfo("Africa/Khartoum")

# Every page reached by the link (label, HTML), and every card number typed into one.
PAGES: list[tuple[str, str]] = []
TYPED: set[str] = set()


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
def slow_server(server_factory: Any) -> ServerProcess:
    return server_factory({"CASHOUT_MOCK_LATENCY_MS": SLOW_MS})


@pytest.fixture(scope="module")
def shots(artifacts: Path) -> Path:
    path = artifacts / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture()
def provider(server: ServerProcess) -> Iterator[PageProvider]:
    made = PageProvider(server)
    yield made
    made.close()


@pytest.fixture()
def slow_provider(slow_server: ServerProcess) -> Iterator[PageProvider]:
    made = PageProvider(slow_server, display_name="صيدلية الشفاء")
    yield made
    made.close()


@pytest.fixture()
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = new_context(browser)
    yield context
    context.close()


# -- helpers --------------------------------------------------------------------------------


def seen(page: Page, label: str) -> str:
    """Record a page reached by the link (GET) for the no-card check."""
    html = page.content()
    PAGES.append((label, html))
    return html


def typed(*numbers: str) -> None:
    for number in numbers:
        TYPED.add(number)
        remember(number)


def open_claim(page: Page, url: str) -> None:
    response = page.goto(url)
    assert response is not None and response.status == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-robots-tag"] == "noindex, nofollow"


def khartoum(rfc3339: str) -> str:
    """An API time as the page shows it: ``4 December 2025, 8:45 pm`` on Khartoum's clock."""
    local = datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).astimezone(KHARTOUM)
    clock = f"{local.hour % 12 or 12}:{local.minute:02d} {'am' if local.hour < 12 else 'pm'}"
    return f"{local.day} {local:%B} {local.year}, {clock}"


def summary(page: Page) -> dict[str, str]:
    """A summary list as {label: value}, as read (see ``text_of``)."""
    rows = page.locator("dl.summary > div").count()
    labels = [text_of(page, f"dl.summary > div:nth-child({i + 1}) dt") for i in range(rows)]
    values = [text_of(page, f"dl.summary > div:nth-child({i + 1}) dd") for i in range(rows)]
    return dict(zip(labels, values, strict=True))


CARD_ORDER_JS = """(el) => {
  // Where the first '*' and the first digit after the stars are drawn, left to right.
  const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  for (let node; (node = walker.nextNode());) {
    const at = node.data.indexOf('****');
    if (at < 0) continue;
    const x = (i) => { const r = document.createRange(); r.setStart(node, i);
                       r.setEnd(node, i + 1); return r.getBoundingClientRect().x; };
    return {stars: x(at), digits: x(at + 4)};
  }
  return null;
}"""


def masked_card_reads_left_to_right(page: Page, where: str) -> None:
    """'****1234' keeps its stars on the left, even inside right-to-left text."""
    order = page.locator(where).evaluate(CARD_ORDER_JS)
    assert order is not None, f"no masked card in {where}"
    assert order["stars"] < order["digits"], f"masked card drawn as 1234**** in {where}"


GROUPS_JS = """(el) => {
  // Where each group of digits starts, and on which line.
  const node = el.firstChild, out = [];
  for (let i = 0; i < node.data.length; i += 5) {
    const r = document.createRange(); r.setStart(node, i); r.setEnd(node, i + 1);
    const box = r.getBoundingClientRect(); out.push([Math.round(box.y), box.x]);
  }
  return out;
}"""


def groups_read_left_to_right(page: Page, where: str) -> None:
    """A card number's groups are drawn in order: left to right on each line, lines in order,
    even inside a right-to-left sentence."""
    starts = page.locator(where).evaluate(GROUPS_JS)
    lines = sorted({y for y, _ in starts})
    assert [lines.index(y) for y, _ in starts] == sorted(lines.index(y) for y, _ in starts)
    for line in lines:
        xs = [x for y, x in starts if y == line]
        assert xs == sorted(xs), f"groups drawn out of order: {starts}"


def caret_at(page: Page, side: str) -> int:
    """Where the caret lands when the customer taps the left or right end of the card field."""
    box = page.locator("#pan").bounding_box()
    assert box is not None
    x = box["x"] + 16 if side == "left" else box["x"] + box["width"] - 16
    page.mouse.click(x, box["y"] + box["height"] / 2)
    return int(page.evaluate("document.querySelector('#pan').selectionStart"))


# -- the way through ------------------------------------------------------------------------


def test_english_happy_path(browser: Browser, slow_provider: PageProvider, shots: Path) -> None:
    made = slow_provider.generate(1250)
    pan = random_pan()
    typed(pan)
    context = new_context(browser)
    try:
        page = context.new_page()
        open_claim(page, made["url"])
        expect(page.locator("html")).to_have_attribute("dir", "ltr")
        expect(page.locator("h1")).to_have_text("Receive your cashout")
        assert text_of(page, ".big-figure") == "1,250 SDG"
        assert "صيدلية الشفاء is sending you this amount" in text_of(page, "main")
        seen(page, "en form")

        enter_card(page, grouped(pan))
        expect(page).to_have_title("Check the card number \u2013 Cashout")
        question = page.locator("h1")
        assert question.inner_text().replace(NBSP, " ") == f"Send 1,250 SDG to card {grouped(pan)}?"
        expect(question.locator(".card-number")).to_have_attribute("dir", "ltr")
        expect(page.get_by_role("button", name="Change the card number")).to_be_visible()
        assert slow_provider.claim(made["uuid"])["status"] == "pending"  # nothing paid yet
        screenshot(page, shots / "en-1-confirm.png")

        status_page = made["url"]
        with page.expect_response(
            lambda r: r.request.method == "GET" and r.url == status_page
        ) as got:
            press(page, "confirm")
        assert got.value.headers.get("refresh") == "2", "the processing page refreshes itself"
        expect(page.locator("h1")).to_have_text("Sending your money")
        assert page.url == made["url"], "Confirm redirects back to the claim link"
        expect(page.locator("main")).to_contain_text("This page updates by itself.")
        masked_card_reads_left_to_right(page, "main")
        readable(page)
        seen(page, "en processing")
        screenshot(page, shots / "en-2-processing.png")

        expect(page.locator("h1")).to_have_text("Money sent", timeout=WAIT_MS)  # by itself
        claim = slow_provider.claim(made["uuid"])
        assert claim["status"] == "succeeded" and claim["card"] == "****" + pan[-4:]
        assert summary(page) == {
            "Amount": "1,250 SDG",
            "From": "صيدلية الشفاء",
            "To card": "****" + pan[-4:],
            "Reference": claim["reference"] or claim["attempts"][-1]["tran_uuid"],
            "Time": khartoum(claim["completed_at"]),
        }
        assert "UTC" not in page.locator("main").inner_text()
        readable(page)
        seen(page, "en receipt")
        screenshot(page, shots / "en-3-receipt.png")
    finally:
        context.close()


@pytest.mark.parametrize(
    ("lang", "digits"), [("ar", ARABIC_INDIC), ("en", PERSIAN)], ids=["arabic-indic", "persian"]
)
def test_a_card_typed_in_arabic_or_persian_digits_is_paid(
    lang: str, digits: dict[int, int], browser: Browser, provider: PageProvider, shots: Path
) -> None:
    made = provider.generate(730)
    pan = random_pan(length=19 if lang == "en" else 16)
    typed(pan)
    before = provider.ledger.balance(provider.pan)
    context = new_context(browser, locale="ar" if lang == "ar" else "en-US")
    try:
        page = context.new_page()
        open_claim(page, made["url"])
        on_keyboard = grouped(pan).translate(digits)  # as the phone types it in Arabic mode
        enter_card(page, on_keyboard)
        # The check shows the very digits typed, as 0-9, in groups, left to right.
        expect(page.locator("h1 .card-number")).to_have_text(grouped(pan))
        groups_read_left_to_right(page, "h1 .card-number")
        screenshot(page, shots / f"{lang}-digits-confirm.png")
        press(page, "confirm")
        heading = "تم إرسال المبلغ" if lang == "ar" else "Money sent"
        expect(page.locator("h1")).to_have_text(heading)
        expect(page.locator("dl.summary")).to_contain_text("****" + pan[-4:])
        masked_card_reads_left_to_right(page, "dl.summary")
        seen(page, f"{lang} digits receipt")
        screenshot(page, shots / f"{lang}-digits-receipt.png")
    finally:
        context.close()
    assert provider.ledger.applied_total_to(pan) == 730
    assert provider.ledger.balance(provider.pan) == before - 730


def test_digits_are_shown_in_typing_order_in_the_field(
    browser: Browser, provider: PageProvider
) -> None:
    """Arabic-Indic digits with spaces would be laid out as groups right to left; the field
    keeps them in typing order (the first group at the left, where the caret starts)."""
    made = provider.generate(50)
    context = new_context(browser, locale="ar")
    try:
        page = context.new_page()
        open_claim(page, made["url"])
        expect(page.locator("html")).to_have_attribute("dir", "rtl")
        pan = random_pan()
        typed(pan)
        for text in (grouped(pan).translate(ARABIC_INDIC), grouped(pan)):
            page.locator("#pan").fill(text)
            assert caret_at(page, "left") == 0, f"{text!r}: the first digit is not at the left"
            assert caret_at(page, "right") == len(text), f"{text!r}: the last is not at the right"
    finally:
        context.close()


@pytest.mark.parametrize("lang", ["en", "ar"])
def test_a_refused_number_is_shown_back_with_the_error_at_the_field(
    lang: str, browser: Browser, provider: PageProvider, shots: Path
) -> None:
    made = provider.generate(300)
    context = new_context(browser, locale="ar" if lang == "ar" else "en-US")
    try:
        page = context.new_page()
        open_claim(page, made["url"])
        expect(page.locator("#pan")).not_to_have_attribute("aria-invalid", "true")
        expect(page.locator(".error-summary")).to_have_count(0)
        slip = bad_luhn(random_pan())
        short = random_pan()[:15]
        typed(slip, short)
        cases = [
            (
                grouped(slip).translate(ARABIC_INDIC) if lang == "ar" else grouped(slip),
                grouped(slip),
                {
                    "en": "The card number is not valid: check each digit against your card",
                    "ar": "رقم البطاقة غير صحيح: طابق كل رقم مع بطاقتك",
                },
            ),
            (
                short,
                grouped(short),
                {
                    "en": "The card number must be 16 or 19 digits; you entered 15",
                    "ar": "يجب أن يتكون رقم البطاقة من 16 أو 19 رقمًا، وقد أدخلت 15",
                },
            ),
        ]
        for entered, shown, messages in cases:
            with page.expect_response(lambda r: r.request.method == "POST") as got:
                enter_card(page, entered)
            assert got.value.status == 400
            error_word = "خطأ:" if lang == "ar" else "Error:"
            assert page.title().startswith(error_word + " ")
            field = page.locator("#pan")
            # Shown back, grouped, so the slip can be seen (not wiped).
            expect(field).to_have_value(shown)
            expect(field).to_have_attribute("aria-invalid", "true")
            assert (field.get_attribute("aria-describedby") or "").split() == [
                "pan-hint",
                "pan-error",
            ]
            message = page.locator("#pan-error")
            expect(message).to_have_text(f"{error_word} {messages[lang]}")
            # The error summary is focused and its link leads to the field.
            summary_box = page.locator(".error-summary")
            assert page.evaluate("document.activeElement.classList.contains('error-summary')")
            expect(summary_box).to_have_attribute("role", "alert")
            link = summary_box.get_by_role("link", name=messages[lang])
            expect(link).to_have_attribute("href", "#pan")
            # Label, hint, message, then the field: the message stays above the keyboard.
            ys = [
                page.locator(sel).bounding_box()["y"]  # type: ignore[index]
                for sel in ("label[for=pan]", "#pan-hint", "#pan-error", "#pan")
            ]
            assert ys == sorted(ys), ys
            link.click()
            assert page.evaluate("document.activeElement.id") == "pan"
            no_horizontal_scroll(page, 360)
        screenshot(page, shots / f"{lang}-refused-number.png")
        assert provider.claim(made["uuid"])["status"] == "pending"

        # Corrected in place, it goes through.
        pan = random_pan()
        typed(pan)
        enter_card(page, grouped(pan))
        press(page, "confirm")
        expect(page.locator("dl.summary")).to_contain_text("****" + pan[-4:])
    finally:
        context.close()


def test_change_goes_back_with_the_number_kept(
    context: BrowserContext, provider: PageProvider
) -> None:
    made = provider.generate(640)
    first, second = random_pan(), random_pan()
    typed(first, second)
    page = context.new_page()
    open_claim(page, made["url"])
    enter_card(page, grouped(first))
    expect(page.locator("h1 .card-number")).to_have_text(grouped(first))
    press(page, "change")
    expect(page.locator("h1")).to_have_text("Receive your cashout")
    expect(page.locator("#pan")).to_have_value(grouped(first))
    expect(page.locator(".error-summary")).to_have_count(0)
    assert provider.claim(made["uuid"])["status"] == "pending"

    enter_card(page, grouped(second))
    expect(page.locator("h1 .card-number")).to_have_text(grouped(second))
    press(page, "confirm")
    expect(page.locator("h1")).to_have_text("Money sent")
    expect(page.locator("dl.summary")).to_contain_text("****" + second[-4:])
    assert provider.ledger.applied_total_to(second) == 640
    assert provider.ledger.applied_total_to(first) == 0


def test_confirm_tapped_twice_pays_once(browser: Browser, slow_provider: PageProvider) -> None:
    """A double tap on Confirm, and the same claim confirmed from two tabs at once (two
    requests reach the server): one payment, to one card; both tabs end on the truth."""
    ledger = slow_provider.ledger
    before = ledger.balance(slow_provider.pan)
    server = slow_provider.server
    context = new_context(browser)
    try:
        made = slow_provider.generate(210)
        pan = random_pan()
        typed(pan)
        page = context.new_page()
        open_claim(page, made["url"])
        enter_card(page, grouped(pan))
        page.locator("button[value=confirm]").dblclick()
        expect(page.locator("h1")).to_have_text("Money sent")
        claim = slow_provider.claim(made["uuid"])
        assert len(claim["attempts"]) == 1
        assert ledger.applied_count(claim["attempts"][0]["tran_uuid"]) == 1
        assert ledger.applied_total_to(pan) == 210

        made = slow_provider.generate(220)
        cards = [random_pan(), random_pan()]
        typed(*cards)
        tabs = [context.new_page(), context.new_page()]
        for tab, card in zip(tabs, cards, strict=True):
            open_claim(tab, made["url"])
            enter_card(tab, grouped(card))
            expect(tab.locator("button[value=confirm]")).to_be_visible()
        confirms = server.log().count("POST /cashout/claim/{name}/{uuid} 303")
        for tab in tabs:
            tab.locator("button[value=confirm]").click(no_wait_after=True)
        wait_until(
            lambda: server.log().count("POST /cashout/claim/{name}/{uuid} 303") == confirms + 2,
            10,
            what="both Confirm requests to reach the server",
        )
        for tab in tabs:
            expect(tab.locator("h1")).to_have_text("Money sent")
        claim = slow_provider.claim(made["uuid"])
        assert len(claim["attempts"]) == 1
        assert ledger.applied_count(claim["attempts"][0]["tran_uuid"]) == 1
        paid = [card for card in cards if ledger.applied_total_to(card)]
        assert len(paid) == 1 and ledger.applied_total_to(paid[0]) == 220
        for tab in tabs:  # both tell the same truth: the winner's card
            expect(tab.locator("dl.summary")).to_contain_text("****" + paid[0][-4:])
    finally:
        context.close()
    assert ledger.balance(slow_provider.pan) == before - 210 - 220


def test_declined_card_returns_to_the_form_with_attempts_left(
    context: BrowserContext, provider: PageProvider, shots: Path
) -> None:
    made = provider.generate(450)
    declined = luhn_card("0052")
    typed(declined)
    page = context.new_page()
    open_claim(page, made["url"])
    enter_card(page, grouped(declined))
    press(page, "confirm")

    # Processing (maybe only briefly), then back to the form once the bank declined.
    notice = page.locator(".notice")
    expect(notice).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("h1")).to_have_text("Receive your cashout")
    expect(notice).to_contain_text("The bank declined the card ending 0052")
    expect(notice).to_contain_text("The card number was not accepted by the bank.")
    expect(notice).to_contain_text("Attempts left: 2")
    expect(page.locator("#pan")).to_have_value("")
    seen(page, "declined form")
    screenshot(page, shots / "declined-0052.png")
    claim = provider.claim(made["uuid"])
    assert claim["status"] == "pending" and len(claim["attempts"]) == 1

    pan = random_pan()
    typed(pan)
    enter_card(page, grouped(pan))
    press(page, "confirm")
    expect(page.locator("h1")).to_have_text("Money sent")
    seen(page, "declined then receipt")


def test_language_switch_is_visible_and_sticks(browser: Browser, provider: PageProvider) -> None:
    made = provider.generate(40)
    context = new_context(browser, locale="ar")
    try:
        page = context.new_page()
        open_claim(page, made["url"])
        html = page.locator("html")
        expect(html).to_have_attribute("dir", "rtl")
        expect(html).to_have_attribute("lang", "ar")
        expect(page.locator("h1")).to_have_text("استلم مبلغك")
        assert text_of(page, ".big-figure") == "40 جنيه"
        expect(page.locator("#pan")).to_have_attribute("dir", "ltr")
        page.get_by_role("link", name="English").click()
        expect(html).to_have_attribute("dir", "ltr")
        expect(page.locator("h1")).to_have_text("Receive your cashout")
        open_claim(page, made["url"])  # the choice sticks (cookie) over Accept-Language
        expect(html).to_have_attribute("lang", "en")
        page.get_by_role("link", name="العربية").click()
        expect(html).to_have_attribute("dir", "rtl")
    finally:
        context.close()


def test_small_phone_screen(browser: Browser, provider: PageProvider, shots: Path) -> None:
    width = 360
    context = new_context(
        browser,
        viewport={"width": width, "height": 740},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    try:
        page = context.new_page()
        made = provider.generate(100_000)
        open_claim(page, made["url"])
        field = page.get_by_label("Card number")
        expect(field).to_have_attribute("inputmode", "numeric")
        expect(field).to_have_attribute("autocomplete", "cc-number")
        no_horizontal_scroll(page, width)
        button = page.locator("form button[type=submit]")
        box = button.bounding_box()
        assert box and box["height"] >= 44 and box["x"] >= 0 and box["x"] + box["width"] <= width
        seen(page, "mobile form")

        pan = random_pan(length=19)
        typed(pan)
        enter_card(page, grouped(pan))
        no_horizontal_scroll(page, width)
        for name in ("confirm", "change"):
            box = page.locator(f"button[value={name}]").bounding_box()
            assert box and box["height"] >= 44
        press(page, "confirm")
        expect(page.locator("h1")).to_have_text("Money sent")
        no_horizontal_scroll(page, width)
        assert summary(page)["Amount"] == "100,000 SDG"
        screenshot(page, shots / "mobile-receipt.png")

        made = provider.generate(15)
        page.goto(made["url"] + "?lang=ar")
        expect(page.locator("html")).to_have_attribute("dir", "rtl")
        no_horizontal_scroll(page, width)
        seen(page, "mobile ar form")
    finally:
        context.close()


def test_works_without_javascript(
    browser: Browser, slow_provider: PageProvider, shots: Path
) -> None:
    context = new_context(browser, java_script_enabled=False)
    try:
        page = context.new_page()
        made = slow_provider.generate(60)
        open_claim(page, made["url"])
        enter_card(page, grouped(bad_luhn(random_pan())))
        expect(page.locator("#pan-error")).to_be_visible()  # the form round trip, no script
        pan = random_pan()
        typed(pan)
        enter_card(page, grouped(pan))
        press(page, "change")
        expect(page.locator("#pan")).to_have_value(grouped(pan))
        enter_card(page, grouped(pan))
        press(page, "confirm")
        expect(page.locator("h1")).to_have_text("Sending your money")
        seen(page, "no-js processing")
        # The refresh needs no script.
        expect(page.locator("h1")).to_have_text("Money sent", timeout=WAIT_MS)
        seen(page, "no-js receipt")
        screenshot(page, shots / "nojs-receipt.png")
    finally:
        context.close()


def test_unknown_links_and_near_misses_are_a_friendly_404(
    context: BrowserContext, provider: PageProvider
) -> None:
    made = provider.generate(20)
    base, uuid = made["url"].rsplit("/", 1)
    page = context.new_page()
    for url in (
        f"{base}/00000000-0000-4000-8000-000000000000",
        made["url"] + "/",
        f"{base}/{uuid.upper()}",
        made["url"] + "/receipt",
        base + "/",
    ):
        response = page.goto(url)
        assert response is not None and response.status == 404, url
        assert response.headers["content-type"].startswith("text/html"), url
        assert response.headers["x-robots-tag"] == "noindex, nofollow"
        expect(page.locator("h1")).to_have_text("We can't find this cashout link")
        expect(page).to_have_title("Link not found \u2013 Cashout")
        seen(page, "404")


def test_no_card_number_on_any_page_reached_by_the_link(
    context: BrowserContext, provider: PageProvider
) -> None:
    """Only the answers to the customer's own POST show a whole card (the check before
    paying, a refused number shown back); no page reached by the link does, and the
    check's hidden field carries the card sealed, never in clear."""
    made = provider.generate(77)
    pan = random_pan()
    typed(pan)
    page = context.new_page()
    open_claim(page, made["url"])
    seen(page, "leak form")
    enter_card(page, grouped(pan))
    sealed = page.locator("input[name=card]").get_attribute("value") or ""
    assert pan not in sealed and pan[-4:] not in sealed and len(sealed) > 40
    press(page, "confirm")
    expect(page.locator("h1")).to_have_text("Money sent")
    seen(page, "leak receipt")
    with httpx.Client(timeout=10) as client:  # the page as a plain HTTP client gets it
        status = client.get(made["url"], headers={"Accept-Language": "ar"})
        PAGES.append(("raw GET", status.text))

    assert TYPED and PAGES
    for number in TYPED:
        forms = {number, grouped(number), "-".join(re.findall(".{1,4}", number))}
        forms |= {f.translate(ARABIC_INDIC) for f in list(forms)}
        for label, html in PAGES:
            for form in forms:
                assert form not in html, f"card ending {number[-4:]} shown on {label}"
    receipts = [html for label, html in PAGES if "receipt" in label]
    assert any("****" + pan[-4:] in html for html in receipts)
