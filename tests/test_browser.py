"""The customer claim page (docs/DESIGN.md section 5) in a real headless browser.

Debian's ``chromium`` driven by Playwright's sync API against a real server process: the form,
the processing page that refreshes itself, the receipt, card errors, a customer-fixable
decline, Arabic right to left, a small phone screen, JavaScript off, and no card number on
any page. Screenshots go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import re
import secrets
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright

from tests.cards import bad_luhn, luhn_card
from tests.conftest import random_pan, unique_name
from tests.harness import ServerProcess, auth, provider_body, register, remember

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="browser tests need Debian's chromium at /usr/bin/chromium (apt install chromium)",
)

WAIT_MS = 15_000  # deadline for any one page state; the processing page refreshes every 2 s
SLOW_MS = "1500"  # mock gateway latency that keeps the processing page on screen

# Every page the module saw (label, HTML) and every card number typed into one.
PAGES: list[tuple[str, str]] = []
TYPED: set[str] = set()


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
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


class Provider:
    """A registered provider on one server, and the HTTP client to reach it."""

    def __init__(self, server: ServerProcess):
        self.client = server.client()
        body = provider_body(unique_name("shop"), random_pan())
        creds = register(self.client, body)
        self.name = body["name"]
        self.headers = auth(creds["api_key"])

    def generate(self, amount: int) -> dict[str, Any]:
        response = self.client.post(
            f"/cashout/generate/{self.name}",
            headers=self.headers,
            json={"amount": amount, "id": secrets.token_hex(6)},
        )
        assert response.status_code == 201, response.text
        return response.json()

    def claim(self, uuid: str) -> dict[str, Any]:
        response = self.client.get(f"/cashout/claims/{self.name}/{uuid}", headers=self.headers)
        assert response.status_code == 200, response.text
        return response.json()

    def close(self) -> None:
        self.client.close()


@pytest.fixture()
def provider(server: ServerProcess) -> Iterator[Provider]:
    made = Provider(server)
    yield made
    made.close()


@pytest.fixture()
def slow_provider(slow_server: ServerProcess) -> Iterator[Provider]:
    made = Provider(slow_server)
    yield made
    made.close()


def new_context(browser: Browser, **kwargs: Any) -> BrowserContext:
    kwargs.setdefault("locale", "en-US")
    context = browser.new_context(**kwargs)
    context.set_default_timeout(WAIT_MS)
    context.set_default_navigation_timeout(WAIT_MS)
    return context


@pytest.fixture()
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = new_context(browser)
    yield context
    context.close()


# -- helpers --------------------------------------------------------------------------------


def grouped(pan: str) -> str:
    """The card as people type it: groups of four separated by spaces."""
    return " ".join(pan[i : i + 4] for i in range(0, len(pan), 4))


def seen(page: Page, label: str) -> str:
    """Record the page's HTML for the no-secret check and return it."""
    html = page.content()
    PAGES.append((label, html))
    return html


def shot(page: Page, shots: Path, name: str) -> None:
    page.screenshot(path=str(shots / name), full_page=True)


def type_card(page: Page, pan: str, *, label: str = "Card number") -> None:
    """Type a card number key by key, as a customer would, and submit the form."""
    digits = re.sub(r"\D", "", pan)
    remember(pan, digits)
    TYPED.add(digits)
    field = page.get_by_label(label)
    field.fill("")
    field.press_sequentially(pan)
    page.locator("form button[type=submit]").click()


def no_horizontal_scroll(page: Page, width: int) -> None:
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"page is {scroll}px wide on a {width}px screen"


def open_claim(page: Page, url: str) -> None:
    response = page.goto(url)
    assert response is not None and response.status == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"


def expect_receipt(page: Page, *, heading: str, amount: int, pan: str) -> None:
    expect(page.locator("h1")).to_have_text(heading, timeout=WAIT_MS)
    receipt = page.locator("dl.receipt")
    expect(receipt).to_be_visible()
    expect(receipt.locator(".figure")).to_have_text(str(amount))
    expect(receipt.locator("dd", has_text="****")).to_have_text("****" + pan[-4:])
    dds = receipt.locator("dd")
    expect(dds).to_have_count(5)
    expect(dds.nth(3)).to_have_text(re.compile(r"\S{6,}"))  # the reference
    expect(dds.nth(4)).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"))


COLOURS_JS = """(selectors) => {
  const rgb = (text) => (text.match(/[\\d.]+/g) || []).map(Number);
  const background = (el) => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const out = [];
  for (const sel of selectors) {
    for (const el of document.querySelectorAll(sel)) {
      if (!el.textContent.trim()) continue;
      out.push([sel, rgb(getComputedStyle(el).color).slice(0, 3), background(el)]);
    }
  }
  return out;
}"""

TEXT = [
    "header .brand",
    "header .lang",
    "h1",
    ".amount",
    "label",
    "p",
    ".hint",
    ".small",
    ".error",
    ".notice",
    "button",
    "dt",
    "dd",
    "main a",
]


def luminance(rgb: list[float]) -> float:
    def channel(value: float) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(v) for v in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def readable(page: Page) -> None:
    """Every piece of text meets WCAG AA contrast (4.5:1) against what is behind it."""
    poor = []
    for selector, fg, bg in page.evaluate(COLOURS_JS, TEXT):
        light, dark = sorted((luminance(fg), luminance(bg)), reverse=True)
        ratio = (light + 0.05) / (dark + 0.05)
        if ratio < 4.5:
            poor.append(f"{selector} {fg} on {bg}: {ratio:.2f}:1")
    assert not poor, f"text below 4.5:1 contrast: {poor}"


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


def beside_labels(page: Page) -> None:
    """On a right-to-left receipt each value starts at the right, next to its label."""
    gaps = page.locator("dl.receipt dd").evaluate_all("""(dds) => dds.map((dd) => {
        const r = document.createRange(); r.selectNodeContents(dd);
        return dd.getBoundingClientRect().right - r.getBoundingClientRect().right; })""")
    assert all(abs(gap) < 2 for gap in gaps), f"values not beside their labels: {gaps}"


# -- tests ----------------------------------------------------------------------------------


def test_english_happy_path(browser: Browser, slow_provider: Provider, shots: Path) -> None:
    made = slow_provider.generate(1250)
    pan = random_pan()
    context = new_context(browser, locale="en-US")
    try:
        page = context.new_page()
        open_claim(page, made["url"])
        expect(page.locator("html")).to_have_attribute("dir", "ltr")
        expect(page.locator("html")).to_have_attribute("lang", "en")
        expect(page.locator("h1")).to_have_text("Receive your cashout")
        expect(page.locator(".amount")).to_have_text("1250 SDG")
        expect(page.get_by_text(f"{slow_provider.name} is sending you this amount")).to_be_visible()
        readable(page)
        seen(page, "en form")
        shot(page, shots, "en-1-form.png")

        type_card(page, grouped(pan))
        expect(page.locator("h1")).to_have_text("Sending your money")
        expect(page.get_by_text("****" + pan[-4:])).to_be_visible()
        assert page.url == made["url"], "the form should redirect back to the claim URL"
        masked_card_reads_left_to_right(page, "main")
        readable(page)
        seen(page, "en processing")
        shot(page, shots, "en-2-processing.png")
        assert page.locator('meta[http-equiv="refresh"]').get_attribute("content") == "2"

        # The page refreshes itself (meta refresh every 2 s) until the transfer is done.
        expect_receipt(page, heading="Money sent", amount=1250, pan=pan)
        expect(page.locator('meta[http-equiv="refresh"]')).to_have_count(0)
        readable(page)
        seen(page, "en receipt")
        shot(page, shots, "en-3-receipt.png")
        claim = slow_provider.claim(made["uuid"])
        assert claim["status"] == "succeeded" and claim["card"] == "****" + pan[-4:]
        if claim.get("reference"):
            expect(page.locator("dl.receipt dd").nth(3)).to_have_text(claim["reference"])
    finally:
        context.close()


def test_arabic_right_to_left_and_language_switch(
    browser: Browser, slow_provider: Provider, shots: Path
) -> None:
    made = slow_provider.generate(730)
    pan = random_pan()
    context = new_context(browser, locale="ar")
    try:
        page = context.new_page()
        open_claim(page, made["url"])
        html = page.locator("html")
        expect(html).to_have_attribute("dir", "rtl")
        expect(html).to_have_attribute("lang", "ar")
        expect(page.locator("h1")).to_have_text("استلم مبلغك")
        expect(page.locator(".amount")).to_have_text("730 جنيه سوداني")
        expect(page.get_by_text(slow_provider.name)).to_be_visible()
        expect(page.locator("form button[type=submit]")).to_have_text("أرسل لي المبلغ")
        # The card number is digits: typed and shown left to right inside the RTL page.
        expect(page.locator("#pan")).to_have_attribute("dir", "ltr")
        # The language switch is visible and names the other language in that language.
        expect(page.get_by_role("link", name="English")).to_be_visible()
        seen(page, "ar form")
        shot(page, shots, "ar-1-form.png")

        type_card(page, grouped(pan), label="رقم البطاقة")
        expect(page.locator("h1")).to_have_text("جارٍ إرسال مبلغك")
        expect(html).to_have_attribute("dir", "rtl")
        masked_card_reads_left_to_right(page, "main")
        readable(page)
        seen(page, "ar processing")
        shot(page, shots, "ar-2-processing.png")

        expect_receipt(page, heading="تم إرسال المبلغ", amount=730, pan=pan)
        expect(html).to_have_attribute("dir", "rtl")
        expect(page.locator("dl.receipt dt").first).to_have_text("المبلغ")
        masked_card_reads_left_to_right(page, "dl.receipt")
        beside_labels(page)
        readable(page)
        seen(page, "ar receipt")
        shot(page, shots, "ar-3-receipt.png")

        page.get_by_role("link", name="English").click()
        expect(html).to_have_attribute("dir", "ltr")
        expect(html).to_have_attribute("lang", "en")
        expect(page.locator("h1")).to_have_text("Money sent")
        expect(page.get_by_role("link", name="العربية")).to_be_visible()
        seen(page, "ar->en receipt")
        shot(page, shots, "ar-4-switched-to-english.png")

        # The choice sticks (cookie) over the browser's Accept-Language, and switches back.
        open_claim(page, made["url"])
        expect(html).to_have_attribute("dir", "ltr")
        page.get_by_role("link", name="العربية").click()
        expect(html).to_have_attribute("dir", "rtl")
        expect(page.locator("h1")).to_have_text("تم إرسال المبلغ")
    finally:
        context.close()


def test_arabic_form_switches_to_english_before_submitting(
    browser: Browser, provider: Provider
) -> None:
    made = provider.generate(40)
    context = new_context(browser, locale="ar")
    try:
        page = context.new_page()
        open_claim(page, made["url"])
        expect(page.locator("html")).to_have_attribute("dir", "rtl")
        page.get_by_role("link", name="English").click()
        expect(page.locator("html")).to_have_attribute("dir", "ltr")
        expect(page.locator("h1")).to_have_text("Receive your cashout")
        expect(page.get_by_label("Card number")).to_be_visible()
        seen(page, "ar->en form")
    finally:
        context.close()


def test_bad_card_rerenders_the_form_with_the_error_at_the_field(
    context: BrowserContext, provider: Provider, shots: Path
) -> None:
    made = provider.generate(300)
    page = context.new_page()
    open_claim(page, made["url"])
    field = page.get_by_label("Card number")
    expect(field).not_to_have_attribute("aria-invalid", "true")
    expect(page.locator(".error")).to_have_count(0)

    cases = [
        (bad_luhn(random_pan()), "The card number is not valid; check the digits."),
        (random_pan()[:15], "The card number must be 16 or 19 digits."),
    ]
    for number, message in cases:
        type_card(page, grouped(number))
        expect(page.locator("h1")).to_have_text("Receive your cashout")
        field = page.get_by_label("Card number")
        expect(field).to_have_attribute("aria-invalid", "true")
        described = (field.get_attribute("aria-describedby") or "").split()
        errors = [page.locator(f"#{ident}") for ident in described]
        error = next((e for e in errors if e.get_attribute("role") == "alert"), None)
        assert error is not None, f"aria-describedby {described} names no error element"
        expect(error).to_be_visible()
        expect(error).to_have_text(message)
        # The message sits next to the field: right after it, before the submit button.
        field_box, error_box = field.bounding_box(), error.bounding_box()
        button_box = page.locator("form button[type=submit]").bounding_box()
        assert field_box and error_box and button_box
        assert field_box["y"] < error_box["y"] < button_box["y"]
        assert error_box["y"] - (field_box["y"] + field_box["height"]) < 120
        # The number is not echoed back into the form.
        expect(field).to_have_value("")
        html = seen(page, f"bad card form ({len(number)} digits)")
        assert number not in html
        assert provider.claim(made["uuid"])["status"] == "pending"
        if len(number) == 16:
            readable(page)
            shot(page, shots, "bad-card.png")
    shot(page, shots, "bad-card-short.png")

    # The customer can still correct it and claim.
    pan = random_pan()
    type_card(page, grouped(pan))
    expect_receipt(page, heading="Money sent", amount=300, pan=pan)
    seen(page, "bad card then receipt")


def test_declined_card_returns_to_the_form_with_attempts_left(
    context: BrowserContext, provider: Provider, shots: Path
) -> None:
    made = provider.generate(450)
    declined = luhn_card("0052")
    page = context.new_page()
    open_claim(page, made["url"])
    type_card(page, grouped(declined))

    # Processing (maybe only briefly), then back to the form once the bank declined.
    notice = page.locator(".notice")
    expect(notice).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("h1")).to_have_text("Receive your cashout")
    expect(notice).to_contain_text("Your last card was declined")
    expect(notice).to_contain_text("The card number was not accepted by the bank.")
    expect(notice).to_contain_text("Attempts left: 2")
    expect(page.get_by_label("Card number")).to_be_visible()
    html = seen(page, "declined form")
    assert declined not in html
    shot(page, shots, "declined-0052.png")
    claim = provider.claim(made["uuid"])
    assert claim["status"] == "pending" and len(claim["attempts"]) == 1

    pan = random_pan()
    type_card(page, grouped(pan))
    expect_receipt(page, heading="Money sent", amount=450, pan=pan)
    seen(page, "declined then receipt")


def test_small_phone_screen(browser: Browser, provider: Provider, shots: Path) -> None:
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
        expect(field).to_have_count(1)
        expect(field).to_have_attribute("id", "pan")
        expect(field).to_have_attribute("inputmode", "numeric")
        expect(field).to_have_attribute("autocomplete", "cc-number")
        no_horizontal_scroll(page, width)
        button = page.locator("form button[type=submit]")
        box = button.bounding_box()
        assert box and box["height"] >= 44 and box["x"] >= 0 and box["x"] + box["width"] <= width
        seen(page, "mobile form")
        shot(page, shots, "mobile-1-form.png")

        type_card(page, grouped(bad_luhn(random_pan())))
        expect(page.locator("#pan-error")).to_be_visible()
        no_horizontal_scroll(page, width)
        seen(page, "mobile error")
        shot(page, shots, "mobile-2-error.png")

        pan = random_pan(length=19)
        type_card(page, grouped(pan))
        expect_receipt(page, heading="Money sent", amount=100_000, pan=pan)
        no_horizontal_scroll(page, width)
        seen(page, "mobile receipt")
        shot(page, shots, "mobile-3-receipt.png")

        # Arabic on the same small screen.
        made = provider.generate(15)
        page.goto(made["url"] + "?lang=ar")
        expect(page.locator("html")).to_have_attribute("dir", "rtl")
        no_horizontal_scroll(page, width)
        seen(page, "mobile ar form")
        shot(page, shots, "mobile-4-ar-form.png")
    finally:
        context.close()


def test_works_without_javascript(browser: Browser, slow_provider: Provider, shots: Path) -> None:
    context = new_context(
        browser, java_script_enabled=False, viewport={"width": 360, "height": 740}
    )
    try:
        page = context.new_page()
        made = slow_provider.generate(60)
        open_claim(page, made["url"])
        expect(page.locator("h1")).to_have_text("Receive your cashout")
        type_card(page, grouped(bad_luhn(random_pan())))
        expect(page.locator("#pan-error")).to_be_visible()  # the form round trip, no script
        pan = random_pan()
        type_card(page, grouped(pan))
        expect(page.locator("h1")).to_have_text("Sending your money")
        seen(page, "no-js processing")
        shot(page, shots, "nojs-1-processing.png")
        try:
            # The meta refresh needs no script.
            expect_receipt(page, heading="Money sent", amount=60, pan=pan)
        except AssertionError:
            # Should it not fire, the customer reloads by hand; say so in the test report.
            warnings.warn("meta refresh did not fire with JavaScript off", stacklevel=1)
            page.goto(made["url"])
            expect_receipt(page, heading="Money sent", amount=60, pan=pan)
        seen(page, "no-js receipt")
        shot(page, shots, "nojs-2-receipt.png")
    finally:
        context.close()


def test_unknown_claim_is_a_friendly_404(context: BrowserContext, provider: Provider) -> None:
    url = (
        f"{provider.client.base_url}/cashout/claim/{provider.name}/"
        "00000000-0000-4000-8000-000000000000"
    )
    page = context.new_page()
    response = page.goto(url)
    assert response is not None and response.status == 404
    expect(page.locator("h1")).to_have_text("We can't find this cashout link")
    seen(page, "404")


def test_no_card_number_on_any_page(context: BrowserContext, provider: Provider) -> None:
    # A flow of its own so this test means something when run alone, then every page above.
    made = provider.generate(77)
    pan = random_pan()
    page = context.new_page()
    open_claim(page, made["url"])
    type_card(page, grouped(bad_luhn(pan)))
    expect(page.locator("#pan-error")).to_be_visible()
    seen(page, "leak form error")
    type_card(page, pan)
    expect_receipt(page, heading="Money sent", amount=77, pan=pan)
    seen(page, "leak receipt")
    with httpx.Client(timeout=10) as client:  # the page as a plain HTTP client gets it
        status = client.get(made["url"], headers={"Accept-Language": "ar"})
        PAGES.append(("raw GET", status.text))

    assert TYPED and PAGES
    for number in TYPED:
        forms = {number, grouped(number), "-".join(re.findall(".{1,4}", number))}
        for label, html in PAGES:
            for form in forms:
                assert form not in html, f"card ending {number[-4:]} shown on {label}"
    receipts = [html for label, html in PAGES if "receipt" in label]
    assert any("****" + pan[-4:] in html for html in receipts)
