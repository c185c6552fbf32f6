"""What the browser tests share: Debian's chromium driven by Playwright, a provider whose
claims they open, and the checks every page must pass (contrast, visible focus, no sideways
scrolling, text size).

A dashboard's tests can reuse all of it with ``tests/axe.py``.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, CDPSession, Page, Playwright

from tests.axe import AXE
from tests.conftest import random_pan, unique_name
from tests.harness import MOCK_LEDGER, ServerProcess, auth, provider_body, register, remember
from tests.ledger import Ledger

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
WAIT_MS = 15_000  # deadline for any one page state

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="browser tests need Debian's chromium at /usr/bin/chromium (apt install chromium)",
)
needs_axe = pytest.mark.skipif(
    not AXE.exists(), reason="axe-core is not installed (scripts/install-axe needs npm)"
)

ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
PERSIAN = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")
NBSP = "\u00a0"


def launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def new_context(browser: Browser, **kwargs: Any) -> BrowserContext:
    kwargs.setdefault("locale", "en-US")
    kwargs.setdefault("viewport", {"width": 360, "height": 740})
    context = browser.new_context(**kwargs)
    context.set_default_timeout(WAIT_MS)
    context.set_default_navigation_timeout(WAIT_MS)
    return context


class PageProvider:
    """A registered provider (with a display name and a support contact) on one server."""

    def __init__(
        self,
        server: ServerProcess,
        display_name: str | None = "Shifa Pharmacy",
        support: str | None = "+249 91 234 5678",
    ) -> None:
        self.server = server
        self.client = server.client()
        self.pan = random_pan()
        extra = {"display_name": display_name, "support": support}
        body = provider_body(
            unique_name("shop"), self.pan, **{k: v for k, v in extra.items() if v is not None}
        )
        creds = register(self.client, body)
        self.name = body["name"]
        self.display_name = display_name or self.name
        self.support = support
        self.headers = auth(creds["api_key"])

    def generate(self, amount: int, **extra: Any) -> dict[str, Any]:
        response = self.client.post(
            f"/cashout/generate/{self.name}",
            headers=self.headers,
            json={"amount": amount, "id": secrets.token_hex(6), **extra},
        )
        assert response.status_code == 201, response.text
        return response.json()

    def claim(self, uuid: str) -> dict[str, Any]:
        response = self.client.get(f"/cashout/claims/{self.name}/{uuid}", headers=self.headers)
        assert response.status_code == 200, response.text
        return response.json()

    def submit(self, uuid: str, pan: str) -> httpx.Response:
        """The JSON claim route, as an app would call it."""
        remember(pan)
        return self.client.post(f"/cashout/claim/{self.name}", json={"id": uuid, "pan": pan})

    def cancel(self, uuid: str) -> None:
        response = self.client.post(
            f"/cashout/claims/{self.name}/{uuid}/cancel", headers=self.headers
        )
        assert response.status_code == 200, response.text

    @property
    def ledger(self) -> Ledger:
        return Ledger(Path(self.server.env["CASHOUT_DATA_DIR"]) / MOCK_LEDGER)

    def close(self) -> None:
        self.client.close()


def grouped(pan: str) -> str:
    """The card as people type it: groups of four separated by spaces."""
    return " ".join(pan[i : i + 4] for i in range(0, len(pan), 4))


def text_of(page: Page, selector: str) -> str:
    """Visible text as read: no-break spaces (money, times) as spaces, without the invisible
    direction isolates around names and card numbers."""
    text = page.locator(selector).inner_text().replace(NBSP, " ")
    return re.sub("[\u2066-\u2069]", "", text).strip()


def enter_card(page: Page, typed: str) -> None:
    """Type a card number key by key, as a customer would, and press Continue."""
    digits = re.sub(r"\D", "", typed.translate(_WESTERN))
    if digits:
        remember(digits)
    field = page.locator("#pan")
    field.fill("")
    field.press_sequentially(typed)
    page.locator("form button[type=submit]").click()


_WESTERN = str.maketrans("٠١٢٣٤٥٦٧٨٩۰۱۲۳۴۵۶۷۸۹", "01234567890123456789")


def press(page: Page, action: str) -> None:
    """Press Confirm or Change on the check page."""
    page.locator(f"button[name=action][value={action}]").click()


def screenshot(page: Page, path: Path, width: int | None = None) -> None:
    """The whole page at ``width`` (default: the current one). Playwright's full-page
    screenshots reset the text size setting, so the viewport grows to the page instead."""
    viewport = page.viewport_size or {"width": 360, "height": 740}
    width = width or viewport["width"]
    page.set_viewport_size({"width": width, "height": viewport["height"]})
    height = page.evaluate("document.documentElement.scrollHeight")
    page.set_viewport_size({"width": width, "height": max(height, viewport["height"])})
    page.screenshot(path=str(path))
    page.set_viewport_size(viewport)


def amounts_on_one_line(page: Page) -> None:
    """Every amount is drawn on one line: the currency never parts from its number, and
    neither is split (an inline box broken across lines has rectangles on several lines;
    on one line it may have one per direction run)."""
    lines = page.evaluate(
        "() => [...document.querySelectorAll('.money')].map((e) => [e.textContent,"
        " new Set([...e.getClientRects()].map((r) => Math.round(r.top))).size])"
    )
    split = [text for text, tops in lines if tops != 1]
    assert not split, f"amounts split across lines: {split}"


def no_horizontal_scroll(page: Page, width: int) -> None:
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"page is {scroll}px wide on a {width}px screen"


def text_size(page: Page, percent: int) -> None:
    """The browser's text size setting (WCAG 1.4.4 "resize text"), not a page zoom. Set it
    again after a form is sent: the answer is a new document."""
    session = _SESSIONS.get(page) or page.context.new_cdp_session(page)
    _SESSIONS[page] = session  # kept open: closing it undoes the setting
    session.send(
        "Page.setFontSizes",
        {"fontSizes": {"standard": 16 * percent // 100, "fixed": 13 * percent // 100}},
    )


_SESSIONS: dict[Page, CDPSession] = {}


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
      if (!el.textContent.trim() || el.closest('.visually-hidden')) continue;
      out.push([sel, rgb(getComputedStyle(el).color).slice(0, 3), background(el)]);
    }
  }
  return out;
}"""

TEXT = ["header .brand", "header .lang", "h1", "h2", "label", "p", "li", "a", "button", "dt", "dd"]


def luminance(rgb: list[float]) -> float:
    def channel(value: float) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(v) for v in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: list[float], b: list[float]) -> float:
    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def readable(page: Page) -> None:
    """Every piece of text meets WCAG AA contrast (4.5:1) against what is behind it."""
    poor = [
        f"{selector} {fg} on {bg}: {contrast(fg, bg):.2f}:1"
        for selector, fg, bg in page.evaluate(COLOURS_JS, TEXT)
        if contrast(fg, bg) < 4.5
    ]
    assert not poor, f"text below 4.5:1 contrast: {poor}"


FOCUS_JS = """(el) => {
  const rgb = (text) => (text.match(/[\\d.]+/g) || []).map(Number);
  const behind = (node) => {
    for (; node; node = node.parentElement) {
      const c = rgb(getComputedStyle(node).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const look = () => { const s = getComputedStyle(el); return {
    outline: s.outlineStyle !== 'none' ? parseFloat(s.outlineWidth) : 0,
    outlineColor: rgb(s.outlineColor), shadow: s.boxShadow,
    background: rgb(s.backgroundColor), color: rgb(s.color)}; };
  el.blur();
  const before = look();
  el.focus();
  const after = look();
  return {before, after, around: behind(el.parentElement), focused: document.activeElement === el};
}"""


def focus_is_visible(page: Page) -> list[str]:
    """Every link, button and field, focused, shows an indicator with 3:1 contrast (WCAG
    1.4.11): an outline or shadow against what surrounds it, or a new background. Returns
    the elements checked."""
    checked, poor = [], []
    for element in page.locator("a[href], button, input:not([type=hidden])").all():
        if not element.is_visible():
            continue
        label = element.evaluate("(e) => e.outerHTML.slice(0, 60)")
        seen = element.evaluate(FOCUS_JS)
        before, after, around = seen["before"], seen["after"], seen["around"]
        assert seen["focused"], f"cannot focus {label}"
        shadows = [
            [float(x) for x in m]
            for m in re.findall(r"rgba?\(([\d.]+), ([\d.]+), ([\d.]+)", after["shadow"])
        ]
        ok = (
            (
                after["outline"] >= 2
                and len(after["outlineColor"]) >= 3
                and (after["outlineColor"][3:] or [1])[0] > 0
                and contrast(after["outlineColor"][:3], around) >= 3
            )
            or any(
                contrast(s, around) >= 3 and after["shadow"] != before["shadow"] for s in shadows
            )
            or (
                after["background"] != before["background"]
                and contrast(after["background"][:3], around) >= 3
            )
        )
        checked.append(label)
        if not ok:
            poor.append(f"{label}: {after}")
    assert not poor, f"focus not visible on {poor}"
    return checked
