"""Daily money limits per card, across providers (docs/DESIGN.md section 12): what a
receiving card may be paid (claims and amount) and what may leave a paying card, counted
atomically under concurrency, across providers and server processes, and given back when a
transfer does not pay. Checked against the bank's ledger: the money that actually moved."""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path
from typing import Any

import httpx

from server.crypto import CardNamer, KeyRing
from tests.cards import luhn_card
from tests.conftest import random_pan, unique_name
from tests.harness import (
    FAST_RECONCILE,
    Provider,
    ServerProcess,
    auth,
    provider_body,
    register,
    remember,
    wait_until,
)

LIMITS = {
    "CASHOUT_MAX_CLAIM_AMOUNT": "100",
    "CASHOUT_CARD_DAILY_CLAIMS": "3",
    "CASHOUT_CARD_DAILY_AMOUNT": "250",
    "CASHOUT_PAYING_CARD_DAILY_AMOUNT": "1000",
}


def same_card_provider(server: ServerProcess, pan: str) -> Provider:
    """Another provider registered with a paying card someone already registered."""
    client = server.client()
    name = unique_name()
    creds = register(client, provider_body(name, pan))
    return Provider(server, client, name, pan, auth(creds["api_key"]), creds["webhook_secret"])


async def _submit_all(
    jobs: list[tuple[ServerProcess, Provider, str, str]],
) -> list[httpx.Response]:
    """Every submission at once, each to its own server process."""
    clients = {
        s.url: httpx.AsyncClient(
            base_url=s.url, timeout=60, limits=httpx.Limits(max_connections=100)
        )
        for s, _, _, _ in jobs
    }
    try:
        return list(
            await asyncio.gather(
                *(
                    clients[s.url].post(f"/cashout/claim/{p.name}", json={"id": uuid, "pan": card})
                    for s, p, uuid, card in jobs
                )
            )
        )
    finally:
        for client in clients.values():
            await client.aclose()


def settle(jobs: list[tuple[ServerProcess, Provider, str, str]], answers: list[Any]) -> None:
    for (_, provider, uuid, _), answer in zip(jobs, answers, strict=True):
        if answer.status_code == 202:
            provider.wait(uuid, "succeeded")
        else:
            assert provider.status(uuid)["status"] == "pending", "a refused claim stays open"


def test_card_limits_hold_under_concurrency_across_providers_and_processes(
    server_factory: Any, mongo: Any, tmp_path: Path
) -> None:
    env = {**LIMITS, "CASHOUT_DATA_DIR": str(tmp_path)}  # one key ring and one bank
    db_name = unique_name("limits").replace("-", "_")
    servers = [server_factory(env, db_name=db_name), server_factory(env, db_name=db_name)]
    rng = random.Random(11)
    namer = CardNamer.for_settings(None, KeyRing.parse((tmp_path / "keys").read_text()))
    totals = mongo[db_name].card_totals

    # 1. Receiving cards: 50 submissions for two providers' claims, 25 to each of two
    # cards, half to each process: each card is paid at most 3 claims and 250 in all.
    a, b = Provider.register(servers[0]), Provider.register(servers[1])
    receiving = [random_pan(), random_pan()]
    remember(*receiving)
    jobs = []
    for i in range(50):
        provider = (a, b)[i % 2]
        uuid = provider.generate(rng.choice((50, 100)))
        jobs.append((servers[i % 2], provider, uuid, receiving[(i // 2) % 2]))
    answers = asyncio.run(_submit_all(jobs))
    assert {r.status_code for r in answers} <= {202, 422}
    assert {r.json()["code"] for r in answers if r.status_code == 422} == {"card_limit_reached"}
    settle(jobs, answers)
    ledger = a.ledger
    for card in receiving:
        paid = [t for t in ledger.all_transfers() if t.to_pan == card and t.applied]
        accepted = [
            r
            for r, job in zip(answers, jobs, strict=True)
            if job[3] == card and r.status_code == 202
        ]
        assert len(paid) == len(accepted) and 2 <= len(paid) <= 3
        assert sum(t.amount for t in paid) <= 250
        day = totals.find_one({"_id": {"$regex": f":to:{namer.name(card)}$"}})
        assert (day["count"], day["amount"]) == (len(paid), sum(t.amount for t in paid))

    # 2. One paying card registered by two providers: 50 claims of 100 at once, each to
    # its own receiving card: exactly 1000 leaves the card.
    paying = random_pan()
    c = same_card_provider(servers[0], paying)
    d = same_card_provider(servers[1], paying)
    jobs = []
    for i in range(50):
        provider = (c, d)[i % 2]
        card = random_pan()
        remember(card)
        jobs.append((servers[(i // 2) % 2], provider, provider.generate(100), card))
    answers = asyncio.run(_submit_all(jobs))
    assert sorted(r.status_code for r in answers) == [202] * 10 + [422] * 40
    assert {r.json()["code"] for r in answers if r.status_code == 422} == {"sender_limit_reached"}
    settle(jobs, answers)
    moved = [t for t in ledger.transfers_from(paying) if t.applied]
    assert sum(t.amount for t in moved) == 1000
    day = totals.find_one({"_id": {"$regex": f":from:{namer.name(paying)}$"}})
    assert day["amount"] == 1000
    assert not any(paying in str(doc) or receiving[0] in str(doc) for doc in totals.find())


def test_what_did_not_pay_is_given_back_and_pages_show_the_limits(server_factory: Any) -> None:
    server = server_factory(
        {
            **FAST_RECONCILE,
            "CASHOUT_MAX_CLAIM_AMOUNT": "100",
            "CASHOUT_CARD_DAILY_CLAIMS": "2",
            "CASHOUT_CARD_DAILY_AMOUNT": "200",
            "CASHOUT_PAYING_CARD_DAILY_AMOUNT": "300",
        }
    )
    provider = Provider.register(server)
    r1, r2, r3 = random_pan(), random_pan(), random_pan()
    # Declined for the provider's funds (final) and for the customer's card (try again):
    # neither moved money, so neither keeps its hold on the paying card.
    failed = provider.generate(100)
    assert provider.claim(failed, luhn_card("0051")).status_code == 202
    provider.wait(failed, "failed")
    retried = provider.generate(100)
    assert provider.claim(retried, luhn_card("0052")).status_code == 202
    wait_until(
        lambda: provider.status(retried)["attempts"][0]["outcome"] == "declined",
        20,
        what="the 0052 decline",
    )
    assert provider.status(retried)["status"] == "pending"
    assert provider.claim(retried, r1).status_code == 202
    second = provider.generate(100)
    assert provider.claim(second, r1).status_code == 202
    provider.wait(retried, "succeeded")
    provider.wait(second, "succeeded")

    # r1 has had its two claims today: refused (JSON and the page), the claim stays open.
    third = provider.generate(100)
    refused = provider.claim(third, r1)
    assert refused.status_code == 422 and refused.json()["code"] == "card_limit_reached"
    page = form_post(provider.client, f"/cashout/claim/{provider.name}/{third}", r1)
    assert page.status_code == 422 and "This card has reached its daily limit" in page.text
    assert 'aria-invalid="true"' in page.text
    assert provider.claim(third, r2).status_code == 202
    provider.wait(third, "succeeded")

    # 300 has left the paying card today: the sender's limit, the claim waits.
    fourth = provider.generate(100)
    over = provider.claim(fourth, r3)
    assert over.status_code == 422 and over.json()["code"] == "sender_limit_reached"
    page = form_post(provider.client, f"/cashout/claim/{provider.name}/{fourth}", r3)
    assert page.status_code == 422 and "daily limit is reached: please try again" in page.text
    assert provider.status(fourth)["status"] == "pending"
    assert sum(t.amount for t in provider.ledger.transfers_from(provider.pan) if t.applied) == 300
    metrics = httpx.get(server.url + "/metrics").text
    assert 'cashout_card_limit_refusals_total{card="receiving"} 2.0' in metrics
    assert 'cashout_card_limit_refusals_total{card="paying"} 2.0' in metrics


def form_post(client: httpx.Client, path: str, pan: str) -> httpx.Response:
    """The claim page as a customer uses it: the card number, then Confirm."""
    page = client.get(path)
    token = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
    assert token, "the form carries an XSRF token"
    check = client.post(path, data={"pan": pan, "_xsrf": token.group(1)})
    sealed = re.search(r'name="card" value="([^"]+)"', check.text)
    assert check.status_code == 200 and sealed, "the check before paying"
    form = {"action": "confirm", "card": sealed.group(1), "_xsrf": token.group(1)}
    return client.post(path, data=form)
