"""Claims paid through the mock gateway: the outcome table, retries, expiry, and the race of
many submissions for one claim. The mock switch's ledger is read directly to check money."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest

from tests.cards import luhn_card
from tests.conftest import random_pan, unique_name
from tests.harness import (
    FAST_RECONCILE,
    Provider,
    ServerProcess,
    make_overdue,
    provider_body,
    remember,
    wait_until,
)
from tests.ledger import Ledger


@pytest.fixture(scope="module")
def paying_server(server_factory: Any) -> ServerProcess:
    return server_factory(FAST_RECONCILE)


@pytest.fixture()
def provider(paying_server: ServerProcess) -> Provider:
    return Provider.register(paying_server)


def moved_to(ledger: Ledger, pan: str) -> int:
    return ledger.applied_total_to(pan)


# last four of the receiving card -> (final status, response code, attempts it takes)
MAGIC = [
    ("1234", "succeeded", 0, 1),
    ("0051", "failed", 51, 1),
    ("0053", "failed", 53, 1),
    ("0091", "succeeded", 0, 1),
    ("0092", "failed", None, 3),
]


@pytest.mark.parametrize(("last4", "final", "code", "attempts"), MAGIC, ids=[m[0] for m in MAGIC])
def test_magic_cards_reach_their_documented_state(
    provider: Provider, last4: str, final: str, code: int | None, attempts: int
) -> None:
    uuid = provider.generate(150)
    to_pan = luhn_card(last4)
    before = provider.ledger.balance(provider.pan)
    answer = provider.claim(uuid, to_pan)
    assert answer.status_code == 202 and answer.json()["status"] == "processing"
    assert answer.json()["card"] == "****" + last4 and to_pan not in answer.text

    claim = provider.wait(uuid, "succeeded", "failed")
    assert (claim["status"], claim["response_code"], len(claim["attempts"])) == (
        final,
        code,
        attempts,
    )
    moved = 150 if final == "succeeded" else 0
    assert moved_to(provider.ledger, to_pan) == moved
    assert provider.ledger.balance(provider.pan) == before - moved
    for attempt in claim["attempts"]:
        assert provider.ledger.applied_count(attempt["tran_uuid"]) == (
            1 if attempt["outcome"] == "approved" else 0
        )
    assert provider.ledger.money_is_conserved()


@pytest.mark.parametrize("last4", ["0052", "0072"])
def test_customer_fixable_declines_return_to_pending_then_fail_after_three(
    provider: Provider, last4: str
) -> None:
    uuid = provider.generate(80)
    for attempt in range(1, 4):
        assert provider.claim(uuid, luhn_card(last4)).status_code == 202
        claim = provider.wait(uuid, "pending", "failed")
        assert len(claim["attempts"]) == attempt
        assert claim["response_code"] == int(last4)
        assert claim["status"] == ("pending" if attempt < 3 else "failed")
    refused = provider.claim(uuid, random_pan())
    assert refused.status_code == 409 and refused.json()["code"] == "already_claimed"
    assert provider.ledger.applied_total_to(luhn_card(last4)) == 0


def test_a_declined_customer_can_retry_with_another_card(provider: Provider) -> None:
    uuid = provider.generate(90)
    provider.claim(uuid, luhn_card("0052"))
    assert provider.wait(uuid, "pending", "failed")["status"] == "pending"
    good = random_pan()
    provider.claim(uuid, good)
    claim = provider.wait(uuid, "succeeded", "failed")
    assert claim["status"] == "succeeded" and claim["card"] == "****" + good[-4:]
    assert [a["outcome"] for a in claim["attempts"]] == ["declined", "approved"]
    assert moved_to(provider.ledger, good) == 90


def test_claim_errors(provider: Provider) -> None:
    uuid = provider.generate(10)
    bad = provider.claim(uuid, "1234 5678 9012 345")
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_card"
    assert bad.json()["details"][0]["field"] == "pan"
    luhn = provider.claim(uuid, random_pan()[:-1] + "x")
    assert luhn.status_code == 400
    assert provider.status(uuid)["status"] == "pending"
    unknown = provider.claim("00000000-0000-4000-8000-000000000000", random_pan())
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    wrong_provider = provider.client.post(
        "/cashout/claim/someone-else", json={"id": uuid, "pan": random_pan()}
    )
    assert wrong_provider.status_code == 404
    schema = provider.client.post(f"/cashout/claim/{provider.name}", json={"id": "x"})
    assert schema.status_code == 400 and schema.json()["code"] == "invalid_request"
    provider.client.post(f"/cashout/claims/{provider.name}/{uuid}/cancel", headers=provider.headers)
    cancelled = provider.claim(uuid, random_pan())
    assert cancelled.status_code == 410 and cancelled.json()["code"] == "claim_cancelled"


def test_pending_claims_expire(provider: Provider, mongo: Any) -> None:
    uuid = provider.generate(10, expires_in=60)
    # Move the expiry into the past directly: waiting a minute would slow the suite.
    db = mongo[provider.server.env["CASHOUT_DB_NAME"]]
    make_overdue(db, uuid)
    claim = provider.wait(uuid, "expired")  # the periodic sweep, with nobody looking
    assert claim["completed_at"] is not None
    late = provider.claim(uuid, random_pan())
    assert late.status_code == 410 and late.json()["code"] == "claim_expired"
    page = provider.client.get(f"/cashout/claim/{provider.name}/{uuid}")
    assert page.status_code == 200 and "expired" in page.text


def _xsrf(client: httpx.Client, path: str) -> tuple[str, str]:
    page = client.get(path)
    token = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
    assert token, "the form carries an XSRF token"
    return client.cookies["_xsrf"], token.group(1)


def test_form_without_xsrf_token_is_refused(provider: Provider) -> None:
    uuid = provider.generate(10)
    response = provider.client.post(
        f"/cashout/claim/{provider.name}/{uuid}", data={"pan": random_pan()}
    )
    assert response.status_code == 403 and "text/html" in response.headers["content-type"]
    assert provider.status(uuid)["status"] == "pending"


def _sealed_card(client: httpx.Client, path: str, token: str, card: str) -> str:
    """The check step of the form: the card comes back sealed for the Confirm button."""
    page = client.post(path, data={"pan": card, "_xsrf": token})
    assert page.status_code == 200, page.status_code
    sealed = re.search(r'name="card" value="([^"]+)"', page.text)
    assert sealed, "the check page carries the sealed card"
    return sealed.group(1)


def test_a_hundred_concurrent_submissions_pay_once(provider: Provider) -> None:
    """Fifty apps on the JSON route and fifty customers pressing Confirm, all at once."""
    uuid = provider.generate(500)
    path = f"/cashout/claim/{provider.name}/{uuid}"
    cookie, token = _xsrf(provider.client, path)
    cards = [random_pan() for _ in range(100)]
    remember(*cards)
    sealed = {
        i: _sealed_card(provider.client, path, token, c) for i, c in enumerate(cards) if not i % 2
    }
    assert provider.status(uuid)["status"] == "pending"  # the check step claims nothing
    before = provider.ledger.balance(provider.pan)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=provider.server.url,
            timeout=60,
            cookies={"_xsrf": cookie},
            limits=httpx.Limits(max_connections=100),
        ) as client:
            calls = []
            for i, card in enumerate(cards):
                if i % 2:
                    calls.append(
                        client.post(
                            f"/cashout/claim/{provider.name}", json={"id": uuid, "pan": card}
                        )
                    )
                else:
                    form = {"action": "confirm", "card": sealed[i], "_xsrf": token}
                    calls.append(client.post(path, data=form))
            return list(await asyncio.gather(*calls))

    responses = asyncio.run(burst())
    json_answers = [r.status_code for r in responses if r.request.url.path != path]
    html_answers = [r.status_code for r in responses if r.request.url.path == path]
    assert sorted(set(json_answers)) in ([202, 409], [409])
    assert set(html_answers) == {303}
    assert all(r.headers["location"] == path for r in responses if r.status_code == 303)
    assert json_answers.count(202) <= 1

    claim = provider.wait(uuid, "succeeded", "failed")
    assert claim["status"] == "succeeded" and len(claim["attempts"]) == 1
    paid = [card for card in cards if moved_to(provider.ledger, card)]
    assert len(paid) == 1 and moved_to(provider.ledger, paid[0]) == 500
    assert provider.ledger.balance(provider.pan) == before - 500
    for response in responses:
        assert not any(card in response.text for card in cards)


def test_a_gateway_chosen_by_dotted_path_and_its_words_are_masked(server_factory: Any) -> None:
    """``CASHOUT_GATEWAY=package.module:Class`` loads a third-party gateway; whatever text it
    returns is stored and shown only with card numbers masked."""
    server = server_factory(
        {**FAST_RECONCILE, "CASHOUT_GATEWAY": "tests.echo_gateway:EchoingGateway"}
    )
    provider = Provider.register(server)
    uuid = provider.generate(20)
    card = random_pan()
    provider.claim(uuid, card)
    claim = provider.wait(uuid, "succeeded")
    shown = json.dumps(claim)
    assert card not in shown and provider.pan not in shown
    assert f"to ****{card[-4:]}".replace("****", "*" * 12) in claim["response_message"]
    refused_pan = random_pan()
    remember(refused_pan, "0000")
    refused = provider.client.post(
        "/cashout/register", json=provider_body(unique_name(), refused_pan, ipin="0000")
    )
    assert refused.status_code == 400 and refused.json()["code"] == "card_rejected"
    # The answer says nothing of the switch's words (no oracle); the operator's log has
    # them, masked.
    assert refused_pan not in refused.text and refused_pan[-4:] not in refused.text
    masked = "*" * 12 + refused_pan[-4:]
    wait_until(lambda: f"card {masked} refused" in server.log(), 10, what="the logged reason")
